"""FedCMI's two projectors per modality (docs/methods/fedcmi.md §2).

Modality ``m`` has a *self projector* ``S_m`` (keeps exploiting the modality's own features) and an
*infiltration projector* ``I_m`` (absorbs the dominant modality's knowledge); both feed the
modality's classifier ``C_m`` (the model's ``heads.<m>``). The fusion head sees the self-projector
outputs ``u_m = S_m(h_m)``. A slot whose modality is missing is filled from the infiltration
outputs ``u~_j = I_j(h_j)`` of the present modalities: with two modalities that is the reference's
``F([u_a; u~_a])`` for an audio-only sample; with more, the missing slot gets the mean of the
present modalities' infiltration outputs (ours: the reference handles two modalities).

Both projectors live under ``projectors.<m>.`` so that modality-aware aggregation averages them
over the clients holding ``m``, together with that modality's encoder and classifier.
"""

from __future__ import annotations

import torch
from torch import nn

#: Projector shapes: the reference's ``--branch_type``.
PROJECTOR_KINDS = ("linear", "mlp")


def build_projector(kind: str, dim: int) -> nn.Module:
    """One projector ``R^dim -> R^dim``: ``linear`` is one Linear layer (the reference default),
    ``mlp`` is Linear-ReLU-Linear-ReLU-Linear."""
    if kind == "linear":
        return nn.Linear(dim, dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
    raise ValueError(f"unknown projector kind {kind!r}; expected one of {PROJECTOR_KINDS}")


class ModalityProjectors(nn.Module):
    """The self projector and the infiltration projector of one modality."""

    def __init__(self, dim: int, kind: str = "linear") -> None:
        super().__init__()
        self.own = build_projector(kind, dim)
        self.infiltration = build_projector(kind, dim)


def add_projectors(model: nn.Module, kind: str = "linear") -> None:
    """Give ``model`` (a :class:`~fedmm.models.net.MultimodalNet`) ``projectors.<m>`` for every
    modality, initialised like the rest of the model (Xavier-normal weights, zero biases)."""
    from fedmm.models.net import init_weights

    model.projectors = nn.ModuleDict({m: ModalityProjectors(model.embed_dim, kind) for m in model.modalities})
    init_weights(model.projectors)


def project(
    model: nn.Module, feats: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(u, u~)``: self-projector and infiltration-projector outputs of every modality in ``feats``."""
    own = {m: model.projectors[m].own(h) for m, h in feats.items()}
    infiltrated = {m: model.projectors[m].infiltration(h) for m, h in feats.items()}
    return own, infiltrated


def filled_slots(
    modalities: list[str], own: dict[str, torch.Tensor], infiltrated: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Fusion inputs for every slot: ``u_m`` where modality ``m`` is present, and for a missing slot
    the mean of the present modalities' infiltration outputs."""
    if not own:
        raise ValueError("filled_slots needs at least one present modality")
    missing = [m for m in modalities if m not in own]
    if not missing:
        return dict(own)
    fill = torch.stack(list(infiltrated.values())).mean(dim=0)
    return {m: own.get(m, fill) for m in modalities}
