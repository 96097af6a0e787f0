"""FedProx (Li et al., MLSys 2020) on modality-aware FedAvg: clients add the proximal term."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedmm.strategies.fedavg import ModalityAwareFedAvg

if TYPE_CHECKING:
    from fedmm.server.loop import Plan


class FedProx(ModalityAwareFedAvg):
    """Modality-aware FedAvg whose clients add ``mu / 2 * ||w - w_global||^2`` to their loss, with
    ``mu`` the recipe's ``strategy.mu`` (:class:`fedmm.strategies.recipes.FedProxParams`)."""

    @classmethod
    def from_plan(cls, plan: Plan, params: Any, **overrides: Any) -> ModalityAwareFedAvg:
        return super().from_plan(plan, params, **{"proximal_mu": params.mu, **overrides})
