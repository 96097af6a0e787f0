"""FedCMI's client side: cross-modal infiltration with class-wise temperature.

Method: docs/methods/fedcmi.md §2, §3, §4 and §7.1; reference code
``fanyunfeng-bit/Balanced-Modality-Selection-in-MFL`` (``client/FedCMI.py``,
``DecomposedAVClassifier``). Used by ``strategy = "fedcmi"`` (the server side is modality-aware
FedAvg: the received global model is the teacher, so nothing else travels).

Model (:mod:`fedmm.models.projectors`): per modality a self projector ``S_m`` and an infiltration
projector ``I_m`` sharing the classifier ``C_m`` (``heads.<m>``); the fusion head ``F`` sees the
self outputs ``u_m``; a missing slot is filled from the infiltration outputs ``u~``.

Loss of a client training two or more modalities ``S``, batch ``B``, received global model ``g``:

* ``L_task = CE(F(u), y) + lambda1 * sum_{m in S} CE(C_m(u_m), y)``;
* batch dominance from the local self branches: ``s_m = sum_i softmax(C_m(u_m,i))_{y_i}``; the
  dominant modality ``d`` has the largest ``s_m`` (a tie goes to the later modality in canonical
  order, as the reference's ``ratio > 1`` test gives the tie to the second modality);
* ``L_CMI = sum_{w in S, w != d} mean_i H(softmax(C^g_d(u^g_d,i) / tau_{y_i}),
  softmax(C_w(u~_w,i) / tau_{y_i}))``: the frozen global model's dominant self branch teaches
  every weaker modality's local infiltration branch (with two modalities: the reference's one
  term); ``H(p, q) = -sum_c p_c log q_c``, no ``tau^2`` rescaling, the same ``tau`` on both sides;
* ``L = L_task + lambda2 * L_CMI``, with ``L_CMI`` off in the first ``warmup-rounds`` rounds;
  with ``proximal`` on, the clients' steps add the gradient of ``mu / 2 * ||w - w_g||^2``
  (``mu`` default 1.0, the reference's ``--mu``; :attr:`FedCMI.proximal_mu`).

A client training one modality ``m`` (it holds only ``m``, or the server assigned only ``m``):
``L = CE(F(u_m with u~_m in the other slots), y)``, no self-branch CE and no distillation.

Class-wise temperature (:func:`class_wise_temperature`): once per round, before training, from the
received global model on the client's whole local data; for every pair of trained modalities, the
ratio taken in canonical order (the first dataset modality over the second, as audio over visual in
the reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Annotated, ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from fedmm.data.base import LABEL_KEY, TensorDict, num_examples
from fedmm.models.projectors import add_projectors, filled_slots, project
from fedmm.objectives.base import Objective, RoundContext
from fedmm.objectives.registry import register_objective
from fedmm.params import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, Checked, Search


def class_wise_temperature(
    p_first: torch.Tensor, p_second: torch.Tensor, present: torch.Tensor, kappa: float
) -> torch.Tensor:
    """FedCMI's per-class temperatures ``tau_c`` for one pair of modalities (docs/methods/fedcmi.md §4).

    Parameters
    ----------
    p_first, p_second:
        ``(K,)`` mean target-class confidence of each modality's self branch per class.
    present:
        ``(K,)`` bool: the class has local samples. Absent classes, and classes where either
        confidence is 0, are left out of the mean ratio and get ``tau = 1``.
    kappa:
        Sharpness (the reference's hard-coded ``coef3 = 2``).

    Returns
    -------
    ``(K,)`` temperatures. With ``r_c = p_first_c / p_second_c`` and ``r_bar`` their mean over the
    counted classes: if ``r_bar > 1`` (the first modality dominates on this client)
    ``tau_c = 1 / (1 + kappa ln(r_c / r_bar))`` where ``r_c > r_bar``; otherwise the roles swap,
    ``tau_c = 1 / (1 + kappa ln((1/r_c) / (1/r_bar)))`` where ``1/r_c > 1/r_bar``; all other
    classes get 1.
    """
    tau = torch.ones_like(p_first, dtype=torch.float64)
    counted = present & (p_first > 0) & (p_second > 0)
    if not bool(counted.any()):
        return tau.to(p_first.dtype)
    ratio = p_first.double()[counted] / p_second.double()[counted]
    mean = ratio.mean()
    if mean <= 1:  # the second modality dominates: the same rule on the inverse ratios
        ratio, mean = 1.0 / ratio, 1.0 / mean
    above = ratio > mean
    values = torch.ones_like(ratio)
    values[above] = 1.0 / (1.0 + kappa * torch.log(ratio[above] / mean))
    tau[counted] = values
    return tau.to(p_first.dtype)


@register_objective("fedcmi")
class FedCMI(Objective):
    """FedCMI: self-branch CEs plus cross-modal infiltration from the global dominant modality."""

    uses_global_model: ClassVar[bool] = True  # the teacher of the infiltration loss
    needs_heads: ClassVar[bool] = True
    fills_missing: ClassVar[bool] = True

    @dataclass
    class Params(Checked):
        """Parameters of ``fedcmi`` (reference defaults, docs/methods/fedcmi.md §6).

        Parameters
        ----------
        lambda1:
            Weight of the self-branch CEs (the reference's hard-coded ``coef1 = 2``).
        lambda2:
            Weight of the cross-modal infiltration loss (``--MI_alpha``, default 1).
        kappa:
            Sharpness of the class-wise temperature (hard-coded ``coef3 = 2``).
        class_wise:
            Use the class-wise temperature; ``false`` uses ``temperature`` for every class.
        temperature:
            The single temperature when ``class-wise`` is off (``--temp``, default 1).
        warmup_rounds:
            Rounds at the start without the infiltration loss (``--warmup_epoch``, default 1).
        projector:
            Projector shape: ``linear`` (one Linear layer, default) or ``mlp`` (three layers).
        proximal:
            Add the FedProx term ``mu / 2 * ||w - w_global||^2`` (the reference's ``--prox``).
        mu:
            The proximal weight when ``proximal`` is on (the reference's ``--mu``, default 1.0); the
            strategy parameter ``strategy.mu`` is fedprox's and is refused here.
        """

        lambda1: Annotated[float, NON_NEGATIVE, Search(0.5, 4.0)] = 2.0
        lambda2: Annotated[float, NON_NEGATIVE, Search(0.25, 2.0)] = 1.0
        kappa: Annotated[float, NON_NEGATIVE, Search(0.5, 4.0)] = 2.0
        class_wise: bool = True
        temperature: Annotated[float, POSITIVE, Search(0.5, 4.0)] = 1.0
        warmup_rounds: Annotated[int, NON_NEGATIVE_INT] = 1
        projector: Literal["linear", "mlp"] = "linear"
        proximal: bool = False
        mu: Annotated[float, NON_NEGATIVE, Search(0.01, 2.0, log=True)] = 1.0

    params: Params

    def __init__(self, params: FedCMI.Params | None = None) -> None:
        super().__init__(params)
        #: Per-class temperatures of this round per modality pair (stored under both orders).
        self.temperatures: dict[tuple[str, str], torch.Tensor] = {}
        #: The dominant modality of the last multimodal batch (for inspection and tests).
        self.last_dominant: str | None = None

    @property
    def proximal_mu(self) -> float:
        """``mu`` when ``proximal`` is on, else 0."""
        return self.params.mu if self.params.proximal else 0.0

    def extend_model(self, model: nn.Module) -> None:
        add_projectors(model, self.params.projector)

    def distilling(self) -> bool:
        """Whether the infiltration loss is on this round (after the warm-up)."""
        return self.ctx is not None and self.ctx.server_round > self.params.warmup_rounds

    def predict(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        """The fusion head over the self-projector outputs; missing slots are zeros (the
        reference's ``acc_a``/``acc_v`` for a single-modality batch)."""
        own, _ = project(model, model.encode(batch))
        return model.fuse(own)

    def predict_filled(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        """Missing slots filled from the infiltration projectors (the reference's ``acc_av``)."""
        own, infiltrated = project(model, model.encode(batch))
        return model.fuse(filled_slots(model.modalities, own, infiltrated))

    # -- round hooks -----------------------------------------------------------------------------
    def begin_round(self, model: nn.Module, data: TensorDict, ctx: RoundContext) -> None:
        """Class-wise temperatures from the self branches of the received global model
        (``ctx.global_model``) on the local data, for multimodal training after the warm-up;
        evaluation (no global model) needs none."""
        super().begin_round(model, data, ctx)
        self.temperatures = {}
        trained = self.trained_modalities(model, data)
        if ctx.global_model is None or len(trained) < 2 or not self.distilling() or not self.params.class_wise:
            return
        conf, present = self.class_confidences(ctx.global_model, data, trained)
        for a, b in combinations(trained, 2):  # canonical order: r_c = p_a / p_b as in the reference
            tau = class_wise_temperature(conf[a], conf[b], present, self.params.kappa)
            self.temperatures[(a, b)] = self.temperatures[(b, a)] = tau

    @torch.no_grad()
    def class_confidences(
        self, model: nn.Module, data: TensorDict, modalities: list[str], chunk: int = 512
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per modality the ``(K,)`` mean of ``softmax(C_m(u_m))_c`` over the local samples of
        class ``c``, from ``model``'s self branches ``C_m(S_m(.))`` (in eval mode), and which
        classes are present."""
        was_training = model.training
        model.eval()
        try:
            y_all = data[LABEL_KEY]
            k = model.num_classes
            sums = {m: torch.zeros(k, dtype=torch.float64, device=y_all.device) for m in modalities}
            for start in range(0, num_examples(data), chunk):
                y = y_all[start : start + chunk]
                own, _ = project(model, model.encode({m: data[m][start : start + chunk] for m in modalities}))
                for m, logits in model.head_logits(own).items():
                    sums[m].index_add_(0, y, logits.softmax(dim=1).gather(1, y[:, None]).squeeze(1).double())
            counts = torch.bincount(y_all, minlength=k).double()
            present = counts > 0
            return {m: s / counts.clamp(min=1.0) for m, s in sums.items()}, present
        finally:
            model.train(was_training)

    def loss(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        y = batch[LABEL_KEY]
        trained = self.trained_modalities(model, batch)
        own, infiltrated = project(model, model.encode({m: batch[m] for m in trained}))
        fused = model.fuse(filled_slots(model.modalities, own, infiltrated))
        loss = F.cross_entropy(fused, y)
        if len(trained) == 1:
            return loss
        self_logits = model.head_logits(own)
        if self.params.lambda1 > 0:
            loss = loss + self.params.lambda1 * sum(F.cross_entropy(z, y) for z in self_logits.values())
        if self.distilling() and self.params.lambda2 > 0:
            loss = loss + self.params.lambda2 * self.infiltration_loss(model, batch, self_logits, infiltrated)
        return loss

    def dominant(self, self_logits: dict[str, torch.Tensor], y: torch.Tensor) -> str:
        """The batch's dominant modality: largest summed target confidence of the local self
        branches; ties go to the later modality in canonical order."""
        with torch.no_grad():
            scores = [
                (float(z.softmax(dim=1).gather(1, y[:, None]).sum()), i, m)
                for i, (m, z) in enumerate(self_logits.items())
            ]
        return max(scores)[2]

    def infiltration_loss(
        self,
        model: nn.Module,
        batch: TensorDict,
        self_logits: dict[str, torch.Tensor],
        infiltrated: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """``L_CMI``: the global model's dominant self branch teaches every weaker modality's
        local infiltration branch, both sharpened by the class-wise temperature of the pair."""
        teacher_model = self.ctx.global_model if self.ctx is not None else None
        if teacher_model is None:
            raise RuntimeError(
                "fedcmi: the infiltration loss needs the received global model (RoundContext.global_model)"
            )
        y = batch[LABEL_KEY]
        d = self.dominant(self_logits, y)
        self.last_dominant = d
        with torch.no_grad():
            teacher_feats = {d: teacher_model.encoders[d](batch[d])}
            teacher_own, _ = project(teacher_model, teacher_feats)
            teacher = teacher_model.heads[d](teacher_own[d])
        loss = teacher.new_zeros(())
        for w in self_logits:
            if w == d:
                continue
            tau = self._tau(d, w, y, teacher)
            target = (teacher / tau).softmax(dim=1)
            student = model.heads[w](infiltrated[w]) / tau
            loss = loss - (target * student.log_softmax(dim=1)).sum(dim=1).mean()
        return loss

    def _tau(self, a: str, b: str, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``(B, 1)`` temperature of each sample's class for the pair ``(a, b)``."""
        table = self.temperatures.get((a, b))
        if table is None:
            return like.new_full((y.shape[0], 1), self.params.temperature)
        return table.to(like.device, like.dtype)[y][:, None]
