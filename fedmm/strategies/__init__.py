"""Server strategies (Flower Message API) and, in ``selection``, client/modality selection policies."""

from __future__ import annotations

from fedmm.strategies.fedavg import ModalityAwareFedAvg

#: Strategy name -> class. ``fedprox`` is modality-aware FedAvg whose clients add the proximal term;
#: ``fedcmi`` is modality-aware FedAvg whose clients train FedCMI's objective (the received global
#: model is the teacher, so the server sends nothing else; FEDCMI_CMSFED.md section 2.5); ``cmsfed``
#: is modality-aware FedAvg with the CMSFed objective (its server half aggregates the global
#: prototypes) and, by default, the CMSFed selection policy (whose update pass runs before round 1).
STRATEGIES: dict[str, type[ModalityAwareFedAvg]] = {
    "fedavg": ModalityAwareFedAvg,
    "fedprox": ModalityAwareFedAvg,
    "fedcmi": ModalityAwareFedAvg,
    "cmsfed": ModalityAwareFedAvg,
}

__all__ = ["STRATEGIES", "ModalityAwareFedAvg"]
