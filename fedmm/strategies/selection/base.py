"""The selection-policy interface: which (client, modality-subset) pairs train in a round.

A policy is pure numpy (no torch, no Flower). The strategy owns the per-client facts
(:class:`ClientState`), asks the policy which nodes to probe (:meth:`SelectionPolicy.probe`, used by
Power-of-Choice), then for the round's :class:`Assignment` list (:meth:`SelectionPolicy.select`), and
finally hands back what the selected clients sent (:meth:`SelectionPolicy.observe`).

Every policy draws its randomness from its own ``np.random.Generator`` seeded by the ``seed`` given
to :func:`fedmm.strategies.selection.build_policy`, so the same seed and the same inputs give the
same selection sequence, and :meth:`SelectionPolicy.state_dict` /
:meth:`SelectionPolicy.load_state_dict` carry that generator's state through a checkpoint.

Availability contract: when device profiles are on (``devices`` in the run config,
:mod:`fedmm.devices`), the strategy hands a policy's :meth:`SelectionPolicy.select` and
:meth:`SelectionPolicy.probe` only the clients that are online at selection time (on the simulated
clock, :mod:`fedmm.clock`), so no policy can select an offline client. Each :class:`ClientState`
then also carries the client's simulated duration (:attr:`ClientState.sim_seconds`) and
:attr:`ClientState.online` is True for every client a policy sees. With profiles off every client is
online and ``sim_seconds`` is ``None``.

Parameters of a policy are the fields of its nested ``Params`` dataclass (a
:class:`fedmm.params.Checked` one): constraints in the fields' ``Annotated`` annotations, help in
the numpy docstring, checked by :func:`fedmm.params.check_value` (see
:func:`fedmm.strategies.selection.parse_policy_params`).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from fedmm.facts import IMBALANCE_RATIO
from fedmm.params import Checked

#: Value types a ``state_dict`` may hold (numpy arrays and plain scalars; no pickled objects).
StateValue = np.ndarray | float | int | str

#: The server round of the update pass (docs/methods/cmsfed.md §5.1): the short training pass that
#: gives update-vector policies their first vectors before round 1 (rounds count from 1).
UPDATE_PASS_ROUND = 0

#: Modes recorded in ``history``: how each selected client was chosen and what it trains.
MODE_ALL = "all"  # no diversity function involved (all, random, powd): trains all its modalities
MODE_MULTIMODAL = "multimodal"  # picked by the multimodal (full-vector) function: all its modalities
MODE_WEAK = "weak"  # picked by CMSFed's weak-modality function: trains only the weak modality
MODE_UNSEEN = "unseen"  # no update vector yet, picked before any greedy step: all its modalities


@dataclass
class ClientState:
    """What the server knows about one client; the strategy owns and updates it.

    Parameters
    ----------
    client_id:
        Stable id of the client (a non-negative integer below 2**64). The strategy uses the
        client's partition id, so a node that reconnects under a new Flower node id, or a resumed
        run whose nodes got new ids, keeps the client's history.
    modalities:
        Names of the modalities the client holds, e.g. ``("audio", "video")``.
    num_examples:
        Number of local training examples (weights sampling and the global imbalance ratio).
    loss:
        Latest local loss measured under a global model (Power-of-Choice); ``None`` if never measured.
    imbalance_ratio:
        The client's imbalance ratio rho_k = Acc_first / Acc_second of its prototype (nearest class
        mean) accuracies (CMSFed, docs/methods/cmsfed.md §3.3); 1.0 for unimodal clients; ``None`` if the
        client has not reported one yet.
    last_round:
        Last server round the client trained in (staleness); ``None`` if it never trained.
    sim_seconds:
        The client's simulated duration (seconds) of its last round: download + local training +
        upload (:func:`fedmm.clock.client_time`), or, before it trained, its expected duration from
        its device profile when it trains all its modalities; ``None`` when heterogeneity is off.
    online:
        Whether the client is available at the current selection time (simulated clock). A policy
        only ever receives online clients (see the module docstring); True when heterogeneity is off.
    """

    client_id: int
    modalities: tuple[str, ...]
    num_examples: int
    loss: float | None = None
    imbalance_ratio: float | None = None
    last_round: int | None = None
    sim_seconds: float | None = None
    online: bool = True


@dataclass(frozen=True)
class Assignment:
    """One selected client and what it trains this round.

    Parameters
    ----------
    client_id:
        Id of the selected client (see :attr:`ClientState.client_id`).
    modalities:
        Modalities it trains this round: all of those it holds, or a subset (CMSFed's weak-only mode).
    """

    client_id: int
    modalities: tuple[str, ...]


@dataclass
class ClientUpdate:
    """What a selected client sent back, as the policy sees it.

    Parameters
    ----------
    client_id:
        Id of the client (see :attr:`ClientState.client_id`).
    modalities:
        Modalities it trained this round.
    num_examples:
        Number of local training examples it used.
    deltas:
        Per trained modality (key = modality name), the flat float32 update ``global - local`` over
        that modality's ENCODER parameters. Empty when the strategy does not compute updates (the
        policy's ``uses_updates`` is False).
    loss:
        Its local training loss, if reported.
    imbalance_ratio:
        Its rho_k after local training (CMSFed), if reported.
    facts:
        Everything else it reported by name: the client facts the policy asked for
        (:meth:`SelectionPolicy.client_facts`) and the objective's facts.
    sim_seconds:
        This round's simulated duration (seconds) of that client: download + local training +
        upload of what it trained (:func:`fedmm.clock.client_time`); ``None`` when heterogeneity is
        off.
    seconds:
        The wall-clock seconds the client reported for its local training (``seconds`` in
        ``clients.csv``); ``None`` if unknown. Oort's duration when the simulated clock is off.
    """

    client_id: int
    modalities: tuple[str, ...]
    num_examples: int
    deltas: dict[str, np.ndarray] = field(default_factory=dict)
    loss: float | None = None
    imbalance_ratio: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    sim_seconds: float | None = None
    seconds: float | None = None


class SelectionPolicy(ABC):
    """Chooses the (client, modalities) pairs of a round.

    Parameters
    ----------
    params:
        The policy's ``Params`` (validated); ``None`` gives the defaults.
    seed:
        Seed of the policy's own random generator (non-negative integer).

    Attributes
    ----------
    history:
        One record per :meth:`select` call: ``round``, ``client_ids``, ``modalities`` (one list per
        selected node), ``modes`` (one of ``all``, ``multimodal``, ``weak``, ``unseen`` per node) and
        ``seconds`` (time the call took), plus policy-specific keys. JSON-serialisable.
    """

    #: Registry name (``selection = "<name>"`` in the run config).
    name: ClassVar[str]
    #: Whether the strategy must fill :attr:`ClientUpdate.deltas` (update-vector policies).
    uses_updates: ClassVar[bool] = False

    @dataclass
    class Params(Checked):
        """This policy takes no parameters."""

    def __init__(self, params: Any | None = None, *, seed: int = 0) -> None:
        if params is None:
            params = self.Params()
        if not isinstance(params, self.Params):
            raise TypeError(
                f"selection {self.name!r} expects {type(self).__name__}.Params, got {type(params).__name__}"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"selection {self.name!r}: seed must be a non-negative integer, got {seed!r}")
        self.params = params
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.history: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        values = ", ".join(f"{f.name}={getattr(self.params, f.name)!r}" for f in fields(self.params))
        return f"{type(self).__name__}({values + ', ' if values else ''}seed={self.seed})"

    # -- the three hooks -----------------------------------------------------------------------------
    def probe(self, server_round: int, clients: Sequence[ClientState], budget: int) -> list[int]:
        """Node ids whose current local loss the strategy must measure before select (PowD); default []."""
        return []

    @abstractmethod
    def select(self, server_round: int, clients: Sequence[ClientState], budget: int) -> list[Assignment]:
        """This round's assignments, at most ``min(budget, len(clients))`` of them, distinct nodes.

        Parameters
        ----------
        server_round:
            Current server round (non-negative).
        clients:
            Every client the server knows, in a stable order (ties are broken by this order).
        budget:
            Clients per round (capped at ``len(clients)``; ``all`` ignores it).
        """

    def observe(self, server_round: int, updates: Sequence[ClientUpdate]) -> None:
        """Receive what selected clients sent back; default no-op."""

    def update_pass(self, clients: Sequence[ClientState]) -> list[int]:
        """Clients that must run a short training pass before this round's selection so that the
        policy has their update vectors (docs/methods/cmsfed.md §5.1); default none."""
        return []

    def imbalance_order(self, clients: Sequence[ClientState]) -> tuple[str, ...] | None:
        """The modality order ``(pivot, *rest)``, two or more names, when the policy needs every
        client's imbalance ratio rho_k = Acc_pivot / min Acc_rest (its prototype accuracies,
        ``fedmm.objectives.pmr.prototype_imbalance_ratio``); default ``None`` (not needed)."""
        return None

    def client_facts(self, clients: Sequence[ClientState]) -> tuple[str, ...]:
        """Names of the facts (:data:`fedmm.facts.CLIENT_FACTS`) every trained client must measure and
        send back, with the modality order :meth:`imbalance_order` as their argument; default: the
        imbalance ratio when the policy has an imbalance order, else none."""
        return (IMBALANCE_RATIO,) if self.imbalance_order(clients) else ()

    # -- checkpointing -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, StateValue]:
        """Everything needed to resume: policy name, seed, RNG state and history (JSON strings)."""
        return {
            "policy": self.name,
            "seed": self.seed,
            "rng": json.dumps(self.rng.bit_generator.state),
            "history": json.dumps(self.history),
        }

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        """Restore a :meth:`state_dict` written by the same policy (raises ValueError otherwise)."""
        name = str(state.get("policy", ""))
        if name != self.name:
            raise ValueError(f"state_dict was written by selection {name!r}, not {self.name!r}")
        missing = [k for k in ("seed", "rng", "history") if k not in state]
        if missing:
            raise ValueError(f"selection {self.name!r}: state_dict lacks {missing}")
        self.seed = int(state["seed"])
        self.rng.bit_generator.state = json.loads(str(state["rng"]))
        self.history = json.loads(str(state["history"]))

    # -- helpers for subclasses ------------------------------------------------------------------------
    def _check(self, server_round: int, clients: Sequence[ClientState], budget: int) -> int:
        """Validate the arguments of probe/select; returns the effective budget."""
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
            raise ValueError(f"selection {self.name!r}: budget must be a positive integer, got {budget!r}")
        ids = [c.client_id for c in clients]
        if len(set(ids)) != len(ids):
            raise ValueError(f"selection {self.name!r}: duplicate client ids in clients")
        if server_round < 0:
            raise ValueError(f"selection {self.name!r}: server_round must be >= 0, got {server_round}")
        return min(int(budget), len(clients))

    def _record(
        self, server_round: int, assignments: Sequence[Assignment], modes: Sequence[str], started: float, **extra: Any
    ) -> list[Assignment]:
        """Append one history record and return ``assignments`` as a list."""
        self.history.append(
            {
                "round": int(server_round),
                "client_ids": [int(a.client_id) for a in assignments],
                "modalities": [list(a.modalities) for a in assignments],
                "modes": list(modes),
                "seconds": time.perf_counter() - started,
                **extra,
            }
        )
        return list(assignments)
