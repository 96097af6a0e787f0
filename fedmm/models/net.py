"""The multimodal model: an encoder per modality, concat fusion over modality slots, optional heads.

Parameter names carry their aggregation group (the rule is :mod:`fedmm.groups`):
``encoders.<m>.*``, ``heads.<m>.*``, ``projectors.<m>.*`` belong to modality ``m``; everything
under ``fusion.*`` is shared by all clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fedmm.data.base import ModalitySpec, TensorDict
from fedmm.models.encoders import build_encoder


@dataclass
class ModelConfig:
    """How to build a :class:`MultimodalNet`.

    Parameters
    ----------
    embed_dim:
        Feature size of every encoder (the width of one fusion slot).
    encoders:
        Encoder name of every modality (a registered name, :mod:`fedmm.models.encoders`); a run
        takes each from ``encoder.<modality>`` or else from its dataset's entry
        (:meth:`fedmm.data.registry.DatasetEntry.default_encoders`, in ``workspace.model_of``).
    heads:
        Whether to add a linear classifier per modality (``heads.<m>``) beside the fusion head.
    """

    embed_dim: int = 64
    encoders: dict[str, str] = field(default_factory=dict)
    heads: bool = False


class FusionHead(nn.Module):
    """Concat fusion: one linear layer over ``[slot_1; ...; slot_M]``. Objectives may add shared
    modules here (they then aggregate over all clients)."""

    def __init__(self, num_slots: int, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_slots * embed_dim, num_classes)

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        return self.linear(slots)


class MultimodalNet(nn.Module):
    """Encoders per modality, concat fusion over fixed modality slots, optional per-modality heads.

    Parameters
    ----------
    modalities:
        The dataset's modalities in canonical order; the order fixes the fusion slots.
    num_classes:
        Number of output classes.
    config:
        Widths, encoder choices and whether per-modality heads exist.
    """

    def __init__(self, modalities: list[ModalitySpec], num_classes: int, config: ModelConfig | None = None) -> None:
        super().__init__()
        config = config or ModelConfig()
        self.config = config
        self.modalities = [m.name for m in modalities]
        self.embed_dim = config.embed_dim
        self.num_classes = num_classes
        unknown = set(config.encoders) - set(self.modalities)
        if unknown:
            raise ValueError(
                f"encoders given for unknown modalities {sorted(unknown)}; the dataset has {self.modalities}"
            )
        missing = [m for m in self.modalities if m not in config.encoders]
        if missing:
            raise ValueError(f"no encoder named for modalities {missing}: ModelConfig.encoders needs one per modality")
        self.encoders = nn.ModuleDict(
            {m.name: build_encoder(config.encoders[m.name], m.shape, config.embed_dim) for m in modalities}
        )
        self.heads = nn.ModuleDict(
            {m: nn.Linear(config.embed_dim, num_classes) for m in self.modalities} if config.heads else {}
        )
        self.fusion = FusionHead(len(modalities), config.embed_dim, num_classes)
        init_weights(self)

    def add_heads(self) -> None:
        """Add a linear head per modality that has none (Xavier-normal weights, zero bias)."""
        for m in self.modalities:
            if m not in self.heads:
                head = nn.Linear(self.embed_dim, self.num_classes)
                init_weights(head)
                self.heads[m] = head

    # -- forward pieces ------------------------------------------------------------------------
    def encode(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        """Features of every modality present in ``batch`` (absent modalities are skipped)."""
        return {m: self.encoders[m](batch[m]) for m in self.modalities if m in batch}

    def slots(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The concatenated fusion input; a modality missing from ``feats`` is a zero slot."""
        ref = next(iter(feats.values()))
        zeros = ref.new_zeros(ref.shape[0], self.embed_dim)
        return torch.cat([feats.get(m, zeros) for m in self.modalities], dim=1)

    def fuse(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fusion-head logits; absent modalities are zero-filled (the only place zero-fill happens)."""
        return self.fusion(self.slots(feats))

    def forward(self, batch: TensorDict) -> torch.Tensor:
        return self.fuse(self.encode(batch))

    def slot_logits(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each modality's share of the fusion logits, ``W_m u_m + b / M`` (OGM-GE's pseudo-logits).

        Summed over all modalities they equal the fusion logits.
        """
        weight, bias = self.fusion.linear.weight, self.fusion.linear.bias
        share = bias / len(self.modalities)
        out = {}
        for i, m in enumerate(self.modalities):
            if m in feats:
                w_m = weight[:, i * self.embed_dim : (i + 1) * self.embed_dim]
                out[m] = feats[m] @ w_m.T + share
        return out

    def head_logits(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-modality head logits for the modalities in ``feats`` (needs ``heads=True``)."""
        if not self.heads:
            raise RuntimeError("this model has no per-modality heads; build it with ModelConfig(heads=True)")
        return {m: self.heads[m](f) for m, f in feats.items()}


def init_weights(module: nn.Module) -> None:
    """The OGM-GE lineage initialisation: Xavier-normal linear, Kaiming-normal conv, BN 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
