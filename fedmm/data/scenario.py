"""A federation built from a dataset: who holds which rows and which modalities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmm.data.allocation import allocate_modalities
from fedmm.data.base import Dataset, TensorDict, subset
from fedmm.data.partition import partition_indices, resolve_partition


@dataclass(frozen=True)
class Scenario:
    """``partitions[k]``: train row indices of client ``k``; ``modalities[k]``: what it holds."""

    partitions: list[np.ndarray]
    modalities: list[tuple[str, ...]]


def build_scenario(
    dataset: Dataset,
    *,
    num_clients: int | None,
    partition: str,
    allocation: str,
    seed: int,
    dirichlet_alpha: float = 3.0,
    multi_ratio: float = 1.0,
    fractions: str | None = None,
    missing_rate: float = 0.0,
    cap_factor: float = 1.1,
) -> Scenario:
    """Partition ``dataset.train`` and allocate modalities; deterministic from ``seed`` (the
    partition and the allocation draw from independent child seeds). ``partition = "auto"`` is
    :func:`~fedmm.data.partition.resolve_partition`'s scheme (the same split as that scheme given)."""
    partition_seed, allocation_seed = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2))
    partition, num_clients = resolve_partition(partition, num_clients, dataset.train_groups is not None)
    parts = partition_indices(
        dataset.train["y"].numpy(),
        num_clients,
        partition,
        seed=partition_seed,
        alpha=dirichlet_alpha,
        groups=dataset.train_groups,
        cap_factor=cap_factor,
    )
    mods = allocate_modalities(
        len(parts),
        dataset.modality_names,
        mode=allocation,
        seed=allocation_seed,
        multi_ratio=multi_ratio,
        fractions=fractions,
        missing_rate=missing_rate,
    )
    return Scenario(partitions=parts, modalities=mods)


def client_data(dataset: Dataset, scenario: Scenario, partition_id: int) -> TensorDict:
    """Client ``partition_id``'s train rows, holding only its modalities and the labels."""
    return subset(dataset.train, scenario.partitions[partition_id], list(scenario.modalities[partition_id]))
