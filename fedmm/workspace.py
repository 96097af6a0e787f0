"""Build the pieces of a run from its :class:`~fedmm.config.RunConfig`, identically on the server
and on every client: dataset, scenario, objective, model and local training settings."""

from __future__ import annotations

import copy
import functools
import tomllib

import torch

from fedmm.config import RunConfig
from fedmm.config_text import flatten
from fedmm.data import Dataset, Scenario, build_scenario, load_dataset
from fedmm.data.partition import partition_note
from fedmm.data.registry import dataset_entry
from fedmm.data.validation import with_validation
from fedmm.models import ModelConfig, MultimodalNet
from fedmm.objectives import Objective, Schedule, objective_class
from fedmm.training import TrainConfig, build_model


@functools.lru_cache(maxsize=8)
def parse_run_config(toml_text: str) -> RunConfig:
    """The ``RunConfig`` a server sent as TOML text (cached: every message carries it)."""
    return RunConfig.from_mapping(flatten(tomllib.loads(toml_text)))


@functools.lru_cache(maxsize=8)
def loaded_dataset(run: RunConfig) -> Dataset:
    """The run's dataset as its loader returns it, before the validation split (a node's own
    ``data-dir`` trains on all of it)."""
    return load_dataset(run.dataset, data_dir=run.data_dir or None, **run.parsed["dataset"])


@functools.lru_cache(maxsize=8)
def dataset_of(run: RunConfig) -> Dataset:
    """The run's dataset with its validation split (``validation``, ``validation-fraction``:
    :func:`fedmm.data.validation.with_validation`), those rows gone from ``train``; the registry
    caches the loaded data per process, this cache skips checking the options again for every
    message."""
    return with_validation(loaded_dataset(run), run.validation, run.validation_fraction, run.seed)


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


def scenario_note(run: RunConfig) -> str | None:
    """The line a run prints once when ``partition = "auto"`` chose a split for a dataset without
    natural clients (:func:`fedmm.data.partition.partition_note`); ``None`` otherwise."""
    return partition_note(
        run.dataset,
        run.partition,
        run.num_clients or None,
        dataset_of(run).train_groups is not None,
        run.dirichlet_alpha,
    )


def objective_of(run: RunConfig) -> Objective:
    """A fresh objective instance (objectives keep per-round state, so never share one), with the
    run's :class:`~fedmm.objectives.base.Schedule` (``num-server-rounds`` x ``local-epochs``) for
    a server half whose decisions follow the schedule."""
    objective = objective_class(run.objective)(copy.copy(run.parsed["objective"]))
    objective.schedule = Schedule(run.num_server_rounds, run.local_epochs)
    return objective


def model_of(run: RunConfig, objective: Objective) -> MultimodalNet:
    """The run's model, initialised from the run's seed (the same on server and clients); each
    modality's encoder is ``encoder.<modality>`` or else its dataset entry's default."""
    dataset = dataset_of(run)
    torch.manual_seed(run.seed)
    encoders = {**dataset_entry(run.dataset).default_encoders(dataset.modalities), **run.encoders}
    config = ModelConfig(embed_dim=run.embed_dim, encoders=encoders)
    return build_model(dataset.modalities, dataset.num_classes, config, objective)


def round_lr(run: RunConfig, server_round: int) -> float:
    """The local learning rate of server round ``server_round``.

    With ``T = num-server-rounds`` and ``D = lr-decay-start``: ``lr`` when ``D == 0`` (constant
    lr) or ``server_round <= D``; afterwards ``lr - (lr - lr-min) * server_round / T``, which
    drops at round ``D + 1`` straight to the line through ``(0, lr)`` and ``(T, lr-min)`` and
    reaches ``lr-min`` in the last round. This is the per-round schedule of the FedCMI/CMSFed
    reference (docs/methods/fedavg.md §4: ``lr = local_lr`` while ``E <= 80``,
    then ``local_lr - (local_lr - lr_min) * E / T``); the reference counts ``E`` from 0, so its
    last round trains at ``lr - (lr - lr_min) * (T - 1) / T``, slightly above ``lr_min``.

    Parameters
    ----------
    run:
        The run config: ``lr``, ``lr-min``, ``lr-decay-start`` and ``num-server-rounds``.
    server_round:
        The 1-based server round, in ``1 .. num-server-rounds``; 0 is the update pass before
        round 1 (DivFL, CMSFed), which trains at ``lr``.

    Raises
    ------
    ValueError
        ``server_round`` outside ``0 .. num-server-rounds``.
    """
    if isinstance(server_round, bool) or not 0 <= server_round <= run.num_server_rounds:
        raise ValueError(
            f"server_round must be in 0..{run.num_server_rounds} (num-server-rounds), got {server_round!r}"
        )
    if run.lr_decay_start == 0 or server_round <= run.lr_decay_start:
        return run.lr
    # lr - (lr - lr-min) * r / T, written so that the last round gives lr-min exactly
    return run.lr_min + (run.lr - run.lr_min) * (run.num_server_rounds - server_round) / run.num_server_rounds


def train_config_of(run: RunConfig, *, server_round: int, proximal_mu: float, seed: int) -> TrainConfig:
    """The local training settings of one round.

    Parameters
    ----------
    run:
        The run config (local epochs, batch size, SGD settings, lr schedule, precision).
    server_round:
        The 1-based server round; picks the learning rate (:func:`round_lr`).
    proximal_mu:
        FedProx weight the server sent for this round (0 disables the proximal term).
    seed:
        Seed of the round's batch order.
    """
    return TrainConfig(
        epochs=run.local_epochs,
        batch_size=run.batch_size,
        lr=round_lr(run, server_round),
        momentum=run.momentum,
        weight_decay=run.weight_decay,
        proximal_mu=proximal_mu,
        seed=seed,
        precision=run.precision,
        optimizer=run.optimizer,
        adam_beta2=run.adam_beta2,
    )
