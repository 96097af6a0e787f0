"""The simulated clock's arithmetic: a client's round time and the round-close rules (numpy only).

Nothing here sleeps or reads a wall clock: every time is computed from a device profile
(:mod:`fedmm.devices`), the bytes a client receives and sends, and the work it trains.

A client's time in a round (the model of FedScale's simulator, Lai et al., ICML 2022,
``fedscale/cloud/internal/client_metadata.py``, split per modality for fedmm)::

    download = bytes_down * 8 / 1000 / down_kbps              (the groups it receives)
    train    = samples * compute_ms_per_sample * share / 1000  (share: the trained encoders' cost)
    upload   = bytes_up * 8 / 1000 / up_kbps                   (the groups it trained)

``share`` is the trained modalities' part of the full model's per-sample cost
(:func:`fedmm.models.cost.modality_costs`): 1 for the full multimodal model, less for a client that
trains fewer encoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from fedmm.params import Options

#: Round-close rules (config key ``round-close``).
CLOSE_ALL = "all"
CLOSE_DEADLINE = "deadline"
CLOSE_OVERCOMMIT = "overcommit"
CloseRule = Annotated[str, Options(CLOSE_ALL, CLOSE_DEADLINE, CLOSE_OVERCOMMIT)]

#: Outcomes of :func:`close_round` (the ``status`` a ``clients.csv`` row gets).
OK, LATE, DROPPED = "ok", "late", "dropped"


@dataclass(frozen=True)
class ClientTimes:
    """One client's simulated seconds in a round.

    Parameters
    ----------
    download, train, upload:
        Seconds of each part (non-negative).
    """

    download: float
    train: float
    upload: float

    @property
    def total(self) -> float:
        """download + train + upload."""
        return self.download + self.train + self.upload


def transfer_seconds(num_bytes: float | np.ndarray, kbps: float | np.ndarray) -> float | np.ndarray:
    """Seconds to move ``num_bytes`` at ``kbps`` kbit/s (1 kbit = 1000 bits).

    Parameters
    ----------
    num_bytes:
        Bytes sent (non-negative).
    kbps:
        Bandwidth in kbit/s (positive).
    """
    return np.asarray(num_bytes, dtype=np.float64) * 8.0 / 1000.0 / np.asarray(kbps, dtype=np.float64)


def train_seconds(
    samples: float | np.ndarray, compute_ms_per_sample: float | np.ndarray, share: float | np.ndarray
) -> float | np.ndarray:
    """Seconds of local training: ``samples`` (examples x epochs) at ``compute_ms_per_sample`` of
    the full model, scaled by the trained modalities' ``share`` of the full model's cost.

    Parameters
    ----------
    samples:
        Training samples processed this round (examples x local epochs).
    compute_ms_per_sample:
        The device's milliseconds per training sample of the full multimodal model.
    share:
        Cost of what it trains relative to the full model (in (0, 1]).
    """
    return (
        np.asarray(samples, dtype=np.float64)
        * np.asarray(compute_ms_per_sample, dtype=np.float64)
        * np.asarray(share, dtype=np.float64)
        / 1000.0
    )


def client_time(
    *,
    bytes_down: float,
    bytes_up: float,
    samples: float,
    share: float,
    compute_ms_per_sample: float,
    down_kbps: float,
    up_kbps: float,
) -> ClientTimes:
    """One client's simulated round time (module docstring).

    Parameters
    ----------
    bytes_down:
        Bytes of the parameter groups it receives.
    bytes_up:
        Bytes of the parameter groups it trained (and uploads).
    samples:
        Examples x local epochs it trains on.
    share:
        Cost share of the modalities it trains (:func:`fedmm.models.cost.modality_costs`).
    compute_ms_per_sample, down_kbps, up_kbps:
        Its device profile (:class:`fedmm.devices.Profiles`).
    """
    return ClientTimes(
        float(transfer_seconds(bytes_down, down_kbps)),
        float(train_seconds(samples, compute_ms_per_sample, share)),
        float(transfer_seconds(bytes_up, up_kbps)),
    )


@dataclass(frozen=True)
class RoundClose:
    """Who of a round's selected clients counts, and how long the round took.

    Parameters
    ----------
    status:
        Per selected client (in the order given): ``ok`` (aggregated), ``late`` (finished after the
        deadline, or after the first K under over-commitment) or ``dropped`` (went offline before
        it finished).
    seconds:
        Simulated duration of the round (the server's wait).
    """

    status: tuple[str, ...]
    seconds: float


def close_round(
    times: Sequence[float] | np.ndarray,
    offline_at: Sequence[float] | np.ndarray,
    rule: str,
    *,
    keep: int | None = None,
    deadline: float | None = None,
) -> RoundClose:
    """Apply a round-close rule to the selected clients' times.

    Parameters
    ----------
    times:
        Each selected client's simulated time (seconds from the round's start).
    offline_at:
        Seconds from the round's start at which each goes offline (``inf``: stays online). A
        client with ``offline_at < times`` never finishes.
    rule:
        ``all``: wait for every client; the round lasts until the last one finished or went
        offline. ``deadline``: the clients that finish within ``deadline`` count, the others are
        ``late``; the round lasts ``deadline`` when someone did not report in time (late or
        dropped), else until the last report. ``overcommit``: the first ``keep`` clients to finish
        count (ties by the order given), the rest are ``late``; the round lasts until the
        ``keep``-th finished, or, when fewer than ``keep`` finish, as under ``all``.
    keep:
        Clients kept under ``overcommit`` (the round's budget K).
    deadline:
        Seconds of the ``deadline`` rule.

    Returns
    -------
    RoundClose
        A client is ``dropped`` when it goes offline before it finished and before the round closed
        (one that is still running at the close is ``late``).
    """
    t = np.asarray(times, dtype=np.float64)
    off = np.asarray(offline_at, dtype=np.float64)
    if t.shape != off.shape or t.ndim != 1:
        raise ValueError("times and offline_at must be 1-D arrays of the same length")
    if t.size == 0:
        return RoundClose((), 0.0)
    finishes = off >= t  # stays online until it finished
    if rule == CLOSE_ALL:
        close = np.inf
        ok = finishes
    elif rule == CLOSE_DEADLINE:
        if deadline is None or not deadline > 0:
            raise ValueError(f"the deadline rule needs a positive deadline, got {deadline!r}")
        close = float(deadline)
        ok = finishes & (t <= close)
    elif rule == CLOSE_OVERCOMMIT:
        if keep is None or keep < 1:
            raise ValueError(f"the overcommit rule needs keep >= 1, got {keep!r}")
        done = np.flatnonzero(finishes)
        order = done[np.argsort(t[done], kind="stable")]
        ok = np.zeros_like(finishes)
        ok[order[:keep]] = True
        close = float(t[order[keep - 1]]) if order.size >= keep else np.inf
    else:
        raise ValueError(f"round-close {Options(CLOSE_ALL, CLOSE_DEADLINE, CLOSE_OVERCOMMIT).violation(rule)}")
    dropped = ~finishes & (off < close)
    status = np.where(ok, OK, np.where(dropped, DROPPED, LATE))
    if np.isfinite(close) and (rule == CLOSE_DEADLINE and not ok.all() or rule == CLOSE_OVERCOMMIT):
        seconds = close
    else:  # wait for everyone who finishes and notice everyone who goes offline
        ends = np.concatenate([t[ok], off[dropped]])
        seconds = float(ends.max()) if ends.size else 0.0
    return RoundClose(tuple(str(s) for s in status), float(seconds))
