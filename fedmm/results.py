"""One directory per run: per-round and per-client tables, the resolved config, summary, model, plot.

Tables are rewritten atomically after every round (:func:`fedmm.files.atomic_write`), so a run that
stops early keeps every finished round and never leaves a half-written file.

Why one module of this size: one run directory's files: the tables written after every round, the
summary (with the validation-chosen round and the collapse and divergence flags) and the model,
which a resume reads back together.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedmm.checkpoint import CHECKPOINT_ARRAYS, CHECKPOINT_STATE
from fedmm.collapse import collapse
from fedmm.config import RunConfig
from fedmm.files import atomic_write
from fedmm.model_selection import ORACLE_KEYS, best_on_validation, last_rounds_val
from fedmm.run_files import (
    CLIENTS_FILE,
    CONFIG_FILE,
    LOCK_FILE,
    MODEL_FILE,
    PLOT_FILE,
    ROUNDS_FILE,
    SELECTION_PLOT_FILE,
    SUMMARY_FILE,
)

#: Every file a run writes into its directory; a new run (``--overwrite``) removes all of them and
#: leaves any other file alone.
RUN_FILES = (
    ROUNDS_FILE,
    CLIENTS_FILE,
    CONFIG_FILE,
    SUMMARY_FILE,
    MODEL_FILE,
    PLOT_FILE,
    CHECKPOINT_ARRAYS,
    CHECKPOINT_STATE,
    SELECTION_PLOT_FILE,
)


def prepare_out_dir(path: str | Path, *, overwrite: bool) -> Path:
    """Check that ``path`` can take a run's results (without creating anything yet)."""
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(f"output path {str(path)!r} is a file; pass a directory with --out")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(
            f"output path {str(path)!r} lies below {str(blocker)!r}, which is a file; pass a directory with --out"
        )
    if path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir()) and not overwrite:
        raise ValueError(
            f"output directory {str(path)!r} is not empty; pass --overwrite to replace its results "
            "or choose another --out"
        )
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    """A run's ``rounds.csv`` or ``clients.csv``, with a ``round`` column; a missing, empty or damaged
    file is a ``ValueError`` (``FileNotFoundError`` when missing) naming it.

    Parameters
    ----------
    path:
        The table's file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing")
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise ValueError(f"{str(path)!r} is damaged (not a readable CSV table: {str(err).splitlines()[0]})") from None
    if "round" not in table.columns or table.empty or not pd.api.types.is_integer_dtype(table["round"]):
        raise ValueError(f"{str(path)!r} is damaged (it has no rows with an integer 'round' column)")
    return table


def check_resumable_tables(run_dir: str | Path, last_round: int) -> None:
    """Refuse to resume ``run_dir`` after ``last_round`` when its ``rounds.csv`` does not hold every
    round ``0 .. last_round`` (deleted, damaged, cut short), or its ``clients.csv`` is damaged: the
    checkpoint holds no table rows, so resuming would silently lose those rounds. ``ValueError``
    naming the file and what to do.

    Parameters
    ----------
    run_dir:
        The run directory.
    last_round:
        The checkpoint's round.
    """
    run_dir = Path(run_dir)
    advice = (
        f"restore it from a backup, or start the run over with `fedmm simulate --config "
        f"{run_dir / CONFIG_FILE} --out {run_dir} --overwrite` (the checkpoint holds no table rows to "
        "rebuild it from)"
    )
    try:
        rounds = set(read_table(run_dir / ROUNDS_FILE)["round"])
        if (run_dir / CLIENTS_FILE).is_file():
            read_table(run_dir / CLIENTS_FILE)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(
            f"cannot resume {str(run_dir)!r}: {err}, so rounds 0-{last_round} would be lost; {advice}"
        ) from None
    missing = sorted(set(range(last_round + 1)) - rounds)
    if missing:
        raise ValueError(
            f"cannot resume {str(run_dir)!r}: {str(run_dir / ROUNDS_FILE)!r} lacks round {missing[0]}"
            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''} of the checkpoint's "
            f"0-{last_round}, which would be lost; {advice}"
        )


class ResultsWriter:
    """Writes a run's results into ``out_dir`` as the run goes.

    Parameters
    ----------
    out_dir:
        The run directory (created here; it must have passed :func:`prepare_out_dir`).
    config:
        The resolved config, written as ``config.toml`` right away.
    resume_after:
        ``None``: a new run (every file of :data:`RUN_FILES` an earlier run left, its checkpoint
        included, is removed; other files stay). A round number: continue the tables
        already in ``out_dir`` after that round (the checkpoint's; rows of later rounds, written
        before the run stopped, are dropped).
    """

    def __init__(self, out_dir: Path, config: RunConfig, *, resume_after: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rounds: list[dict[str, Any]] = []
        self.clients: list[dict[str, Any]] = []
        if resume_after is None:
            for name in RUN_FILES:
                (self.out_dir / name).unlink(missing_ok=True)
        else:
            for name, rows in ((ROUNDS_FILE, self.rounds), (CLIENTS_FILE, self.clients)):
                if (self.out_dir / name).is_file():
                    table = pd.read_csv(self.out_dir / name).to_dict("records")
                    rows.extend(r for r in table if int(r["round"]) <= resume_after)
            (self.out_dir / SUMMARY_FILE).unlink(missing_ok=True)
        atomic_write(self.out_dir / CONFIG_FILE, config.to_toml())
        self.config = config.to_flat()
        # experiment trackers switched on in the config (TensorBoard, MLflow): none by default
        from fedmm.tracking import open_trackers

        self.trackers = open_trackers(self.out_dir, config, resume_after=resume_after)

    def add_round(self, row: Mapping[str, Any], client_rows: Sequence[Mapping[str, Any]] = ()) -> None:
        self.rounds.append(dict(row))
        self.clients.extend(dict(r) for r in client_rows)
        atomic_write(self.out_dir / ROUNDS_FILE, pd.DataFrame(self.rounds).to_csv(index=False))
        if self.clients:
            atomic_write(self.out_dir / CLIENTS_FILE, pd.DataFrame(self.clients).to_csv(index=False))
        for tracker in self.trackers:
            tracker.log_round(row, client_rows)

    def close(self, status: str) -> None:
        """End the trackers' runs of a run that stopped without :meth:`finish` (``failed``,
        ``interrupted``)."""
        for tracker in self.trackers:
            tracker.close(status)
        self.trackers = []

    def finish(self, model_state: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
        """Write the final model (safetensors), ``summary.json`` and the accuracy plot."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
        atomic_write(self.out_dir / MODEL_FILE, lambda tmp: save_file(state, str(tmp)))
        if not (self.out_dir / CLIENTS_FILE).exists():
            atomic_write(self.out_dir / CLIENTS_FILE, "round,node-id,partition-id,status\n")
        plots = [plot_accuracy(pd.DataFrame(self.rounds), self.out_dir / PLOT_FILE, self.config)]
        if self.config.get("selection") != "all":
            from fedmm.plots import plot_selection

            plots.append(plot_selection(pd.DataFrame(self.clients), self.out_dir / SELECTION_PLOT_FILE, self.config))
        write_summary(self.out_dir, summary)
        for tracker in self.trackers:
            tracker.finish(summary, [p for p in plots if p is not None], self.out_dir)
        self.trackers = []


def write_interrupted(out_dir: Path, rounds: Sequence[Mapping[str, Any]], reason: str) -> None:
    """``summary.json`` of a run that stopped before its last round (``fedmm simulate --resume``
    continues it from its checkpoint)."""
    summary = (
        summarize(rounds, {"status": "interrupted", "reason": reason})
        if rounds
        else {"status": "interrupted", "reason": reason}
    )
    write_summary(out_dir, summary)


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> None:
    """Write ``summary`` as ``summary.json`` of the run in ``out_dir`` (completed, interrupted, or
    failed: then its tables and checkpoint are already written).

    Parameters
    ----------
    out_dir:
        The run directory.
    summary:
        What :func:`summarize` returned, with the ``status`` fields.
    """
    atomic_write(Path(out_dir) / SUMMARY_FILE, json.dumps(dict(summary), indent=2, default=float) + "\n")


def summarize(rounds: Sequence[Mapping[str, Any]], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Final and best test accuracy (and the round of the best), the round chosen on validation
    and the test numbers at it (:mod:`fedmm.model_selection`), the training-loss stability
    (:func:`loss_stability`, :func:`divergence`, :func:`fedmm.collapse.collapse`) plus ``extra``.
    ``best-test/acc`` and
    ``best-round`` are the test split's best round, listed under ``oracle-keys``: never for selection.

    Parameters
    ----------
    rounds:
        The run's rows of ``rounds.csv`` (round 0, the initial model, first).
    extra:
        Status fields (``status``, ``reason``, ``first-client-error`` of a failed run, ...); a
        failed run whose first client error is a non-finite value counts as diverged.
    """
    df = pd.DataFrame(rounds)
    last = df.iloc[-1]
    best = int(df["test/acc"].idxmax())
    out: dict[str, Any] = {
        "rounds": int(last["round"]),
        "final": {k: float(v) for k, v in last.items() if k.startswith("test/")},
        "best-test/acc": float(df.loc[best, "test/acc"]),
        "best-round": int(df.loc[best, "round"]),
        "total-seconds": float(df["seconds"].sum()),
        "total-bytes-up": float(df["bytes-up"].sum()),
        "total-bytes-down": float(df["bytes-down"].sum()),
        **loss_stability(rounds),
        **last_rounds(rounds),
        **best_on_validation(rounds),
        **last_rounds_val(rounds, LAST_ROUNDS),
        "diverged": divergence(rounds, (extra or {}).get("first-client-error")) or False,
        "collapsed": collapse(rounds),
    }
    if "best-val-round" in out:
        out["oracle-keys"] = list(ORACLE_KEYS)  # the test split's best round: reported, never for selection
    out.update(extra or {})
    return out


#: How many of the last rounds :func:`last_rounds` summarises.
LAST_ROUNDS = 5


def last_rounds(rounds: Sequence[Mapping[str, Any]], count: int = LAST_ROUNDS) -> dict[str, float]:
    """``last-rounds`` (how many rounds were averaged), ``last-rounds-test/acc`` and
    ``last-rounds-test/acc-std``: mean and standard deviation (population, ``ddof=0``) of the
    multimodal test accuracy over the last ``count`` training rounds. The final round alone swings
    from round to round on a small test set or a non-IID federation; this is its steadier companion.

    Parameters
    ----------
    rounds:
        The run's rows of ``rounds.csv``; round 0 (the initial model) is never counted, so a run
        with fewer than ``count`` rounds averages the rounds it has (NaN when it has none).
    count:
        Rounds to average, at least 1.
    """
    if count < 1:
        raise ValueError(f"last_rounds: count must be at least 1, got {count}")
    accs = [float(r["test/acc"]) for r in rounds if int(r["round"]) >= 1][-count:]
    if not accs:
        return {"last-rounds": 0, "last-rounds-test/acc": math.nan, "last-rounds-test/acc-std": math.nan}
    mean = sum(accs) / len(accs)
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))
    return {"last-rounds": len(accs), "last-rounds-test/acc": mean, "last-rounds-test/acc-std": std}


#: A run has diverged once a round's training loss exceeds this many times its first round's.
DIVERGENCE_GROWTH = 10.0
#: How a vetted reply names a non-finite value (:func:`fedmm.records.vet_arrays` and the metrics check).
_NON_FINITE = ("non-finite", "not a finite number")


def loss_stability(rounds: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``loss-round-1`` (the first training round's mean training loss), ``loss-max`` (the largest
    round training loss) and ``loss-growth`` (their ratio); NaN when no round has a training loss.

    Parameters
    ----------
    rounds:
        The run's rows of ``rounds.csv``; rows without a finite ``train/loss`` (round 0, a round
        without usable replies) are skipped.
    """
    losses = [
        float(r["train/loss"])
        for r in rounds
        if int(r["round"]) >= 1 and math.isfinite(float(r.get("train/loss", math.nan)))
    ]
    if not losses:
        return {"loss-round-1": math.nan, "loss-max": math.nan, "loss-growth": math.nan}
    return {"loss-round-1": losses[0], "loss-max": max(losses), "loss-growth": max(losses) / losses[0]}


def divergence(rounds: Sequence[Mapping[str, Any]], client_error: str | None = None) -> dict[str, Any] | None:
    """The first round at which training diverged, with why; ``None`` when it did not.

    A round diverged when its central test loss is not finite, or its training loss exceeds
    :data:`DIVERGENCE_GROWTH` times the first training round's; a run stopped because its clients
    sent non-finite values (``client_error``, the summary's ``first-client-error``) diverged at the
    first round without a training loss.

    Parameters
    ----------
    rounds:
        The run's rows of ``rounds.csv``, round 0 first.
    client_error:
        The first client error of a failed run, if any.
    """
    first = None
    for r in rounds:
        server_round, loss = int(r["round"]), float(r.get("train/loss", math.nan))
        if server_round < 1:
            continue
        if not math.isfinite(float(r.get("test/loss", 0.0))):
            return {"round": server_round, "reason": "the global model's test loss is not finite"}
        if math.isfinite(loss):
            first = loss if first is None else first
            if loss > DIVERGENCE_GROWTH * first:
                return {
                    "round": server_round,
                    "reason": f"training loss {loss:.4g} is over {DIVERGENCE_GROWTH:g} times round 1's ({first:.4g})",
                }
        elif client_error and any(text in client_error for text in _NON_FINITE):
            return {"round": server_round, "reason": f"clients sent non-finite values ({client_error})"}
    return None


def plot_accuracy(rounds: pd.DataFrame, path: Path, config: Mapping[str, Any] | None = None) -> Path:
    """The run's figure (:func:`fedmm.plots.plot_run`): test accuracy (multimodal, each modality
    alone, FedCMI's fill), losses and imbalance per round, titled with the run's config."""
    from fedmm.plots import plot_run

    return plot_run(rounds, path, config or {})
