"""Datasets by name: a loader per dataset, cached per process, and a listing for ``fedmm datasets``."""

from __future__ import annotations

import difflib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedmm.data.base import Dataset, num_examples

Loader = Callable[..., Dataset]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset.

    Parameters
    ----------
    name:
        Registry name (``dataset = "<name>"``).
    loader:
        ``loader(*, data_dir, seed, **options) -> Dataset``.
    description:
        One line for listings.
    package:
        The pip requirement that ships the data, or ``None`` when nothing needs installing.
    module:
        Import name checked (without importing it) to tell whether the data is installed.
    """

    name: str
    loader: Loader
    description: str
    package: str | None = None
    module: str | None = None

    def installed(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None


_DATASETS: dict[str, DatasetEntry] = {}
_CACHE: dict[tuple, Dataset] = {}


def register_dataset(name: str, *, description: str, package: str | None = None, module: str | None = None
                     ) -> Callable[[Loader], Loader]:
    def deco(loader: Loader) -> Loader:
        _DATASETS[name] = DatasetEntry(name, loader, description, package, module)
        return loader

    return deco


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def dataset_entry(name: str) -> DatasetEntry:
    if name not in _DATASETS:
        close = difflib.get_close_matches(name, list(_DATASETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}{hint} Valid datasets: {', '.join(dataset_names())}")
    return _DATASETS[name]


def load_dataset(name: str, *, data_dir: str | None = None, seed: int = 0, **options: Any) -> Dataset:
    """Load dataset ``name`` once per process (later calls with the same arguments share it).

    ``options`` go to the dataset's loader; an option it does not take is an error naming the valid
    ones.
    """
    entry = dataset_entry(name)
    if not entry.installed():
        raise ImportError(f"dataset {name!r} needs the package {entry.package!r}: pip install {entry.package}")
    accepted = [p for p in inspect.signature(entry.loader).parameters if p not in ("data_dir", "seed")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        close = difflib.get_close_matches(unknown[0], accepted, n=1)
        hint = f"; did you mean 'dataset.{close[0]}'?" if close else ""
        raise ValueError(f"dataset {name!r} has no option 'dataset.{unknown[0]}'{hint} "
                         f"Valid options: {', '.join(accepted) or '(none)'}")
    key = (name, data_dir, seed, tuple(sorted(options.items())))
    if key not in _CACHE:
        _CACHE[key] = entry.loader(data_dir=data_dir, seed=seed, **options)
    return _CACHE[key]


def dataset_table() -> list[dict[str, Any]]:
    """One row per dataset: name, description, installed, and for installed embedded data its
    modalities, class count and split sizes (user-owned data is not loaded)."""
    rows = []
    for name in dataset_names():
        entry = _DATASETS[name]
        row: dict[str, Any] = {"name": name, "description": entry.description, "installed": entry.installed()}
        if row["installed"] and name != "cremad":
            try:
                d = load_dataset(name)
            except (FileNotFoundError, ValueError) as err:
                row["description"] += f" ({err})"
            else:
                row.update(modalities={m.name: m.shape for m in d.modalities}, num_classes=d.num_classes,
                           train=num_examples(d.train), test=num_examples(d.test))
        rows.append(row)
    return rows
