"""Per-modality encoders, one builder each, chosen by name from a registry.

Every encoder maps a batch of one modality to features of shape ``(B, embed_dim)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedmm.registry import Registry

EncoderBuilder = Callable[[tuple[int, ...], int], nn.Module]

#: Every registered encoder builder, by name.
ENCODERS: Registry[EncoderBuilder] = Registry("encoder")


def register_encoder(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator: register ``builder(input_shape, embed_dim) -> nn.Module`` as encoder ``name``
    (config ``encoder.<modality> = "<name>"``; its docstring's first line describes it)."""
    return ENCODERS.decorator(name)


def encoder_names() -> list[str]:
    return ENCODERS.names()


def build_encoder(name: str, input_shape: tuple[int, ...], embed_dim: int) -> nn.Module:
    """Build encoder ``name`` for inputs of ``input_shape`` (no batch dim) with ``embed_dim`` outputs."""
    return ENCODERS.get(name)(tuple(input_shape), embed_dim)


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


def _resnet18_trunk(in_channels: int) -> nn.Module:
    """torchvision ResNet-18 without weights (trained from scratch), ``conv1`` taking
    ``in_channels`` channels and the classifier removed: ``(N, C, H, W) -> (N, 512)`` after global
    average pooling. ``MultimodalNet`` re-initialises it with :func:`fedmm.models.net.init_weights`."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


class ResNet18Audio(nn.Module):
    """ResNet-18 over a ``(C, F, T)`` spectrogram image; 512 features, or a Linear projection to
    ``embed_dim`` when ``embed_dim != 512`` (CREMA-D configs use 512, so no projection)."""

    def __init__(self, input_shape: tuple[int, ...], embed_dim: int) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"resnet18-audio expects (channels, freq, time) inputs such as (1, 257, 188), got shape {input_shape}"
            )
        self.net = _resnet18_trunk(input_shape[0])
        self.proj = nn.Identity() if embed_dim == 512 else nn.Linear(512, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net(x))


class ResNet18Video(nn.Module):
    """ResNet-18 over ``(T, 3, H, W)`` clips: the T frames are folded into the batch, the 512-d
    pooled features are averaged over T (the same as OGM-GE's 3-D average pool over T, H, W), then
    projected to ``embed_dim`` by a Linear layer when ``embed_dim != 512``."""

    def __init__(self, input_shape: tuple[int, ...], embed_dim: int) -> None:
        super().__init__()
        if len(input_shape) != 4:
            raise ValueError(
                f"resnet18-video expects (frames, channels, height, width) inputs such as "
                f"(1, 3, 224, 224), got shape {input_shape}"
            )
        self.net = _resnet18_trunk(input_shape[1])
        self.proj = nn.Identity() if embed_dim == 512 else nn.Linear(512, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        feats = self.net(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1).mean(dim=1)
        return self.proj(feats)


@register_encoder("resnet18-audio")
def resnet18_audio(input_shape: tuple[int, ...], embed_dim: int) -> nn.Module:
    """ResNet-18 from scratch for ``(1, F, T)`` log-spectrograms (1-channel ``conv1``)."""
    return ResNet18Audio(input_shape, embed_dim)


@register_encoder("resnet18-video")
def resnet18_video(input_shape: tuple[int, ...], embed_dim: int) -> nn.Module:
    """ResNet-18 from scratch for ``(T, 3, H, W)`` frame clips (frames folded into the batch)."""
    return ResNet18Video(input_shape, embed_dim)
