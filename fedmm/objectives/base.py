"""The local objective interface: the hooks the local training loop calls.

An objective decides how a client trains in one round. The loop in :mod:`fedmm.training` owns the
device, the optimizer and the epochs; it calls, in order:

1. ``begin_round(model, data, ctx)`` once, before local training (temperatures, prototypes, ...);
2. per epoch, ``begin_epoch(epoch)`` (the default remembers it as ``self.epoch``: schedules that act
   per local epoch read :meth:`Objective.progress`), then ``batches(model, data, epoch, ...)`` to
   get the epoch's mini-batches (Data Remixing overrides this to build unimodal batches);
3. per batch, ``train_step(model, batch, optimizer)``; the default is ``loss`` -> backward ->
   ``adjust_gradients`` -> ``optimizer.step()`` at the round's :class:`Precision` (Sustained
   Boosting overrides it for alternating unimodal steps);
4. ``end_round(model, data)`` once, returning the facts the server asked for (numbers or lists).

An objective whose server half needs facts of the *aggregated* model (``observes_global_model``:
CMSFed's global prototypes) also has ``global_model_facts(model, data, modalities)``: after every
round's aggregation the server sends the new global model to that round's clients, which answer
with these facts on their own data, without training.

Parameters are declared as dataclass fields on a ``Params`` class nested in each objective (a
:class:`fedmm.params.Checked` dataclass: constraints in the fields' ``Annotated`` annotations, help
in its numpy docstring) and validated by :func:`fedmm.params.check_value`, through
:func:`fedmm.objectives.registry.build_objective` or when a ``Params`` is built directly.

Why one module of this size: the Objective hooks are one contract: every hook with its
documentation in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fedmm.data.base import LABEL_KEY, TensorDict, num_examples
from fedmm.params import Checked

#: Precisions of local training: ``fp32`` (plain float32) and the autocast mixed precisions.
PRECISIONS = ("fp32", "bf16", "fp16")
_HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """The numeric precision of local training steps; ``fp32`` is a no-op.

    ``bf16`` and ``fp16`` run the forward pass and the loss under :func:`torch.autocast`
    (convolutions and matrix products in the half type, losses and reductions in float32); the
    weights, the gradients and the optimizer stay float32. ``fp16`` also scales the loss with a
    :class:`torch.amp.GradScaler` so that small gradients do not underflow: :meth:`backward`
    unscales the gradients before it returns, so ``adjust_gradients`` (OGM-GE) and optimizer
    pre-hooks (FedProx) see the true gradients, and :meth:`step` skips a step whose gradients
    overflowed and adapts the scale. Evaluation never uses this class (it runs in float32).

    Parameters
    ----------
    name:
        ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    device:
        The device the model trains on; its type (``cpu``, ``cuda``) selects the autocast
        backend and the gradient scaler's.

    Raises
    ------
    ValueError
        An unknown ``name``, or a half precision on a device type this torch has no autocast for.
    """

    def __init__(self, name: str = "fp32", device: torch.device | str = "cpu") -> None:
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {name!r}")
        self.name = name
        self.device = torch.device(device)
        if name != "fp32" and not torch.amp.is_autocast_available(self.device.type):
            raise ValueError(
                f"precision={name!r} needs torch.autocast, which torch {torch.__version__} does not offer on "
                f"device type {self.device.type!r}; use precision='fp32'"
            )
        #: The autocast type (``None`` under fp32).
        self.dtype: torch.dtype | None = _HALF_DTYPES.get(name)
        #: The loss scaler (fp16 only).
        self.scaler: torch.amp.GradScaler | None = torch.amp.GradScaler(self.device.type) if name == "fp16" else None

    def __repr__(self) -> str:
        return f"Precision({self.name!r}, device={str(self.device)!r})"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the forward pass and the loss (run ``backward`` outside it)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``loss.backward()``; under fp16 the scaled loss's, after which the gradients of
        ``optimizer``'s parameters are unscaled in place, so they are the true gradients."""
        if self.scaler is None:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; under fp16 skipped when a gradient is inf or NaN (the scaler then
        lowers its scale), and the scale is updated after every step."""
        if self.scaler is None:
            optimizer.step()
            return
        if not any(p.grad is not None for group in optimizer.param_groups for p in group["params"]):
            return  # nothing to step (optimizer.step() would do nothing either); the scaler has no record
        self.scaler.step(optimizer)
        self.scaler.update()


#: The precision of a step taken outside :func:`fedmm.training.train_local` (no round context).
FP32 = Precision()


@dataclass(frozen=True)
class Schedule:
    """How long a run trains: ``num_rounds`` server rounds of ``local_epochs`` local epochs each.

    The balancing methods define their schedules in epochs of centralized training (OGM-GE
    modulates the first half of them, Remix warms up for a sixth, ...). In a federation, training
    is ``num_rounds * local_epochs`` local epochs, and local epoch ``e`` (0-based) of round ``r``
    (1-based) is global epoch ``(r - 1) * local_epochs + e``; a schedule that is a fraction of
    training is the same fraction of that. Round 0 (the update pass of divfl/cmsfed before round 1)
    counts as round 1: the start of training.

    Parameters
    ----------
    num_rounds:
        The run's server rounds (``num-server-rounds``, >= 1).
    local_epochs:
        The local epochs of a normal round (``local-epochs``, >= 1; the update pass trains fewer).
    """

    num_rounds: int
    local_epochs: int

    def __post_init__(self) -> None:
        if self.num_rounds < 1 or self.local_epochs < 1:
            raise ValueError(f"a schedule needs num_rounds >= 1 and local_epochs >= 1, got {self}")

    @property
    def total_epochs(self) -> int:
        """``num_rounds * local_epochs``: the local epochs of the whole run."""
        return self.num_rounds * self.local_epochs

    def global_epoch(self, server_round: int, epoch: int = 0) -> int:
        """``(max(server_round, 1) - 1) * local_epochs + epoch``: 0-based epoch ``epoch`` of round
        ``server_round`` counted from the start of training."""
        return (max(server_round, 1) - 1) * self.local_epochs + epoch

    def progress(self, server_round: int, epoch: int = 0) -> float:
        """The fraction of training done when local epoch ``epoch`` of round ``server_round``
        starts: ``global_epoch / total_epochs``, in ``[0, 1)`` (one exact division, so it equals a
        fraction such as ``0.5`` or ``1 / 6`` exactly where the epoch falls on it)."""
        return self.global_epoch(server_round, epoch) / self.total_epochs


@dataclass
class RoundContext:
    """What a client knows about this round when it trains.

    Parameters
    ----------
    server_round:
        1-based round number (0: the update pass before round 1).
    num_rounds:
        Total number of server rounds of the run.
    modalities:
        Modalities the client trains this round (a subset of those it holds, chosen by the server).
    global_model:
        A frozen copy of the received global model (teacher for distillation), for an objective
        whose :attr:`Objective.uses_global_model` is set; ``None`` for the others (the copy costs a
        model's worth of time and memory per message).
    extras:
        Strategy-specific values sent by the server (global prototypes, dominant modality,
        active classifier slots, ...), already decoded into tensors or numbers.
    device:
        The device the model lives on.
    precision:
        The precision of the round's training steps (:func:`fedmm.training.train_local` builds it
        from ``TrainConfig.precision`` and the device); fp32 by default.
    local_epochs:
        The run's local epochs of a normal round (``local-epochs``; the update pass, which trains
        fewer, keeps the run's value); with ``num_rounds`` it gives :attr:`schedule`. Default 1.
    """

    server_round: int
    num_rounds: int
    modalities: list[str]
    global_model: nn.Module | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Precision = field(default_factory=Precision)
    local_epochs: int = 1

    @property
    def schedule(self) -> Schedule:
        """The run's :class:`Schedule` (``num_rounds`` rounds of ``local_epochs`` epochs)."""
        return Schedule(self.num_rounds, self.local_epochs)


class Objective:
    """Plain joint cross-entropy on the fused logits; the base of every other objective."""

    #: The registry name, set by ``@register_objective(name)`` (``"ce"`` for this class).
    name: ClassVar[str] = ""
    #: Whether the model needs per-modality heads (``heads.<m>``) for this objective.
    needs_heads: ClassVar[bool] = False
    #: Whether the client hands the objective a frozen copy of the received global model
    #: (``RoundContext.global_model``: FedCMI's teacher); objectives that never read it leave it off.
    uses_global_model: ClassVar[bool] = False

    @dataclass
    class Params(Checked):
        """``ce`` takes no parameters."""

    #: The run's schedule, for a server half whose decisions follow it (Sustained Boosting's
    #: assignment rounds); :func:`fedmm.workspace.objective_of` sets it, ``None`` until then.
    schedule: Schedule | None = None

    def __init__(self, params: Objective.Params | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.ctx: RoundContext | None = None
        #: The current local epoch of the round (0-based), set by :meth:`begin_epoch`.
        self.epoch = 0

    # -- model ---------------------------------------------------------------------------------
    def extend_model(self, model: nn.Module) -> None:
        """Add objective-owned modules to a freshly built model (same shape on server and clients).

        New modules must live under ``heads.<m>.``/``projectors.<m>.`` (per modality) or under
        ``model.fusion`` (shared) so that aggregation can place them in a group. The default adds
        the per-modality heads a ``needs_heads`` objective uses when the model has none
        (``build_model`` already builds them; this covers a model built by hand).
        """
        if self.needs_heads:
            model.add_heads()

    def predict(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        """Inference logits for ``batch``; a batch holding one modality gives that modality's
        accuracy. The default is the fusion head with zero-filled absent slots."""
        return model(batch)

    #: Whether :meth:`predict_filled` exists: the objective's model can stand in for missing
    #: modalities (FedCMI's infiltration projectors); evaluation then adds ``acc-fill/<m>``.
    fills_missing: ClassVar[bool] = False

    def predict_filled(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        """Logits for a batch that lacks some modalities, with the missing slots filled by the
        model instead of zeros (missing-modality inference)."""
        raise NotImplementedError(f"objective {self.name!r} cannot fill missing modalities")

    @property
    def proximal_mu(self) -> float:
        """The weight ``mu`` of the proximal term ``mu / 2 * ||w - w_global||^2`` that the client
        adds for this objective (FedCMI's ``proximal`` and ``mu``); 0, none, by default. FedProx's
        ``strategy.mu`` comes with the request and adds to it."""
        return 0.0

    # -- server side (plain numbers; runs in the ServerApp) ---------------------------------------
    def server_extras(self, server_round: int) -> dict[str, Any]:
        """Values the server sends every client this round (scalars, lists or numpy arrays)."""
        return {}

    def server_observe(self, server_round: int, facts: list[tuple[int, dict[str, Any]]]) -> None:
        """Receive ``(num_examples, end_round facts)`` of every client that trained this round."""

    def server_state(self) -> dict[str, Any]:
        """The server half's state for a checkpoint: numpy arrays, numbers or strings (none by default)."""
        return {}

    def load_server_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`server_state` returned (on the objective of a resumed run)."""

    # -- round hooks -------------------------------------------------------------------------
    def trained_modalities(self, model: nn.Module, batch: TensorDict) -> list[str]:
        """The modalities of ``batch`` that this round trains (``ctx.modalities``; all of the
        model's before :meth:`begin_round`), in the model's canonical order."""
        allowed = self.ctx.modalities if self.ctx is not None else model.modalities
        return [m for m in model.modalities if m in batch and m in allowed]

    def begin_round(self, model: nn.Module, data: TensorDict, ctx: RoundContext) -> None:
        """Called once before local training; the default remembers ``ctx`` (and starts at epoch 0)."""
        self.ctx = ctx
        self.epoch = 0

    def end_round(self, model: nn.Module, data: TensorDict) -> dict[str, float | list[float]]:
        """Facts reported to the server after local training (none by default)."""
        return {}

    #: Whether the server half needs :meth:`global_model_facts` from the clients of every round.
    observes_global_model: ClassVar[bool] = False

    def global_model_facts(
        self, model: nn.Module, data: TensorDict, modalities: list[str]
    ) -> dict[str, float | list[float]]:
        """Facts about the received global ``model`` on the client's ``data`` for its held
        ``modalities``, measured without training (asked after aggregation when
        :attr:`observes_global_model`). None by default."""
        return {}

    # -- epoch and batch hooks ---------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        """Called at the start of every local epoch (0-based), before :meth:`batches`; the default
        remembers it as ``self.epoch``."""
        self.epoch = epoch

    def progress(self) -> float:
        """The fraction of the run's training done when the current local epoch started
        (:meth:`Schedule.progress` of ``ctx``'s round and ``self.epoch``); 0 before
        :meth:`begin_round`."""
        if self.ctx is None:
            return 0.0
        return self.ctx.schedule.progress(self.ctx.server_round, self.epoch)

    def training_round(self) -> int:
        """``ctx.server_round`` as schedules in rounds count it: the update pass (round 0) is round 1,
        the start of training; 1 before :meth:`begin_round`."""
        return max(self.ctx.server_round, 1) if self.ctx is not None else 1

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

    @property
    def precision(self) -> Precision:
        """The round's :class:`Precision` (``ctx.precision``; fp32 before :meth:`begin_round`)."""
        return self.ctx.precision if self.ctx is not None else FP32

    def train_step(self, model: nn.Module, batch: TensorDict, optimizer: torch.optim.Optimizer) -> float:
        """One optimisation step on ``batch`` at the round's precision: ``loss`` under its autocast,
        backward, ``adjust_gradients`` on the true (unscaled) gradients, optimizer step; returns
        the loss as a float."""
        precision = self.precision
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = self.loss(model, batch)
        precision.backward(loss, optimizer)
        self.adjust_gradients(model, batch)
        precision.step(optimizer)
        return float(loss.detach())
