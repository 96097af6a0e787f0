"""Datasets (one module each, registered by name), partitioning and modality allocation."""

from fedmm.data import arrays, competition, cremad, hapt, synthetic, tabular  # noqa: F401  (importing registers the datasets)
from fedmm.data.allocation import allocate_modalities, parse_fractions
from fedmm.data.base import LABEL_KEY, Dataset, ModalitySpec, TensorDict, num_examples, subset
from fedmm.data.partition import dirichlet_partition, partition_indices
from fedmm.data.registry import dataset_names, dataset_table, load_dataset, register_dataset
from fedmm.data.scenario import Scenario, build_scenario, client_data

__all__ = [
    "LABEL_KEY",
    "Dataset",
    "ModalitySpec",
    "Scenario",
    "TensorDict",
    "allocate_modalities",
    "build_scenario",
    "client_data",
    "dataset_names",
    "dataset_table",
    "dirichlet_partition",
    "load_dataset",
    "num_examples",
    "parse_fractions",
    "partition_indices",
    "register_dataset",
    "subset",
]
