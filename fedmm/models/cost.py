"""What a modality costs a client: its share of the model's training FLOPs and its bytes on the wire.

Deterministic (never a wall-clock time): the FLOPs are counted by PyTorch's
``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplications and convolutions) on a forward
pass of one example; backward costs about twice the forward for every layer, so the training cost
is proportional to the forward count and the shares below are the same for both. The bytes are
the arrays' sizes (element count x element size) of each parameter group (:mod:`fedmm.groups`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode

from fedmm.groups import key_modality
from fedmm.models.net import MultimodalNet


def _forward_flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops())


@torch.no_grad()
def modality_flops(model: MultimodalNet, shapes: Mapping[str, tuple[int, ...]]) -> dict[str | None, int]:
    """Forward FLOPs per example of each modality's encoder (and head, when the model has heads)
    and of the shared fusion head (key ``None``).

    Parameters
    ----------
    model:
        The run's global model.
    shapes:
        Each modality's example shape without the batch dimension.
    """
    was_training = model.training
    model.eval()  # batch-norm on one example; the count does not depend on the mode
    try:
        flops: dict[str | None, int] = {}
        for m in model.modalities:
            x = torch.zeros((1, *shapes[m]))
            flops[m] = _forward_flops(model.encoders[m], x)
            if m in model.heads:
                flops[m] += _forward_flops(model.heads[m], torch.zeros(1, model.embed_dim))
        flops[None] = _forward_flops(model.fusion, torch.zeros(1, len(model.modalities) * model.embed_dim))
    finally:
        model.train(was_training)
    return flops


def modality_costs(flops: Mapping[str | None, int]) -> dict[str | None, float]:
    """Each part's share of the full model's per-example cost: ``flops / sum(flops)`` (the shares of
    all modalities and the fusion head, key ``None``, sum to 1).

    Parameters
    ----------
    flops:
        :func:`modality_flops`' counts.
    """
    total = float(sum(flops.values()))
    if total <= 0:
        n = len(flops)
        return {k: 1.0 / n for k in flops}
    return {k: v / total for k, v in flops.items()}


def group_bytes(state: Mapping[str, torch.Tensor]) -> dict[str | None, int]:
    """Bytes of every modality's parameter groups (encoder, head, projector) and of the shared
    group (key ``None``) in ``state`` (a state dict: buffers travel too).

    Parameters
    ----------
    state:
        The global model's state dict.
    """
    out: dict[str | None, int] = {}
    for key, value in state.items():
        m = key_modality(key)
        out[m] = out.get(m, 0) + value.numel() * value.element_size()
    return out
