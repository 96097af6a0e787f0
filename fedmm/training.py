"""The local training and evaluation loop: device, batches, optimizer, objective hooks.

A client's data lives in memory as one tensor per modality. :func:`train_local` moves it to the
device once per round and the objective slices it by index, so the inner loop has no DataLoader
and no host/device copies. The loop owns the device, the optimizer and the epochs; the objective
owns the batches, the loss and the step (see :mod:`fedmm.objectives.base`).

This module imports neither Flower nor Ray: it runs on machines that have only torch.

Why one module of this size: the local loop and its settings (TrainConfig, optimizer, precision,
proximal hook, evaluation) are the unit the GPU machine imports without Flower.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from fedmm.config import (
    ADAM_BETA2,
    BATCH_SIZE,
    LOCAL_EPOCHS,
    LR,
    MOMENTUM,
    OPTIMIZER,
    PRECISION,
    PROXIMAL_MU,
    WEIGHT_DECAY,
)
from fedmm.data.augment import Augment
from fedmm.data.base import LABEL_KEY, ModalitySpec, TensorDict, num_examples
from fedmm.groups import MODALITY_GROUP_PREFIXES, group_modality, parameter_group
from fedmm.metrics import accuracy, imbalance_ratio, macro_f1
from fedmm.models.net import ModelConfig, MultimodalNet
from fedmm.objectives.base import Objective, Precision, RoundContext
from fedmm.params import Checked

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


# -- device and model ------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """The torch device for a config value.

    Parameters
    ----------
    name:
        ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises
    ------
    ValueError
        An unknown name, or CUDA asked for on a machine without it (or without GPU ``N``).
    """
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={name!r} but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use device='auto' or 'cpu'"
            )
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise ValueError(f"unknown device {name!r}; expected one of {', '.join(DEVICE_CHOICES)}")


def build_model(
    modalities: list[ModalitySpec], num_classes: int, model_config: ModelConfig, objective: Objective
) -> MultimodalNet:
    """The model ``objective`` trains: per-modality heads when it needs them, plus its own modules.

    Built from the global torch RNG, so the server and every client get the same initial model
    from the same inputs after the same ``torch.manual_seed``.

    Parameters
    ----------
    modalities:
        The dataset's modalities in canonical order (this order fixes the fusion slots).
    num_classes:
        Number of output classes.
    model_config:
        Widths and encoder choices; ``heads`` is forced on when ``objective.needs_heads`` (the
        caller's config is not modified).
    objective:
        The objective whose ``extend_model`` adds its modules after the base model is built.

    Raises
    ------
    ValueError
        When the objective added a parameter outside the aggregation groups (see
        :func:`fedmm.groups.parameter_group`).
    """
    if objective.needs_heads and not model_config.heads:
        model_config = dataclasses.replace(model_config, encoders=dict(model_config.encoders), heads=True)
    model = MultimodalNet(modalities, num_classes, model_config)
    objective.extend_model(model)
    for key in model.state_dict():
        parameter_group(key)  # raises on a name that belongs to no group
    return model


# -- configuration and result ----------------------------------------------------------------------
@dataclass
class TrainConfig(Checked):
    """Local optimisation settings of one round; the bounds are the run config's own objects
    (:data:`fedmm.config.LR`, ...), checked by :class:`fedmm.params.Checked` when it is built.

    Parameters
    ----------
    epochs:
        Passes over the local data (>= 1).
    batch_size:
        Mini-batch size (>= 2: batch-norm needs two rows).
    lr:
        Learning rate (> 0).
    momentum:
        SGD momentum in ``[0, 1)`` (unused by Adam).
    weight_decay:
        L2 weight decay (>= 0), applied to the trained parameters only (SGD and Adam alike add
        ``weight_decay * w`` to the gradient, as ``torch.optim`` does).
    proximal_mu:
        FedProx weight ``mu`` (>= 0): every optimizer step adds ``mu * (w - w_start)`` to the
        gradient of each trained parameter, ``w_start`` being its value when the round began
        (the received global model). 0 disables it.
    seed:
        Seeds the generator the objective draws batch orders from; same seed, same batches.
    precision:
        ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the forward pass and loss of every
        training step run under autocast in that type (fp16 with loss scaling); weights,
        gradients, optimizer and evaluation stay float32 (see
        :class:`fedmm.objectives.base.Precision`).
    optimizer:
        ``"sgd"`` (default, with ``momentum``) or ``"adam"`` (betas ``(0.9, adam_beta2)``, eps
        1e-8); built afresh every round, so no optimizer state crosses rounds.
    adam_beta2:
        Adam's second-moment decay.
    """

    epochs: Annotated[int, LOCAL_EPOCHS]
    batch_size: Annotated[int, BATCH_SIZE]
    lr: Annotated[float, LR]
    momentum: Annotated[float, MOMENTUM] = 0.9
    weight_decay: Annotated[float, WEIGHT_DECAY] = 1e-4
    proximal_mu: Annotated[float, PROXIMAL_MU] = 0.0
    seed: int = 0
    precision: Annotated[str, PRECISION] = "fp32"
    optimizer: Annotated[str, OPTIMIZER] = "sgd"
    adam_beta2: Annotated[float, ADAM_BETA2] = 0.999


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The round's local optimizer over ``params`` (:attr:`TrainConfig.optimizer`)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=(0.9, config.adam_beta2), weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


@dataclass
class TrainResult:
    """What one round of local training produced.

    Parameters
    ----------
    loss:
        Mean of the batch losses (as returned by ``train_step``) of the last epoch; ``nan`` when
        it had no batch.
    num_examples:
        Local training examples (the aggregation weight).
    num_steps:
        ``train_step`` calls over all epochs (an objective may take several optimizer steps in one).
    facts:
        The objective's ``end_round`` report for the server.
    """

    loss: float
    num_examples: int
    num_steps: int
    facts: dict[str, Any] = field(default_factory=dict)


# -- training --------------------------------------------------------------------------------------
def trainable_parameters(model: nn.Module, modalities: list[str]) -> list[nn.Parameter]:
    """The parameters a client training ``modalities`` updates: the ``encoders.<m>``,
    ``heads.<m>`` and ``projectors.<m>`` groups of those modalities plus the shared ``fusion``
    group (parameters with ``requires_grad=False`` are left out).

    Parameters
    ----------
    model:
        A model whose parameter names follow :func:`fedmm.groups.parameter_group`.
    modalities:
        The modalities trained this round.
    """
    allowed = {None, *modalities}
    return [
        p
        for name, p in model.named_parameters()
        if p.requires_grad and group_modality(parameter_group(name)) in allowed
    ]


def add_proximal_hook(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], mu: float) -> RemovableHandle:
    """FedProx as a gradient term: before every ``optimizer.step()``, ``grad += mu * (w - w_0)``.

    That is the gradient of ``mu / 2 * ||w - w_0||^2`` with ``w_0`` a detached copy of ``params``
    taken now. Being an optimizer pre-hook, it also applies when an objective's ``train_step``
    takes several steps per batch. A parameter whose gradient is ``None`` at a step (it took no
    part in that step's loss) is left alone, as the optimizer itself leaves it.

    Parameters
    ----------
    optimizer:
        The optimizer whose steps get the term.
    params:
        The parameters to anchor (those the optimizer updates).
    mu:
        The proximal weight.

    Returns
    -------
    The hook's handle (``handle.remove()`` detaches it).
    """
    anchors = [p.detach().clone() for p in params]

    @torch.no_grad()
    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        pairs = [(p, a) for p, a in zip(params, anchors, strict=True) if p.grad is not None]
        if pairs:
            diffs = torch._foreach_sub([p for p, _ in pairs], [a for _, a in pairs])
            torch._foreach_add_([p.grad for p, _ in pairs], diffs, alpha=mu)

    return optimizer.register_step_pre_hook(hook)


def _set_modes(model: nn.Module, trained: list[str]) -> None:
    """Train mode for the model, eval mode for the modules of modalities that are not trained, so
    that nothing of theirs, batch-norm statistics included, can change."""
    model.train()
    for prefix in MODALITY_GROUP_PREFIXES:
        container = getattr(model, prefix, None)
        if isinstance(container, nn.ModuleDict):
            for m, module in container.items():
                if m not in trained:
                    module.eval()


def train_local(
    model: MultimodalNet,
    data: TensorDict,
    objective: Objective,
    ctx: RoundContext,
    config: TrainConfig,
    augment: Augment | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` with ``objective`` for ``config.epochs`` epochs (one round).

    Only the modalities in ``ctx.modalities`` are fed and optimised: the other modalities are
    dropped from ``data`` up front, their encoders/heads/projectors are left out of the optimizer
    and kept in eval mode, so their weights and batch-norm statistics stay exactly as received.

    Parameters
    ----------
    model:
        The model to train in place; moved to ``ctx.device``.
    data:
        The client's local split (modality tensors and ``"y"``); moved to ``ctx.device`` once.
    objective:
        The local objective; its hooks are called in the order given in
        :mod:`fedmm.objectives.base`.
    ctx:
        The round: trained modalities, device, global model and server extras. The objective
        gets a copy whose ``precision`` is built from ``config.precision`` and ``ctx.device``.
    config:
        Epochs, batch size, SGD settings, proximal weight, the batch-order seed and the precision.
    augment:
        The dataset's random train transform, applied to every training batch (drawn from the
        batch-order generator); ``None`` trains on the batches as they are.

    Returns
    -------
    :class:`TrainResult` with the last epoch's mean loss, the number of examples and steps, and
    the objective's ``end_round`` facts.
    """
    trained = [m for m in model.modalities if m in ctx.modalities]
    unknown = [m for m in ctx.modalities if m not in model.modalities]
    if unknown:
        raise ValueError(f"asked to train modalities {unknown} that the model does not have; it has {model.modalities}")
    missing = [m for m in trained if m not in data]
    if missing:
        raise ValueError(
            f"asked to train modalities {missing} that the local data does not have; it has {sorted(data)}"
        )
    if not trained:
        raise ValueError("ctx.modalities is empty: a client must train at least one modality")
    device = ctx.device
    local = {k: data[k].to(device, non_blocking=True) for k in (*trained, LABEL_KEY)}
    model.to(device)
    was_training = model.training
    params = trainable_parameters(model, trained)
    optimizer = make_optimizer(params, config)
    if config.proximal_mu > 0:
        add_proximal_hook(optimizer, params, config.proximal_mu)
    generator = torch.Generator().manual_seed(config.seed)  # CPU: objectives call randperm with it
    ctx = dataclasses.replace(ctx, precision=Precision(config.precision, device))

    _set_modes(model, trained)
    objective.begin_round(model, local, ctx)
    steps = 0
    epoch_loss, epoch_batches = 0.0, 0
    for epoch in range(config.epochs):
        epoch_loss, epoch_batches = 0.0, 0
        objective.begin_epoch(epoch)
        for batch in objective.batches(model, local, epoch, config.batch_size, generator):
            if augment is not None:
                batch = augment(batch, generator)
            epoch_loss += objective.train_step(model, batch, optimizer)
            epoch_batches += 1
        steps += epoch_batches
    facts = objective.end_round(model, local)
    model.train(was_training)
    return TrainResult(
        loss=epoch_loss / epoch_batches if epoch_batches else float("nan"),
        num_examples=num_examples(data),
        num_steps=steps,
        facts=dict(facts),
    )


# -- evaluation ------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    model: MultimodalNet,
    data: TensorDict,
    objective: Objective,
    *,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Multimodal and per-modality accuracy, macro-F1 and loss of ``model`` on ``data``.

    Every prediction goes through ``objective.predict`` in eval mode. The multimodal prediction
    sees every modality of ``data``; the per-modality ones see a batch holding that modality
    alone (zero-filled fusion by default).

    Parameters
    ----------
    model:
        The model to evaluate (left in the train/eval mode it came in; moved to ``device``).
    data:
        Modality tensors (any subset of the model's modalities) and ``"y"``; moved to ``device``
        chunk by chunk.
    objective:
        Supplies ``predict``.
    batch_size:
        Rows per forward pass.
    device:
        Where to run; ``None`` uses the device of the model's parameters.

    Returns
    -------
    ``acc``, ``f1`` (macro, see :func:`fedmm.metrics.macro_f1`) and ``loss`` (mean CE) of the
    multimodal prediction; ``acc/<m>`` and ``f1/<m>`` per modality in ``data``; for an objective
    that ``fills_missing`` also ``acc-fill/<m>`` and ``f1-fill/<m>``, modality ``m`` alone with the
    other slots filled by ``objective.predict_filled`` (missing-modality inference); ``imbalance``,
    the best over the worst ``acc/<m>`` (:func:`fedmm.metrics.imbalance_ratio`).
    """
    unknown = [k for k in data if k != LABEL_KEY and k not in model.modalities]
    if unknown:
        raise ValueError(f"data holds modalities {unknown} that the model lacks; it has {model.modalities}")
    modalities = [m for m in model.modalities if m in data]
    if not modalities:
        raise ValueError(f"data holds none of the model's modalities {model.modalities}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    was_training = model.training
    model.eval()
    y = data[LABEL_KEY]
    views = {"": (modalities, objective.predict), **{f"/{m}": ([m], objective.predict) for m in modalities}}
    if objective.fills_missing and len(model.modalities) > 1:
        views.update({f"-fill/{m}": ([m], objective.predict_filled) for m in modalities})
    preds: dict[str, list[torch.Tensor]] = {suffix: [] for suffix in views}
    loss_sum = torch.zeros((), device=device)
    try:
        for start in range(0, y.shape[0], batch_size):
            chunk = {m: data[m][start : start + batch_size].to(device, non_blocking=True) for m in modalities}
            target = y[start : start + batch_size].to(device, non_blocking=True)
            for suffix, (mods, predict) in views.items():
                logits = predict(model, {m: chunk[m] for m in mods})
                preds[suffix].append(logits.argmax(dim=1))
                if not suffix:
                    loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
    finally:
        model.train(was_training)
    out: dict[str, float] = {}
    n = int(y.shape[0])
    num_classes = int(model.num_classes)
    for suffix in views:
        pred = torch.cat(preds[suffix]).cpu() if preds[suffix] else torch.empty(0, dtype=torch.long)
        out[f"acc{suffix}"] = accuracy(pred, y)
        out[f"f1{suffix}"] = macro_f1(pred, y, num_classes)
    out["loss"] = float(loss_sum) / n if n else float("nan")
    out["imbalance"] = imbalance_ratio({m: out[f"acc/{m}"] for m in modalities})
    return out
