"""The local objective interface: the hooks the local training loop calls.

An objective decides how a client trains in one round. The loop in :mod:`fedmm.training` owns the
device, the optimizer and the epochs; it calls, in order:

1. ``begin_round(model, data, ctx)`` once, before local training (temperatures, prototypes, ...);
2. per epoch, ``batches(model, data, epoch, ...)`` to get the epoch's mini-batches (Data Remixing
   overrides this to build unimodal batches);
3. per batch, ``train_step(model, batch, optimizer)``; the default is ``loss`` -> backward ->
   ``adjust_gradients`` -> ``optimizer.step()`` (Sustained Boosting overrides it for alternating
   unimodal steps);
4. ``end_round(model, data)`` once, returning the facts the server asked for (numbers or lists).

Parameters are declared as dataclass fields on a ``Params`` class nested in each objective and
validated by :func:`fedmm.objectives.registry.build_objective`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fedmm.data.base import LABEL_KEY, TensorDict, num_examples


@dataclass
class RoundContext:
    """What a client knows about this round when it trains.

    Parameters
    ----------
    server_round:
        1-based round number.
    num_rounds:
        Total number of server rounds of the run.
    modalities:
        Modalities the client trains this round (a subset of those it holds, chosen by the server).
    global_model:
        A frozen copy of the received global model (teacher for distillation, proximal anchor).
    extras:
        Strategy-specific values sent by the server (global prototypes, dominant modality,
        active classifier slots, ...), already decoded into tensors or numbers.
    device:
        The device the model lives on.
    """

    server_round: int
    num_rounds: int
    modalities: list[str]
    global_model: nn.Module | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class Objective:
    """Plain joint cross-entropy on the fused logits; the base of every other objective."""

    name: ClassVar[str] = "ce"
    #: Whether the model needs per-modality heads (``heads.<m>``) for this objective.
    needs_heads: ClassVar[bool] = False

    @dataclass
    class Params:
        """``ce`` takes no parameters."""

    def __init__(self, params: Objective.Params | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.ctx: RoundContext | None = None

    # -- model ---------------------------------------------------------------------------------
    def extend_model(self, model: nn.Module) -> None:
        """Add objective-owned modules to a freshly built model (same shape on server and clients).

        New modules must live under ``heads.<m>.``/``projectors.<m>.`` (per modality) or under
        ``model.fusion`` (shared) so that aggregation can place them in a group.
        """

    def predict(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        """Inference logits for ``batch``; a batch holding one modality gives that modality's
        accuracy. The default is the fusion head with zero-filled absent slots."""
        return model(batch)

    # -- server side (plain numbers; runs in the ServerApp) ---------------------------------------
    def server_extras(self, server_round: int) -> dict[str, Any]:
        """Values the server sends every client this round (scalars, lists or numpy arrays)."""
        return {}

    def server_observe(self, server_round: int, facts: list[tuple[int, dict[str, Any]]]) -> None:
        """Receive ``(num_examples, end_round facts)`` of every client that trained this round."""

    # -- round hooks -------------------------------------------------------------------------
    def begin_round(self, model: nn.Module, data: TensorDict, ctx: RoundContext) -> None:
        """Called once before local training; the default only remembers ``ctx``."""
        self.ctx = ctx

    def end_round(self, model: nn.Module, data: TensorDict) -> dict[str, float | list[float]]:
        """Facts reported to the server after local training (none by default)."""
        return {}

    # -- epoch and batch hooks ---------------------------------------------------------------
    def batches(
        self, model: nn.Module, data: TensorDict, epoch: int, batch_size: int, generator: torch.Generator
    ) -> Iterator[TensorDict]:
        """Shuffled mini-batches over ``data``; the last short batch is kept unless it has 1 row."""
        n = num_examples(data)
        order = torch.randperm(n, generator=generator).to(data[LABEL_KEY].device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if idx.numel() < 2 and n >= 2:
                continue  # a batch of one breaks batch-norm statistics
            yield {k: v.index_select(0, idx) for k, v in data.items()}

    def loss(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        """The batch loss; cross-entropy of the fused logits by default."""
        return nn.functional.cross_entropy(model(batch), batch[LABEL_KEY])

    def adjust_gradients(self, model: nn.Module, batch: TensorDict) -> None:
        """Change gradients after ``backward`` and before the optimizer step (OGM-GE)."""

    def train_step(self, model: nn.Module, batch: TensorDict, optimizer: torch.optim.Optimizer) -> float:
        """One optimisation step on ``batch``; returns the loss as a float."""
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(model, batch)
        loss.backward()
        self.adjust_gradients(model, batch)
        optimizer.step()
        return float(loss.detach())
