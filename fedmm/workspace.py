"""Build the pieces of a run from its :class:`~fedmm.config.RunConfig`, identically on the server
and on every client: dataset, scenario, objective, model and local training settings."""

from __future__ import annotations

import functools
import tomllib

import torch

from fedmm.config import RunConfig, flatten
from fedmm.data import Dataset, Scenario, build_scenario, load_dataset
from fedmm.models import ModelConfig, MultimodalNet
from fedmm.objectives import Objective, build_objective
from fedmm.training import TrainConfig, build_model


@functools.lru_cache(maxsize=8)
def parse_run_config(toml_text: str) -> RunConfig:
    """The ``RunConfig`` a server sent as TOML text (cached: every message carries it)."""
    return RunConfig.from_mapping(flatten(tomllib.loads(toml_text)))


def dataset_of(run: RunConfig) -> Dataset:
    """The run's dataset (the registry caches it per process)."""
    return load_dataset(run.dataset, data_dir=run.data_dir or None, **run.dataset_options)


@functools.lru_cache(maxsize=8)
def scenario_of(run: RunConfig) -> Scenario:
    """Which rows and modalities each client holds; deterministic from the config's seed."""
    return build_scenario(
        dataset_of(run),
        num_clients=run.num_clients or None,
        partition=run.partition,
        allocation=run.allocation,
        seed=run.seed,
        dirichlet_alpha=run.dirichlet_alpha,
        multi_ratio=run.multi_ratio,
        fractions=run.modality_fractions or None,
        missing_rate=run.missing_rate,
        cap_factor=run.client_size_cap,
    )


def objective_of(run: RunConfig) -> Objective:
    """A fresh objective instance (objectives keep per-round state, so never share one)."""
    return build_objective(run.objective, run.objective_params)


def model_of(run: RunConfig, objective: Objective) -> MultimodalNet:
    """The run's model, initialised from the run's seed (the same on server and clients)."""
    dataset = dataset_of(run)
    torch.manual_seed(run.seed)
    config = ModelConfig(embed_dim=run.embed_dim, encoders=dict(run.encoders))
    return build_model(dataset.modalities, dataset.num_classes, config, objective)


def train_config_of(run: RunConfig, *, proximal_mu: float, seed: int) -> TrainConfig:
    return TrainConfig(
        epochs=run.local_epochs,
        batch_size=run.batch_size,
        lr=run.lr,
        momentum=run.momentum,
        weight_decay=run.weight_decay,
        proximal_mu=proximal_mu,
        seed=seed,
    )
