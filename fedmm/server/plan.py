"""A run's plan: everything it needs, built and validated before any result file is written
(:func:`prepare`), and its strategy, built through the narrow :class:`StrategyContext`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmm.config import RunConfig
from fedmm.data import Dataset, Scenario
from fedmm.devices import build_profiles
from fedmm.models import MultimodalNet
from fedmm.models.cost import group_bytes, modality_costs, modality_flops
from fedmm.objectives import Objective
from fedmm.protocol import ClientInfo
from fedmm.results import prepare_out_dir
from fedmm.strategies import STRATEGIES
from fedmm.strategies.base import RoundStrategy
from fedmm.strategies.context import StrategyContext
from fedmm.strategies.selection import ClientState, SelectionPolicy, policy_class
from fedmm.strategies.timing import ClockSettings, SimClock
from fedmm.workspace import dataset_of, model_of, objective_of, scenario_of


@dataclass
class Plan:
    """Everything a run needs, built and validated before any result file is written."""

    run: RunConfig
    dataset: Dataset
    scenario: Scenario
    objective: Objective
    model: MultimodalNet
    policy: SelectionPolicy
    out_dir: Path | None
    #: The strategy recipe's validated ``strategy.*`` parameters.
    strategy_params: Any = None
    #: Register the roster from the scenario instead of discovering the nodes with ``query``
    #: messages (set by ``fedmm simulate``, whose server knows every partition; off for deployment
    #: and ``flwr run``, which keep discovery with its bounded wait).
    roster_from_scenario: bool = False
    #: The clients' device profiles (config key ``devices``; :mod:`fedmm.devices`), ``None`` when off.
    profiles: Any = None


def prepare(
    run: RunConfig, out_dir: str | Path | None = None, *, overwrite: bool = False, resume: bool = False
) -> Plan:
    """Load the data, build the scenario, objective, model and policy; check the output directory.

    Every config error (unknown dataset, modality names, objective parameters, policy parameters,
    a non-empty output directory) surfaces here, before anything is written. With ``resume`` the
    output directory must hold the run's checkpoint instead of being empty.
    """
    strategy_params = run.parsed["strategy"]
    dataset = dataset_of(run)
    unknown = set(run.encoders) - set(dataset.modality_names)
    if unknown:
        raise ValueError(
            f"config key 'encoder.{sorted(unknown)[0]}' names a modality that dataset {run.dataset!r} "
            f"does not have; its modalities are {dataset.modality_names}"
        )
    scenario = scenario_of(run)
    objective = objective_of(run)
    model = model_of(run, objective)
    policy = policy_class(run.selection)(run.parsed["selection"], seed=run.seed)
    # a policy that needs an imbalance order (cmsfed) checks the dataset's modalities here
    policy.imbalance_order([ClientState(client_id=0, modalities=tuple(dataset.modality_names), num_examples=1)])
    # a trace file's problems (missing, a bad row) surface here too, before anything is written
    profiles = build_profiles(run.devices, len(scenario.partitions), run.seed, run.parsed["devices"])
    resolved = prepare_out_dir(out_dir, overwrite=overwrite or resume) if out_dir else None
    return Plan(run, dataset, scenario, objective, model, policy, resolved, strategy_params, profiles=profiles)


def strategy_context(plan: Plan) -> StrategyContext:
    """What the run's strategy may know of it: its policy, the objective's server half, the names
    of the model's parameters (update vectors hold parameters only, never buffers) and the run's
    federation settings; with ``plan.roster_from_scenario`` (a simulation) also the scenario's
    clients, so that the roster is registered from them instead of by discovery."""
    run, sc = plan.run, plan.scenario
    clients = (
        [ClientInfo(p, tuple(sc.modalities[p]), len(sc.partitions[p])) for p in range(len(sc.partitions))]
        if plan.roster_from_scenario
        else None
    )
    return StrategyContext(
        policy=plan.policy,
        clients_per_round=run.clients_per_round,
        min_available_nodes=run.min_available_nodes or len(sc.partitions),
        run_config=run.to_toml(),
        extras_fn=plan.objective.server_extras,
        observe_fn=plan.objective.server_observe,
        fraction_evaluate=run.fraction_evaluate,
        round_timeout=run.round_timeout,
        seed=run.seed,
        parameter_keys=[name for name, _ in plan.model.named_parameters()],
        num_partitions=len(sc.partitions),
        scenario=clients,
        observes_global_model=plan.objective.observes_global_model,
        clock=clock_of(plan),
    )


def clock_of(plan: Plan) -> SimClock | None:
    """The simulated clock of ``plan``'s run (config keys ``devices``, ``devices.*``,
    ``round-close``, ``round-deadline``, ``overcommit``): profiles for the scenario's clients, the
    global model's bytes per group and each modality's FLOP share (:mod:`fedmm.models.cost`);
    ``None`` with ``devices = "off"``."""
    run = plan.run
    if run.devices == "off":
        return None
    profiles = plan.profiles  # built by prepare(); a Plan made by hand may lack them
    if profiles is None:
        profiles = build_profiles(run.devices, len(plan.scenario.partitions), run.seed, run.parsed["devices"])
    shapes = {m.name: tuple(m.shape) for m in plan.dataset.modalities}
    costs = modality_costs(modality_flops(plan.model, shapes))
    settings = ClockSettings(run.round_close, run.round_deadline, run.overcommit)
    return SimClock(profiles, group_bytes(plan.model.state_dict()), costs, settings, run.local_epochs)


def build_strategy(plan: Plan) -> RoundStrategy:
    """The run's strategy, built by its registered recipe from :func:`strategy_context`."""
    return STRATEGIES.get(plan.run.strategy).build(strategy_context(plan), plan.strategy_params)
