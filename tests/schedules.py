"""Which local epochs of a run an objective's schedule switches on (the schedule tests' one loop)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fedmm.data.base import TensorDict
from fedmm.objectives import Objective, RoundContext


def scheduled_epochs(
    obj: Objective,
    model: nn.Module,
    data: TensorDict,
    num_rounds: int,
    local_epochs: int,
    active: Callable[[int], bool],
) -> list[tuple[int, int]]:
    """``(round, local epoch)`` of every epoch of a ``num_rounds`` x ``local_epochs`` run for which
    ``active(epoch)`` holds, called after the objective began that round and epoch."""
    out = []
    for r in range(1, num_rounds + 1):
        obj.begin_round(
            model,
            data,
            RoundContext(server_round=r, num_rounds=num_rounds, local_epochs=local_epochs, modalities=["a", "v"]),
        )
        for e in range(local_epochs):
            obj.begin_epoch(e)
            if active(e):
                out.append((r, e))
    return out
