"""PMR: Prototypical Modal Rebalance (Fan et al., CVPR 2023).

Method: docs/methods/pmr.md §2 and §5; reference code
``fanyunfeng-bit/Modal-Imbalance-PMR/main_Prototype_grad.py`` (``calculate_prototype``,
``train_epoch``).

Every modality gets a non-parametric prototype classifier: the class means of its features over
the client's data. Per batch, the modality whose prototype classifier is least confident on the
true labels is the weak one, and only it receives an extra prototype cross-entropy, which speeds
up its encoder without touching the dominant one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fedmm.data.base import LABEL_KEY, TensorDict, num_examples
from fedmm.facts import IMBALANCE_RATIO, IMBALANCE_RATIO_VALID, register_client_fact
from fedmm.objectives.base import Objective, RoundContext
from fedmm.objectives.registry import register_objective
from fedmm.params import FRACTION, NON_NEGATIVE, Checked, Interval, Search


@dataclass
class Prototypes:
    """Class prototypes of one modality.

    Parameters
    ----------
    centers:
        ``(K, D)`` class means; rows of absent classes are zero and must be ignored.
    present:
        ``(K,)`` bool, whether the class had at least one sample.
    """

    centers: torch.Tensor
    present: torch.Tensor


@torch.no_grad()
def class_feature_sums(
    model: nn.Module, data: TensorDict, modalities: list[str], chunk: int = 256
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per modality the ``(K, D)`` sums of encoder features per class over ``data`` and the ``(K,)``
    class counts, with the model in eval mode (its mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        y_all = data[LABEL_KEY]
        k, d = model.num_classes, model.embed_dim
        ref = next(model.parameters())
        sums = {m: torch.zeros(k, d, device=ref.device, dtype=ref.dtype) for m in modalities}
        counts = torch.bincount(y_all.long(), minlength=k).to(ref.device, ref.dtype)
        for start in range(0, num_examples(data), chunk):
            y = y_all[start : start + chunk].to(ref.device)
            feats = model.encode({m: data[m][start : start + chunk].to(ref.device) for m in modalities})
            for m, u in feats.items():
                sums[m].index_add_(0, y, u.to(ref.dtype))
        return sums, counts
    finally:
        model.train(was_training)


def prototypes_from_sums(sums: torch.Tensor, counts: torch.Tensor) -> Prototypes:
    """Class means from per-class sums and counts; absent classes are marked, their rows zero."""
    present = counts > 0
    centers = sums / counts.clamp(min=1.0)[:, None]
    return Prototypes(centers=centers, present=present)


def momentum_update(old: Prototypes, new: Prototypes, momentum: float) -> Prototypes:
    """``c <- (1 - momentum) c_new + momentum c_old`` for classes present in both; a class present in
    only one of them keeps that one's center."""
    both = (old.present & new.present)[:, None]
    mixed = (1.0 - momentum) * new.centers + momentum * old.centers
    centers = torch.where(both, mixed, torch.where(new.present[:, None], new.centers, old.centers))
    return Prototypes(centers=centers, present=old.present | new.present)


def prototype_logits(u: torch.Tensor, protos: Prototypes) -> torch.Tensor:
    """``s_c = -||u - P_c||_2`` per sample and class, ``-inf`` for absent classes (an infinite
    distance, i.e. masked out of every softmax). Gradients flow to ``u`` only."""
    centers = protos.centers.detach().to(u.dtype)
    dist = torch.linalg.vector_norm(u[:, None, :] - centers[None, :, :], dim=-1)
    return (-dist).masked_fill(~protos.present[None, :], -math.inf)


def weak_modalities(scores: dict[str, float]) -> list[str]:
    """The modalities whose prototype confidence sum is the lowest; none when all are equal.

    With two modalities this is the reference rule on ``rho = s^a / s^v``: ``rho > 1`` -> the
    visual term, ``rho < 1`` -> the audio term, ``rho == 1`` -> no term. With more, every modality
    tied at the minimum gets the term (ours; the reference handles two).
    """
    low = min(scores.values())
    if all(s == low for s in scores.values()):
        return []
    return [m for m, s in scores.items() if s == low]


@register_objective("pmr")
class PMR(Objective):
    """PMR: fused CE plus a prototype CE for the batch's weak modality.

    Prototypes ``P^m_c`` = mean feature of class ``c`` of modality ``m`` over the client's local
    data, computed in eval mode without gradients: from the received model in ``begin_round``, then
    again at the start of every later local epoch, mixed as ``P <- (1 - momentum) P_new + momentum
    P_old`` (the reference's EMA). Prototype logits ``s^m_c = -||u^m - P^m_c||_2``; classes absent
    from the client's data are masked (infinite distance).

    Per batch with trained modalities ``S``: scores ``r^m = sum_i softmax(s^m_i)_{y_i}`` (batch sums,
    no gradient); ``L = CE(z_fused, y) + alpha * sum_{w in weak(S)} CE(s^w, y)``, with
    :func:`weak_modalities` (the dominant modality gets weight 0).

    A client or batch with one modality ``m``: ``L = CE(z_fused, y) + alpha * CE(s^m, y)`` — the lone
    modality has no competitor to suppress it, so it is treated as the one to accelerate; this is
    CMSFed's unimodal prototype (ME) loss.

    Differences from the reference (deliberate): the prototypes use all local samples (the
    reference uses the first tenth of the training batches outside AVE); the first per-epoch
    update already uses the momentum (the reference skips it after epoch 0); prototypes are rebuilt
    from scratch each round from the received model (no prototype state crosses rounds).
    """

    needs_heads: ClassVar[bool] = False

    @dataclass
    class Params(Checked):
        """Parameters of ``pmr``.

        Parameters
        ----------
        alpha:
            Weight of the weak modality's prototype CE. Reference default 1.0 (``--alpha``); its
            CREMA-D scripts use 2.0.
        momentum:
            EMA weight of the previous prototypes in the per-epoch update, in ``[0, 1)``; reference
            default 0.2 (``--momentum_coef``; its scripts use 0, no EMA).
        modulation_start:
            First fraction of the run's local epochs in which the prototype CE acts: local epoch
            ``g`` of ``T`` is modulated when ``modulation-start <= g / T <= modulation-end`` (the
            reference's ``--modulation_starts``/``--modulation_ends``, epochs 0..70 of 130 in its
            CREMA-D scripts: ``[0, 70/130]``); outside the window the loss is plain fused CE (the
            prototypes are still computed). Default 0.
        modulation_end:
            Last fraction of the window, in ``[modulation_start, 1]``. Default 1: the term acts for
            the whole run.
        """

        alpha: Annotated[float, NON_NEGATIVE, Search(0.1, 4.0, log=True)] = 1.0
        momentum: Annotated[float, Interval(float, 0.0, 1.0, closed="left"), Search(0.0, 0.9)] = 0.2
        modulation_start: Annotated[float, FRACTION] = 0.0
        modulation_end: Annotated[float, FRACTION] = 1.0

        def validate(self) -> None:
            super().validate()
            if not self.modulation_start <= self.modulation_end:
                raise ValueError(
                    f"pmr: the window needs modulation-start <= modulation-end (fractions of training), "
                    f"got modulation-start={self.modulation_start}, modulation-end={self.modulation_end}"
                )

    params: Params

    def __init__(self, params: PMR.Params | None = None) -> None:
        super().__init__(params)
        #: Current prototypes per trained modality.
        self.prototypes: dict[str, Prototypes] = {}
        #: Prototype confidence sums ``r^m`` of the last batch (for inspection and tests).
        self.last_scores: dict[str, float] = {}
        self._fresh = False

    def modulating(self) -> bool:
        """Whether the current local epoch lies in the window ``[modulation_start, modulation_end]``
        (fractions of the run's local epochs, :meth:`Objective.progress`)."""
        return self.params.modulation_start <= self.progress() <= self.params.modulation_end

    def compute_prototypes(self, model: nn.Module, data: TensorDict) -> dict[str, Prototypes]:
        """Fresh prototypes (no momentum) of every trained modality from ``data``."""
        sums, counts = class_feature_sums(model, data, self.trained_modalities(model, data))
        return {m: prototypes_from_sums(s, counts) for m, s in sums.items()}

    def begin_round(self, model: nn.Module, data: TensorDict, ctx: RoundContext) -> None:
        super().begin_round(model, data, ctx)
        self.prototypes = self.compute_prototypes(model, data)
        self._fresh = True

    def batches(
        self, model: nn.Module, data: TensorDict, epoch: int, batch_size: int, generator: torch.Generator
    ) -> Iterator[TensorDict]:
        # The first epoch uses the prototypes of begin_round; every later one refreshes them first.
        if not self._fresh:
            new = self.compute_prototypes(model, data)
            self.prototypes = {
                m: momentum_update(self.prototypes[m], p, self.params.momentum) if m in self.prototypes else p
                for m, p in new.items()
            }
        self._fresh = False
        yield from super().batches(model, data, epoch, batch_size, generator)

    def loss(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        y = batch[LABEL_KEY]
        feats = model.encode({m: batch[m] for m in self.trained_modalities(model, batch)})
        loss = F.cross_entropy(model.fuse(feats), y)
        missing = [m for m in feats if m not in self.prototypes]
        if missing:
            raise RuntimeError(f"pmr: no prototypes for {missing}; begin_round must run before loss")
        logits = {m: prototype_logits(u, self.prototypes[m]) for m, u in feats.items()}
        with torch.no_grad():
            self.last_scores = {m: float(s.softmax(dim=1).gather(1, y[:, None]).sum()) for m, s in logits.items()}
        targets = list(logits) if len(logits) == 1 else weak_modalities(self.last_scores)
        if self.params.alpha > 0.0 and self.modulating():
            for m in targets:
                loss = loss + self.params.alpha * F.cross_entropy(logits[m], y)
        return loss


@torch.no_grad()
def prototype_accuracies(
    model: nn.Module, data: TensorDict, modalities: list[str], chunk: int = 256
) -> dict[str, float]:
    """Nearest-class-mean accuracy of each modality on ``data``, with prototypes computed from
    ``data`` itself (CMSFed's rho_k ingredients, docs/methods/cmsfed.md §3.3); eval mode, one encoder
    pass (the features serve both the prototypes and the predictions)."""
    n = num_examples(data)
    if n == 0:
        return dict.fromkeys(modalities, 0.0)
    was_training = model.training
    model.eval()
    try:
        ref = next(model.parameters())
        y = data[LABEL_KEY].to(ref.device)
        chunks = [
            model.encode({m: data[m][s : s + chunk].to(ref.device) for m in modalities}) for s in range(0, n, chunk)
        ]
        counts = torch.bincount(y, minlength=model.num_classes).to(ref.dtype)
        out = {}
        for m in modalities:
            feats = torch.cat([c[m] for c in chunks]).to(ref.dtype)
            sums = torch.zeros(model.num_classes, feats.shape[1], device=ref.device, dtype=ref.dtype)
            protos = prototypes_from_sums(sums.index_add_(0, y, feats), counts)
            out[m] = float((prototype_logits(feats, protos).argmax(dim=1) == y).double().mean())
        return out
    finally:
        model.train(was_training)


#: CMSFed's rho_k, asked for by the cmsfed selection policy: from the received model in the update
#: pass, from the trained one in later rounds (docs/methods/cmsfed.md §5.1, §5.5).
@register_client_fact(IMBALANCE_RATIO, before_training_in_update_pass=True, valid=IMBALANCE_RATIO_VALID)
def prototype_imbalance_ratio(model: nn.Module, data: TensorDict, order: Sequence[str], floor: float = 1e-3) -> float:
    """rho_k = Acc_pivot / min_{m in rest} Acc_m of the prototype (nearest-class-mean) classifiers on
    the client's data, for ``order = (pivot, *rest)``: how far the pivot modality is ahead of the
    client's weakest other modality (CMSFed, docs/methods/cmsfed.md §3.3 and §4.4).
    With two modalities this is the reference's Acc_first / Acc_second.

    ``rest`` is the modalities of ``order[1:]`` the client holds; a client that lacks the pivot or
    holds none of the rest gets 1.0 (nothing to compare). The denominator is raised to ``floor`` so
    that a modality at 0 % gives a large finite ratio.
    """
    pivot, rest = order[0], [m for m in order[1:] if m in data]
    if pivot not in data or not rest:
        return 1.0
    acc = prototype_accuracies(model, data, [pivot, *rest])
    return acc[pivot] / max(min(acc[m] for m in rest), floor)
