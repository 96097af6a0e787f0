"""Your own data without code (user-owned): numpy arrays exported from your pipeline.

Point the config key ``data-dir`` at a directory holding, per split, one array per modality plus
the labels, either as ``.npy`` files in a folder or as one ``.npz`` archive (see :data:`LAYOUT`).
Every array is read with ``allow_pickle=False``; modality arrays become float32 tensors, labels
int64. Nothing is standardised or reshaped beyond the kind's read rule (:data:`KIND_AXES`):
export the features as the model should see them.

Every array is checked before it becomes a tensor, and every error names the file (and the npz
key) and the shape or dtype expected: ``FileNotFoundError`` for a missing directory, split, labels
or modality file, ``ValueError`` for the rest, the two errors ``fedmm simulate`` reports as one
line. ``labels`` and ``groups`` are reserved names, never modalities.

Why one module of this size: one loader and its validation of every user file (each check names the
file and what was expected).
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from fedmm.data.base import LABEL_KEY, Dataset, ModalitySpec
from fedmm.data.registry import register_dataset

SPLITS = ("train", "test")
#: The optional validation split (``val/`` or ``val.npz``), laid out as the test split.
VAL = "val"
LABELS, GROUPS = "labels", "groups"
META_FILES = ("meta.toml", "meta.json")
META_KEYS = ("class_names", "modalities")
#: The axes of one example each kind's default encoder takes (``vector``: any shape, flattened).
KIND_AXES = {"vector": 1, "series": 2, "spectrogram": 3, "frames": 4}
#: The kind a modality gets when the metadata names none: by the axes of one example.
DEFAULT_KIND = {0: "vector", 1: "vector", 2: "series", 3: "spectrogram", 4: "frames"}
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")

LAYOUT = """expected layout of data-dir (dataset 'arrays'):
  <data-dir>/
    train/<modality>.npy   one array per modality, first axis the rows, e.g. train/acc.npy (N, 3, 128)
    train/labels.npy       integer labels 0..C-1, shape (N,)
    train/groups.npy       optional: natural client of each train row (integers or strings, shape (N,))
    test/<modality>.npy    the same modalities, same example shapes; test/labels.npy (M,)
    val/<modality>.npy     optional validation split, laid out as test/ (else validation = "auto"
                           holds out a seeded part of train: docs/validation.md)
    meta.toml or meta.json optional: class_names = [...], [modalities] <modality> = "<kind>"
  or one archive per split instead of a folder: train.npz / test.npz (/ val.npz) with one key per modality,
  "labels" and (train) "groups", as written by numpy.savez(path, acc=..., labels=...).
  Kinds (default from the axes of one example: 1 vector, 2 series, 3 spectrogram, 4 frames):
    vector (D,) any example shape, flattened; series (C, T), a (T,) example read as (1, T);
    spectrogram (C, F, T), (F, T) read as (1, F, T); frames (T, C, H, W), (C, H, W) read as (1, C, H, W).
Run with --set dataset=arrays --set data-dir=<data-dir>"""


@dataclass(frozen=True)
class Array:
    """One array read from disk and the place to name in errors (``'<dir>/train/acc.npy'`` or
    ``'<dir>/train.npz' key 'acc'``)."""

    where: str
    value: np.ndarray


class ImplausibleArray(ValueError):
    """An array file whose header announces more data than the file holds."""


def check_npy_header(stream: BinaryIO, size: int, where: str) -> None:
    """Read the ``.npy`` header at the start of ``stream`` and check that the file (``size`` bytes)
    holds the data it announces, before anything is allocated: a header claiming 2^40 rows in a
    small file is a ``ValueError`` naming ``where`` ("damaged or implausible"), not a failed
    allocation of terabytes.

    Parameters
    ----------
    stream:
        The file (or npz member), positioned at its start.
    size:
        Its length in bytes (for an npz member, the uncompressed size).
    where:
        How the error names the file (``'<dir>/train/acc.npy'`` or ``'<dir>/train.npz' key 'acc'``).
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(stream)
    except (ValueError, EOFError, OSError):
        return  # not a readable header: np.load says what is wrong with it
    if dtype.hasobject:
        return  # refused by allow_pickle=False, with its own message
    announced = math.prod(shape) * dtype.itemsize
    if stream.tell() + announced > size:
        raise ImplausibleArray(
            f"{where} is a damaged or implausible file: its header announces an array of shape "
            f"{tuple(shape)} and dtype {dtype} ({announced} bytes), but the file holds {size} bytes; "
            "write it again with numpy.save"
        )


def read_npy(path: Path) -> Array:
    """``path`` as an array, without pickle; a damaged or pickled file, or one whose header
    announces more data than it holds (:func:`check_npy_header`), is a ``ValueError`` naming it."""
    where = repr(str(path))
    try:
        with open(path, "rb") as stream:
            check_npy_header(stream, os.fstat(stream.fileno()).st_size, where)
        return Array(where, np.load(path, allow_pickle=False))
    except ImplausibleArray:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(
            f"cannot read {where} as a numpy array without pickle ({err}); expected a file written "
            f"by numpy.save of a numeric array (no object dtype)"
        ) from None


def read_npz(path: Path) -> dict[str, Array]:
    """Every key of the archive ``path`` as an array, without pickle."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    with archive.open(info) as member:
                        check_npy_header(member, info.file_size, f"{str(path)!r} key {info.filename[:-4]!r}")
        with np.load(path, allow_pickle=False) as archive:
            return {key: Array(f"{str(path)!r} key {key!r}", archive[key]) for key in archive.files}
    except ImplausibleArray:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"cannot read {str(path)!r} as a numpy .npz archive without pickle ({err}); expected a "
            f"file written by numpy.savez of numeric arrays (no object dtype)"
        ) from None


def read_split(root: Path, split: str) -> dict[str, Array]:
    """The arrays of ``split``: ``<root>/<split>/*.npy`` or ``<root>/<split>.npz``, by name."""
    folder, archive = root / split, root / f"{split}.npz"
    if folder.is_dir() and archive.is_file():
        raise ValueError(f"data-dir {str(root)!r} has both {split}/ and {split}.npz; keep one of them\n{LAYOUT}")
    if archive.is_file():
        arrays = read_npz(archive)
        labels_at = f"{str(archive)!r} key {LABELS!r}"
    elif folder.is_dir():
        arrays = {p.stem: read_npy(p) for p in sorted(folder.glob("*.npy"))}
        labels_at = repr(str(folder / f"{LABELS}.npy"))
    else:
        raise FileNotFoundError(
            f"data-dir {str(root)!r} has no {split} split: expected {split}/ or {split}.npz\n{LAYOUT}"
        )
    if LABELS not in arrays:
        raise FileNotFoundError(
            f"the {split} split has no labels: expected {labels_at}, integers 0..C-1 of shape (N,)\n{LAYOUT}"
        )
    return arrays


@dataclass(frozen=True)
class Meta:
    """The optional metadata file: ``class_names`` (one per class) and ``modalities`` (modality ->
    kind, in canonical order); ``where`` names the file in errors."""

    class_names: list[str]
    kinds: dict[str, str]
    where: str = "(no metadata file)"


def read_meta(root: Path) -> Meta:
    """``meta.toml`` or ``meta.json`` of ``root`` (empty when there is none), its keys checked."""
    present = [root / name for name in META_FILES if (root / name).is_file()]
    if not present:
        return Meta([], {})
    if len(present) > 1:
        raise ValueError(f"data-dir {str(root)!r} has both {' and '.join(META_FILES)}; keep one of them")
    path = present[0]
    try:
        text = path.read_text(encoding="utf-8")
        meta = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {str(path)!r}: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{str(path)!r} must hold a table (object) with keys {', '.join(META_KEYS)}")
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise ValueError(f"{str(path)!r} has the unknown key {unknown[0]!r}; valid keys: {', '.join(META_KEYS)}")
    names = meta.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{str(path)!r}: class_names must be a list of strings, one per class, got {names!r}")
    kinds = meta.get("modalities", {})
    if not isinstance(kinds, dict) or not all(k in KIND_AXES for k in kinds.values()):
        raise ValueError(
            f"{str(path)!r}: modalities must map each modality to one of the kinds "
            f"{', '.join(KIND_AXES)}, got {kinds!r}"
        )
    return Meta(list(names), dict(kinds), repr(str(path)))


def example_shape(array: Array, kind: str) -> tuple[int, ...]:
    """The shape of one example of ``array`` after ``kind``'s read rule (:data:`KIND_AXES`)."""
    shape = tuple(array.value.shape[1:])
    if kind == "vector":
        return (int(np.prod(shape, dtype=np.int64)),)
    axes = KIND_AXES[kind]
    if len(shape) == axes - 1:
        return (1, *shape)
    if len(shape) != axes:
        raise ValueError(
            f"{array.where} has examples of shape {shape}, which kind {kind!r} cannot read: it takes "
            f"{axes} axes per example (or {axes - 1}, given one leading axis of size 1)\n{LAYOUT}"
        )
    return shape


def check_modality(array: Array, rows: int, labels_at: str) -> np.ndarray:
    """``array`` as float32 after checking its rows, dtype and values."""
    x = array.value
    if x.ndim == 0 or x.shape[0] != rows:
        raise ValueError(f"{array.where} has shape {x.shape}, expected ({rows}, ...): one row per label of {labels_at}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{array.where} has dtype {x.dtype}, expected a numeric dtype (float32, float64, int, bool)")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, reported below
        out = x.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        first = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"{array.where} has {int(bad.sum())} values that are NaN or infinite as float32 "
            f"(first in row {first}); expected finite values"
        )
    return out


def check_labels(array: Array) -> np.ndarray:
    """The labels of a split as int64 after checking shape and dtype (the range is checked later)."""
    y = array.value
    if y.ndim != 1 or y.shape[0] == 0:
        raise ValueError(f"{array.where} has shape {y.shape}, expected (N,) with N >= 1: one integer label per row")
    if y.dtype.kind not in "iu":
        raise ValueError(
            f"{array.where} has dtype {y.dtype}, expected integer labels 0..C-1 (e.g. labels.astype(numpy.int64))"
        )
    return y.astype(np.int64)


def check_groups(array: Array, rows: int) -> np.ndarray:
    """The natural client of every train row, after checking shape and dtype."""
    g = array.value
    if g.shape != (rows,) or g.dtype.kind not in "iuU":
        raise ValueError(
            f"{array.where} has shape {g.shape} and dtype {g.dtype}, expected shape ({rows},) of "
            "integers or strings: the natural client of each train row"
        )
    return g.copy()


def modality_order(found: list[str], meta: Meta, where: str) -> list[str]:
    """The train split's modalities in canonical order: the metadata's order when it lists
    ``modalities``, else sorted by name."""
    bad = [m for m in found if not NAME.fullmatch(m) or m == LABEL_KEY]
    if bad:
        raise ValueError(
            f"modality name {bad[0]!r} of {where} is not usable: a modality is named by a letter then "
            f"letters, digits, '_' or '-' (not {LABEL_KEY!r}); rename the file or key"
        )
    if not found:
        raise ValueError(f"{where} holds labels but no modality array\n{LAYOUT}")
    if not meta.kinds:
        return sorted(found)
    if set(meta.kinds) != set(found):
        raise ValueError(
            f"{meta.where} lists the modalities {list(meta.kinds)} but the train split has "
            f"{sorted(found)}; list every modality once"
        )
    return list(meta.kinds)


def read_modality(
    name: str, train: Array, test: Array | None, labels: dict[str, Array], kind: str | None, val: Array | None = None
) -> tuple[tuple[int, ...], str, dict[str, torch.Tensor]]:
    """Modality ``name`` of every split (``val`` only when the data has a validation split): its
    example shape, its kind (``kind``, else the default for its axes) and its float32 tensors per
    split, after every check."""
    others = {"test": test, **({"val": val} if "val" in labels else {})}
    for split, array in others.items():
        if array is None:
            raise FileNotFoundError(
                f"the {split} split has no array {name!r} ({split}/{name}.npy or key {name!r} of "
                f"{split}.npz) but the train split has {train.where}; expected shape "
                f"(M, {', '.join(map(str, train.value.shape[1:]))})\n{LAYOUT}"
            )
    arrays = {"train": train, **others}
    values = {
        split: check_modality(a, labels[split].value.shape[0], labels[split].where) for split, a in arrays.items()
    }
    for array in others.values():
        if array.value.shape[1:] != train.value.shape[1:]:
            raise ValueError(
                f"{array.where} has shape {array.value.shape}, expected (M, "
                f"{', '.join(map(str, train.value.shape[1:]))}) as {train.where}"
            )
    kind = kind or DEFAULT_KIND.get(train.value.ndim - 1)
    if kind is None:
        raise ValueError(
            f"{train.where} has examples of shape {train.value.shape[1:]}: more axes than any kind reads; "
            'set its kind in the metadata file (modalities: "vector" flattens it)\n' + LAYOUT
        )
    shape = example_shape(train, kind)
    tensors = {split: torch.from_numpy(np.ascontiguousarray(x.reshape(len(x), *shape))) for split, x in values.items()}
    return shape, kind, tensors


@register_dataset(
    "arrays",
    description="your own numpy arrays, per split one .npy per modality or one .npz (user-owned: set data-dir)",
    user_owned=True,
    encoders={"vector": "mlp", "series": "cnn1d", "spectrogram": "resnet18-audio", "frames": "resnet18-video"},
)
def load_arrays(*, data_dir: str | None = None, seed: int = 0) -> Dataset:
    """The dataset in ``data_dir`` (config key ``data-dir``), laid out as :data:`LAYOUT`.

    Parameters
    ----------
    data_dir:
        The directory with the ``train`` and ``test`` splits and the optional metadata file.
    seed:
        Unused (the splits are the files'); accepted as every loader takes it.

    Modalities come from the train split's arrays (in the metadata's order, else sorted by name);
    the test split must hold the same ones with the same example shapes. The class count is the
    length of the metadata's ``class_names`` (without it, names ``"0" .. "C-1"`` with ``C`` one
    more than the largest label of either split). ``train_groups`` is the train split's ``groups``
    array (so ``partition = "natural"`` gives one client per group), ``None`` without one; a test
    split's ``groups`` is ignored. An optional ``val/`` folder or ``val.npz``, laid out as the test
    split, is the validation split (``val``, its ``groups`` ``val_groups``); without one,
    ``validation = "auto"`` holds out part of train (:mod:`fedmm.data.validation`).
    """
    if not data_dir:
        raise FileNotFoundError(f"dataset 'arrays' is user-owned: set the config key data-dir\n{LAYOUT}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data-dir {str(root)!r} does not exist\n{LAYOUT}")
    meta = read_meta(root)
    splits = (*SPLITS, VAL) if (root / VAL).is_dir() or (root / f"{VAL}.npz").is_file() else SPLITS
    raw = {split: read_split(root, split) for split in splits}
    labels = {split: raw[split].pop(LABELS) for split in splits}
    groups = raw["train"].pop(GROUPS, None)
    val_groups = raw[VAL].pop(GROUPS, None) if VAL in raw else None
    raw["test"].pop(GROUPS, None)
    names = modality_order(list(raw["train"]), meta, repr(str(root / "train")))
    for split in splits[1:]:
        extra = sorted(set(raw[split]) - set(names))
        if extra:
            raise ValueError(
                f"{raw[split][extra[0]].where} is a modality the train split lacks; the {split} split "
                f"holds the train split's modalities {names} only"
            )
    y = {split: check_labels(labels[split]) for split in splits}
    num_classes = len(meta.class_names) or max(int(v.max()) for v in y.values()) + 1
    for split in splits:
        if y[split].min() < 0 or y[split].max() >= num_classes:
            bound = f"{num_classes} class_names in {meta.where}" if meta.class_names else "C = largest label + 1"
            raise ValueError(
                f"{labels[split].where} has labels {int(y[split].min())}..{int(y[split].max())}, "
                f"expected 0..{num_classes - 1} ({bound})"
            )
    if num_classes < 2:
        raise ValueError(f"{labels['train'].where}: the labels give {num_classes} class, expected at least 2")
    specs, data = [], {split: {} for split in splits}
    for m in names:
        shape, kind, tensors = read_modality(
            m, raw["train"][m], raw["test"].get(m), labels, meta.kinds.get(m), raw[VAL].get(m) if VAL in raw else None
        )
        specs.append(ModalitySpec(m, shape, kind))
        for split in splits:
            data[split][m] = tensors[split]
    for split in splits:
        data[split][LABEL_KEY] = torch.from_numpy(y[split])
    return Dataset(
        name="arrays",
        modalities=specs,
        class_names=meta.class_names or [str(c) for c in range(num_classes)],
        train=data["train"],
        test=data["test"],
        train_groups=None if groups is None else check_groups(groups, len(y["train"])),
        notes={"data-dir": str(root), "meta": meta.where},
        val=data.get(VAL),
        val_groups=None if val_groups is None else check_groups(val_groups, len(y[VAL])),
    )
