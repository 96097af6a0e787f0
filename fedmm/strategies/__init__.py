"""Server strategies (Flower Message API) and, in ``selection``, client/modality selection policies.

:data:`STRATEGIES` (the registered recipes, :mod:`fedmm.strategies.recipes`) is importable without
flwr; the strategy classes are imported when first used.
"""

from __future__ import annotations

from typing import Any

from fedmm.strategies.recipes import STRATEGIES, StrategyRecipe


def __getattr__(name: str) -> Any:
    """``ModalityAwareFedAvg`` and ``FedProx``, imported on first use (they need flwr)."""
    if name == "ModalityAwareFedAvg":
        from fedmm.strategies.fedavg import ModalityAwareFedAvg

        return ModalityAwareFedAvg
    if name == "FedProx":
        from fedmm.strategies.fedprox import FedProx

        return FedProx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["STRATEGIES", "FedProx", "ModalityAwareFedAvg", "StrategyRecipe"]
