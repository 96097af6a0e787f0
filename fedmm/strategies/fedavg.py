"""Modality-aware FedAvg (and FedProx): each parameter averaged over the clients that trained it."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmm.checkpoint import prefixed, unprefixed
from fedmm.groups import is_encoder_key, key_modality, keys_for_modalities
from fedmm.records import (
    GLOBAL_MODEL_FACTS_KEY,
    RecordMismatch,
    aggregate,
    encode_extras,
    from_record,
    subset_record,
    to_record,
    vet_arrays,
)
from fedmm.strategies.selection.base import (
    UPDATE_PASS_ROUND,
    Assignment,
    ClientState,
    ClientUpdate,
    SelectionPolicy,
)

log = logging.getLogger("fedmm")

WEIGHT_KEY = "num-examples"
#: Local epochs of the pass that gives update-vector policies their first vectors (the reference's
#: ``grad_epochs``, FEDCMI_CMSFED.md 3.5 step 1).
UPDATE_PASS_EPOCHS = 1
#: Seconds between the progress warnings while the first round waits for nodes (the first comes
#: after this long too: in a simulation the nodes register while the server starts).
NODE_WAIT_LOG_EVERY = 10.0


class FederationTooSmall(RuntimeError):
    """Fewer nodes connected than the run needs within its wait for nodes (``round-timeout``)."""

    def __init__(self, connected: int, needed: int, waited: float) -> None:
        self.connected, self.needed = connected, needed
        super().__init__(
            f"only {connected} of the {needed} nodes this run needs connected within {waited:.0f} s "
            f"(round-timeout); make the federation {needed} nodes: for `flwr run .` add "
            f'--federation-config "num-supernodes={needed}" (or set it once with `flwr federation '
            f"simulation-config @none/default local --num-supernodes {needed}`), in a deployment start "
            f"{needed} SuperNodes; or ask for fewer with min-available-nodes (or num-clients)"
        )

#: ``round -> extras`` for every client (objective state such as global prototypes).
ExtrasFn = Callable[[int], Mapping[str, Any]]
#: ``(round, [(num_examples, facts), ...])`` of the clients whose replies were accepted.
ObserveFn = Callable[[int, list[tuple[int, dict[str, Any]]]], None]


@dataclass
class Accepted:
    """A usable training reply: who sent it, what it trained and what it sent."""

    client_id: int
    modalities: tuple[str, ...]
    num_examples: int
    loss: float
    arrays: dict[str, np.ndarray]
    facts: dict[str, Any]
    seconds: float = 0.0


class ModalityAwareFedAvg(Strategy):
    """FedAvg for clients that hold different modalities (FEDCMI_CMSFED.md section 1).

    Every array is averaged over the clients that sent it, weighted by ``num-examples``; an array
    nobody trained keeps its value. Each node gets its own message holding only the parameter groups
    of the modalities it trains this round plus the shared ``fusion`` group, and it uploads only
    those. When the policy needs each client's imbalance ratio (CMSFed), a client also receives the
    groups of the modalities it holds but does not train, to measure its ratio with all of them.

    Clients are identified by their partition id (learnt through a ``query`` message), not by
    their Flower node id: a node that reconnects under a new id, or a resumed run, keeps the
    client's state.

    Parameters
    ----------
    policy:
        Decides which (client, modalities) pairs train each round.
    clients_per_round:
        Budget handed to the policy (``all`` ignores it).
    min_available_nodes:
        Nodes to wait for before the first round (at most ``round_timeout`` seconds).
    run_config:
        Sent with every message (the resolved run configuration, so clients build the same
        scenario and model); per-node keys are added to a copy, never to this record.
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
    """

    def __init__(
        self,
        *,
        policy: SelectionPolicy,
        clients_per_round: int,
        min_available_nodes: int,
        run_config: ConfigRecord,
        proximal_mu: float = 0.0,
        extras_fn: ExtrasFn | None = None,
        observe_fn: ObserveFn | None = None,
        fraction_evaluate: float = 0.0,
        round_timeout: float = 600.0,
        seed: int = 0,
        parameter_keys: Collection[str] | None = None,
        num_partitions: int | None = None,
    ) -> None:
        if policy.uses_updates and parameter_keys is None:
            raise ValueError(f"selection {policy.name!r} builds update vectors from the model's parameters: "
                             "pass their names as parameter_keys")
        self.policy = policy
        self.parameter_keys = frozenset(parameter_keys or ())
        self.clients_per_round = clients_per_round
        self.min_available_nodes = min_available_nodes
        self.run_config = run_config
        self.proximal_mu = proximal_mu
        self.extras_fn = extras_fn
        self.observe_fn = observe_fn
        self.fraction_evaluate = fraction_evaluate
        self.round_timeout = round_timeout
        self.num_partitions = num_partitions
        #: Client state by client (partition) id.
        self.clients: dict[int, ClientState] = {}
        #: Current Flower node id of each client, and the client of every node id seen.
        self.node_of: dict[int, int] = {}
        self.client_of: dict[int, int] = {}
        self.connected: set[int] = set()
        self.client_rows: list[dict[str, Any]] = []
        self.round_stats: dict[str, float] = {}
        self._global: dict[str, np.ndarray] = {}
        self._sent: dict[int, Assignment] = {}
        #: This round's training message of every node in ``_sent`` (its id, set when the grid
        #: pushes it, ties each reply to the node it answers).
        self._messages: dict[int, Message] = {}
        #: Clients whose training reply the last :meth:`aggregate_train` accepted, by client id.
        self.last_accepted: list[int] = []
        self._rng = np.random.default_rng(seed)
        self.waited_for_nodes = False

    # -- discovery ---------------------------------------------------------------------------------
    def register(self, node_id: int, client_id: int, modalities: Sequence[str], num_examples: int) -> None:
        """Record that node ``node_id`` serves client ``client_id`` (a client that comes back under
        a new node id keeps its state)."""
        old = self.clients.get(client_id)
        state = ClientState(client_id=client_id, modalities=tuple(modalities), num_examples=int(num_examples))
        if old is not None:
            state = dataclasses.replace(old, modalities=state.modalities, num_examples=state.num_examples)
        self.clients[client_id] = state
        self.node_of[client_id] = node_id
        self.client_of[node_id] = client_id

    def discover(self, grid: Grid, server_round: int = 0) -> None:
        """Ask every node not seen before for its partition and modalities.

        The first call of a run (also of a resumed one) waits up to ``round_timeout`` seconds for
        ``min_available_nodes`` (:class:`FederationTooSmall` when fewer are connected by then);
        later rounds go on with whoever is connected, so a node that drops out is skipped and one
        that (re)joins is discovered.
        """
        if not self.waited_for_nodes:
            self._wait_for_nodes(grid)
        self.waited_for_nodes = True
        node_ids = list(grid.get_node_ids())
        for node in sorted(self.connected - set(node_ids)):
            row = self._row(server_round, node, None)
            row["status"] = "disconnected"
            log.warning("round %d: node %d (partition %d) is gone", server_round, node, self.client_of.get(node, -1))
            self.client_rows.append(row)
        self.connected = set(node_ids)
        new = [n for n in node_ids if n not in self.client_of]
        if not new:
            return
        queries = {n: self._message(n, MessageType.QUERY, RecordDict({"config": self._config()})) for n in new}
        replies = grid.send_and_receive(list(queries.values()), timeout=self.round_timeout)
        for node, reply in _answered_nodes(replies, queries):
            if reply.has_error():
                log.warning("node %d did not answer discovery: %s", node, reply.error.reason)
                continue
            try:
                client_id, modalities, num_examples = self._client_info(reply)
            except RecordMismatch as err:
                log.warning("node %d is skipped: its discovery reply %s; fix that SuperNode's --node-config "
                            "(partition-id, num-partitions, modalities) or run the server's fedmm version on it",
                            node, err)
                continue
            self.register(node, client_id, modalities, num_examples)
        log.info("discovered %d nodes (%d clients known)", len(new), len(self.clients))

    def _wait_for_nodes(self, grid: Grid) -> None:
        """Wait until ``min_available_nodes`` nodes are connected, at most ``round_timeout``
        seconds, warning every :data:`NODE_WAIT_LOG_EVERY` seconds; raises
        :class:`FederationTooSmall` naming both counts at the end of the wait."""
        started = time.monotonic()
        deadline, next_log = started + self.round_timeout, started + NODE_WAIT_LOG_EVERY
        while (connected := len(list(grid.get_node_ids()))) < self.min_available_nodes:
            now = time.monotonic()
            if now >= deadline:
                raise FederationTooSmall(connected, self.min_available_nodes, now - started)
            if now >= next_log:
                log.warning("waiting for nodes: %d of %d connected after %.0f s (giving up after %.0f s, "
                            "round-timeout); for `flwr run .` set the federation size with "
                            '--federation-config "num-supernodes=%d"', connected, self.min_available_nodes,
                            now - started, self.round_timeout, self.min_available_nodes)
                next_log = now + NODE_WAIT_LOG_EVERY
            time.sleep(min(1.0, deadline - now))

    def _client_info(self, reply: Message) -> tuple[int, tuple[str, ...], int]:
        """``(partition id, modalities, num-examples)`` of a discovery reply; raises
        :class:`RecordMismatch` when its ``info`` lacks one, the partition id is out of range, a
        modality is not one of the global model's or the number of examples is not positive."""
        info = reply.content.get("info")
        if not isinstance(info, ConfigRecord):
            raise RecordMismatch("has no 'info' record")
        pid, mods, n = info.get("partition-id"), info.get("modalities"), info.get("num-examples")
        if not _is_int(pid) or not 0 <= pid < (self.num_partitions or math.inf):
            top = f"0..{self.num_partitions - 1}" if self.num_partitions else "0 or more"
            raise RecordMismatch(f"names partition-id {pid!r}, not an integer in {top}")
        known = {key_modality(k) for k in self._global} - {None}
        held = tuple(str(mods).split(",")) if isinstance(mods, str) and mods else ()
        if not held or (known and not set(held) <= known):
            raise RecordMismatch(f"names modalities {mods!r}, not a subset of {','.join(sorted(known))}")
        if not _is_int(n) or n < 1:
            raise RecordMismatch(f"names num-examples {n!r}, not a positive integer")
        return int(pid), held, int(n)

    def available(self) -> list[ClientState]:
        """Known clients whose node is connected now, by client id."""
        return [self.clients[c] for c in sorted(self.clients) if self.node_of.get(c) in self.connected]

    # -- training ----------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = from_record(arrays)
        self.discover(grid, server_round)
        self.round_stats = {"bytes-down": 0.0, "bytes-up": 0.0}
        states = self.available()
        pending = self.policy.update_pass(states)
        if pending:
            self._update_pass(arrays, pending, grid)
        probe = self.policy.probe(server_round, states, self.clients_per_round)
        if probe:
            self._measure_losses(server_round, arrays, probe, grid)
        started = time.perf_counter()
        assignments = self.policy.select(server_round, states, self.clients_per_round)
        self.round_stats["selection-seconds"] = time.perf_counter() - started
        order = self.policy.imbalance_order(states)
        self._sent, self._messages = {}, {}
        for a in assignments:
            node = self.node_of[a.client_id]
            self._sent[node] = a
            self._messages[node] = self._train_message(node, a, arrays, server_round, order)
        return list(self._messages.values())

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = self._accept(server_round, replies, self._sent, self._messages)
        self.last_accepted = [r.client_id for r in accepted]
        self._observe(server_round, accepted)
        if not accepted:
            log.warning("round %d: no usable replies; the global model is unchanged", server_round)
            return None, None
        new = aggregate(self._global, [(r.num_examples, r.arrays) for r in accepted])
        weights = [r.num_examples for r in accepted]
        mean_loss = float(np.average([r.loss for r in accepted], weights=weights))
        self.round_stats.update({"train/loss": mean_loss, "clients-ok": len(accepted)})
        return to_record(new), MetricRecord({"train/loss": mean_loss, WEIGHT_KEY: int(sum(weights))})

    def observe_global_model(self, server_round: int, arrays: ArrayRecord, grid: Grid) -> None:
        """Send the aggregated model ``arrays`` to the clients of :attr:`last_accepted` and hand the
        facts they measure with it on their own data (``Objective.global_model_facts``, e.g.
        CMSFed's prototypes) to the objective's server half as this round's; no training, and the
        model does not change. A client that does not answer is left out (logged)."""
        messages = {self.node_of[c]: self._evaluate_message(c, server_round, arrays, {GLOBAL_MODEL_FACTS_KEY: True})
                    for c in self.last_accepted if self.node_of.get(c) in self.connected}
        facts = []
        replies = grid.send_and_receive(list(messages.values()), timeout=self.round_timeout)
        for node, reply in _answered_nodes(replies, messages):
            if reply.has_error():
                log.warning("round %d: node %d did not report on the global model: %s", server_round,
                            node, reply.error.reason)
                continue
            try:
                n = self._examples(_metrics(reply), node)
                node_facts = _facts(reply)
            except RecordMismatch as err:
                log.warning("round %d: node %d's report on the global model is left out: %s", server_round, node, err)
                continue
            if node_facts:
                facts.append((n, node_facts))
        if self.observe_fn is not None:
            self.observe_fn(server_round, facts)

    def _update_pass(self, arrays: ArrayRecord, client_ids: list[int], grid: Grid) -> None:
        """A short training pass of ``client_ids`` on all their modalities, before the first selection:
        the policy gets their update vectors (and imbalance ratios), the objective's server half their
        facts as round 0 (e.g. global prototypes from every client); the global model does not change.
        It uses the run's learning rate (the reference ran it at lr 0, FEDCMI_CMSFED.md 3.9)."""
        order = self.policy.imbalance_order(self.available())
        sent = {self.node_of[c]: Assignment(c, self.clients[c].modalities) for c in client_ids}
        messages = {node: self._train_message(node, a, arrays, UPDATE_PASS_ROUND, order, epochs=UPDATE_PASS_EPOCHS)
                    for node, a in sent.items()}
        replies = grid.send_and_receive(list(messages.values()), timeout=self.round_timeout)
        self._observe(UPDATE_PASS_ROUND, self._accept(UPDATE_PASS_ROUND, replies, sent, messages))

    def _accept(self, server_round: int, replies: Iterable[Message], sent: Mapping[int, Assignment],
                messages: Mapping[int, Message]) -> list[Accepted]:
        """Check every reply, record each client's outcome in ``client_rows`` (ok, error, rejected,
        no-reply) and return the usable ones; rows and replies are in client-id order, so that
        neither the tables nor the average depend on the order in which replies arrived.

        A reply counts for the node whose message (in ``messages``, by node) it answers, so the
        error the SuperLink sends for a node that died counts once, for that node's partition. A
        second reply for the same node is ignored."""
        accepted: list[Accepted] = []
        rows: list[dict[str, Any]] = []
        answered: set[int] = set()
        for node, reply in _answered_nodes(replies, messages):
            if node in answered:
                log.warning("round %d: node %d sent a second reply; it is ignored", server_round, node)
                continue
            answered.add(node)
            assignment = sent.get(node)
            row = self._row(server_round, node, assignment)
            rows.append(row)
            if reply.has_error():
                row["status"] = f"error: {reply.error.reason}"
                log.warning("round %d: node %d failed: %s", server_round, node, reply.error.reason)
                continue
            try:
                if assignment is None:
                    raise RecordMismatch("no training request was sent to this node")
                item = self._vet_train_reply(reply, node, assignment)
            except RecordMismatch as err:
                row["status"] = f"rejected: {err}"
                log.warning("round %d: rejected reply of node %d (partition %d): %s", server_round, node,
                            row["partition-id"], err)
                continue
            accepted.append(item)
            size = reply.content["arrays"].count_bytes()
            self.round_stats["bytes-up"] = self.round_stats.get("bytes-up", 0.0) + size
            row.update({"status": "ok", "num-examples": item.num_examples, "train-loss": item.loss,
                        "bytes-up": size, "seconds": item.seconds})
        for node in sorted(set(sent) - answered):
            row = self._row(server_round, node, sent[node])
            row["status"] = "no-reply"
            log.warning("round %d: node %d sent no reply within %.0f s", server_round, node, self.round_timeout)
            rows.append(row)
        self.client_rows.extend(sorted(rows, key=lambda r: r["partition-id"]))
        return sorted(accepted, key=lambda r: r.client_id)

    def _vet_train_reply(self, reply: Message, node: int, a: Assignment) -> Accepted:
        """The training reply of ``node`` (assigned ``a``) as an :class:`Accepted`; raises
        :class:`RecordMismatch` naming what makes it unusable: metrics missing or not finite
        numbers, ``num-examples`` outside ``1 ..`` what the node reported at discovery, arrays that
        do not match the global model's trained groups exactly (:func:`vet_arrays`), or facts that
        are not numbers."""
        metrics = _metrics(reply)
        num_examples = self._examples(metrics, node)
        loss = _number(metrics, "train-loss")
        seconds = _number(metrics, "seconds", required=False)
        facts = _facts(reply)
        if "imbalance-ratio" in facts:
            facts["imbalance-ratio"] = _number(facts, "imbalance-ratio")
        record = reply.content.get("arrays")
        if not isinstance(record, ArrayRecord):
            raise RecordMismatch("the reply has no 'arrays' record")
        expected = keys_for_modalities(self._global, a.modalities)
        return Accepted(client_id=a.client_id, modalities=a.modalities, num_examples=num_examples, loss=loss,
                        arrays=vet_arrays(record, self._global, expected), facts=facts,
                        seconds=0.0 if seconds is None else seconds)

    def _examples(self, metrics: Mapping[str, Any], node: int) -> int:
        """``num-examples`` of a reply of ``node``: an integer from 1 to what the node reported at
        discovery (:class:`RecordMismatch` otherwise, so no client can outweigh its data)."""
        n = _number(metrics, WEIGHT_KEY)
        client = self.client_of.get(node)
        limit = self.clients[client].num_examples if client in self.clients else math.inf
        if n != int(n) or not 1 <= n <= limit:
            raise RecordMismatch(f"num-examples {metrics[WEIGHT_KEY]!r} is not an integer in 1..{limit} "
                                 "(the examples it reported at discovery)")
        return int(n)

    def _observe(self, server_round: int, accepted: list[Accepted]) -> None:
        """Update client states, then hand the round to the policy and the objective's server half."""
        updates = []
        for r in accepted:
            state = self.clients[r.client_id]
            state.loss, state.last_round = r.loss, server_round
            if "imbalance-ratio" in r.facts:
                state.imbalance_ratio = float(r.facts["imbalance-ratio"])
            updates.append(ClientUpdate(client_id=r.client_id, modalities=r.modalities, num_examples=r.num_examples,
                                        deltas=self._deltas(r), loss=r.loss, imbalance_ratio=state.imbalance_ratio))
        self.policy.observe(server_round, updates)
        if self.observe_fn is not None:
            self.observe_fn(server_round, [(r.num_examples, r.facts) for r in accepted])

    # -- federated evaluation ------------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        clients = [c.client_id for c in self.available()]
        if self.fraction_evaluate <= 0 or not clients:
            return []
        k = max(1, int(round(self.fraction_evaluate * len(clients))))
        chosen = self._rng.choice(clients, size=min(k, len(clients)), replace=False)
        return [self._evaluate_message(int(c), server_round, arrays) for c in chosen]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted accuracy and loss of the nodes' evaluations; error replies and replies
        without usable ``num-examples``, ``acc`` and ``loss`` are left out (logged)."""
        n, acc, loss = [], [], []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("round %d: node %d did not evaluate: %s", server_round, node, reply.error.reason)
                continue
            try:
                metrics = _metrics(reply)
                row = (self._examples(metrics, node), _number(metrics, "acc"), _number(metrics, "loss"))
            except RecordMismatch as err:
                log.warning("round %d: evaluation of node %d is left out: %s", server_round, node, err)
                continue
            for values, v in zip((n, acc, loss), row):
                values.append(v)
        if not n:
            return None
        return MetricRecord({"fedeval/acc": float(np.average(acc, weights=n)),
                             "fedeval/loss": float(np.average(loss, weights=n))})

    def summary(self) -> None:
        log.info("%s with selection %r over %d clients", type(self).__name__, self.policy.name, len(self.clients))

    # -- checkpointing -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: client states, the strategy's generator and the policy state
        (numpy arrays and JSON strings; node ids are not kept, nodes are discovered again)."""
        clients = [dataclasses.asdict(c) for c in self.clients.values()]
        return {
            "strategy.clients": json.dumps(clients),
            "strategy.rng": json.dumps(self._rng.bit_generator.state),
            **prefixed("policy.", self.policy.state_dict()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (the policy must be of the same kind)."""
        self.clients = {}
        for c in json.loads(str(state["strategy.clients"])):
            c["modalities"] = tuple(c["modalities"])
            self.clients[int(c["client_id"])] = ClientState(**c)
        self._rng.bit_generator.state = json.loads(str(state["strategy.rng"]))
        self.policy.load_state_dict(unprefixed("policy.", state))

    # -- helpers -------------------------------------------------------------------------------------
    def _train_message(self, node: int, a: Assignment, arrays: ArrayRecord, server_round: int,
                       order: tuple[str, str] | None, *, epochs: int | None = None) -> Message:
        """The training message of one node: the groups it needs, its own config and the extras.

        ``order`` is the policy's imbalance order (the node then measures rho_k with every modality
        it holds, so it also gets the groups of those it does not train); ``epochs`` overrides the
        run's local epochs."""
        held = self.clients[a.client_id].modalities
        payload = subset_record(arrays, keys_for_modalities(arrays.keys(), held if order else a.modalities))
        per_node: dict[str, Any] = {"server-round": server_round, "modalities": ",".join(a.modalities),
                                    "proximal-mu": self.proximal_mu}
        if order:
            per_node["imbalance-order"] = ",".join(order)
        if epochs is not None:
            per_node["local-epochs"] = epochs
        extra_config, extra_arrays = self._extras(server_round)
        self.round_stats["bytes-down"] = (self.round_stats.get("bytes-down", 0.0) + payload.count_bytes()
                                          + extra_arrays.count_bytes())
        content = RecordDict({"arrays": payload, "config": self._config(per_node), "extras": extra_config,
                              "extra-arrays": extra_arrays})
        return self._message(node, MessageType.TRAIN, content)

    def _measure_losses(self, server_round: int, arrays: ArrayRecord, client_ids: list[int], grid: Grid) -> None:
        """Ask ``client_ids`` for their local loss under the current global model (Power-of-Choice).

        That model is round ``server_round - 1``'s (this round has not trained yet), so the messages
        carry that round and its extras (e.g. the boosting classifiers it was trained with)."""
        messages = {self.node_of[c]: self._evaluate_message(c, server_round - 1, arrays) for c in client_ids}
        replies = grid.send_and_receive(list(messages.values()), timeout=self.round_timeout)
        for node, reply in _answered_nodes(replies, messages):
            client = self.client_of.get(node)
            if reply.has_error() or client is None:
                continue
            try:
                self.clients[client].loss = _number(_metrics(reply), "loss")
            except RecordMismatch as err:
                log.warning("round %d: node %d's loss probe is left out: %s", server_round, node, err)

    def _evaluate_message(self, client_id: int, server_round: int, arrays: ArrayRecord,
                          per_node: Mapping[str, Any] | None = None) -> Message:
        mods = self.clients[client_id].modalities
        payload = subset_record(arrays, keys_for_modalities(arrays.keys(), mods))
        self.round_stats["bytes-down"] = self.round_stats.get("bytes-down", 0.0) + payload.count_bytes()
        config = self._config({"server-round": server_round, "modalities": ",".join(mods), **(per_node or {})})
        extra_config, extra_arrays = self._extras(server_round)
        content = RecordDict({"arrays": payload, "config": config, "extras": extra_config, "extra-arrays": extra_arrays})
        return self._message(self.node_of[client_id], MessageType.EVALUATE, content)

    def _extras(self, server_round: int) -> tuple[ConfigRecord, ArrayRecord]:
        """The round's extras (objective state such as active classifier slots), encoded."""
        return encode_extras(dict(self.extras_fn(server_round)) if self.extras_fn else {})

    def _deltas(self, r: Accepted) -> dict[str, np.ndarray]:
        """The client's update per trained modality, ``global - local`` over that modality's encoder
        parameters (``parameter_keys``; buffers never enter), in the global model's key order (only
        for policies that use update vectors)."""
        if not self.policy.uses_updates:
            return {}
        deltas: dict[str, np.ndarray] = {}
        for m in r.modalities:
            keys = [k for k in self._global if is_encoder_key(k, m) and k in self.parameter_keys and k in r.arrays]
            if keys:
                deltas[m] = np.concatenate([(self._global[k] - r.arrays[k]).ravel().astype(np.float32) for k in keys])
        return deltas

    def _row(self, server_round: int, node: int, sent: Assignment | None) -> dict[str, Any]:
        client = self.client_of.get(node)
        state = self.clients.get(client) if client is not None else None
        return {
            "round": server_round,
            "node-id": node,
            "partition-id": -1 if client is None else client,
            "modalities-held": "+".join(state.modalities) if state else "",
            "modalities-trained": "+".join(sent.modalities) if sent else "",
            "num-examples": 0,
            "train-loss": float("nan"),
            "bytes-up": 0,
            "seconds": float("nan"),
            "status": "",
        }

    def _config(self, per_node: Mapping[str, Any] | None = None) -> ConfigRecord:
        """A fresh copy of the run config plus per-node keys (never shared between messages)."""
        return ConfigRecord({**dict(self.run_config), **(per_node or {})})

    @staticmethod
    def _message(node: int, message_type: str, content: RecordDict) -> Message:
        return Message(content=content, dst_node_id=node, message_type=message_type)


def _answered_nodes(replies: Iterable[Message], messages: Mapping[int, Message]) -> list[tuple[int, Message]]:
    """Each reply with the node whose message (``messages``, by node) it answers, matched by the id
    the grid gave that message (``reply_to_message_id``): the error the SuperLink writes for an
    unavailable node comes from the SuperLink's own node id, not the node's. A reply that matches
    no pushed message keeps its sender."""
    by_id = {m.metadata.message_id: node for node, m in messages.items() if m.metadata.message_id}
    return [(by_id.get(r.metadata.reply_to_message_id, r.metadata.src_node_id), r) for r in replies]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(values: Mapping[str, Any], key: str, *, required: bool = True) -> float | None:
    """``values[key]`` as a finite float; ``None`` when absent and not ``required``; raises
    :class:`RecordMismatch` when it is missing (and required), not a number or not finite."""
    if key not in values:
        if required:
            raise RecordMismatch(f"the reply has no {key!r}")
        return None
    value = values[key]
    if not _is_number(value) or not math.isfinite(value):
        raise RecordMismatch(f"{key!r} is {value!r}, not a finite number")
    return float(value)


def _metrics(reply: Message) -> MetricRecord:
    """The reply's ``metrics`` record (:class:`RecordMismatch` when it has none)."""
    metrics = reply.content.get("metrics")
    if not isinstance(metrics, MetricRecord):
        raise RecordMismatch("the reply has no 'metrics' record")
    return metrics


def _facts(reply: Message) -> dict[str, Any]:
    """The reply's ``facts`` (empty when it has none); raises :class:`RecordMismatch` when a value
    is not a number or a list of numbers."""
    facts = reply.content.get("facts")
    if facts is None:
        return {}
    if not isinstance(facts, (MetricRecord, ConfigRecord)):
        raise RecordMismatch("the reply's 'facts' is not a record of numbers")
    out = dict(facts)
    for k, v in out.items():
        if not all(_is_number(x) for x in (v if isinstance(v, list) else [v])):
            raise RecordMismatch(f"fact {k!r} is {str(v)[:40]!r}, not a number or a list of numbers")
    return out
