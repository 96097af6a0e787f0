"""Server strategies as small registered recipes (no flwr, no torch here: the config reads them).

A recipe is a strategy class (named by its import path, imported when a run builds it), the
objective that is its client side (if any), its default selection policy and its parameters (a
:class:`fedmm.params.Checked` ``Params`` dataclass whose constraints are in its annotations and
whose help is its numpy-style ``Parameters`` docstring section, set as ``strategy.<param>`` in the
run config). Registering a new one is
``STRATEGIES.add("name", StrategyRecipe(...))``; the class only needs the methods of
:class:`fedmm.strategies.base.RoundStrategy` and a ``from_plan(plan, params)`` classmethod.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fedmm.params import NON_NEGATIVE, Checked, Label, Search, check_search, parse
from fedmm.registry import Registry

if TYPE_CHECKING:
    from fedmm.server.loop import Plan
    from fedmm.strategies.base import RoundStrategy


@dataclass
class NoParams(Checked):
    """A strategy without parameters of its own."""


@dataclass
class FedProxParams(Checked):
    """Parameters of ``fedprox`` (Li et al., MLSys 2020).

    Parameters
    ----------
    mu:
        Proximal weight: clients add ``mu / 2 * ||w - w_global||^2`` to their loss (default 0.01;
        0 is FedAvg). FedCMI's own proximal term is ``objective.mu``.
    """

    mu: Annotated[float, NON_NEGATIVE, Search(1e-4, 1.0, log=True)] = 0.01


@dataclass(frozen=True)
class StrategyRecipe:
    """A registered strategy.

    Parameters
    ----------
    target:
        ``"module:Class"`` of the strategy class (imported only when a run builds it).
    summary:
        One line for ``fedmm config`` and the docs.
    objective:
        The objective that is the strategy's client side (``objective = "auto"`` stands for it and
        no other is allowed), or ``None``: any objective, ``auto`` = ``ce``.
    selection:
        The selection policy ``selection = "auto"`` stands for.
    params:
        The ``Params`` dataclass of its ``strategy.<param>`` keys.
    """

    target: str
    summary: str
    objective: str | None = None
    selection: str = "all"
    params: type = NoParams

    def __post_init__(self) -> None:
        check_search(self.params, f"strategy {self.params.__qualname__}")  # a search range outside the valid one fails at import

    def parse_params(self, name: str, given: Mapping[str, Any], *, label: Label | None = None) -> Any:
        """``params`` built from the ``strategy.*`` values ``given`` by :func:`fedmm.params.parse`.

        Parameters
        ----------
        name:
            The recipe's registry name (for messages).
        given:
            Parameter name -> raw value.
        label:
            Parameter name -> how messages name it; default ``"parameter '<name>' of strategy '<strategy>'"``.
        """
        return parse(self.params, given, component=f"strategy {name!r}", label=label)

    def build(self, plan: Plan, params: Any) -> RoundStrategy:
        """The strategy of ``plan``'s run: ``target.from_plan(plan, params)``."""
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls).from_plan(plan, params)


#: Strategy name -> recipe. ``fedcmi``'s server side is modality-aware FedAvg whose clients train
#: FedCMI's objective (the received global model is the teacher; FEDCMI_CMSFED.md section 2.5);
#: ``cmsfed``'s is modality-aware FedAvg with the CMSFed objective (its server half aggregates the
#: global prototypes) and, by default, the CMSFed selection policy (whose update pass runs first).
STRATEGIES: Registry[StrategyRecipe] = Registry("strategy")
_FEDAVG = "fedmm.strategies.fedavg:ModalityAwareFedAvg"
STRATEGIES.add("fedavg", StrategyRecipe(_FEDAVG, "modality-aware FedAvg: each parameter averaged over the "
                                                 "clients that trained it"))
STRATEGIES.add("fedprox", StrategyRecipe("fedmm.strategies.fedprox:FedProx", "fedavg whose clients add the "
                                         "proximal term strategy.mu / 2 * ||w - w_global||^2", params=FedProxParams))
STRATEGIES.add("fedcmi", StrategyRecipe(_FEDAVG, "fedavg with FedCMI's client objective (the global model "
                                        "is the teacher)", objective="fedcmi"))
STRATEGIES.add("cmsfed", StrategyRecipe(_FEDAVG, "fedavg with CMSFed's objective (global prototypes) and "
                                        "selection (balanced greedy)", objective="cmsfed", selection="cmsfed"))


def strategy_kwargs(plan: Plan) -> dict[str, Any]:
    """The keyword arguments of :class:`~fedmm.strategies.fedavg.ModalityAwareFedAvg` for ``plan``:
    its policy, the objective's server half and proximal weight, the names of the model's parameters
    (update vectors hold parameters only, never buffers) and the run's federation settings; with
    ``plan.roster_from_scenario`` (a simulation) also the scenario's clients, so that the roster
    is registered from them instead of by discovery."""
    run = plan.run
    extra: dict[str, Any] = {}
    if plan.roster_from_scenario:
        from fedmm.protocol import ClientInfo  # flwr: only when a strategy is built

        sc = plan.scenario
        extra["scenario"] = [ClientInfo(p, tuple(sc.modalities[p]), len(sc.partitions[p]))
                             for p in range(len(sc.partitions))]
    return dict(policy=plan.policy, clients_per_round=run.clients_per_round,
                min_available_nodes=run.min_available_nodes or len(plan.scenario.partitions),
                run_config=run.to_toml(), proximal_mu=plan.objective.proximal_mu,
                extras_fn=plan.objective.server_extras, observe_fn=plan.objective.server_observe,
                fraction_evaluate=run.fraction_evaluate, round_timeout=run.round_timeout, seed=run.seed,
                parameter_keys=[name for name, _ in plan.model.named_parameters()],
                num_partitions=len(plan.scenario.partitions), **extra)
