"""ARM (Auxiliary Information Regularized Machine, Yang et al., IJCAI 2015) — a RECONSTRUCTION.

There is no public code and the paper's equations are not available to us. What follows is the
deep, drop-in analogue of docs/methods/arm.md §2, itself a reconstruction: the
weak modality learns a discriminative subspace ``P^T u^w`` and is regularised by the strong
modality's (detached) prediction. It is not the paper's method; do not report it as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fedmm.data.base import LABEL_KEY, TensorDict
from fedmm.objectives.base import Objective
from fedmm.objectives.registry import register_objective
from fedmm.params import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, Checked, Search


class SubspaceClassifier(nn.Module):
    """``f(P^T u)``: a projection to a ``k``-dim subspace (no bias) and a linear classifier on it.

    Parameters
    ----------
    embed_dim:
        Width ``d`` of the encoder features ``u``.
    subspace_dim:
        Subspace width ``k``.
    num_classes:
        Number of classes.
    """

    def __init__(self, embed_dim: int, subspace_dim: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(embed_dim, subspace_dim, bias=False)  # weight = P^T, shape (k, d)
        self.classifier = nn.Linear(subspace_dim, num_classes)
        nn.init.orthogonal_(self.proj.weight)  # start on the constraint P^T P = I_k
        nn.init.xavier_normal_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.proj(u))

    def orthogonality_penalty(self) -> torch.Tensor:
        """``||P^T P - I_k||_F^2``."""
        pt = self.proj.weight
        eye = torch.eye(pt.shape[0], device=pt.device, dtype=pt.dtype)
        return ((pt @ pt.T) - eye).pow(2).sum()


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(sg(softmax(teacher / T)) || softmax(student / T))`` averaged over the batch (no ``T^2``)."""
    target = (teacher.detach() / temperature).softmax(dim=1)
    return F.kl_div((student / temperature).log_softmax(dim=1), target, reduction="batchmean")


@register_objective("arm")
class ARMReconstruction(Objective):
    """ARM, RECONSTRUCTED (docs/methods/arm.md §2; no paper equations or official code were available).

    For a batch with two or more trained modalities, one strong ``s`` and every other one weak:
    ``L = ortho-weight * sum_m ||P_m^T P_m - I||_F^2
    + sum_{w != s} [CE(z_w, y) + distill-weight * KL(sg(softmax(z_s/T)) || softmax(z_w/T))]
    + strong-ce-weight * CE(z_s, y)``
    with ``z_m = f_m(P_m^T u_m)``: the strong modality regularises every weaker one, each weak
    modality's terms exactly as in the two-modality loss (docs/objectives.md, ``arm``). Every
    modality owns a subspace classifier ``f_m(P_m^T .)`` under ``heads.<m>`` so that the
    strong/weak roles may differ between batches, rounds and clients without changing the model's
    shape (the first reconstruction's ``f_s`` acted on the full ``u_s``; here it acts on ``P_s^T u_s``). The strong
    modality is ``strong-modality`` when set and trained in the batch, otherwise, per batch, the
    one with the largest summed target-class probability (ties: canonical order).

    A client with one modality: ``CE(z_m, y) + ortho-weight * ||P_m^T P_m - I||_F^2``.
    Inference: the mean of ``z_m`` over the present modalities; ``fusion.linear`` is not trained.
    """

    needs_heads: ClassVar[bool] = False

    @dataclass
    class Params(Checked):
        """Parameters of ``arm`` (all defaults are ours: the reconstruction has no reference values).

        Parameters
        ----------
        subspace_dim:
            Width ``k`` of the discriminative subspace; 0 means ``embed-dim // 2``. Must be below
            ``embed-dim``.
        distill_weight:
            ``lambda_s``, weight of the strong-to-weak KL term.
        temperature:
            ``T`` of the distillation softmaxes.
        ortho_weight:
            ``mu``, weight of the orthonormality penalty on each projection.
        strong_ce_weight:
            Weight of the strong modality's own CE (an optional term of the reconstruction; without it the
            strong predictor, the teacher, would never learn).
        strong_modality:
            Name of the strong (auxiliary) modality; empty chooses it per batch by confidence (as
            does a batch that does not train it).
        """

        subspace_dim: Annotated[int, NON_NEGATIVE_INT] = 0
        distill_weight: Annotated[float, NON_NEGATIVE, Search(0.1, 2.0)] = 1.0
        temperature: Annotated[float, POSITIVE, Search(1.0, 8.0)] = 2.0
        ortho_weight: Annotated[float, NON_NEGATIVE, Search(1e-3, 0.1, log=True)] = 0.01
        strong_ce_weight: Annotated[float, NON_NEGATIVE, Search(0.1, 2.0)] = 1.0
        strong_modality: str = ""

    params: Params

    def __init__(self, params: ARMReconstruction.Params | None = None) -> None:
        super().__init__(params)

    def extend_model(self, model: nn.Module) -> None:
        """Add a subspace classifier per modality under ``heads.<m>``."""
        modalities = list(model.modalities)
        strong = self.params.strong_modality
        if strong and strong not in modalities:
            raise ValueError(f"arm: strong-modality {strong!r} is not one of the model's modalities {modalities}")
        k = self.params.subspace_dim or max(1, model.embed_dim // 2)
        if k >= model.embed_dim:
            raise ValueError(f"arm: subspace-dim must be below embed-dim={model.embed_dim}, got {k}")
        for m in modalities:
            model.heads[m] = SubspaceClassifier(model.embed_dim, k, model.num_classes)

    def logits(
        self, model: nn.Module, batch: TensorDict, modalities: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """``z_m = f_m(P_m^T u_m)`` for ``modalities`` (default: all present in ``batch``)."""
        mods = [m for m in model.modalities if m in batch] if modalities is None else modalities
        feats = model.encode({m: batch[m] for m in mods})
        return {m: model.heads[m](u) for m, u in feats.items()}

    def predict(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        z = self.logits(model, batch)
        return sum(z.values()) / len(z)

    def roles(self, model: nn.Module, z: dict[str, torch.Tensor], y: torch.Tensor) -> tuple[str, tuple[str, ...]]:
        """``(strong, weak)`` for a batch holding two or more modalities: ``strong-modality`` when
        it is among them, else the largest summed target-class probability (ties: the first in the
        model's order); ``weak`` is every other modality in the model's order."""
        present = [m for m in model.modalities if m in z]
        strong = self.params.strong_modality
        if strong not in present:
            with torch.no_grad():
                conf = {m: z[m].softmax(dim=1).gather(1, y[:, None]).sum() for m in present}
            strong = present[0]
            for m in present[1:]:
                if conf[m] > conf[strong]:
                    strong = m
        return strong, tuple(m for m in present if m != strong)

    def loss(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        p = self.params
        y = batch[LABEL_KEY]
        z = self.logits(model, batch, self.trained_modalities(model, batch))
        loss: torch.Tensor | float = 0.0
        if p.ortho_weight > 0.0:
            loss = p.ortho_weight * sum(model.heads[m].orthogonality_penalty() for m in z)
        if len(z) == 1:
            (zm,) = z.values()
            return loss + F.cross_entropy(zm, y)
        strong, weak = self.roles(model, z, y)
        for w in weak:
            loss = loss + F.cross_entropy(z[w], y)
            if p.distill_weight > 0.0:
                loss = loss + p.distill_weight * distillation_kl(z[w], z[strong], p.temperature)
        if p.strong_ce_weight > 0.0:
            loss = loss + p.strong_ce_weight * F.cross_entropy(z[strong], y)
        return loss
