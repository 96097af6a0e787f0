"""CMSFed's client side: the modal-enhancement (ME) loss toward server-aggregated global prototypes.

Method: docs/methods/cmsfed.md §3 and §5; reference code
``fanyunfeng-bit/Balanced-Modality-Selection-in-MFL`` (``client/mmdrop.py``, ``server/mmdrop.py``,
internal name FedMDrop, ``--clientsel_algo PMR_submodular``). Used by ``strategy = "cmsfed"``.

The ME loss is PMR's prototype loss (:class:`~fedmm.objectives.pmr.PMR`) with the prototypes
replaced by the global ones:

* training both modalities: ``L = CE(F([z_a; z_v]), y) + alpha * CE(s^w, y)`` for the batch's weak
  modality ``w`` only (the lower summed prototype confidence), nothing on a tie;
* training one modality ``m`` (a unimodal client, or a multimodal one the server assigned to ``m``):
  ``L = CE(F(z_m with zeros elsewhere), y) + alpha * CE(s^m, y)``, which aligns the feature spaces
  of clients that trained different modality subsets;

with ``s^m_c = -||phi_m(x) - P^m_c||``. The global prototypes are fixed during local training. A
client that has no global prototype of a modality yet (the update pass before round 1) uses its
local ones, as the reference's round-0 pass does.

Clients report prototypes as facts: per modality the class feature sums ``proto/<m>`` and the
class counts ``proto-count/<m>``, always measured with a model the server holds, never with a
client's locally trained one (the reference's ``server/mmdrop.py`` computes
``aggregate_global_proto(selected_clients)`` with the aggregated ``self.model``):

* in the update pass (server round :data:`UPDATE_PASS_ROUND`) the training replies carry the
  received initial model's sums, the very local prototypes the pass trained toward
  (docs/methods/cmsfed.md §5.1, §8);
* after every round's aggregation the server sends the new global model to that round's clients
  (:attr:`observes_global_model`), and each answers with the sums of every modality it holds
  (:meth:`global_model_facts`), whatever it trained.

Prototypes of the locally trained models (a literal reading of docs/methods/cmsfed.md §5.5) lie beyond the aggregated
model's feature space: the next round's ME loss pulls the received model toward them, the
features grow, the next prototypes lie further out, and training diverges (docs/methods/cmsfed.md §3.5).

Server half (plain numpy): after every round (and the update pass) ``P^m_c = sum_k S^m_{k,c} /
sum_k n^m_{k,c}`` over the accepted clients that hold ``m``, where ``S`` are the reported class
feature sums and ``n`` the class counts: the class-count-weighted mean of the local prototypes.
A class nobody reported this round keeps its previous global prototype.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedmm.data.base import TensorDict
from fedmm.objectives.base import Objective, RoundContext
from fedmm.objectives.pmr import PMR, Prototypes, class_feature_sums, prototypes_from_sums
from fedmm.objectives.registry import register_objective
from fedmm.params import NON_NEGATIVE, Checked, Search

#: The server round of the strategy's update pass before round 1 (the same value as
#: ``fedmm.strategies.selection.base.UPDATE_PASS_ROUND``; objectives import no strategy code).
UPDATE_PASS_ROUND = 0


def proto_key(modality: str) -> str:
    """Fact key of a client's per-class feature sums of ``modality`` (flat, class-major ``K x D``)."""
    return f"proto/{modality}"


def proto_count_key(modality: str) -> str:
    """Fact key of the per-class sample counts behind :func:`proto_key` (``K`` numbers)."""
    return f"proto-count/{modality}"


def facts_from_sums(sums: dict[str, torch.Tensor], counts: torch.Tensor) -> dict[str, float | list[float]]:
    """``proto/<m>`` and ``proto-count/<m>`` of the class feature sums and counts of each modality."""
    facts: dict[str, float | list[float]] = {}
    for m, s in sums.items():
        facts[proto_key(m)] = s.flatten().tolist()
        facts[proto_count_key(m)] = counts.tolist()
    return facts


def prototype_facts(model: nn.Module, data: TensorDict, modalities: list[str]) -> dict[str, float | list[float]]:
    """:func:`facts_from_sums` of ``modalities`` over ``data`` with ``model`` (one encoder pass)."""
    return facts_from_sums(*class_feature_sums(model, data, modalities))


def global_proto_key(modality: str) -> str:
    """Extras key of the global prototypes of ``modality`` (``K x D`` float32)."""
    return f"cmsfed-proto/{modality}"


def global_present_key(modality: str) -> str:
    """Extras key of which global prototypes exist (``K`` int8, 1 = the class was seen)."""
    return f"cmsfed-present/{modality}"


@register_objective("cmsfed")
class CMSFedObjective(PMR):
    """CMSFed: fused CE plus the weak modality's CE toward the global class prototypes."""

    @dataclass
    class Params(Checked):
        """Parameters of ``cmsfed``.

        Parameters
        ----------
        alpha:
            Weight of the ME (prototype) loss, the reference's ``--MI_alpha`` (2.0 in its scripts).
        """

        alpha: Annotated[float, NON_NEGATIVE, Search(0.5, 4.0)] = 2.0

    params: Params

    def __init__(self, params: CMSFedObjective.Params | None = None) -> None:
        super().__init__(params)
        #: Server side: global prototype centers and presence per modality.
        self.global_centers: dict[str, np.ndarray] = {}
        self.global_present: dict[str, np.ndarray] = {}
        #: Client side, update pass: the facts of the received model (reported by end_round).
        self._received_facts: dict[str, float | list[float]] = {}

    # -- client side -----------------------------------------------------------------------------
    def modulating(self) -> bool:
        """The ME loss acts for the whole run (PMR's window is not part of CMSFed)."""
        return True

    def begin_round(self, model: nn.Module, data: TensorDict, ctx: RoundContext) -> None:
        """Global prototypes from the server's extras; local ones of the received model for a
        modality without them. In the update pass the received model's class feature sums of every
        trained modality are also kept: they are this pass's facts."""
        Objective.begin_round(self, model, data, ctx)
        ref = next(model.parameters())
        trained = self.trained_modalities(model, data)
        received = {
            m: Prototypes(
                centers=torch.as_tensor(
                    np.asarray(ctx.extras[global_proto_key(m)]), device=ref.device, dtype=ref.dtype
                ),
                present=torch.as_tensor(np.asarray(ctx.extras[global_present_key(m)]) > 0, device=ref.device),
            )
            for m in trained
            if global_proto_key(m) in ctx.extras
        }
        update_pass = ctx.server_round == UPDATE_PASS_ROUND
        need = [m for m in trained if update_pass or m not in received]
        sums, counts = class_feature_sums(model, data, need) if need else ({}, None)
        local = {m: prototypes_from_sums(s, counts) for m, s in sums.items()}
        self._received_facts = facts_from_sums(sums, counts) if update_pass else {}
        self.prototypes = {**local, **received}

    def batches(
        self, model: nn.Module, data: TensorDict, epoch: int, batch_size: int, generator: torch.Generator
    ) -> Iterator[TensorDict]:
        # The prototypes stay fixed for the round (no per-epoch refresh as in PMR).
        yield from Objective.batches(self, model, data, epoch, batch_size, generator)

    def end_round(self, model: nn.Module, data: TensorDict) -> dict[str, float | list[float]]:
        """In the update pass, the received model's class feature sums and counts of every trained
        modality (kept by :meth:`begin_round`); nothing in the rounds (the server asks for the
        aggregated model's with :meth:`global_model_facts`)."""
        if self.ctx is not None and self.ctx.server_round == UPDATE_PASS_ROUND:
            return dict(self._received_facts)
        return {}

    #: The global prototypes come from the aggregated model on each round's clients.
    observes_global_model: ClassVar[bool] = True

    def global_model_facts(
        self, model: nn.Module, data: TensorDict, modalities: list[str]
    ) -> dict[str, float | list[float]]:
        """The class feature sums and counts of the received global model, per held modality."""
        return prototype_facts(model, data, modalities)

    # -- server side -----------------------------------------------------------------------------
    def server_observe(self, server_round: int, facts: list[tuple[int, dict[str, Any]]]) -> None:
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, np.ndarray] = {}
        prefix = proto_key("")
        for _, f in facts:
            for key, value in f.items():
                if not key.startswith(prefix):
                    continue
                m = key[len(prefix) :]
                c = np.asarray(f[proto_count_key(m)], dtype=np.float64)
                s = np.asarray(value, dtype=np.float64).reshape(c.size, -1)
                sums[m] = s if m not in sums else sums[m] + s
                counts[m] = c if m not in counts else counts[m] + c
        for m, s in sums.items():
            seen = counts[m] > 0
            centers = self.global_centers.get(m, np.zeros(s.shape, dtype=np.float32)).copy()
            present = self.global_present.get(m, np.zeros(s.shape[0], dtype=bool))
            centers[seen] = (s[seen] / counts[m][seen, None]).astype(np.float32)
            self.global_centers[m] = centers
            self.global_present[m] = present | seen

    def server_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"modalities": ",".join(self.global_centers)}
        for m in self.global_centers:
            state[f"centers.{m}"] = self.global_centers[m]
            state[f"present.{m}"] = self.global_present[m]
        return state

    def load_server_state(self, state: dict[str, Any]) -> None:
        names = [m for m in str(state["modalities"]).split(",") if m]
        self.global_centers = {m: np.asarray(state[f"centers.{m}"], dtype=np.float32) for m in names}
        self.global_present = {m: np.asarray(state[f"present.{m}"], dtype=bool) for m in names}

    def server_extras(self, server_round: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m, centers in self.global_centers.items():
            out[global_proto_key(m)] = centers
            out[global_present_key(m)] = self.global_present[m].astype(np.int8)
        return out


__all__ = [
    "UPDATE_PASS_ROUND",
    "CMSFedObjective",
    "facts_from_sums",
    "global_present_key",
    "global_proto_key",
    "proto_count_key",
    "proto_key",
    "prototype_facts",
]
