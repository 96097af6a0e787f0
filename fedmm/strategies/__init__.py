"""Server strategies (Flower Message API) and, in ``selection``, client/modality selection policies."""

from __future__ import annotations

from fedmm.strategies.fedavg import ModalityAwareFedAvg

#: Strategy name -> class. ``fedprox`` is modality-aware FedAvg whose clients add the proximal term.
STRATEGIES: dict[str, type[ModalityAwareFedAvg]] = {
    "fedavg": ModalityAwareFedAvg,
    "fedprox": ModalityAwareFedAvg,
}

__all__ = ["STRATEGIES", "ModalityAwareFedAvg"]
