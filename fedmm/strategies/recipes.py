"""Server strategies as small registered recipes (no flwr, no torch here: the config reads them).

A recipe is a strategy class (named by its import path, imported when a run builds it), the
objective that is its client side (if any), its default selection policy and its parameters (a
:class:`fedmm.params.Checked` ``Params`` dataclass whose constraints are in its annotations and
whose help is its numpy-style ``Parameters`` docstring section, set as ``strategy.<param>`` in the
run config). A new one is registered with ``@register_strategy("name", summary=...)`` above its
class; the class only needs the methods of :class:`fedmm.strategies.base.RoundStrategy` and a
``from_context(context, params)`` classmethod (``context``: a
:class:`fedmm.strategies.context.StrategyContext`, what a strategy may know of its run). The
built-in ones are registered the same way on their ``"module:Class"`` path, so that reading a
config never imports Flower.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fedmm.params import NON_NEGATIVE, Checked, Label, Search, check_search, parse
from fedmm.registry import Registry, registered_name

if TYPE_CHECKING:
    from fedmm.strategies.base import RoundStrategy
    from fedmm.strategies.context import StrategyContext


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
        check_search(
            self.params, f"strategy {self.params.__qualname__}"
        )  # a search range outside the valid one fails at import

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

    def build(self, context: StrategyContext, params: Any) -> RoundStrategy:
        """The run's strategy: ``target.from_context(context, params)``."""
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls).from_context(context, params)


#: Strategy name -> recipe.
STRATEGIES: Registry[StrategyRecipe] = Registry("strategy")

StrategyClass = TypeVar("StrategyClass", bound="type | str")


def register_strategy(
    name: str, *, summary: str = "", objective: str | None = None, selection: str = "all", params: type = NoParams
) -> Callable[[StrategyClass], StrategyClass]:
    """Register a strategy class as ``name``: ``@register_strategy("fedmedian")`` above the class, or
    called on its ``"module:Class"`` path (imported only when a run builds it).

    Parameters
    ----------
    name:
        Its registry name, the value of config key ``strategy``.
    summary:
        One line for ``fedmm config`` and the docs; default: the first line of the class's docstring
        (a path needs it).
    objective, selection, params:
        The recipe's facts (:class:`StrategyRecipe`).

    Returns
    -------
    A decorator that registers the class (or path) and returns it.
    """
    name = registered_name("register_strategy", name)

    def register(target: StrategyClass) -> StrategyClass:
        if isinstance(target, str):
            path, line = target, summary
        else:
            path = f"{target.__module__}:{target.__qualname__}"
            line = summary or ((target.__doc__ or "").strip().splitlines() or [""])[0]
        if not line:
            raise ValueError(f"register_strategy({name!r}) needs a summary (or a class docstring) for `fedmm config`")
        STRATEGIES.add(name, StrategyRecipe(path, line, objective, selection, params))
        return target

    return register


# ``fedcmi``'s server side is modality-aware FedAvg whose clients train FedCMI's objective (the
# received global model is the teacher; docs/methods/fedcmi.md §5); ``cmsfed``'s is modality-aware
# FedAvg with the CMSFed objective (its server half aggregates the global prototypes) and, by
# default, the CMSFed selection policy (whose update pass runs first).
_FEDAVG = "fedmm.strategies.fedavg:ModalityAwareFedAvg"
register_strategy("fedavg", summary="modality-aware FedAvg: each parameter averaged over the clients that trained it")(
    _FEDAVG
)
register_strategy(
    "fedprox",
    summary="fedavg whose clients add the proximal term strategy.mu / 2 * ||w - w_global||^2",
    params=FedProxParams,
)("fedmm.strategies.fedprox:FedProx")
register_strategy(
    "fedcmi", summary="fedavg with FedCMI's client objective (the global model is the teacher)", objective="fedcmi"
)(_FEDAVG)
register_strategy(
    "cmsfed",
    summary="fedavg with CMSFed's objective (global prototypes) and selection (balanced greedy)",
    objective="cmsfed",
    selection="cmsfed",
)(_FEDAVG)
