"""``fedmm bench methods|selection --protocol``: how each method's (or selection policy's)
configuration is chosen before its seeds run, and the comparison table that reviewers accept.

- ``defaults``: every method with fedmm's defaults (as ``fedmm bench methods`` always ran);
- ``paper``: every method with its paper's or reference code's settings (config key ``preset = "paper"``);
- ``tuned``: every method tuned on validation with the same trial budget (:mod:`fedmm.tune`, on
  seed 0 of the federation), then its chosen configuration run on every seed.

The comparison (:func:`comparison`) reports, per dataset and method, the test accuracy at the round
chosen on validation (``test/acc-at-best-val``), the mean test accuracy of the last rounds, the weak
modality alone at the chosen round: mean ± std over seeds, the 95 % t interval, and the paired
difference from the baseline (FedAvg with ``ce``; ``random`` for selection policies) on the same
seeds with the paired t-test's and the Wilcoxon signed-rank test's p-values (:mod:`fedmm.stats`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import tomli_w

from fedmm.files import atomic_write
from fedmm.reporting import weakest_modality
from fedmm.stats import mean_ci, paired_tests
from fedmm.tables import markdown_lines, markdown_row

PROTOCOLS = ("defaults", "paper", "tuned")
#: The method every other is compared with, seed by seed.
BASELINE = "fedavg"
#: Per-run columns the comparison reports: column -> its name in the tables.
REPORTED = {"test/acc-at-best-val": "test acc at best-val round", "last-test/acc": "test acc, last rounds mean"}
#: The number the paired tests and the interval are about.
PRIMARY = "test/acc-at-best-val"


def protocol_overrides(protocol: str) -> tuple[str, ...]:
    """The overrides ``protocol`` adds to every run (``paper``: ``preset=paper``); refuses an unknown one."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return ("preset=paper",) if protocol == "paper" else ()


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal for a ``key=value`` override (strings quoted, floats exact)."""
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def study_dir(out_dir: Path, dataset: str, method: str) -> Path:
    """Where a benchmark in ``out_dir`` keeps the study of ``method`` on ``dataset``."""
    return Path(out_dir) / "tune" / f"{dataset}-{method}"


def tuned_overrides(
    dataset: str,
    method: str,
    base: Sequence[str],
    out_dir: Path,
    settings: Any,
    simulate: Any = None,
    config: Path | None = None,
) -> tuple[str, ...]:
    """Tune ``method`` on ``dataset``'s federation (the TOML ``config`` with the overrides ``base``,
    seed 0) into ``out_dir/tune/<dataset>-<method>`` (a finished study is not run again) and return
    its best values as overrides.

    Raises ``ValueError`` when no trial of the study completed (every one pruned).
    """
    from fedmm.config import load_config
    from fedmm.tune import tune

    study = study_dir(out_dir, dataset, method)
    result = tune(load_config(config, base), study, settings, simulate=simulate)
    if result.status != "completed":
        raise KeyboardInterrupt  # the study keeps its finished trials; the CLI says so
    if result.best_config is None:
        raise ValueError(
            f"tuning {method} on {dataset}: all {result.pruned} trials were pruned (diverged or failed); "
            f"see {study / 'trials.csv'}"
        )
    return tuple(f"{k}={toml_value(v)}" for k, v in sorted(result.best_params.items()))


def comparison(
    runs: pd.DataFrame, datasets: Sequence[str], methods: Sequence[str], baseline: str = BASELINE
) -> pd.DataFrame:
    """The tidy comparison: one row per dataset, method and reported metric, with ``mean``, ``std``,
    ``ci-low``, ``ci-high`` (95 % t interval), ``n`` (seeds), and against ``baseline`` on the same
    seeds ``diff`` (mean paired difference), ``t-p`` and ``wilcoxon-p``.

    Parameters
    ----------
    runs:
        ``runs.csv`` of the benchmark: one row per dataset, method and seed.
    datasets, methods:
        Which ones, in table order.
    baseline:
        The method compared against (its own rows get no test).
    """

    rows = []
    for d in datasets:
        at_d = runs[runs["dataset"] == d]
        if at_d.empty:
            continue
        weak = weakest_modality(at_d)
        metrics = {**REPORTED, f"test/acc/{weak}-at-best-val": f"{weak} alone at best-val round"}
        base = at_d[at_d["method"] == baseline].set_index("seed")
        for m in methods:
            run = at_d[at_d["method"] == m].set_index("seed")
            if run.empty:
                continue
            for column, label in metrics.items():
                if column not in run:
                    continue
                values = run[column].astype(float)
                ci = mean_ci(values.tolist())
                row = {
                    "dataset": d,
                    "method": m,
                    "metric": column,
                    "label": label,
                    "mean": ci.mean,
                    "std": float(values.std()) if len(values.dropna()) > 1 else float("nan"),
                    "ci-low": ci.low,
                    "ci-high": ci.high,
                    "n": ci.n,
                }
                if m != baseline and not base.empty and column in base:
                    seeds = sorted(set(run.index) & set(base.index))
                    test = paired_tests(
                        run.loc[seeds, column].astype(float).tolist(), base.loc[seeds, column].astype(float).tolist()
                    )
                    row.update({"diff": test.diff, "t-p": test.t_p, "wilcoxon-p": test.wilcoxon_p, "pairs": test.n})
                rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(
    tidy: pd.DataFrame, datasets: Sequence[str], methods: Sequence[str], protocol: str, baseline: str = BASELINE
) -> str:
    """The Markdown table of :func:`comparison`: a section per dataset, a row per method."""
    sections = []
    for d in datasets:
        at_d = tidy[tidy["dataset"] == d]
        if at_d.empty:
            continue
        weak_metric = next((c for c in at_d["metric"].unique() if c not in REPORTED), "")
        weak = weak_metric.split("/")[-1].removesuffix("-at-best-val") or "n/a"
        header = [
            "method",
            "test acc at best-val round",
            "95 % CI",
            f"diff vs {baseline}",
            "paired t p",
            "Wilcoxon p",
            "last-rounds test acc",
            f"{weak} alone",
            "seeds",
        ]
        lines = [
            f"**{d}** (protocol {protocol}; weakest modality: {weak})",
            "",
            *markdown_lines(header),
        ]
        for m in methods:
            cell = {r["metric"]: r for _, r in at_d[at_d["method"] == m].iterrows()}
            if PRIMARY not in cell:
                continue
            p = cell[PRIMARY]
            tests = (
                ["—", "—", "—"]
                if m == baseline or pd.isna(p.get("diff"))
                else [f"{p['diff']:+.3f}", _p(p["t-p"]), _p(p["wilcoxon-p"])]
            )
            lines.append(
                markdown_row(
                    [
                        m,
                        _ms(p),
                        _ci(p),
                        *tests,
                        _ms(cell["last-test/acc"]) if "last-test/acc" in cell else "n/a",
                        _ms(cell[weak_metric]) if weak_metric in cell else "n/a",
                        str(int(p["n"])),
                    ]
                )
            )
        sections.append("\n".join(lines))
    pairs = int(tidy["pairs"].max()) if "pairs" in tidy and tidy["pairs"].notna().any() else 0
    # the exact two-sided signed-rank p of n pairs that all differ in one direction: 2 / 2^n
    floor = f" (with {pairs} seeds its smallest possible p is {2.0 ** (1 - pairs):.4g})" if pairs else ""
    note = (
        f"Mean ± std over seeds; 95 % CI: Student t interval of the mean; diff: mean paired difference from "
        f"{baseline} on the same seeds, with the two-sided p of the paired t-test and of the Wilcoxon signed-rank "
        f"test{floor}. The round of each run is chosen on validation accuracy; the test split is only reported."
    )
    return "\n\n".join([*sections, note])


def plot_comparison(tidy: pd.DataFrame, datasets: Sequence[str], methods: Sequence[str], path: Path) -> None:
    """Per dataset, each method's mean test accuracy at the validation-chosen round with its 95 % CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [d for d in datasets if not tidy[(tidy["dataset"] == d) & (tidy["metric"] == PRIMARY)].empty]
    if not shown:
        return
    fig, axes = plt.subplots(
        1, len(shown), figsize=(4.5 * len(shown), 0.35 * len(methods) + 1.5), dpi=120, squeeze=False
    )
    for ax, d in zip(axes[0], shown, strict=True):
        rows = tidy[(tidy["dataset"] == d) & (tidy["metric"] == PRIMARY)].set_index("method")
        names = [m for m in methods if m in rows.index]
        mean = rows.loc[names, "mean"]
        low = (mean - rows.loc[names, "ci-low"]).fillna(0)
        high = (rows.loc[names, "ci-high"] - mean).fillna(0)
        ax.barh(range(len(names)), mean, xerr=[low, high], capsize=3, color="tab:blue", alpha=0.7)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_title(d)
        ax.set_xlabel("test acc at best-val round (95 % CI)")
        ax.set_xlim(max(0.0, float((mean - low).min()) - 0.05), min(1.0, float((mean + high).max()) + 0.02))
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def write_comparison(
    runs: pd.DataFrame,
    datasets: Sequence[str],
    methods: Sequence[str],
    out_dir: Path,
    protocol: str,
    baseline: str = BASELINE,
) -> str | None:
    """``comparison.csv`` (tidy), ``comparison.md`` and ``comparison.png`` in ``out_dir``; returns the
    table, or ``None`` when the runs have no validation-chosen round (``validation = "off"``).
    ``baseline``: the method the others are compared with, seed by seed."""
    if PRIMARY not in runs:
        return None
    tidy = comparison(runs, datasets, methods, baseline)
    atomic_write(out_dir / "comparison.csv", tidy.to_csv(index=False))
    table = comparison_table(tidy, datasets, methods, protocol, baseline)
    atomic_write(out_dir / "comparison.md", table + "\n")
    plot_comparison(tidy, datasets, methods, out_dir / "comparison.png")
    return table


def _ms(row: Mapping[str, Any]) -> str:
    if pd.isna(row["mean"]):
        return "n/a"
    return f"{row['mean']:.3f}" if pd.isna(row["std"]) else f"{row['mean']:.3f} ± {row['std']:.3f}"


def _ci(row: Mapping[str, Any]) -> str:
    return "n/a" if pd.isna(row["ci-low"]) else f"[{row['ci-low']:.3f}, {row['ci-high']:.3f}]"


def _p(p: float) -> str:
    return "n/a" if pd.isna(p) else f"{p:.3f}"
