"""OGM-GE: On-the-fly Gradient Modulation with Generalisation Enhancement (Peng et al., CVPR 2022).

Method: docs/methods/ogm-ge.md §2 and §5; reference code
``GeWu-Lab/OGM-GE_CVPR2022/main.py`` (``train_epoch``).

The loss is the fused cross-entropy alone. After ``backward`` the gradients of the encoder of the
modality that currently dominates the batch are scaled down by ``k = 1 - tanh(alpha * rho)``, and
(GE) Gaussian noise with the gradient's own standard deviation is added to every encoder's
modulated tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fedmm.data.base import LABEL_KEY, TensorDict
from fedmm.objectives.base import Objective, RoundContext
from fedmm.objectives.registry import register_objective
from fedmm.params import FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, Checked, Search

#: Added to the gradient's standard deviation before drawing the GE noise (reference value).
GE_STD_EPS = 1e-8


def confidence_sums(slot_logits: dict[str, torch.Tensor], y: torch.Tensor) -> dict[str, float]:
    """``s^m = sum_i softmax(z^m_i)_{y_i}``: batch SUMS (not means) of the target-class probability
    of each modality's pseudo-logits."""
    return {m: float(z.detach().softmax(dim=1).gather(1, y[:, None]).sum()) for m, z in slot_logits.items()}


def discrepancy_ratios(scores: dict[str, float]) -> dict[str, float]:
    """``rho_m = s^m / mean_{j != m} s^j`` for two or more modalities.

    With two modalities this is the reference's ``rho^a = s^a / s^v`` and ``rho^v = s^v / s^a``.
    A zero denominator gives ``inf`` (``k = 0``) unless ``s^m`` is zero too (then ``rho = 0``).
    """
    if len(scores) < 2:
        raise ValueError(f"discrepancy ratios need at least two modalities, got {list(scores)}")
    total = sum(scores.values())
    ratios = {}
    for m, s in scores.items():
        others = (total - s) / (len(scores) - 1)
        ratios[m] = s / others if others > 0.0 else (math.inf if s > 0.0 else 0.0)
    return ratios


def modulation_coefficients(scores: dict[str, float], alpha: float) -> dict[str, float]:
    """The coefficient ``k^m`` of every modality from its confidence sum ``s^m``.

    Generalisation to ``M >= 2`` modalities (ours; the paper and code handle two):
    ``rho_m = s^m / mean_{j != m} s^j`` and ``k^m = 1 - tanh(alpha * rho_m)`` for every ``m`` with
    ``rho_m > 1``, ``k^m = 1`` otherwise. Several modalities can be damped at once when ``M > 2``.

    Ties: no ``rho_m`` exceeds 1 only when all ``s^m`` are equal; the reference code then takes its
    ``else`` branch and damps audio, its first modality, with ``1 - tanh(alpha * 1)``. We damp the
    first modality of ``scores`` (canonical order) the same way. With two modalities this is exactly
    the reference rule: ``rho^v > 1`` damps v only; otherwise a is damped with ``rho^a = 1 / rho^v``.

    ``scores`` must be ordered canonically (dicts keep insertion order).
    """
    ratios = discrepancy_ratios(scores)
    coeffs = {m: (1.0 - math.tanh(alpha * r) if r > 1.0 else 1.0) for m, r in ratios.items()}
    if all(r <= 1.0 for r in ratios.values()):
        first = next(iter(ratios))
        coeffs[first] = 1.0 - math.tanh(alpha * ratios[first])
    return coeffs


def modulated_parameters(model: nn.Module, modality: str) -> list[nn.Parameter]:
    """The tensors OGM-GE modulates for ``modality``: parameters of ``encoders.<modality>`` with two
    or more dimensions, i.e. convolution kernels (3-D for Conv1d, 4-D for Conv2d) and linear
    weights. Biases and batch-norm affine parameters (1-D) are left alone, as are the fusion layer
    and any heads.

    The reference selects 4-D tensors of the audio/visual ResNet-18s, which are exactly their
    convolution kernels (ResNet-18 trunks hold no linear layer); our 1-D CNN and MLP encoders have
    3-D and 2-D weights, hence ``ndim >= 2``. On a ResNet-18 encoder both rules pick the same tensors.
    """
    return [p for p in model.encoders[modality].parameters() if p.ndim >= 2]


@register_objective("ogm-ge")
class OGMGE(Objective):
    """OGM-GE: fused CE; the dominant modality's encoder gradients are damped per batch.

    Per batch with trained modalities ``S`` (``|S| >= 2``) and inside the modulation window:

    1. ``L = CE(fusion([u^m]), y)`` (absent slots zero-filled), ``backward``;
    2. pseudo-logits ``z^m = W_m u^m + b / M`` (:meth:`MultimodalNet.slot_logits`), confidence sums
       ``s^m`` and coefficients ``k^m`` as in :func:`modulation_coefficients` (computed in
       :meth:`loss` from the features of the forward pass, so the encoders run once per step);
    3. for each ``m`` in ``S`` and each tensor of :func:`modulated_parameters`:
       ``g <- k^m g + eps``, ``eps ~ N(0, (std(g) + 1e-8)^2)`` with ``std`` of the unmodulated
       gradient (``eps = 0`` when ``ge`` is off). Noise goes to every trained encoder, damped or not,
       as in the reference.

    The window is a fraction of the run's local epochs (default the first half, as the reference's
    epochs 0..50 of 100) and acts per local epoch. Outside it, and on a batch or client with a
    single modality: plain fused CE, no modulation, no noise.
    """

    needs_heads: ClassVar[bool] = False

    @dataclass
    class Params(Checked):
        """Parameters of ``ogm-ge``.

        Parameters
        ----------
        alpha:
            Strength of the damping in ``k = 1 - tanh(alpha * rho)``. The reference requires it on
            the command line; its README gives 0.8 for CREMA-D and 0.1 for VGGSound, and its
            "default modulation setting" and example command use 0.1. Default 0.1 (mild: ``k`` stays
            above 0.75 for ``rho <= 2.5``); set 0.8 to reproduce the CREMA-D setting.
        modulation_start:
            First fraction of the run's training in the inclusive modulation window: training is
            ``T = num-server-rounds x local-epochs`` local epochs (see
            :class:`~fedmm.objectives.base.Schedule`), and local epoch ``g`` (0-based, counted over
            the run) is modulated when ``modulation-start <= g / T <= modulation-end``; other epochs
            train with plain CE. The window acts per local epoch, so a round can lie partly inside
            it. Default 0 (the reference's ``modulation_starts = 0``).
        modulation_end:
            Last fraction of the window, in ``[modulation_start, 1]``. Default 0.5: the reference
            modulates epochs 0..50 (inclusive) of 100, the first half of training; 0.5 gives
            exactly those epochs for ``T = 100``.
        modulation_start_round:
            An explicit window in server rounds instead of the fractions: first round (1-based) of
            the inclusive window, every local epoch of a round inside it being modulated. 0
            (default) = not set; set only ``modulation-end-round`` and the window starts at round 1.
            Setting a round bound together with a non-default ``modulation-start`` or
            ``modulation-end`` is an error.
        modulation_end_round:
            Last round of the explicit window; 0 (default) = not set, i.e. the last round when only
            ``modulation-start-round`` is set.
        ge:
            Add the Gaussian generalisation-enhancement noise (OGM-GE); ``False`` gives plain OGM.
        """

        alpha: Annotated[float, NON_NEGATIVE, Search(0.05, 1.0, log=True)] = 0.1
        modulation_start: Annotated[float, FRACTION] = 0.0
        modulation_end: Annotated[float, FRACTION, Search(0.2, 1.0)] = 0.5
        modulation_start_round: Annotated[int, NON_NEGATIVE_INT] = 0
        modulation_end_round: Annotated[int, NON_NEGATIVE_INT] = 0
        ge: bool = True

        def validate(self) -> None:
            """The window's order, and one way of setting it."""
            if not self.modulation_start <= self.modulation_end:
                raise ValueError(
                    "ogm-ge: the window needs 0 <= modulation-start <= modulation-end <= 1 (fractions of "
                    f"training), got modulation-start={self.modulation_start}, modulation-end={self.modulation_end}"
                )
            if self.modulation_end_round and self.modulation_end_round < self.modulation_start_round:
                raise ValueError(
                    f"ogm-ge: modulation-end-round ({self.modulation_end_round}) must be >= "
                    f"modulation_start_round ({self.modulation_start_round})"
                )
            if self.uses_rounds() and (self.modulation_start, self.modulation_end) != (
                self.default("modulation_start"),
                self.default("modulation_end"),
            ):
                raise ValueError(
                    "ogm-ge: set the window either as fractions (modulation-start, modulation-end) or as "
                    "rounds (modulation-start-round, modulation-end-round), not both"
                )

        def uses_rounds(self) -> bool:
            """Whether the window is given in rounds (either round bound set)."""
            return self.modulation_start_round > 0 or self.modulation_end_round > 0

    params: Params

    def __init__(self, params: OGMGE.Params | None = None) -> None:
        super().__init__(params)
        #: Coefficients of the last batch seen by :meth:`loss`, consumed by :meth:`adjust_gradients`.
        self.last_coefficients: dict[str, float] | None = None
        self._coeff_sums: dict[str, float] = {}
        self._modulated_steps = 0

    def modulating(self) -> bool:
        """Whether the current local epoch lies inside the modulation window (the round, with the
        round bounds; the update pass counts as round 1)."""
        p = self.params
        if p.uses_rounds():
            r = self.training_round()
            last = p.modulation_end_round or (self.ctx.num_rounds if self.ctx is not None else r)
            return max(p.modulation_start_round, 1) <= r <= last
        return p.modulation_start <= self.progress() <= p.modulation_end

    def begin_round(self, model: nn.Module, data: TensorDict, ctx: RoundContext) -> None:
        super().begin_round(model, data, ctx)
        self.last_coefficients = None
        self._coeff_sums = {}
        self._modulated_steps = 0

    def loss(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        y = batch[LABEL_KEY]
        feats = model.encode({m: batch[m] for m in self.trained_modalities(model, batch)})
        logits = model.fuse(feats)
        self.last_coefficients = None
        if len(feats) >= 2 and self.modulating():
            with torch.no_grad():
                slot = model.slot_logits({m: u.detach() for m, u in feats.items()})
                self.last_coefficients = modulation_coefficients(confidence_sums(slot, y), self.params.alpha)
        return F.cross_entropy(logits, y)

    @torch.no_grad()
    def adjust_gradients(self, model: nn.Module, batch: TensorDict) -> None:
        """Apply the coefficients that :meth:`loss` computed for this batch (nothing when it computed
        none: single modality or outside the window)."""
        coeffs, self.last_coefficients = self.last_coefficients, None
        if coeffs is None:
            return
        for m, k in coeffs.items():
            for p in modulated_parameters(model, m):
                if p.grad is None:
                    continue
                g = p.grad
                if self.params.ge:
                    std = float(g.std()) if g.numel() > 1 else 0.0
                    noise = torch.randn_like(g) * (std + GE_STD_EPS)
                    p.grad = g * k + noise
                elif k != 1.0:
                    g.mul_(k)
            self._coeff_sums[m] = self._coeff_sums.get(m, 0.0) + k
        self._modulated_steps += 1

    def end_round(self, model: nn.Module, data: TensorDict) -> dict[str, float | list[float]]:
        """``ogm-coeff/<m>``: mean coefficient of each modality over the round's modulated steps."""
        if self._modulated_steps == 0:
            return {}
        return {f"ogm-coeff/{m}": s / self._modulated_steps for m, s in self._coeff_sums.items()}
