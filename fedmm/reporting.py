"""Reading a results directory back: :func:`load_run` (a :class:`Run` of pandas frames) and the
readable summary that ``fedmm report`` prints.

Every problem with a directory or one of its files is one :class:`ValueError` naming the file and
what to do; nothing here imports flwr, ray or torch.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fedmm.progress import weak_modality
from fedmm.run_files import CLIENTS_FILE, CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE


@dataclass
class Run:
    """One run's results, as written by ``fedmm simulate`` (or ``flwr run``) into its directory.

    Attributes
    ----------
    out_dir:
        The run directory.
    config:
        The resolved config (``config.toml``), flat kebab-case keys; empty when the file is absent.
    summary:
        ``summary.json``; when the run has none yet (still running, killed) the summary computed
        from ``rounds.csv`` with status ``unfinished``.
    rounds:
        ``rounds.csv``: one row per round (round 0: the initial model).
    clients:
        ``clients.csv``: one row per client and round (empty when absent).
    """

    out_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    rounds: pd.DataFrame
    clients: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def name(self) -> str:
        """The directory's name."""
        return self.out_dir.name

    @property
    def modalities(self) -> list[str]:
        """The modalities with a ``test/acc/<m>`` column, sorted."""
        return sorted(c.rsplit("/", 1)[1] for c in self.rounds.columns if c.startswith("test/acc/"))

    def __repr__(self) -> str:
        final = self.summary.get("final", {}).get("test/acc", math.nan)
        return (
            f"Run({str(self.out_dir)!r}, status={self.summary.get('status', '?')!r}, "
            f"rounds={len(self.rounds) - 1}, test/acc={final:.4f})"
        )


def load_run(path: str | Path) -> Run:
    """Load the results directory ``path`` as a :class:`Run` (pandas frames and dicts).

    Parameters
    ----------
    path:
        A directory written by ``fedmm simulate`` (at least ``rounds.csv``).

    Raises
    ------
    ValueError
        The directory does not exist, has no ``rounds.csv``, or one of its files is damaged; the
        message names the file.
    """
    out_dir = Path(path).expanduser()
    if not out_dir.is_dir():
        raise ValueError(
            f"results directory {str(out_dir)!r} does not exist; pass a directory written by fedmm simulate"
        )
    rounds = _read_csv(out_dir / ROUNDS_FILE, required=True)
    for column in ("round", "test/acc"):
        if column not in rounds.columns:
            raise ValueError(
                f"{str(out_dir / ROUNDS_FILE)!r} has no {column!r} column; it was not written by "
                "fedmm simulate (rerun the run)"
            )
    if rounds.empty:
        raise ValueError(f"{str(out_dir / ROUNDS_FILE)!r} has no rounds yet; wait for the run's first round")
    clients = _read_csv(out_dir / CLIENTS_FILE, required=False)
    config = _read_config(out_dir / CONFIG_FILE)
    summary = _read_summary(out_dir / SUMMARY_FILE)
    if summary is None:
        summary = _summary_from_rounds(rounds)
    return Run(out_dir, config, summary, rounds, clients)


def _read_csv(path: Path, *, required: bool) -> pd.DataFrame:
    if not path.is_file():
        if required:
            raise ValueError(f"{str(path)!r} does not exist; pass a directory written by fedmm simulate")
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        if required:
            raise ValueError(f"{str(path)!r} is empty; the run wrote no round (rerun it)") from None
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise ValueError(
            f"{str(path)!r} is damaged and cannot be read as CSV ({_first_line(err)}); rerun the "
            "run or remove the directory"
        ) from None


def _read_config(path: Path) -> dict[str, Any]:
    """``config.toml`` as flat keys, the defaults of the plain keys it leaves out (the tracking keys
    when off, a key added to fedmm after the run) filled in; ``{}`` when the file is absent."""
    if not path.is_file():
        return {}
    from fedmm.config_text import flatten

    try:
        values = flatten(tomllib.loads(path.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as err:
        raise ValueError(
            f"{str(path)!r} is damaged and cannot be read as TOML ({_first_line(err)}); rerun the "
            "run or remove the directory"
        ) from None
    return {**_plain_defaults(), **values}


def _plain_defaults() -> dict[str, Any]:
    from dataclasses import MISSING, fields

    from fedmm.config import RunConfig
    from fedmm.params import config_name

    return {
        config_name(f.name): f.default
        for f in fields(RunConfig)
        if f.default is not MISSING and not isinstance(f.default, tuple)
    }


def _read_summary(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise ValueError(
            f"{str(path)!r} is damaged and cannot be read as JSON ({_first_line(err)}); rerun the "
            "run or remove the file (fedmm then reads rounds.csv alone)"
        ) from None
    if not isinstance(summary, dict):
        raise ValueError(f"{str(path)!r} is not a JSON object; rerun the run or remove the file")
    return summary


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _summary_from_rounds(rounds: pd.DataFrame) -> dict[str, Any]:
    """The summary of a run without ``summary.json`` (under way or killed): its rounds so far."""
    from fedmm.results import summarize  # pandas and the checkpoint file names only: no torch, no flwr

    return summarize(rounds.to_dict("records"), {"status": "unfinished"})


# -- what one run shows ---------------------------------------------------------------------------


def weakest_modality(final: pd.DataFrame) -> str:
    """The modality whose final accuracy alone (``test/acc/<m>``) is lowest, averaged over the runs
    (one row per run)."""
    alone = {
        c.rsplit("/", 1)[1]: final[c].mean()
        for c in final.columns
        if c.startswith("test/acc/")
        and not c.endswith("-at-best-val")  # the final round's, not the chosen one's
        and final[c].notna().any()
    }  # another dataset's modalities are NaN
    if not alone:
        raise ValueError("the runs report no single-modality accuracy (test/acc/<m>)")
    return min(alone, key=alone.get)


def best_on_validation(run: Run) -> tuple[float, int, float] | None:
    """``(best val/acc, its round, test/acc at that round)``: from the summary's ``best-val/acc``,
    ``best-val-round`` and ``test/acc-at-best-val`` when present, else from a ``val/acc`` column of
    ``rounds.csv``; ``None`` for a run without a validation split (never read from test)."""
    s = run.summary
    if "best-val/acc" in s and "test/acc-at-best-val" in s:
        return float(s["best-val/acc"]), int(s.get("best-val-round", -1)), float(s["test/acc-at-best-val"])
    if "val/acc" not in run.rounds.columns:
        return None
    trained = run.rounds[run.rounds["round"] >= 1].dropna(subset=["val/acc"])
    if trained.empty:
        return None
    best = trained["val/acc"].idxmax()
    return float(trained.loc[best, "val/acc"]), int(trained.loc[best, "round"]), float(trained.loc[best, "test/acc"])


def format_bytes(value: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units)."""
    if not math.isfinite(value):
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover


def run_facts(run: Run) -> dict[str, Any]:
    """One run's comparable numbers, as plain values: status, rounds, final test accuracy, best on
    validation (when the run has a validation split), the last rounds' mean and std, the weak
    modality, bytes moved and seconds.

    Parameters
    ----------
    run:
        A loaded run (:func:`load_run`).
    """
    s = run.summary
    final = s.get("final") or {k: v for k, v in run.rounds.iloc[-1].items() if str(k).startswith("test/")}
    weak = weak_modality(final)
    best_val = best_on_validation(run)
    facts: dict[str, Any] = {
        "run": run.name,
        "status": s.get("status", "?"),
        "rounds": int(s.get("rounds", run.rounds["round"].max())),
        "test/acc": float(final.get("test/acc", math.nan)),
        "best-val/acc": best_val[0] if best_val else math.nan,
        "test/acc-at-best-val": best_val[2] if best_val else math.nan,
        "last-rounds-test/acc": float(s.get("last-rounds-test/acc", math.nan)),
        "last-rounds-test/acc-std": float(s.get("last-rounds-test/acc-std", math.nan)),
        "weak-modality": weak[0] if weak else "",
        "weak-modality-test/acc": weak[1] if weak else math.nan,
        "bytes": float(s.get("total-bytes-up", math.nan)) + float(s.get("total-bytes-down", math.nan)),
        "seconds": float(s.get("total-seconds", math.nan)),
    }
    return facts


def _num(value: Any, digits: int = 4) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}"


def report_text(run: Run, last: int = 10) -> str:
    """What ``fedmm report DIR`` prints: the run's config in one line, its outcome with rounded
    numbers, the final per-modality accuracies and a table of its last rounds.

    Parameters
    ----------
    run:
        A loaded run.
    last:
        How many of the last rounds the table shows.
    """
    s, c = run.summary, run.config
    facts = run_facts(run)
    what = " · ".join(f"{k} {c[k]}" for k in ("dataset", "strategy", "objective", "selection", "seed") if k in c)
    lines = [f"run {run.out_dir}", f"  {what or 'config.toml missing'}"]
    status = f"  status {facts['status']}, {facts['rounds']} rounds"
    if s.get("reason"):
        status += f" ({s['reason']})"
    lines.append(status)
    lines.append(
        f"  final test/acc {_num(facts['test/acc'])}   last {s.get('last-rounds', '?')} rounds "
        f"{_num(facts['last-rounds-test/acc'])} ± {_num(facts['last-rounds-test/acc-std'])}"
    )
    if math.isfinite(facts["best-val/acc"]):
        best = best_on_validation(run)
        lines.append(f"  best on validation {_num(best[0])} at round {best[1]}: test/acc {_num(best[2])}")
    if "best-test/acc" in s:
        lines.append(
            f"  best test/acc {_num(s['best-test/acc'])} at round {s.get('best-round', '?')} "
            "(read from test: for looking, not for choosing)"
        )
    final = s.get("final", {})
    alone = "  ".join(f"{m} {_num(final.get(f'test/acc/{m}'), 3)}" for m in run.modalities)
    if alone:
        lines.append(f"  each modality alone: {alone}   weak: {facts['weak-modality']}")
    if "test/imbalance" in final:
        lines.append(f"  imbalance {_num(final['test/imbalance'], 3)}   test/loss {_num(final.get('test/loss'))}")
    lines.append(
        f"  moved {format_bytes(facts['bytes'])}   time {_num(facts['seconds'], 1)} s"
        + ("   DIVERGED" if s.get("diverged") else "")
    )
    cols = [
        "round",
        "test/acc",
        *[f"test/acc/{m}" for m in run.modalities],
        *[c for c in ("val/acc", "test/loss", "train/loss", "seconds") if c in run.rounds.columns],
    ]
    table = run.rounds[cols].tail(last).rename(columns=lambda col: col.replace("test/acc/", "alone/"))
    lines += ["", table.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")]
    return "\n".join(lines)
