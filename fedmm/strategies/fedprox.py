"""FedProx (Li et al., MLSys 2020) on modality-aware FedAvg: clients add the proximal term
(docs/methods/fedavg.md §3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedmm.strategies.context import StrategyContext
from fedmm.strategies.fedavg import ModalityAwareFedAvg


class FedProx(ModalityAwareFedAvg):
    """Modality-aware FedAvg whose clients add ``mu / 2 * ||w - w_global||^2`` to their loss.

    Parameters
    ----------
    mu:
        The proximal weight (the recipe's ``strategy.mu``,
        :class:`fedmm.strategies.recipes.FedProxParams`); 0 is FedAvg.
    **kwargs:
        Those of :class:`ModalityAwareFedAvg`.
    """

    def __init__(self, *, mu: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mu = mu

    @classmethod
    def from_context(cls, context: StrategyContext, params: Any, **overrides: Any) -> ModalityAwareFedAvg:
        return super().from_context(context, params, **{"mu": params.mu, **overrides})

    def training_options(self) -> Mapping[str, Any]:
        return {"proximal_mu": self.mu}
