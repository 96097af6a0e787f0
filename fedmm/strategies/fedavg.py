"""Modality-aware FedAvg: each parameter averaged over the clients that trained it.

Subclasses change one rule through public hooks: :meth:`ModalityAwareFedAvg.combine` (how the
accepted updates become the new global arrays: FedMedian, a trimmed mean, FedAvgM),
:meth:`ModalityAwareFedAvg.training_options` (what every training request adds: FedProx's
proximal weight) and :meth:`ModalityAwareFedAvg.round_metrics` (extra ``rounds.csv`` columns).

Why one module of this size: the round's steps of one strategy (discovery, update pass, probes,
training, facts, evaluation, the clock's filter); their building blocks live in roster.py,
replies.py and timing.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid

from fedmm.checkpoint import prefixed, unprefixed
from fedmm.groups import key_modality
from fedmm.protocol import NUM_EXAMPLES, ClientInfo, Request, message_bytes
from fedmm.records import aggregate, from_record, to_record
from fedmm.strategies.base import ExtrasFn, ObserveFn
from fedmm.strategies.context import StrategyContext
from fedmm.strategies.replies import Accepted, accept, client_updates, evaluation, model_facts, probed_losses
from fedmm.strategies.roster import Roster, client_row
from fedmm.strategies.selection.base import UPDATE_PASS_ROUND, Assignment, ClientState, SelectionPolicy
from fedmm.strategies.timing import SimClock, time_columns

log = logging.getLogger("fedmm")

#: Local epochs of the pass that gives update-vector policies their first vectors (the reference's
#: ``grad_epochs``, docs/methods/cmsfed.md §5.1).
UPDATE_PASS_EPOCHS = 1
#: Clients per batch of the update pass: the server holds one batch's messages (each a copy of
#: the model) and replies at a time, so its memory does not grow with the number of clients.
UPDATE_PASS_BATCH = 500


class ModalityAwareFedAvg:
    """FedAvg for clients that hold different modalities (docs/methods/fedavg.md §2), as the steps
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
        from the encoder parameters among these only, as the reference does (docs/methods/cmsfed.md §8);
        required by such a policy (ValueError otherwise), ignored by the others.
    num_partitions:
        Clients of the run's scenario: a node whose discovery reply names a partition id outside
        ``0 .. num_partitions - 1`` is skipped; ``None`` checks only that the id is not negative.
    scenario:
        The scenario's clients, to register the roster from instead of discovering the nodes with
        ``query`` messages (``fedmm simulate``; see :class:`~fedmm.strategies.roster.Roster`);
        every message then names its client's partition id. ``None``: discovery.
    clock:
        The simulated clock over the clients' device profiles (config key ``devices``): only the
        clients online at selection time reach the policy, each selected client's time is computed
        before anything is sent, and only those the round-close rule keeps are sent their training
        message (the others get a ``late`` or ``dropped`` row); ``None`` (default): no clock.
    """

    def __init__(
        self,
        *,
        policy: SelectionPolicy,
        clients_per_round: int,
        min_available_nodes: int,
        run_config: str,
        extras_fn: ExtrasFn | None = None,
        observe_fn: ObserveFn | None = None,
        fraction_evaluate: float = 0.0,
        round_timeout: float = 600.0,
        seed: int = 0,
        parameter_keys: Collection[str] | None = None,
        num_partitions: int | None = None,
        scenario: Sequence[ClientInfo] | None = None,
        clock: SimClock | None = None,
    ) -> None:
        if policy.uses_updates and parameter_keys is None:
            raise ValueError(
                f"selection {policy.name!r} builds update vectors from the model's parameters: "
                "pass their names as parameter_keys"
            )
        self.policy, self.parameter_keys = policy, frozenset(parameter_keys or ())
        self.clients_per_round, self.run_config = clients_per_round, run_config
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
        self.clock = clock
        if clock is not None:  # round 0's row (the initial model) starts the clock columns at 0
            self.round_stats = {"sim-seconds": 0.0, "sim-clock": clock.seconds}
        # with a clock: this round's selectable clients, each planned client's times, the rows of the
        # clients the close rule did not keep, and the update pass's longest client
        self._selectable: list[ClientState] | None = None
        self._times: dict[int, Any] = {}
        self._closed_rows: list[dict[str, Any]] = []
        self._pass_seconds = 0.0
        #: Clients selected in the last training step whose work the close rule did not keep, by
        #: client id: ``late`` or ``dropped`` (empty without a clock).
        self.last_not_kept: dict[int, str] = {}
        self._rng = np.random.default_rng(seed)

    @classmethod
    def from_context(cls, context: StrategyContext, params: Any, **overrides: Any) -> ModalityAwareFedAvg:
        """The strategy of ``context``'s run (then a subclass's ``overrides``); it takes no params."""
        c = context
        return cls(
            **{
                "policy": c.policy,
                "clients_per_round": c.clients_per_round,
                "min_available_nodes": c.min_available_nodes,
                "run_config": c.run_config,
                "extras_fn": c.extras_fn,
                "observe_fn": c.observe_fn,
                "fraction_evaluate": c.fraction_evaluate,
                "round_timeout": c.round_timeout,
                "seed": c.seed,
                "parameter_keys": c.parameter_keys,
                "num_partitions": c.num_partitions,
                "scenario": c.scenario,
                "clock": c.clock,
                **overrides,
            }
        )

    def combine(self, global_arrays: Mapping[str, np.ndarray], accepted: Sequence[Accepted]) -> dict[str, np.ndarray]:
        """The new global arrays from the round's accepted replies: each key averaged over the
        clients that sent it, weighted by their examples, in client-id order; a key nobody sent
        keeps its value (:func:`fedmm.records.aggregate`). Override it for another rule.

        Parameters
        ----------
        global_arrays:
            The round's global model, by key.
        accepted:
            The vetted replies (:class:`~fedmm.strategies.replies.Accepted`: ``client_id``,
            ``num_examples``, ``arrays`` holding exactly the groups it trained, ``loss``, ``facts``),
            in client-id order; never empty.
        """
        return aggregate(global_arrays, [(r.num_examples, r.arrays) for r in accepted])

    def training_options(self) -> Mapping[str, Any]:
        """Fields every training :class:`~fedmm.protocol.Request` of this strategy sets (FedProx:
        its ``proximal_mu``); modality-aware FedAvg sends no proximal term."""
        return {"proximal_mu": 0.0}

    def round_metrics(self, server_round: int, accepted: Sequence[Accepted]) -> dict[str, float]:
        """Extra ``rounds.csv`` columns of the round (numbers by name); none by default.

        Parameters
        ----------
        server_round:
            The round.
        accepted:
            Its vetted replies (never empty).
        """
        return {}

    def begin_round(self, server_round: int, arrays: ArrayRecord) -> None:
        self._global = from_record(arrays)
        self.round_stats = {"bytes-down": 0.0, "bytes-up": 0.0}
        self._pass_queue = None
        self._selectable, self._times, self._closed_rows = None, {}, []
        if self.clock is not None:
            self.round_stats.update({"sim-seconds": 0.0, "sim-clock": self.clock.seconds})

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
        docs/methods/cmsfed.md §7.1)."""
        if self._pass_queue is None:
            states = self.roster.available()
            self._pass_queue = self.policy.update_pass(states)
            self._asked = self._facts_asked(states) if self._pass_queue else ((), ())
            self._pass_facts = []
        batch, self._pass_queue = self._pass_queue[:UPDATE_PASS_BATCH], self._pass_queue[UPDATE_PASS_BATCH:]
        self._sent = {self.roster.node_of[c]: Assignment(c, self.roster.clients[c].modalities) for c in batch}
        if self.clock is not None:  # the pass runs in parallel on every device: it lasts its longest client
            times = self._plan_times(list(self._sent.values()), UPDATE_PASS_EPOCHS)
            self._pass_seconds = max([self._pass_seconds, *(t.total for t in times.values())])
        self._messages = {
            node: self._train_message(node, a, arrays, UPDATE_PASS_ROUND, UPDATE_PASS_EPOCHS)
            for node, a in self._sent.items()
        }
        return list(self._messages.values())

    def aggregate_update_pass(self, replies: Iterable[Message]) -> None:
        if not self._messages:
            return
        accepted = self._accept(UPDATE_PASS_ROUND, replies)
        self._observe_updates(UPDATE_PASS_ROUND, accepted)
        self._pass_facts.extend((r.num_examples, r.facts) for r in accepted)
        if not self._pass_queue and self.observe_fn is not None:  # the last batch: the pass's facts at once
            self.observe_fn(UPDATE_PASS_ROUND, self._pass_facts)
        if not self._pass_queue and self.clock is not None:
            self._advance(self._pass_seconds)
            self._pass_seconds = 0.0
        self._messages = {}

    def configure_probe(self, server_round: int, arrays: ArrayRecord) -> list[Message]:
        """Ask the policy's probe clients (Power-of-Choice) for their loss under the current global
        model, round ``server_round - 1``'s: the messages carry that round and its extras."""
        probe = self.policy.probe(server_round, self._online_states(), self.clients_per_round)
        self._messages = {self.roster.node_of[c]: self._evaluate_message(c, server_round - 1, arrays) for c in probe}
        return list(self._messages.values())

    def aggregate_probe(self, server_round: int, replies: Iterable[Message]) -> None:
        probed_losses(self.roster, server_round, replies, self._messages)

    def configure_train(self, server_round: int, arrays: ArrayRecord) -> list[Message]:
        states = self._online_states()
        budget = self.clock.budget(self.clients_per_round) if self.clock is not None else self.clients_per_round
        started = time.perf_counter()
        assignments = self.policy.select(server_round, states, budget)
        self.round_stats["selection-seconds"] = time.perf_counter() - started
        self._asked = self._facts_asked(states)
        self._sent = {self.roster.node_of[a.client_id]: a for a in assignments}
        if self.clock is not None:
            self._close(server_round, assignments)
        self._messages = {node: self._train_message(node, a, arrays, server_round) for node, a in self._sent.items()}
        return list(self._messages.values())

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = self._accept(server_round, replies)
        self.last_accepted = [r.client_id for r in accepted]
        self._observe(server_round, accepted)
        if not accepted:
            log.warning("round %d: no usable replies; the global model is unchanged", server_round)
            return None, None
        new = self.combine(self._global, accepted)
        weights = [r.num_examples for r in accepted]
        mean_loss = float(np.average([r.loss for r in accepted], weights=weights))
        self.round_stats.update({"train/loss": mean_loss, "clients-ok": len(accepted)})
        metrics = {"train/loss": mean_loss, **self.round_metrics(server_round, accepted)}
        return to_record(new), MetricRecord({**metrics, NUM_EXAMPLES: int(sum(weights))})

    def configure_global_model_facts(self, server_round: int, arrays: ArrayRecord) -> list[Message]:
        """Ask the connected clients of :attr:`last_accepted` for the objective's facts of the
        aggregated model on their data (``Objective.global_model_facts``); no training."""
        self._messages = {
            self.roster.node_of[c]: self._evaluate_message(c, server_round, arrays, facts=True)
            for c in self.last_accepted
            if self.roster.node_of.get(c) in self.roster.connected
        }
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
        generator and the policy state (node ids are not kept, nodes are discovered again); with a
        clock, its time and the digest of the device profiles."""
        clock = self.clock.state_dict() if self.clock is not None else {}
        return {
            **self.roster.state_dict(),
            "strategy.rng": json.dumps(self._rng.bit_generator.state),
            **prefixed("policy.", self.policy.state_dict()),
            **clock,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (the policy must be of the same kind)."""
        self.roster.load_state_dict(state)
        self._rng.bit_generator.state = json.loads(str(state["strategy.rng"]))
        self.policy.load_state_dict(unprefixed("policy.", state))
        if self.clock is not None:
            self.clock.load_state_dict(state)

    # -- the simulated clock ---------------------------------------------------------------------
    def _online_states(self) -> list[ClientState]:
        """The connected clients a policy may see this round: with a clock only those online now
        (when nobody is, the clock first moves on to the next time someone is); each state's
        ``online`` flag is set, and a client that never trained gets its expected duration."""
        states = self.roster.available()
        if self.clock is None:
            return states
        if self._selectable is None:
            ids = np.fromiter((s.client_id for s in states), dtype=np.int64, count=len(states))
            online = self.clock.online(ids)
            if states and not online.any():
                waited = self.clock.wait_for_clients()
                log.info("nobody is online: the clock waits %.0f s for the next client", waited)
                self.round_stats["sim-seconds"] += waited
                online = self.clock.online(ids)
            fresh = [s for s in states if s.sim_seconds is None]
            if fresh:
                times = self.clock.times(
                    [s.client_id for s in fresh],
                    [s.modalities for s in fresh],
                    [s.modalities for s in fresh],
                    [s.num_examples * self.clock.local_epochs for s in fresh],
                )
                for s, t in zip(fresh, times):
                    s.sim_seconds = t.total
            for s, on in zip(states, online.tolist()):
                s.online = on
            self._selectable = [s for s, on in zip(states, online.tolist()) if on]
        return self._selectable

    def _plan_times(self, assignments: Sequence[Assignment], epochs: int) -> dict[int, Any]:
        """Each assigned client's times (it receives what :meth:`_train_message` sends it), recorded
        as the client's ``sim_seconds`` and kept for its ``clients.csv`` row."""
        clients = self.roster.clients
        received = [clients[a.client_id].modalities if self._asked[0] else a.modalities for a in assignments]
        times = self.clock.times(
            [a.client_id for a in assignments],
            received,
            [a.modalities for a in assignments],
            [clients[a.client_id].num_examples * epochs for a in assignments],
        )
        planned = {a.client_id: t for a, t in zip(assignments, times)}
        for c, t in planned.items():
            clients[c].sim_seconds = t.total
        self._times.update(planned)
        return planned

    def _close(self, server_round: int, assignments: Sequence[Assignment]) -> None:
        """Plan the round's times, apply the close rule, advance the clock; only the kept clients
        stay in ``_sent`` (the others get their ``late``/``dropped`` rows now)."""
        times = self._plan_times(assignments, self.clock.local_epochs)
        ids = [a.client_id for a in assignments]
        closed = self.clock.close(ids, [times[c] for c in ids], keep=self.clients_per_round)
        self.last_not_kept = {}
        for a, status in zip(assignments, closed.status):
            if status == "ok":
                continue
            node = self.roster.node_of[a.client_id]
            row = client_row(self.roster, server_round, node, a)
            row["status"] = status
            self._closed_rows.append(row)
            self.last_not_kept[a.client_id] = status
            del self._sent[node]
        self._advance(closed.seconds)

    def _advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.round_stats["sim-seconds"] = self.round_stats.get("sim-seconds", 0.0) + seconds
        self.round_stats["sim-clock"] = self.clock.seconds

    def _facts_asked(self, states: list[ClientState]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The client facts the policy asks for and their modality order (its imbalance order)."""
        facts = tuple(self.policy.client_facts(states))
        return facts, tuple(self.policy.imbalance_order(states) or ()) if facts else ()

    def _train_message(
        self, node: int, a: Assignment, arrays: ArrayRecord, server_round: int, epochs: int | None = None
    ) -> Message:
        """The training message of one node; when the step asks for client facts, the node gets the
        groups of every modality it holds (to measure them with all); ``epochs``: the update pass's."""
        facts, order = self._asked
        groups = self.roster.clients[a.client_id].modalities if facts else a.modalities
        return self._message(
            a.client_id,
            MessageType.TRAIN,
            arrays,
            groups,
            Request(
                self.run_config,
                server_round,
                a.modalities,
                client_facts=facts,
                order=order,
                epochs=epochs,
                extras=dict(self.extras_fn(server_round)),
                **self.training_options(),
            ),
        )

    def _evaluate_message(
        self, client_id: int, server_round: int, arrays: ArrayRecord, *, facts: bool = False
    ) -> Message:
        mods = self.roster.clients[client_id].modalities
        return self._message(
            client_id,
            MessageType.EVALUATE,
            arrays,
            mods,
            Request(
                self.run_config, server_round, mods, global_model_facts=facts, extras=dict(self.extras_fn(server_round))
            ),
        )

    def _message(
        self, client_id: int, message_type: str, arrays: ArrayRecord, groups: tuple[str, ...], request: Request
    ) -> Message:
        """``request`` to ``client_id`` with ``groups``, counted in ``bytes-down`` (train: + extras)."""
        request = dataclasses.replace(request, partition_id=self.roster.partition_of(client_id))
        msg = request.to_message(self.roster.node_of[client_id], message_type, arrays, groups)
        size = message_bytes(msg, extras=message_type == MessageType.TRAIN)
        self.round_stats["bytes-down"] = self.round_stats.get("bytes-down", 0.0) + size
        return msg

    def _accept(self, server_round: int, replies: Iterable[Message]) -> list[Accepted]:
        """The usable replies to the last training step's messages; every outcome goes to the rows."""
        accepted, rows, uploaded = accept(
            self.roster,
            server_round,
            replies,
            self._sent,
            self._messages,
            self._global,
            self._asked[0],
            self.round_timeout,
        )
        self.round_stats["bytes-up"] = self.round_stats.get("bytes-up", 0.0) + uploaded
        if self.clock is not None:
            rows = sorted([*rows, *self._closed_rows], key=lambda r: r["partition-id"])
            self._closed_rows = []
            for row in rows:
                if (t := self._times.get(row["partition-id"])) is not None:
                    row.update(time_columns(t))
        self.client_rows.extend(rows)
        return accepted

    def _observe_updates(self, server_round: int, accepted: list[Accepted]) -> None:
        """Update client states and hand their updates to the policy."""
        keys = self.parameter_keys if self.policy.uses_updates else None
        updates = client_updates(self.roster, server_round, accepted, self._global, keys)
        for u in updates:
            if (t := self._times.get(u.client_id)) is not None:
                u.sim_seconds = t.total
        self.policy.observe(server_round, updates)

    def _observe(self, server_round: int, accepted: list[Accepted]) -> None:
        """Update client states, then hand the round to the policy and the objective's server half."""
        self._observe_updates(server_round, accepted)
        if self.observe_fn is not None:
            self.observe_fn(server_round, [(r.num_examples, r.facts) for r in accepted])
