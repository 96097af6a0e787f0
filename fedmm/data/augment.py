"""Random training transforms applied to whole batches on their device.

A dataset's data lives in memory as fixed tensors, so a random train-time transform (the
RandomResizedCrop + horizontal flip of the audio-visual protocol) runs on every training batch
instead of at load time: :func:`fedmm.training.train_local` calls the dataset's ``train_augment``
on each batch. Evaluation and the objectives' round statistics see the untransformed data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from fedmm.data.base import TensorDict

#: ``(batch, generator) -> batch``: a random transform of a training batch.
Augment = Callable[[TensorDict, torch.Generator], TensorDict]


def random_resized_crop_flip(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: float = 0.5,
) -> torch.Tensor:
    """torchvision's RandomResizedCrop + RandomHorizontalFlip, one draw per image, vectorised.

    Each image gets a crop of area fraction ``s ~ U(scale)`` and aspect ratio ``r`` log-uniform in
    ``ratio`` (sides clipped to the image instead of torchvision's redraws), at a uniform position,
    resized back to the image's size with bilinear interpolation, and is mirrored with probability
    ``flip``. One ``affine_grid`` + ``grid_sample`` does all images at once.

    Parameters
    ----------
    images:
        ``(N, C, H, W)`` float images on any device.
    generator:
        CPU generator the crop parameters are drawn from (same generator, same crops).
    """
    n, _, h, w = images.shape
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = log_r.exp()
    # crop sides as fractions of the image's width and height (the area fraction is of W x H)
    cw = (area * r * h / w).sqrt().clamp(max=1.0)
    ch = (area / r * w / h).sqrt().clamp(max=1.0)
    cx = cw / 2 + torch.rand(n, generator=generator) * (1 - cw)
    cy = ch / 2 + torch.rand(n, generator=generator) * (1 - ch)
    mirror = torch.where(torch.rand(n, generator=generator) < flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cw * mirror
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = 2 * cy - 1
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class FrameAugment:
    """RandomResizedCrop + flip of every frame of a ``(B, T, C, H, W)`` clip modality.

    Parameters
    ----------
    modality:
        The clip modality to transform; a batch without it passes unchanged.
    """

    modality: str

    def __call__(self, batch: TensorDict, generator: torch.Generator) -> TensorDict:
        if self.modality not in batch:
            return batch
        clips = batch[self.modality]
        flat = clips.reshape(-1, *clips.shape[2:])
        return {**batch, self.modality: random_resized_crop_flip(flat, generator).reshape(clips.shape)}
