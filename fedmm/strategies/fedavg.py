"""Modality-aware FedAvg (and FedProx): each parameter averaged over the clients that trained it."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid

from fedmm.checkpoint import prefixed, unprefixed
from fedmm.groups import key_modality, keys_for_modalities
from fedmm.protocol import NUM_EXAMPLES, ClientInfo, Request, message_bytes
from fedmm.records import aggregate, from_record, to_record
from fedmm.strategies.base import ExtrasFn, ObserveFn
from fedmm.strategies.replies import Accepted, accept, client_updates, evaluation, model_facts, probed_losses
from fedmm.strategies.recipes import strategy_kwargs
from fedmm.strategies.roster import Roster
from fedmm.strategies.selection.base import UPDATE_PASS_ROUND, Assignment, ClientState, SelectionPolicy

if TYPE_CHECKING:
    from fedmm.server.loop import Plan

log = logging.getLogger("fedmm")

#: Local epochs of the pass that gives update-vector policies their first vectors (the reference's
#: ``grad_epochs``, FEDCMI_CMSFED.md 3.5 step 1).
UPDATE_PASS_EPOCHS = 1
#: Clients per batch of the update pass: the server holds one batch's messages (each a copy of
#: the model) and replies at a time, so its memory does not grow with the number of clients.
UPDATE_PASS_BATCH = 500


class ModalityAwareFedAvg:
    """FedAvg for clients that hold different modalities (FEDCMI_CMSFED.md section 1), as the steps
    of :class:`~fedmm.strategies.base.RoundStrategy`.

    Every array is averaged over the clients that sent it, weighted by ``num-examples``; an array
    nobody trained keeps its value. Each node gets its own message holding only the parameter groups
    of the modalities it trains this round plus the shared ``fusion`` group, and it uploads only
    those. When the policy asks for client facts (CMSFed's imbalance ratio), a client also receives
    the groups of the modalities it holds but does not train, to measure them with all of them.

    Parameters
    ----------
    policy:
        Decides which (client, modalities) pairs train each round.
    clients_per_round:
        Budget handed to the policy (``all`` ignores it).
    min_available_nodes:
        Nodes to wait for before the first round (at most ``round_timeout`` seconds).
    run_config:
        The resolved run configuration as TOML text, sent with every message (so clients build the
        same scenario and model).
    proximal_mu:
        FedProx proximal weight sent to clients; 0 disables it.
    extras_fn:
        ``round -> dict`` of extra values for all clients this round (objective or strategy state).
    observe_fn:
        Called with the facts of the accepted replies of every training round (and of the update
        pass, as round 0): the objective's server half (boosting confidences, prototypes).
    fraction_evaluate:
        Fraction of known nodes asked to evaluate the global model on their own data.
    round_timeout:
        Seconds to wait for replies (missing replies are recorded as failures), and for
        ``min_available_nodes`` nodes to connect before the first round.
    seed:
        Seed of the strategy's own generator (which nodes evaluate).
    parameter_keys:
        Names of the global model's parameters (``named_parameters()``: no batch-norm statistics
        or other buffers). The update vectors of a policy that uses them (DivFL, CMSFed) are built
        from the encoder parameters among these only, as the reference does (FEDCMI_CMSFED.md 3.10);
        required by such a policy (ValueError otherwise), ignored by the others.
    num_partitions:
        Clients of the run's scenario: a node whose discovery reply names a partition id outside
        ``0 .. num_partitions - 1`` is skipped; ``None`` checks only that the id is not negative.
    scenario:
        The scenario's clients, to register the roster from instead of discovering the nodes with
        ``query`` messages (``fedmm simulate``; see :class:`~fedmm.strategies.roster.Roster`);
        every message then names its client's partition id. ``None``: discovery.
    """

    def __init__(self, *, policy: SelectionPolicy, clients_per_round: int, min_available_nodes: int, run_config: str,
                 proximal_mu: float = 0.0, extras_fn: ExtrasFn | None = None, observe_fn: ObserveFn | None = None,
                 fraction_evaluate: float = 0.0, round_timeout: float = 600.0, seed: int = 0,
                 parameter_keys: Collection[str] | None = None, num_partitions: int | None = None,
                 scenario: Sequence[ClientInfo] | None = None) -> None:
        if policy.uses_updates and parameter_keys is None:
            raise ValueError(f"selection {policy.name!r} builds update vectors from the model's parameters: "
                             "pass their names as parameter_keys")
        self.policy, self.parameter_keys = policy, frozenset(parameter_keys or ())
        self.clients_per_round, self.run_config, self.proximal_mu = clients_per_round, run_config, proximal_mu
        self.extras_fn, self.observe_fn = extras_fn or (lambda server_round: {}), observe_fn
        self.fraction_evaluate, self.round_timeout = fraction_evaluate, round_timeout
        self.roster = Roster(min_available_nodes, round_timeout, num_partitions, scenario)
        self.client_rows: list[dict[str, Any]] = []
        self.round_stats: dict[str, float] = {}
        self._global: dict[str, np.ndarray] = {}
        # the last step's messages and assignments by node; the client facts (and order) it asked for
        self._sent: dict[int, Assignment] = {}
        self._messages: dict[int, Message] = {}
        self._asked: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        # the update pass's clients still to ask (None: not started this round) and its facts so far
        self._pass_queue: list[int] | None = None
        self._pass_facts: list[tuple[int, dict[str, Any]]] = []
        self.last_accepted: list[int] = []  # clients whose reply the last aggregate_train accepted
        self._rng = np.random.default_rng(seed)

    @classmethod
    def from_plan(cls, plan: Plan, params: Any, **overrides: Any) -> ModalityAwareFedAvg:
        """``plan``'s strategy (:func:`.strategy_kwargs`, then a subclass's ``overrides``); no params."""
        return cls(**{**strategy_kwargs(plan), **overrides})

    def begin_round(self, server_round: int, arrays: ArrayRecord) -> None:
        self._global = from_record(arrays)
        self.round_stats = {"bytes-down": 0.0, "bytes-up": 0.0}
        self._pass_queue = None

    def configure_discovery(self, server_round: int, grid: Grid) -> list[Message]:
        self._messages = self.roster.connect(grid, server_round, self.run_config)
        return list(self._messages.values())

    def aggregate_discovery(self, server_round: int, replies: Iterable[Message]) -> None:
        self.roster.admit(replies, self._messages, {key_modality(k) for k in self._global} - {None})

    def configure_update_pass(self, arrays: ArrayRecord) -> list[Message]:
        """The next batch (:data:`UPDATE_PASS_BATCH` clients) of a short pass (round 0) of the
        clients the policy names, on all their modalities; ``[]`` once all of them were asked. The
        policy gets their update vectors batch by batch, the objective's server half all their facts
        at the end; the model stays. It uses the run's lr (the reference ran it at lr 0,
        FEDCMI_CMSFED.md 3.9)."""
        if self._pass_queue is None:
            states = self.roster.available()
            self._pass_queue = self.policy.update_pass(states)
            self._asked = self._facts_asked(states) if self._pass_queue else ((), ())
            self._pass_facts = []
        batch, self._pass_queue = self._pass_queue[:UPDATE_PASS_BATCH], self._pass_queue[UPDATE_PASS_BATCH:]
        self._sent = {self.roster.node_of[c]: Assignment(c, self.roster.clients[c].modalities) for c in batch}
        self._messages = {node: self._train_message(node, a, arrays, UPDATE_PASS_ROUND, UPDATE_PASS_EPOCHS)
                          for node, a in self._sent.items()}
        return list(self._messages.values())

    def aggregate_update_pass(self, replies: Iterable[Message]) -> None:
        if not self._messages:
            return
        accepted = self._accept(UPDATE_PASS_ROUND, replies)
        self._observe_updates(UPDATE_PASS_ROUND, accepted)
        self._pass_facts.extend((r.num_examples, r.facts) for r in accepted)
        if not self._pass_queue and self.observe_fn is not None:  # the last batch: the pass's facts at once
            self.observe_fn(UPDATE_PASS_ROUND, self._pass_facts)
        self._messages = {}

    def configure_probe(self, server_round: int, arrays: ArrayRecord) -> list[Message]:
        """Ask the policy's probe clients (Power-of-Choice) for their loss under the current global
        model, round ``server_round - 1``'s: the messages carry that round and its extras."""
        probe = self.policy.probe(server_round, self.roster.available(), self.clients_per_round)
        self._messages = {self.roster.node_of[c]: self._evaluate_message(c, server_round - 1, arrays) for c in probe}
        return list(self._messages.values())

    def aggregate_probe(self, server_round: int, replies: Iterable[Message]) -> None:
        probed_losses(self.roster, server_round, replies, self._messages)

    def configure_train(self, server_round: int, arrays: ArrayRecord) -> list[Message]:
        states = self.roster.available()
        started = time.perf_counter()
        assignments = self.policy.select(server_round, states, self.clients_per_round)
        self.round_stats["selection-seconds"] = time.perf_counter() - started
        self._asked = self._facts_asked(states)
        self._sent = {self.roster.node_of[a.client_id]: a for a in assignments}
        self._messages = {node: self._train_message(node, a, arrays, server_round)
                          for node, a in self._sent.items()}
        return list(self._messages.values())

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = self._accept(server_round, replies)
        self.last_accepted = [r.client_id for r in accepted]
        self._observe(server_round, accepted)
        if not accepted:
            log.warning("round %d: no usable replies; the global model is unchanged", server_round)
            return None, None
        new = aggregate(self._global, [(r.num_examples, r.arrays) for r in accepted])
        weights = [r.num_examples for r in accepted]
        mean_loss = float(np.average([r.loss for r in accepted], weights=weights))
        self.round_stats.update({"train/loss": mean_loss, "clients-ok": len(accepted)})
        return to_record(new), MetricRecord({"train/loss": mean_loss, NUM_EXAMPLES: int(sum(weights))})

    def configure_global_model_facts(self, server_round: int, arrays: ArrayRecord) -> list[Message]:
        """Ask the connected clients of :attr:`last_accepted` for the objective's facts of the
        aggregated model on their data (``Objective.global_model_facts``); no training."""
        self._messages = {self.roster.node_of[c]: self._evaluate_message(c, server_round, arrays, facts=True)
                          for c in self.last_accepted if self.roster.node_of.get(c) in self.roster.connected}
        return list(self._messages.values())

    def aggregate_global_model_facts(self, server_round: int, replies: Iterable[Message]) -> None:
        """Hand the facts to the objective's server half as this round's; the model does not change."""
        facts = model_facts(self.roster, server_round, replies, self._messages)
        if self.observe_fn is not None:
            self.observe_fn(server_round, facts)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord) -> list[Message]:
        clients = [c.client_id for c in self.roster.available()]
        if self.fraction_evaluate <= 0 or not clients:
            return []
        k = max(1, int(round(self.fraction_evaluate * len(clients))))
        chosen = self._rng.choice(clients, size=min(k, len(clients)), replace=False)
        return [self._evaluate_message(int(c), server_round, arrays) for c in chosen]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return evaluation(self.roster, server_round, replies)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: client states (:meth:`Roster.state_dict`), the strategy's
        generator and the policy state (node ids are not kept, nodes are discovered again)."""
        return {**self.roster.state_dict(), "strategy.rng": json.dumps(self._rng.bit_generator.state),
                **prefixed("policy.", self.policy.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (the policy must be of the same kind)."""
        self.roster.load_state_dict(state)
        self._rng.bit_generator.state = json.loads(str(state["strategy.rng"]))
        self.policy.load_state_dict(unprefixed("policy.", state))

    def _facts_asked(self, states: list[ClientState]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The client facts the policy asks for and their modality order (its imbalance order)."""
        facts = tuple(self.policy.client_facts(states))
        return facts, tuple(self.policy.imbalance_order(states) or ()) if facts else ()

    def _train_message(self, node: int, a: Assignment, arrays: ArrayRecord, server_round: int,
                       epochs: int | None = None) -> Message:
        """The training message of one node; when the step asks for client facts, the node gets the
        groups of every modality it holds (to measure them with all); ``epochs``: the update pass's."""
        facts, order = self._asked
        groups = self.roster.clients[a.client_id].modalities if facts else a.modalities
        return self._message(a.client_id, MessageType.TRAIN, arrays, groups, Request(
            self.run_config, server_round, a.modalities, proximal_mu=self.proximal_mu, client_facts=facts,
            order=order, epochs=epochs, extras=dict(self.extras_fn(server_round))))

    def _evaluate_message(self, client_id: int, server_round: int, arrays: ArrayRecord, *, facts: bool = False
                          ) -> Message:
        mods = self.roster.clients[client_id].modalities
        return self._message(client_id, MessageType.EVALUATE, arrays, mods, Request(
            self.run_config, server_round, mods, global_model_facts=facts, extras=dict(self.extras_fn(server_round))))

    def _message(self, client_id: int, message_type: str, arrays: ArrayRecord, groups: tuple[str, ...],
                 request: Request) -> Message:
        """``request`` to ``client_id`` with ``groups``, counted in ``bytes-down`` (train: + extras)."""
        request = dataclasses.replace(request, partition_id=self.roster.partition_of(client_id))
        msg = request.to_message(self.roster.node_of[client_id], message_type, arrays, groups)
        size = message_bytes(msg, extras=message_type == MessageType.TRAIN)
        self.round_stats["bytes-down"] = self.round_stats.get("bytes-down", 0.0) + size
        return msg

    def _accept(self, server_round: int, replies: Iterable[Message]) -> list[Accepted]:
        """The usable replies to the last training step's messages; every outcome goes to the rows."""
        accepted, rows, uploaded = accept(self.roster, server_round, replies, self._sent, self._messages,
                                          self._global, self._asked[0], self.round_timeout)
        self.round_stats["bytes-up"] = self.round_stats.get("bytes-up", 0.0) + uploaded
        self.client_rows.extend(rows)
        return accepted

    def _observe_updates(self, server_round: int, accepted: list[Accepted]) -> None:
        """Update client states and hand their updates to the policy."""
        keys = self.parameter_keys if self.policy.uses_updates else None
        self.policy.observe(server_round, client_updates(self.roster, server_round, accepted, self._global, keys))

    def _observe(self, server_round: int, accepted: list[Accepted]) -> None:
        """Update client states, then hand the round to the policy and the objective's server half."""
        self._observe_updates(server_round, accepted)
        if self.observe_fn is not None:
            self.observe_fn(server_round, [(r.num_examples, r.facts) for r in accepted])
