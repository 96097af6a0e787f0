"""The validation split: rows held out of ``train`` (never of ``test``) to choose rounds and settings.

Which rows (config keys ``validation`` and ``validation-fraction``):

- the data ships a validation split (``arrays``: a ``val/`` folder or ``val.npz``): that split;
- the dataset has natural users (``train_groups``: HAPT users, CREMA-D actors, ``arrays`` with a
  ``groups`` array): whole users, ``round(fraction * users)`` of them (at least one, never all),
  drawn with the run's seed, so no user is in two splits;
- otherwise (segment, mfeat, synthetic, competition, ``arrays`` without groups): a stratified
  seeded fraction of train, ``round(n_c * fraction)`` rows of every class ``c`` (at least one of a
  class with two or more rows, never all of them).

The rows leave ``train`` before the scenario partitions it, on the server and on every client alike
(:func:`fedmm.workspace.dataset_of`), so no client trains on them. ``validation = "off"`` keeps the
train split whole, as before the split existed (the same rows, partitions and numbers).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedmm.data.base import Dataset, num_examples, subset
from fedmm.data.cremad import stratified_split

#: ``SeedSequence`` spawn key of the validation draw: independent of the partition's and the
#: allocation's child seeds (:func:`fedmm.data.scenario.build_scenario` spawns keys 0 and 1).
_SPAWN_KEY = (0x56414C,)


def validation_seed(seed: int) -> int:
    """The seed of the validation draw of a run with ``seed``."""
    return int(np.random.SeedSequence(seed, spawn_key=_SPAWN_KEY).generate_state(1)[0])


def held_out_users(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The users of ``groups`` that form the validation split: ``round(fraction * U)`` of the ``U``
    distinct users (at least 1, at most ``U - 1``), drawn with ``seed``; sorted.

    Raises
    ------
    ValueError
        Fewer than two users (one would be left for training or validation, not both).
    """
    users = np.unique(groups)
    if users.size < 2:
        raise ValueError(
            f"the train split has {users.size} natural user(s); a validation split of held-out users "
            'needs at least 2 (set validation = "off")'
        )
    k = min(max(int(round(fraction * users.size)), 1), users.size - 1)
    return np.sort(np.random.default_rng(seed).choice(users, size=k, replace=False))


def validation_rows(dataset: Dataset, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``(train_rows, val_rows, how)``: sorted row indices of ``dataset.train`` that stay in train and
    that form the validation split, and a line saying which rows were taken.

    Parameters
    ----------
    dataset:
        The loaded dataset (its ``train`` split and ``train_groups``).
    fraction:
        Fraction of the users (with ``train_groups``) or of every class's rows (without).
    seed:
        The run's seed (the draw uses :func:`validation_seed` of it).
    """
    draw = validation_seed(seed)
    n = num_examples(dataset.train)
    if dataset.train_groups is not None:
        users = held_out_users(dataset.train_groups, fraction, draw)
        is_val = np.isin(dataset.train_groups, users)
        how = f"held-out users {', '.join(map(str, users.tolist()))} ({int(is_val.sum())} rows)"
        return np.flatnonzero(~is_val), np.flatnonzero(is_val), how
    train_rows, val_rows = stratified_split(dataset.train["y"].numpy(), fraction, draw)
    if val_rows.size == 0 or train_rows.size == 0:
        raise ValueError(
            f"validation-fraction = {fraction} of the {n} train rows leaves an empty split; "
            'choose another fraction or set validation = "off"'
        )
    return train_rows, val_rows, f"stratified {fraction:g} of every class ({val_rows.size} of {n} rows)"


def with_validation(dataset: Dataset, mode: str, fraction: float, seed: int) -> Dataset:
    """``dataset`` with its validation split: ``val`` set and those rows gone from ``train``.

    Parameters
    ----------
    dataset:
        The loaded dataset (never changed: a new one is returned).
    mode:
        ``"auto"``: the data's own validation split when it ships one, else the rows of
        :func:`validation_rows`; ``"off"``: no validation split, ``train`` whole (a shipped one is
        dropped).
    fraction:
        The fraction :func:`validation_rows` holds out.
    seed:
        The run's seed.
    """
    if mode == "off":
        return dataclasses.replace(dataset, val=None, val_groups=None) if dataset.val is not None else dataset
    if mode != "auto":
        raise ValueError(f"validation must be 'auto' or 'off', got {mode!r}")
    if dataset.val is not None:
        return dataset
    train_rows, val_rows, how = validation_rows(dataset, fraction, seed)
    groups = dataset.train_groups
    return dataclasses.replace(
        dataset,
        train=subset(dataset.train, train_rows),
        val=subset(dataset.train, val_rows),
        train_groups=None if groups is None else groups[train_rows].copy(),
        val_groups=None if groups is None else groups[val_rows].copy(),
        notes={**dataset.notes, "validation": how},
    )
