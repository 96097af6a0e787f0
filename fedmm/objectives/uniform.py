"""``uniform``: the uniform multitask baseline (docs/methods/uniform.md §2).

The fusion head and one linear head per modality are trained together with equal weights:
``L = CE(g([u_1; ...; u_M]), y) + w * sum_{m in S} CE(h_m(u_m), y)`` over the trained modalities
``S`` present in the batch (``w = head-weight``, 1 for the uniform baseline; the Data Remixing
paper's baseline uses 0.5). A client holding one modality ``m`` trains
``CE(g([.., u_m, .., 0, ..]), y) + w * CE(h_m(u_m), y)``: absent slots are zero-filled by the
model. Inference is the fusion head (the default ``predict``).
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
from fedmm.params import NON_NEGATIVE, Checked, Search


@register_objective("uniform")
class Uniform(Objective):
    """Uniform multitask: fused CE plus the CE of every present modality's own head."""

    needs_heads: ClassVar[bool] = True

    @dataclass
    class Params(Checked):
        """Parameters of ``uniform``.

        Parameters
        ----------
        head_weight:
            Weight of each per-modality head loss (1 = the uniform baseline).
        """

        head_weight: Annotated[float, NON_NEGATIVE, Search(0.1, 2.0)] = 1.0

    params: Params

    def __init__(self, params: Uniform.Params | None = None) -> None:
        super().__init__(params)

    def loss(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        y = batch[LABEL_KEY]
        feats = model.encode({m: batch[m] for m in self.trained_modalities(model, batch)})
        loss = F.cross_entropy(model.fuse(feats), y)
        if self.params.head_weight > 0.0:
            heads = model.head_logits(feats)
            loss = loss + self.params.head_weight * sum(F.cross_entropy(z, y) for z in heads.values())
        return loss
