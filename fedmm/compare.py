"""``fedmm compare DIR...``: several runs side by side.

A table of the runs (the config keys whose values differ between them, the final test accuracy,
the best round on validation where the runs have a validation split, the last rounds' mean, the weak
modality, bytes and time) and one overlay plot per metric (accuracy, losses, each modality alone),
written as Markdown, CSV and PNG files.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedmm.files import atomic_write
from fedmm.reporting import ROUNDS_FILE, Run, format_bytes, load_run, run_facts
from fedmm.tables import markdown_lines

#: Config keys never shown as a difference (where a run was written, not how it ran).
IGNORED_KEYS = ("out-dir",)
TABLE_FILE, CSV_FILE = "compare.md", "compare.csv"


def expand_run_dirs(patterns: Iterable[str | Path]) -> list[Path]:
    """The run directories named by ``patterns``: each a directory or a glob (``results/*``,
    expanded here too, for shells that pass it on unexpanded; files and directories holding no
    run among its matches are passed over); a directory without ``rounds.csv`` stands for the runs
    below it (``<dir>/*/`` and ``<dir>/*/*/``: a benchmark's ``runs/``).

    Parameters
    ----------
    patterns:
        Directories or glob patterns, in the order the runs are shown (a glob's matches sorted).

    Raises
    ------
    ValueError
        A pattern matches nothing, or a directory holds no run; the message names it.
    """
    out: list[Path] = []
    for pattern in patterns:
        text = str(Path(pattern).expanduser())
        magic = glob.has_magic(text)
        matches = [Path(m) for m in sorted(glob.glob(text)) if Path(m).is_dir()] if magic else [Path(text)]
        found = []
        for match in matches:
            if not match.exists():
                raise ValueError(
                    f"results directory {str(match)!r} does not exist; pass directories written by fedmm simulate"
                )
            if (match / ROUNDS_FILE).is_file() or not match.is_dir():
                found.append(match)
                continue
            below = sorted({p.parent for p in (*match.glob(f"*/{ROUNDS_FILE}"), *match.glob(f"*/*/{ROUNDS_FILE}"))})
            if not below and not magic:
                raise ValueError(
                    f"{str(match)!r} holds no run (no {ROUNDS_FILE} in it or below it); pass "
                    "directories written by fedmm simulate"
                )
            found.extend(below)  # a glob's match without runs (e.g. a compare --out folder) is passed over
        if magic and not found:
            raise ValueError(f"{text!r} matches no run directory; pass run directories written by fedmm simulate")
        out.extend(found)
    unique = list(dict.fromkeys(p.resolve() for p in out))
    if not unique:
        raise ValueError("no run directories given; pass at least one (globs allowed)")
    return unique


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The config keys whose values are not the same in every config (a key absent from one
    config counts as a difference), in the order they first appear.

    Parameters
    ----------
    configs:
        Flat kebab-case configs (:attr:`fedmm.reporting.Run.config`).
    """
    keys = list(dict.fromkeys(k for c in configs for k in c))
    missing = object()
    return [k for k in keys if k not in IGNORED_KEYS and len({repr(c.get(k, missing)) for c in configs}) > 1]


def short_names(paths: Sequence[Path]) -> list[str]:
    """Each run's name: its path below the runs' common directory (``runs/fedavg-seed0``), or its
    directory name alone for a single run.

    Parameters
    ----------
    paths:
        The run directories (resolved).
    """
    if len(paths) < 2:
        return [Path(p).name for p in paths]
    common = Path(os.path.commonpath([str(p) for p in paths]))
    return [str(Path(p).relative_to(common)) or Path(p).name for p in paths]


def compare_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run: its name, the config keys that differ between ``runs``, and
    :func:`fedmm.reporting.run_facts` (columns of best-on-validation only when a run has them).

    Parameters
    ----------
    runs:
        Loaded runs (:func:`fedmm.reporting.load_run`).
    """
    keys = differing_keys([r.config for r in runs])
    rows = []
    for run, name in zip(runs, short_names([r.out_dir for r in runs])):
        facts = run_facts(run)
        facts.pop("run")
        rows.append({"run": name, **{k: run.config.get(k, "") for k in keys}, **facts})
    table = pd.DataFrame(rows)
    for column in ("best-val/acc", "test/acc-at-best-val"):
        if table[column].isna().all():
            table = table.drop(columns=column)
    return table


def _cell(column: str, value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if column == "bytes":
            return format_bytes(value)
        if column == "seconds":
            return f"{value:.1f}"
        return f"{value:.4f}"
    return str(value)


def display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows as rounded text (accuracies to 4 places, bytes in kB/MB, the
    last rounds' mean with its std, the weak modality with its accuracy)."""
    table = table.copy()
    if "last-rounds-test/acc" in table:
        table["last-rounds-test/acc"] = [
            "-" if not math.isfinite(m) else f"{m:.4f} ± {s:.4f}"
            for m, s in zip(table["last-rounds-test/acc"], table.pop("last-rounds-test/acc-std"))
        ]
    if "weak-modality" in table:
        table["weak-modality"] = [
            f"{m} {a:.3f}" if m else "-" for m, a in zip(table["weak-modality"], table.pop("weak-modality-test/acc"))
        ]
    header = [str(c) for c in table.columns]
    rows = [[_cell(c, v) for c, v in zip(header, row)] for row in table.itertuples(index=False)]
    return header, rows


def markdown(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown (rounded as :func:`display_rows`)."""
    header, rows = display_rows(table)
    return "\n".join(markdown_lines(header, ([cell.replace("|", "\\|") for cell in row] for row in rows)))


def rich_table(table: pd.DataFrame):  # -> rich.table.Table
    """The table for a terminal (rich)."""
    from rich.table import Table

    header, rows = display_rows(table)
    out = Table(title=f"fedmm compare: {len(rows)} runs")
    for column in header:
        out.add_column(column, justify="left" if column in ("run", "status", "weak-modality") else "right")
    for row in rows:
        out.add_row(*row)
    return out


def overlay_metrics(runs: Sequence[Run]) -> list[str]:
    """The per-round metrics worth one overlay plot each: test accuracy, validation accuracy when
    present, the test and training losses, the imbalance, and each modality alone."""
    present = set().union(*(r.rounds.columns for r in runs))
    wanted = ["test/acc", "val/acc", "test/loss", "train/loss", "test/imbalance"]
    per_mod = sorted(c for c in present if c.startswith("test/acc/") or c.startswith("test/acc-fill/"))
    return [m for m in [*wanted, *per_mod] if m in present]


_TITLES = {
    "test/acc": "test accuracy (multimodal)",
    "val/acc": "validation accuracy (multimodal)",
    "test/loss": "test loss (global model)",
    "train/loss": "training loss (clients' mean)",
    "test/imbalance": "imbalance (test)",
}


def metric_title(metric: str) -> str:
    """``test/acc/m0`` -> ``"test accuracy, m0 alone"`` (the overlay plot's title)."""
    if metric.startswith("test/acc/"):
        return f"test accuracy, {metric.rsplit('/', 1)[1]} alone"
    if metric.startswith("test/acc-fill/"):
        return f"test accuracy, {metric.rsplit('/', 1)[1]} with FedCMI's fill"
    return _TITLES.get(metric, metric)


def plot_file(metric: str) -> str:
    """``test/acc/m0`` -> ``compare-test-acc-m0.png``."""
    return "compare-" + metric.replace("/", "-") + ".png"


def plot_overlays(runs: Sequence[Run], out_dir: Path, labels: Sequence[str] | None = None) -> list[Path]:
    """One PNG per metric of :func:`overlay_metrics`: that metric per round, one line per run.

    Parameters
    ----------
    runs:
        Loaded runs.
    out_dir:
        Where the PNGs go (``compare-<metric>.png``).
    labels:
        The legend's name of each run (default: the directory names).
    """
    from fedmm.plots import close, integer_rounds, new_figure, save

    labels = list(labels or [r.name for r in runs])
    paths = []
    for metric in overlay_metrics(runs):
        fig = new_figure(6.4, 4.0)
        ax = fig.subplots()
        try:
            for run, label in zip(runs, labels):
                if metric in run.rounds:
                    rows = run.rounds.dropna(subset=[metric])
                    ax.plot(rows["round"], rows[metric], marker="o", markersize=3, label=label)
            ax.set_title(f"{metric_title(metric)}: {len(runs)} runs")
            ax.set_xlabel("round")
            ax.set_ylabel(metric)
            if "acc" in metric:
                ax.set_ylim(0, 1)
            integer_rounds(ax)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            paths.append(save(fig, out_dir / plot_file(metric)))
        finally:
            close(fig)
    return paths


def compare_runs(patterns: Iterable[str | Path], out_dir: Path | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """Load the runs named by ``patterns`` and compare them; with ``out_dir``, write
    ``compare.md``, ``compare.csv`` and the overlay plots there.

    Parameters
    ----------
    patterns:
        Run directories or globs (:func:`expand_run_dirs`).
    out_dir:
        Where the table and plots go; ``None`` writes nothing.

    Returns
    -------
    The table (:func:`compare_table`) and the files written.
    """
    runs = [load_run(path) for path in expand_run_dirs(patterns)]
    table = compare_table(runs)
    written: list[Path] = []
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / TABLE_FILE, markdown(table) + "\n")
        atomic_write(out_dir / CSV_FILE, table.to_csv(index=False))
        written = [out_dir / TABLE_FILE, out_dir / CSV_FILE, *plot_overlays(runs, out_dir, table["run"].tolist())]
    return table, written
