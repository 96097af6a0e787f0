"""Per-modality encoders and the multimodal model (parameter groups: :mod:`fedmm.groups`)."""

from fedmm.models.encoders import build_encoder, encoder_names, register_encoder
from fedmm.models.net import ModelConfig, MultimodalNet

__all__ = [
    "ModelConfig",
    "MultimodalNet",
    "build_encoder",
    "encoder_names",
    "register_encoder",
]
