"""Time-to-accuracy and participation by modality combination, from a run's result files.

The selection benchmark (``fedmm bench selection``, :mod:`fedmm.bench`) compares policies by the
simulated time and the uploaded bytes they need to reach a target accuracy, as Oort (Lai et al.,
OSDI 2021) and FedScale (Lai et al., ICML 2022) do, and by who trains: a speed-aware policy can
starve the multimodal clients (slower: more encoders to train, more bytes to send). Everything here
reads ``rounds.csv`` / ``clients.csv`` frames (pandas; no torch, no flwr).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

#: ``rounds.csv``: the cumulative simulated clock at the end of the round (seconds), when the run
#: has device profiles (``devices`` in the run config).
CLOCK_COLUMN = "sim-clock"
#: Accuracy columns, in order of preference: the validation split when the run has one (nothing is
#: selected on the test split), else the test split.
ACCURACY_COLUMNS = ("val/acc", "test/acc")
#: ``clients.csv`` outcomes that count as trained and aggregated.
TRAINED = "ok"


def accuracy_column(curves: pd.DataFrame) -> str:
    """The accuracy column the target and the time to it are read from (:data:`ACCURACY_COLUMNS`)."""
    for c in ACCURACY_COLUMNS:
        if c in curves and curves[c].notna().any():
            return c
    raise ValueError(f"the runs report no accuracy column ({' or '.join(ACCURACY_COLUMNS)})")


def time_to_target(run: pd.DataFrame, target: float, column: str) -> dict[str, float]:
    """The first round of one run (its ``rounds.csv`` rows, ``mb-up`` = cumulative uploaded MB)
    whose ``column`` reaches ``target``: its round, simulated clock (minutes; NaN without a clock)
    and cumulative uploaded MB; all NaN if the run never reaches it.

    Parameters
    ----------
    run:
        One run's per-round rows, with ``round``, ``column``, ``mb-up`` and maybe :data:`CLOCK_COLUMN`.
    target:
        The accuracy to reach.
    column:
        The accuracy column.
    """
    rows = run[(run["round"] > 0) & (run[column] >= target)].sort_values("round")
    if rows.empty:
        return {"round": math.nan, "minutes": math.nan, "mb": math.nan}
    first = rows.iloc[0]
    minutes = float(first[CLOCK_COLUMN]) / 60.0 if CLOCK_COLUMN in run else math.nan
    return {"round": float(first["round"]), "minutes": minutes, "mb": float(first["mb-up"])}


def participation(clients: pd.DataFrame) -> pd.DataFrame:
    """Per training round and held-modality combination (``modalities-held``, e.g. ``m0+m1``): how
    many clients were selected (every row of the round) and how many trained and were aggregated
    (status ``ok``); the update pass (round 0) is left out.

    Parameters
    ----------
    clients:
        A run's ``clients.csv`` (``round``, ``modalities-held``, ``status``).
    """
    rows = clients[clients["round"] > 0]
    if rows.empty:
        return pd.DataFrame(columns=["round", "modalities-held", "selected", "trained"])
    grouped = rows.assign(trained=rows["status"] == TRAINED).groupby(["round", "modalities-held"])
    out = grouped.agg(selected=("status", "size"), trained=("trained", "sum")).reset_index()
    return out.astype({"selected": int, "trained": int})


def multimodal_share(part: pd.DataFrame) -> dict[str, float]:
    """The share of the selected and of the trained clients that hold more than one modality, over
    all rounds of a :func:`participation` table."""
    multi = part["modalities-held"].astype(str).str.contains(r"\+")
    total_sel, total_tr = part["selected"].sum(), part["trained"].sum()
    return {
        "selected": float(part.loc[multi, "selected"].sum() / total_sel) if total_sel else math.nan,
        "trained": float(part.loc[multi, "trained"].sum() / total_tr) if total_tr else math.nan,
    }


def has_clock(curves: pd.DataFrame) -> bool:
    """Whether the runs have a simulated clock (:data:`CLOCK_COLUMN` with values)."""
    return CLOCK_COLUMN in curves and curves[CLOCK_COLUMN].notna().any()


def plot_time_to_accuracy(
    curves: pd.DataFrame, policies: Sequence[str], column: str, ax_rounds, ax_mb, ax_time=None
) -> None:
    """Mean ``column`` per policy against rounds, uploaded MB and (with a clock) simulated minutes,
    on the given matplotlib axes; the time axis averages the seeds' clocks per round."""
    clock = has_clock(curves)
    for p in policies:
        cols = [column, "mb-up", *([CLOCK_COLUMN] if clock else [])]
        mean = curves[curves["policy"] == p].groupby("round")[cols].mean()
        ax_rounds.plot(mean.index, mean[column], label=p)
        ax_mb.plot(mean["mb-up"], mean[column], label=p)
        if clock and ax_time is not None:
            ax_time.plot(mean[CLOCK_COLUMN] / 60.0, mean[column], label=p)
    ax_rounds.set_xlabel("round")
    ax_mb.set_xlabel("uploaded MB (cumulative)")
    if ax_time is not None:
        ax_time.set_xlabel("simulated minutes" if clock else "simulated minutes (no clock in these runs)")
    ax_rounds.set_ylabel(f"{column} (mean over seeds)")


__all__ = [
    "ACCURACY_COLUMNS",
    "CLOCK_COLUMN",
    "accuracy_column",
    "has_clock",
    "multimodal_share",
    "participation",
    "plot_time_to_accuracy",
    "time_to_target",
]
