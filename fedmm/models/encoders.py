"""Per-modality encoders, one builder each, chosen by name from a registry.

Every encoder maps a batch of one modality to features of shape ``(B, embed_dim)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

EncoderBuilder = Callable[[tuple[int, ...], int], nn.Module]

_ENCODERS: dict[str, EncoderBuilder] = {}

#: The encoder used for a modality kind when the config does not name one.
DEFAULT_ENCODER = {"series": "cnn1d", "vector": "mlp", "spectrogram": "resnet18-audio", "frames": "resnet18-video"}


def register_encoder(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    def deco(fn: EncoderBuilder) -> EncoderBuilder:
        _ENCODERS[name] = fn
        return fn

    return deco


def encoder_names() -> list[str]:
    return sorted(_ENCODERS)


def build_encoder(name: str, input_shape: tuple[int, ...], embed_dim: int) -> nn.Module:
    """Build encoder ``name`` for inputs of ``input_shape`` (no batch dim) with ``embed_dim`` outputs."""
    if name not in _ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; expected one of {encoder_names()}")
    return _ENCODERS[name](tuple(input_shape), embed_dim)


@register_encoder("cnn1d")
def cnn1d(input_shape: tuple[int, ...], embed_dim: int) -> nn.Module:
    """A 3-block 1-D CNN for ``(channels, time)`` series such as 128-sample IMU windows."""
    if len(input_shape) != 2:
        raise ValueError(f"cnn1d expects (channels, time) inputs, got shape {input_shape}")
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv1d(channels, 32, kernel_size=5, padding=2),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(32, 64, kernel_size=5, padding=2),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(64, embed_dim, kernel_size=3, padding=1),
        nn.BatchNorm1d(embed_dim),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
    )


@register_encoder("mlp")
def mlp(input_shape: tuple[int, ...], embed_dim: int) -> nn.Module:
    """A two-layer MLP for flat feature vectors."""
    in_features = int(torch.Size(input_shape).numel())
    hidden = max(embed_dim, 128)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, embed_dim),
        nn.ReLU(),
    )
