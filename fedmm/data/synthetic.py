"""A generator with a controllable strong and weak modality, any number of modalities (fast tests)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch

from fedmm.data.base import Dataset, ModalitySpec
from fedmm.data.registry import register_dataset
from fedmm.params import Interval, Options


@register_dataset(
    "synthetic",
    description="Gaussian classes, modality m0 strongest to m{M-1} weakest",
    encoders={"vector": "mlp", "series": "cnn1d"},
)
def load_synthetic(
    *,
    data_dir: str | None = None,
    seed: int = 0,
    num_modalities: Annotated[int, Interval(int, 1, None, closed="left")] = 2,
    num_classes: Annotated[int, Interval(int, 2, None, closed="left")] = 4,
    num_train: int = 600,
    num_test: int = 200,
    dim: Annotated[int, Interval(int, 2, None, closed="left")] = 16,
    strengths: str = "",
    kind: Annotated[str, Options("vector", "series")] = "vector",
) -> Dataset:
    """Class-conditional Gaussians per modality, ``x = strength * mean[y] + noise``.

    Parameters
    ----------
    num_modalities:
        Number of modalities, named ``m0 .. m{M-1}`` (``m0`` strongest).
    num_classes:
        Number of classes.
    num_train, num_test:
        Examples in the train and the test split (``num_train >= num_classes``).
    dim:
        Features per modality.
    strengths:
        Comma-separated signal strength per modality; default from 1.5 (``m0``) down to 0.4.
    kind:
        ``"vector"`` (``(dim,)`` inputs) or ``"series"`` (``(2, dim)`` inputs for the 1-D CNN).
    """
    if num_train < num_classes:
        raise ValueError(f"dataset.num-train must be >= dataset.num-classes ({num_classes}), got {num_train}")
    if strengths:
        values = [float(s) for s in strengths.split(",")]
        if len(values) != num_modalities:
            raise ValueError(f"dataset.strengths has {len(values)} values for {num_modalities} modalities")
    else:
        values = list(np.linspace(1.5, 0.4, num_modalities)) if num_modalities > 1 else [1.5]
    rng = np.random.default_rng(seed)
    shape = (dim,) if kind == "vector" else (2, dim)
    size = int(np.prod(shape))
    means = [rng.standard_normal((num_classes, size)) for _ in range(num_modalities)]
    n = num_train + num_test
    y = rng.permutation(np.arange(n) % num_classes)
    data = {
        f"m{i}": (values[i] * means[i][y] + rng.standard_normal((n, size))).astype(np.float32).reshape(n, *shape)
        for i in range(num_modalities)
    }

    def split(rows: slice) -> dict[str, torch.Tensor]:
        out = {m: torch.from_numpy(x[rows]) for m, x in data.items()}
        out["y"] = torch.from_numpy(y[rows].astype(np.int64))
        return out

    return Dataset(
        name="synthetic",
        modalities=[ModalitySpec(f"m{i}", shape, kind) for i in range(num_modalities)],
        class_names=[f"class{c}" for c in range(num_classes)],
        train=split(slice(0, num_train)),
        test=split(slice(num_train, n)),
    )
