"""What a strategy may know of its run: the narrow, typed context the server hands a recipe.

The server builds it from its plan (:func:`fedmm.server.loop.strategy_context`); a strategy never
sees the plan, the model or the data, only these values. No flwr and no torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedmm.strategies.base import ExtrasFn, ObserveFn
from fedmm.strategies.selection.base import SelectionPolicy

if TYPE_CHECKING:
    from fedmm.protocol import ClientInfo
    from fedmm.strategies.timing import SimClock


@dataclass(frozen=True)
class StrategyContext:
    """The run as a strategy sees it.

    Parameters
    ----------
    policy:
        The run's selection policy (built and validated by the server).
    clients_per_round:
        Budget handed to the policy (``all`` ignores it).
    min_available_nodes:
        Nodes to wait for before the first round.
    run_config:
        The resolved run configuration as TOML text, sent with every message.
    extras_fn:
        The objective's server half: ``round -> extras`` for every client.
    observe_fn:
        The objective's server half: called with the facts of the accepted replies.
    fraction_evaluate:
        Fraction of known nodes asked to evaluate the global model on their own data.
    round_timeout:
        Seconds to wait for replies, and for ``min_available_nodes`` nodes before round 1.
    seed:
        Seed of the strategy's own generator.
    parameter_keys:
        Names of the global model's parameters (no buffers): update vectors are built from them.
    num_partitions:
        Clients of the run's scenario.
    scenario:
        The scenario's clients, to register the roster from (``fedmm simulate``); ``None``:
        discovery with ``query`` messages (a deployment).
    observes_global_model:
        The objective's server half needs facts of the aggregated model each round (the loop
        then calls the strategy's ``configure_global_model_facts``; CMSFed's prototypes).
    clock:
        The simulated clock over the clients' device profiles (config key ``devices``); ``None``:
        no clock.
    """

    policy: SelectionPolicy
    clients_per_round: int
    min_available_nodes: int
    run_config: str
    extras_fn: ExtrasFn | None = None
    observe_fn: ObserveFn | None = None
    fraction_evaluate: float = 0.0
    round_timeout: float = 600.0
    seed: int = 0
    parameter_keys: Sequence[str] | None = None
    num_partitions: int | None = None
    scenario: Sequence[ClientInfo] | None = None
    observes_global_model: bool = False
    clock: SimClock | None = None
