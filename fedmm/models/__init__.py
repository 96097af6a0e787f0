"""Per-modality encoders, the multimodal model and its parameter groups."""

from fedmm.models.encoders import build_encoder, encoder_names, register_encoder
from fedmm.models.net import (
    SHARED_GROUP,
    ModelConfig,
    MultimodalNet,
    group_modality,
    groups_for,
    parameter_group,
)

__all__ = [
    "SHARED_GROUP",
    "ModelConfig",
    "MultimodalNet",
    "build_encoder",
    "encoder_names",
    "group_modality",
    "groups_for",
    "parameter_group",
    "register_encoder",
]
