"""The federation's roster: which clients exist, which node serves each, who is connected now.

Clients are identified by their partition id, not by their Flower node id: a node that reconnects
under a new id, or a resumed run, keeps the client's state. A deployment learns each node's
partition through a ``query`` message (discovery); a simulation, whose server knows the scenario,
registers every client from it (:class:`Roster` with ``scenario``) and sends no query at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from fedmm.protocol import ClientInfo, decode_info, query_message
from fedmm.records import RecordMismatch
from fedmm.strategies.selection.base import Assignment, ClientState

log = logging.getLogger("fedmm")

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


class Roster:
    """Known clients by partition id, the node<->client map and the connected nodes.

    Parameters
    ----------
    min_available_nodes:
        Nodes to wait for before the first round (at most ``round_timeout`` seconds).
    round_timeout:
        Seconds of that wait.
    num_partitions:
        Clients of the run's scenario: a node whose discovery reply names a partition id outside
        ``0 .. num_partitions - 1`` is skipped; ``None`` checks only that the id is not negative.
    scenario:
        The clients of the run's scenario (``fedmm simulate``, where the server knows it): the
        roster then registers the connected nodes from it instead of asking each with a ``query``
        message: client ``p`` is served by the ``p``-th unmapped node id in sorted order, and every
        message to that node names partition ``p`` (:attr:`fedmm.protocol.Request.partition_id`).
        ``None`` (deployment, ``flwr run``): discovery by ``query`` messages.
    """

    def __init__(
        self,
        min_available_nodes: int,
        round_timeout: float,
        num_partitions: int | None = None,
        scenario: Sequence[ClientInfo] | None = None,
    ) -> None:
        self.min_available_nodes = min_available_nodes
        self.round_timeout = round_timeout
        self.num_partitions = num_partitions
        self.scenario = {c.partition_id: c for c in scenario} if scenario is not None else None
        #: Client state by client (partition) id.
        self.clients: dict[int, ClientState] = {}
        #: Current Flower node id of each client, and the client of every node id seen.
        self.node_of: dict[int, int] = {}
        self.client_of: dict[int, int] = {}
        self.connected: set[int] = set()
        self.waited_for_nodes = False

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

    def connect(self, grid: Grid, server_round: int, run_config: str) -> dict[int, Message]:
        """Take the grid's connected nodes; the discovery messages for the nodes not seen before
        (by node).

        The first call of a run (also of a resumed one) waits up to ``round_timeout`` seconds for
        ``min_available_nodes`` (:class:`FederationTooSmall` when fewer are connected by then);
        later rounds go on with whoever is connected, so a node that drops out is skipped and one
        that (re)joins is discovered. The rounds a client misses while its node is away are
        recorded by :meth:`absent_rows`.
        """
        if not self.waited_for_nodes:
            self._wait_for_nodes(grid)
        self.waited_for_nodes = True
        node_ids = list(grid.get_node_ids())
        for node in sorted(self.connected - set(node_ids)):
            if node not in self.client_of:  # gone before its discovery reply: no partition to record it under
                log.warning("round %d: node %d left before it was discovered", server_round, node)
            elif self.node_of.get(self.client_of[node]) == node:
                log.warning("round %d: node %d (partition %d) is gone", server_round, node, self.client_of[node])
        self.connected = set(node_ids)
        new = [n for n in node_ids if n not in self.client_of]
        if self.scenario is not None:
            self._register_from_scenario(sorted(new))
            return {}
        return {n: query_message(n, run_config, MessageType.QUERY) for n in new}

    def _register_from_scenario(self, nodes: Sequence[int]) -> None:
        """Map ``nodes`` (sorted) one to one onto the scenario's clients that have no node yet, by
        partition id; nodes beyond the scenario's clients stay unmapped (never selected)."""
        if not nodes:
            return
        free = [p for p in sorted(self.scenario) if p not in self.node_of or self.node_of[p] not in self.connected]
        for node, p in zip(nodes, free):
            info = self.scenario[p]
            self.register(node, p, info.modalities, info.num_examples)
        if len(nodes) > len(free):
            log.warning(
                "%d nodes beyond the scenario's %d clients are left out", len(nodes) - len(free), len(self.scenario)
            )
        log.info(
            "registered %d nodes from the scenario (%d clients known)", min(len(nodes), len(free)), len(self.clients)
        )

    def absent_rows(self, server_round: int, skip: Collection[int] = ()) -> list[dict[str, Any]]:
        """One ``disconnected`` ``clients.csv`` row for every known client whose node was not
        connected at this round's discovery (after a node that came back under a new id was
        discovered again), so that each round a client misses is recorded once; ``skip``: nodes
        that already have a row this round.

        Parameters
        ----------
        server_round:
            The round the rows belong to.
        skip:
            Node ids with an outcome of their own this round (they were sent a message).
        """
        rows = []
        for client_id in sorted(self.clients):
            node = self.node_of.get(client_id)
            if node is None or node in self.connected or node in skip:
                continue
            row = client_row(self, server_round, node, None)
            row["status"] = "disconnected"
            rows.append(row)
        return rows

    def partition_of(self, client_id: int) -> int | None:
        """The partition id the messages to ``client_id``'s node name (``None``: discovery, the node
        holds its own node-config partition)."""
        return client_id if self.scenario is not None else None

    def admit(self, replies: Iterable[Message], queries: dict[int, Message], known: Collection[str]) -> None:
        """Register the nodes whose discovery reply is usable (``known``: the global model's
        modalities); skip the others with a warning."""
        if not queries:
            return
        for node, reply in answered_nodes(replies, queries):
            if reply.has_error():
                log.warning("node %d did not answer discovery: %s", node, reply.error.reason)
                continue
            try:
                info = decode_info(reply, self.num_partitions, known)
            except RecordMismatch as err:
                log.warning(
                    "node %d is skipped: its discovery reply %s; fix that SuperNode's --node-config "
                    "(partition-id, num-partitions, modalities) or run the server's fedmm version on it",
                    node,
                    err,
                )
                continue
            self.register(node, info.partition_id, info.modalities, info.num_examples)
        log.info("discovered %d nodes (%d clients known)", len(queries), len(self.clients))

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
                log.warning(
                    "waiting for nodes: %d of %d connected after %.0f s (giving up after %.0f s, "
                    "round-timeout); for `flwr run .` set the federation size with "
                    '--federation-config "num-supernodes=%d"',
                    connected,
                    self.min_available_nodes,
                    now - started,
                    self.round_timeout,
                    self.min_available_nodes,
                )
                next_log = now + NODE_WAIT_LOG_EVERY
            time.sleep(min(0.1, deadline - now))

    def available(self) -> list[ClientState]:
        """Known clients whose node is connected now, by client id."""
        return [self.clients[c] for c in sorted(self.clients) if self.node_of.get(c) in self.connected]

    def state_dict(self) -> dict[str, str]:
        """The client states as JSON (``strategy.clients``; node ids are not kept, nodes are
        discovered again after a resume)."""
        return {"strategy.clients": json.dumps([dataclasses.asdict(c) for c in self.clients.values()])}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the client states of a :meth:`state_dict`."""
        self.clients = {}
        for c in json.loads(str(state["strategy.clients"])):
            c["modalities"] = tuple(c["modalities"])
            self.clients[int(c["client_id"])] = ClientState(**c)

    def limit(self, node: int) -> float:
        """The most examples a reply of ``node`` may claim: what it reported at discovery."""
        client = self.client_of.get(node)
        return self.clients[client].num_examples if client in self.clients else float("inf")


def answered_nodes(replies: Iterable[Message], messages: Mapping[int, Message]) -> list[tuple[int, Message]]:
    """Each reply with the node whose message (``messages``, by node) it answers, matched by the id
    the grid gave that message (``reply_to_message_id``): the error the SuperLink writes for an
    unavailable node comes from the SuperLink's own node id, not the node's. A reply that matches
    no pushed message keeps its sender."""
    by_id = {m.metadata.message_id: node for node, m in messages.items() if m.metadata.message_id}
    return [(by_id.get(r.metadata.reply_to_message_id, r.metadata.src_node_id), r) for r in replies]


def client_row(roster: Roster, server_round: int, node: int, sent: Assignment | None) -> dict[str, Any]:
    """A ``clients.csv`` row of ``node`` in ``server_round`` (its outcome still to fill in)."""
    client = roster.client_of.get(node)
    state = roster.clients.get(client) if client is not None else None
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
