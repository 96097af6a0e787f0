"""MNL: Multimodal Negative Learning (Gong et al., NeurIPS 2025).

Method: docs/methods/mnl.md §2 and §5; reference code
``BaoquanGong/Multimodal-Negative-Learning/train_latefusion.py`` (``model_forward``).

Per sample, a robust dominant modality (the one with both the larger unimodal confidence margin
against the fused prediction's strongest wrong class and the larger target probability) guides the
other modalities: their heads are trained towards the dominant head's distribution over the
NON-target classes ("learning not to be"), on top of the usual fused and per-head cross-entropies.
The fused prediction is, as in the reference's late fusion, the mean of the per-modality head
logits (``fusion = "mean"``); ``fusion = "concat"`` uses the model's concat fusion head instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from fedmm.data.base import LABEL_KEY, TensorDict
from fedmm.objectives.base import Objective, RoundContext
from fedmm.objectives.registry import register_objective
from fedmm.params import FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, Checked, Search

#: How MNL forms the fused prediction ``z^f`` (the ``fusion`` parameter).
FUSIONS = ("mean", "concat")


def strongest_competitor(fused: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``j_i = argmax_{c != y_i} softmax(z^f_i)_c`` per sample."""
    probs = fused.detach().softmax(dim=1)
    probs = probs.scatter(1, y[:, None], -1.0)
    return probs.argmax(dim=1)


def _argmax_last(values: torch.Tensor) -> torch.Tensor:
    """Argmax over dim 0 that returns the LAST index among ties (``torch.argmax`` returns the first)."""
    return values.shape[0] - 1 - values.flip(0).argmax(dim=0)


def select_guides(logits: list[torch.Tensor], y: torch.Tensor, competitor: torch.Tensor) -> torch.Tensor:
    """Per sample, the index (into ``logits``) of the robust dominant modality, or -1 for none.

    ``logits`` are the unimodal head logits in canonical order. With UCoM
    ``xi^m_i = z^m_{i,y_i} - z^m_{i,j_i}`` and target confidence ``pi^m_i = softmax(z^m_i)_{y_i}``,
    modality ``d`` guides sample ``i`` when it attains the maximum of ``xi`` and the maximum of
    ``pi`` over the modalities; when the two criteria pick different modalities, nobody guides.
    Ties go to the LATER modality in canonical order: this reproduces the reference's two-modality
    rule exactly (1 guides 2 if ``xi^1 > xi^2 and pi^1 > pi^2``; 2 guides 1 if ``xi^1 <= xi^2 and
    pi^1 <= pi^2``) and is our generalisation to ``M > 2``.
    """
    with torch.no_grad():
        rows = torch.arange(y.shape[0], device=y.device)
        xi = torch.stack([z[rows, y] - z[rows, competitor] for z in logits])
        pi = torch.stack([z.softmax(dim=1)[rows, y] for z in logits])
        by_margin, by_conf = _argmax_last(xi), _argmax_last(pi)
        return torch.where(by_margin == by_conf, by_margin, torch.full_like(by_margin, -1))


def negative_learning_term(
    weak: torch.Tensor, dominant: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, lam: float
) -> torch.Tensor:
    """``(1 / (B K)) sum_{i in mask} -sum_c [y_ic + lam (1 - y_ic) p^d_ic] log q^w_ic``.

    ``q^w = softmax(weak)``, ``p^d = softmax(dominant)`` detached. The mean over all ``B * K``
    entries (unselected rows count as zeros) is the reference's reduction: per selected sample the
    non-target term weighs ``lam / K`` and the target term ``1 / K``.
    """
    b, k = weak.shape
    onehot = F.one_hot(y, k).to(weak.dtype)
    p_dom = dominant.detach().softmax(dim=1)
    target = onehot + lam * (1.0 - onehot) * p_dom
    per_sample = -(target * weak.log_softmax(dim=1)).sum(dim=1)
    return (per_sample * mask.to(weak.dtype)).sum() / (b * k)


@register_objective("mnl")
class MNL(Objective):
    """MNL: fused CE + per-head CEs + non-target guidance from the robust dominant modality.

    Per batch with trained modalities ``S`` (``|S| >= 2``), from the ``start`` of training on:
    ``L = CE(z^f, y) + sum_{m in S} CE(z^m, y) + sum_i sum_{w != d_i} l_i(w, d_i) / (B K)``, where
    ``z^m = heads.<m>(u^m)``, ``z^f`` the fused prediction (:meth:`fuse`: by default the mean of
    the ``z^m`` over ``S``, the reference's late fusion; with ``fusion = "concat"`` the concat
    fusion head, absent slots zero-filled), ``j_i`` the strongest wrong class of ``z^f``, ``d_i``
    the robust dominant modality of :func:`select_guides` (no term when ``d_i`` is none) and
    ``l_i`` as in :func:`negative_learning_term`. With ``M > 2`` the dominant modality guides
    every other trained modality of that sample (one term each).

    Before ``start`` (warm-up) and on a client or batch with one modality:
    ``L = CE(z^f, y) + sum_{m in S} CE(z^m, y)`` (a lone modality has nobody to guide it).
    Under ``mean`` a lone modality's ``z^f`` is its head ``z^m``, counted once: ``L = CE(z^m, y)``.
    Inference (:meth:`predict`): ``z^f`` over the modalities of the batch, so a batch holding one
    modality gives that modality's head under ``mean``. Under ``mean`` the model's ``fusion.linear``
    is neither trained nor used; it stays in the model so that every client has the same shape.
    """

    needs_heads: ClassVar[bool] = True
    #: Config names that differ from the ``Params`` field names (``lambda`` is a Python keyword).
    param_aliases: ClassVar[dict[str, str]] = {"lambda": "lam"}

    @dataclass
    class Params(Checked):
        """Parameters of ``mnl``.

        Parameters
        ----------
        fusion:
            How the fused prediction ``z^f`` is made (the one the strongest wrong class ``j_i`` comes
            from, and the inference output): ``mean`` (default, the reference's late fusion), the
            mean of the per-modality head logits; ``concat``, the model's concat fusion head
            (``fusion.linear`` over the zero-filled modality slots).
        lam:
            ``lambda`` (config name ``lambda``), the weight of the non-target guidance; reference
            ``--weight1`` = 0.7. The reduction divides by ``K``: the per-sample weight is ``lam / K``.
        start:
            The fraction of the run's training before the guidance term starts (the paper's
            warm-up stage, fused and head CEs only): training is ``T = num-server-rounds x
            local-epochs`` local epochs, and local epoch ``g`` (0-based, counted over the run)
            guides when ``g / T >= start``, per local epoch. Default 0: the released code guides
            from the first epoch (it has no warm-up switch).
        start_round:
            An explicit first server round with the guidance term instead of ``start`` (the update
            pass counts as round 1). 0 (default) = not set; setting it together with a non-zero
            ``start`` is an error.
        """

        fusion: Literal["mean", "concat"] = "mean"
        lam: Annotated[float, NON_NEGATIVE, Search(0.1, 2.0)] = 0.7
        start: Annotated[float, FRACTION, Search(0.0, 0.5)] = 0.0
        start_round: Annotated[int, NON_NEGATIVE_INT] = 0

        def validate(self) -> None:
            """Refuse both ways of setting the start."""
            if self.start_round and self.start:
                raise ValueError(
                    "mnl: set the start of the guidance either as a fraction (start) or as a round "
                    "(start-round), not both"
                )

    params: Params

    def __init__(self, params: MNL.Params | None = None) -> None:
        super().__init__(params)
        #: Per sample of the last batch: the guiding modality, or ``None``.
        self.last_guides: list[str | None] = []

    def extend_model(self, model: nn.Module) -> None:
        """Add the per-modality heads after the base model is built (MNL does not set
        ``needs_heads``, so its heads' initial weights are drawn after the fusion head's, as in
        every earlier fedmm version: results stay comparable)."""
        model.add_heads()

    def guiding(self) -> bool:
        """Whether the current local epoch adds the negative-learning term (from ``start`` of
        training on, or from round ``start-round`` when it is set)."""
        if self.params.start_round:
            return self.training_round() >= self.params.start_round
        return self.progress() >= self.params.start

    def begin_round(self, model: nn.Module, data: TensorDict, ctx: RoundContext) -> None:
        super().begin_round(model, data, ctx)
        self.last_guides = []

    def fuse(self, model: nn.Module, feats: dict[str, torch.Tensor], heads: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fused logits ``z^f`` of the modalities in ``feats``: the mean of their head logits
        ``heads`` (``fusion = "mean"``) or the concat fusion head (``fusion = "concat"``)."""
        if self.params.fusion == "mean":
            return torch.stack(list(heads.values())).mean(dim=0)
        return model.fuse(feats)

    def predict(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        """``z^f`` over the modalities present in ``batch`` (see :meth:`fuse`)."""
        feats = model.encode(batch)
        return self.fuse(model, feats, model.head_logits(feats))

    def loss(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        y = batch[LABEL_KEY]
        feats = model.encode({m: batch[m] for m in self.trained_modalities(model, batch)})
        heads = model.head_logits(feats)
        fused = self.fuse(model, feats, heads)
        loss = sum(F.cross_entropy(z, y) for z in heads.values())
        if len(heads) > 1 or self.params.fusion != "mean":  # a lone head under mean is z^f itself: once
            loss = F.cross_entropy(fused, y) + loss
        self.last_guides = []
        if len(heads) < 2 or not self.guiding():
            return loss
        mods = list(heads)
        guide = select_guides([heads[m] for m in mods], y, strongest_competitor(fused, y))
        self.last_guides = [mods[g] if g >= 0 else None for g in guide.tolist()]
        for d_idx, d in enumerate(mods):
            mask = guide == d_idx
            if not bool(mask.any()):
                continue
            for w in mods:
                if w != d:
                    loss = loss + negative_learning_term(heads[w], heads[d], y, mask, self.params.lam)
        return loss
