"""The strategy's simulated clock: each selected client's time from its device profile, the
round-close rule, who is online, and the cumulative clock (no torch, no flwr; it never sleeps).

The round's times are decided before anything is sent, from the plan (the groups a client
receives, the modalities it trains, its examples x epochs), as FedScale's simulator does: only the
clients the close rule keeps get a training message; the others are recorded as ``late`` or
``dropped`` in ``clients.csv`` (their work would be thrown away, so it is not simulated).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmm.clock import (
    CLOSE_ALL,
    CLOSE_OVERCOMMIT,
    ClientTimes,
    RoundClose,
    close_round,
    train_seconds,
    transfer_seconds,
)
from fedmm.devices import Profiles

#: ``clients.csv`` columns of a run with device profiles (simulated seconds of each part).
SIM_COLUMNS = ("sim-download", "sim-train", "sim-upload")


@dataclass
class ClockSettings:
    """How rounds close.

    Parameters
    ----------
    rule:
        ``all``, ``deadline`` or ``overcommit`` (:func:`fedmm.clock.close_round`).
    deadline:
        Seconds of the ``deadline`` rule.
    overcommit:
        ``overcommit``: select ``ceil(K (1 + overcommit))`` clients, keep the first K to finish.
    """

    rule: str = CLOSE_ALL
    deadline: float = 600.0
    overcommit: float = 0.3


class SimClock:
    """A run's simulated clock over its clients' device profiles.

    Parameters
    ----------
    profiles:
        Every client's device (by client id).
    group_bytes:
        Bytes of each modality's parameter groups, and of the shared group (key ``None``).
    costs:
        Each modality's share of the full model's per-example training cost, and the shared
        head's (key ``None``); they sum to 1 (:func:`fedmm.models.cost.modality_costs`).
    settings:
        The round-close rule.
    local_epochs:
        Local epochs of a training round (a client trains examples x epochs samples).
    """

    def __init__(
        self,
        profiles: Profiles,
        group_bytes: Mapping[str | None, int],
        costs: Mapping[str | None, float],
        settings: ClockSettings | None = None,
        local_epochs: int = 1,
    ) -> None:
        self.profiles, self.settings, self.local_epochs = profiles, settings or ClockSettings(), local_epochs
        self.group_bytes, self.costs = dict(group_bytes), dict(costs)
        self._per_set: dict[tuple[str, ...], tuple[int, float]] = {}  # modalities -> (bytes, share)
        #: Simulated seconds since the run started.
        self.seconds = 0.0

    # -- arithmetic ------------------------------------------------------------------------------
    def bytes_of(self, modalities: Sequence[str]) -> int:
        """Bytes of the groups of ``modalities`` plus the shared group."""
        return self.group_bytes.get(None, 0) + sum(self.group_bytes.get(m, 0) for m in modalities)

    def share_of(self, modalities: Sequence[str]) -> float:
        """Cost of training ``modalities`` (and the shared head) relative to the full model."""
        return self.costs.get(None, 0.0) + sum(self.costs.get(m, 0.0) for m in modalities)

    def times(
        self,
        client_ids: Sequence[int],
        received: Sequence[Sequence[str]],
        trained: Sequence[Sequence[str]],
        samples: Sequence[float],
    ) -> list[ClientTimes]:
        """Each client's download (the groups it ``received``), training (``samples`` = examples x
        epochs on the ``trained`` modalities) and upload (the groups it trained) seconds."""
        ids = np.asarray(client_ids, dtype=np.int64)
        p = self.profiles
        got, sent = [self._of(tuple(r)) for r in received], [self._of(tuple(t)) for t in trained]
        down = transfer_seconds(np.array([b for b, _ in got], dtype=np.float64), p.down_kbps[ids])
        up = transfer_seconds(np.array([b for b, _ in sent], dtype=np.float64), p.up_kbps[ids])
        work = train_seconds(
            np.asarray(samples, dtype=np.float64),
            p.compute_ms_per_sample[ids],
            np.array([c for _, c in sent], dtype=np.float64),
        )
        return list(map(ClientTimes, down.tolist(), work.tolist(), up.tolist()))

    def _of(self, modalities: tuple[str, ...]) -> tuple[int, float]:
        """(bytes, cost share) of a modality set, cached (a federation has few distinct sets)."""
        if (hit := self._per_set.get(modalities)) is None:
            hit = self._per_set[modalities] = (self.bytes_of(modalities), self.share_of(modalities))
        return hit

    def budget(self, clients_per_round: int) -> int:
        """Clients to select: ``ceil(K (1 + overcommit))`` under ``overcommit``, else K."""
        if self.settings.rule == CLOSE_OVERCOMMIT:
            return int(math.ceil(clients_per_round * (1.0 + self.settings.overcommit) - 1e-9))
        return clients_per_round

    def online(self, client_ids: Sequence[int]) -> np.ndarray:
        """Whether each client is online now."""
        return self.profiles.online(np.asarray(client_ids, dtype=np.int64), self.seconds)

    def close(self, client_ids: Sequence[int], times: Sequence[ClientTimes], keep: int) -> RoundClose:
        """Apply the close rule to a round that starts now (``keep``: the budget K)."""
        left = self.profiles.online_for(np.asarray(client_ids, dtype=np.int64), self.seconds)
        return close_round(
            [t.total for t in times], left, self.settings.rule, keep=keep, deadline=self.settings.deadline
        )

    def wait_for_clients(self) -> float:
        """Move the clock to the next time some client is online (when none is now); the wait."""
        later = self.profiles.next_online(self.seconds)
        waited, self.seconds = later - self.seconds, later
        return waited

    def advance(self, seconds: float) -> None:
        """Add a round's simulated ``seconds``."""
        self.seconds += float(seconds)

    # -- checkpoint ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The clock and the digest of the profiles (a resume must rebuild the same devices)."""
        return {"clock.seconds": float(self.seconds), "clock.profiles-sha256": self.profiles.digest()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; a run whose profiles differ from the checkpoint's is refused."""
        if "clock.seconds" not in state:
            raise ValueError(
                "the checkpoint has no simulated clock: it was written with devices = 'off'; "
                "resume with the same config"
            )
        digest = str(state.get("clock.profiles-sha256", ""))
        if digest != self.profiles.digest():
            raise ValueError(
                f"the device profiles ({self.profiles.source}) differ from the checkpoint's: the "
                "trace file or devices.* changed since the run started; restore them to resume"
            )
        self.seconds = float(state["clock.seconds"])


def time_columns(times: ClientTimes) -> dict[str, float]:
    """The ``clients.csv`` columns of one client's times (:data:`SIM_COLUMNS`)."""
    return dict(zip(SIM_COLUMNS, (times.download, times.train, times.upload)))
