"""Modality-aware FedAvg (and FedProx): each parameter averaged over the clients that trained it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmm.records import (
    aggregate,
    encode_extras,
    from_record,
    key_modality,
    keys_for_modalities,
    non_finite_keys,
    subset_record,
    to_record,
)
from fedmm.strategies.selection.base import Assignment, ClientState, ClientUpdate, SelectionPolicy

log = logging.getLogger("fedmm")

WEIGHT_KEY = "num-examples"


class ModalityAwareFedAvg(Strategy):
    """FedAvg for clients that hold different modalities (FEDCMI_CMSFED.md section 1).

    Every array is averaged over the clients that sent it, weighted by ``num-examples``; an array
    nobody trained keeps its value. Each node gets its own message holding only the parameter groups
    of the modalities it trains this round plus the shared ``fusion`` group, and it uploads only
    those.

    Parameters
    ----------
    policy:
        Decides which (node, modalities) pairs train each round.
    clients_per_round:
        Budget handed to the policy (``all`` ignores it).
    min_available_nodes:
        Nodes to wait for before the first round.
    run_config:
        Sent with every message (the resolved run configuration, so clients build the same
        scenario and model); per-node keys are added to a copy, never to this record.
    proximal_mu:
        FedProx proximal weight sent to clients; 0 disables it.
    extras_fn:
        ``round -> dict`` of extra values for all clients this round (objective or strategy state).
    fraction_evaluate:
        Fraction of known nodes asked to evaluate the global model on their own data.
    round_timeout:
        Seconds to wait for replies; missing replies are recorded as failures.
    """

    def __init__(
        self,
        *,
        policy: SelectionPolicy,
        clients_per_round: int,
        min_available_nodes: int,
        run_config: ConfigRecord,
        proximal_mu: float = 0.0,
        extras_fn: Callable[[int], Mapping[str, Any]] | None = None,
        fraction_evaluate: float = 0.0,
        round_timeout: float = 600.0,
    ) -> None:
        self.policy = policy
        self.clients_per_round = clients_per_round
        self.min_available_nodes = min_available_nodes
        self.run_config = run_config
        self.proximal_mu = proximal_mu
        self.extras_fn = extras_fn
        self.fraction_evaluate = fraction_evaluate
        self.round_timeout = round_timeout
        self.clients: dict[int, ClientState] = {}
        self.connected: set[int] = set()
        self.partition_of: dict[int, int] = {}
        self.client_rows: list[dict[str, Any]] = []
        self.round_stats: dict[str, float] = {}
        self.last_facts: list[tuple[int, dict[str, Any]]] = []
        self._global: dict[str, np.ndarray] = {}
        self._sent: dict[int, Assignment] = {}
        self._rng = np.random.default_rng(0)

    # -- discovery ---------------------------------------------------------------------------------
    def discover(self, grid: Grid, server_round: int = 0) -> None:
        """Ask every node not seen before for its partition and modalities.

        The first call waits for ``min_available_nodes``; later rounds go on with whoever is
        connected, so a node that drops out is skipped and one that (re)joins is discovered.
        """
        while not self.clients and len(list(grid.get_node_ids())) < self.min_available_nodes:
            log.info("waiting for nodes: %d of %d connected", len(list(grid.get_node_ids())), self.min_available_nodes)
            time.sleep(1.0)
        node_ids = list(grid.get_node_ids())
        for node in sorted(self.connected - set(node_ids)):
            row = self._row(server_round, node, None)
            row["status"] = "disconnected"
            log.warning("round %d: node %d (partition %d) is gone", server_round, node, self.partition_of.get(node, -1))
            self.client_rows.append(row)
        self.connected = set(node_ids)
        new = [n for n in node_ids if n not in self.clients]
        if not new:
            return
        queries = [self._message(n, MessageType.QUERY, RecordDict({"config": self._config()})) for n in new]
        for reply in grid.send_and_receive(queries, timeout=self.round_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("node %d did not answer discovery: %s", node, reply.error.reason)
                continue
            info = reply.content["info"]
            self.partition_of[node] = int(info["partition-id"])
            self.clients[node] = ClientState(
                node_id=node,
                modalities=tuple(str(info["modalities"]).split(",")),
                num_examples=int(info["num-examples"]),
            )
        log.info("discovered %d nodes (%d total)", len(new), len(self.clients))

    # -- training ----------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.discover(grid, server_round)
        self._global = from_record(arrays)
        self.round_stats = {"bytes-down": 0.0, "bytes-up": 0.0}
        states = sorted((c for c in self.clients.values() if c.node_id in self.connected),
                        key=lambda c: self.partition_of[c.node_id])
        probe = self.policy.probe(server_round, states, self.clients_per_round)
        if probe:
            self._measure_losses(server_round, arrays, probe, grid)
        started = time.perf_counter()
        assignments = self.policy.select(server_round, states, self.clients_per_round)
        self.round_stats["selection-seconds"] = time.perf_counter() - started
        extra_config, extra_arrays = self._extras(server_round)
        self._sent = {}
        messages = []
        for a in assignments:
            keys = keys_for_modalities(arrays.keys(), a.modalities)
            payload = subset_record(arrays, keys)
            self.round_stats["bytes-down"] += payload.count_bytes()
            node_config = self._config(
                {"server-round": server_round, "modalities": ",".join(a.modalities), "proximal-mu": self.proximal_mu}
            )
            content = RecordDict(
                {"arrays": payload, "config": node_config, "extras": extra_config, "extra-arrays": extra_arrays}
            )
            self._sent[a.node_id] = a
            messages.append(self._message(a.node_id, MessageType.TRAIN, content))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        contributions: list[tuple[float, dict[str, np.ndarray]]] = []
        updates: list[ClientUpdate] = []
        self.last_facts = []
        answered: set[int] = set()
        losses, weights = [], []
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            sent = self._sent.get(node)
            row = self._row(server_round, node, sent)
            if reply.has_error():
                row["status"] = f"error: {reply.error.reason}"
                log.warning("round %d: node %d failed: %s", server_round, node, reply.error.reason)
                self.client_rows.append(row)
                continue
            arrays = reply.content["arrays"]
            metrics = reply.content["metrics"]
            bad = non_finite_keys(arrays)
            unexpected = [k for k in arrays.keys() if key_modality(k) not in (None, *sent.modalities)] if sent else []
            if bad or unexpected or sent is None:
                reason = f"non-finite values in {bad[:3]}" if bad else f"unexpected parameters {unexpected[:3]}"
                row["status"] = f"rejected: {reason}"
                log.warning("round %d: rejected reply of node %d: %s", server_round, node, reason)
                self.client_rows.append(row)
                continue
            n = int(metrics[WEIGHT_KEY])
            loss = float(metrics["train-loss"])
            local = from_record(arrays)
            contributions.append((n, local))
            self.round_stats["bytes-up"] += arrays.count_bytes()
            losses.append(loss)
            weights.append(n)
            facts = dict(reply.content["facts"]) if "facts" in reply.content else {}
            self.last_facts.append((n, facts))
            state = self.clients[node]
            state.loss, state.last_round = loss, server_round
            if "imbalance-ratio" in facts:
                state.imbalance_ratio = float(facts["imbalance-ratio"])
            updates.append(self._update(node, sent.modalities, n, local, loss, state.imbalance_ratio))
            row.update(
                {"status": "ok", "num-examples": n, "train-loss": loss, "bytes-up": arrays.count_bytes(),
                 "seconds": float(metrics.get("seconds", 0.0))}
            )
            self.client_rows.append(row)
        for node in sorted(set(self._sent) - answered):
            row = self._row(server_round, node, self._sent[node])
            row["status"] = "no-reply"
            log.warning("round %d: node %d sent no reply within %.0f s", server_round, node, self.round_timeout)
            self.client_rows.append(row)
        self.policy.observe(server_round, updates)
        if not contributions:
            log.warning("round %d: no usable replies; the global model is unchanged", server_round)
            return None, None
        new = aggregate(self._global, contributions)
        mean_loss = float(np.average(losses, weights=weights))
        self.round_stats.update({"train/loss": mean_loss, "clients-ok": len(contributions)})
        return to_record(new), MetricRecord({"train/loss": mean_loss, WEIGHT_KEY: int(sum(weights))})

    # -- federated evaluation ------------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_evaluate <= 0 or not self.clients:
            return []
        nodes = sorted(self.clients)
        k = max(1, int(round(self.fraction_evaluate * len(nodes))))
        chosen = self._rng.choice(nodes, size=min(k, len(nodes)), replace=False)
        return [self._evaluate_message(int(n), server_round, arrays) for n in chosen]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        ok = [r for r in replies if not r.has_error()]
        if not ok:
            return None
        n = np.array([int(r.content["metrics"][WEIGHT_KEY]) for r in ok], dtype=float)
        acc = np.array([float(r.content["metrics"]["acc"]) for r in ok])
        loss = np.array([float(r.content["metrics"]["loss"]) for r in ok])
        return MetricRecord({"fedeval/acc": float(np.average(acc, weights=n)),
                             "fedeval/loss": float(np.average(loss, weights=n))})

    def summary(self) -> None:
        log.info("%s with selection %r over %d nodes", type(self).__name__, self.policy.name, len(self.clients))

    # -- helpers -------------------------------------------------------------------------------------
    def _measure_losses(self, server_round: int, arrays: ArrayRecord, nodes: list[int], grid: Grid) -> None:
        """Ask ``nodes`` for their local loss under the current global model (Power-of-Choice)."""
        messages = [self._evaluate_message(n, server_round, arrays) for n in nodes]
        for reply in grid.send_and_receive(messages, timeout=self.round_timeout):
            if not reply.has_error():
                self.clients[reply.metadata.src_node_id].loss = float(reply.content["metrics"]["loss"])

    def _evaluate_message(self, node: int, server_round: int, arrays: ArrayRecord) -> Message:
        mods = self.clients[node].modalities
        payload = subset_record(arrays, keys_for_modalities(arrays.keys(), mods))
        config = self._config({"server-round": server_round, "modalities": ",".join(mods)})
        extra_config, extra_arrays = self._extras(server_round)
        content = RecordDict({"arrays": payload, "config": config, "extras": extra_config, "extra-arrays": extra_arrays})
        return self._message(node, MessageType.EVALUATE, content)

    def _extras(self, server_round: int) -> tuple[ConfigRecord, ArrayRecord]:
        """The round's extras (objective state such as active classifier slots), encoded."""
        return encode_extras(dict(self.extras_fn(server_round)) if self.extras_fn else {})

    def _update(self, node: int, modalities: tuple[str, ...], n: int, local: dict[str, np.ndarray],
                loss: float, ratio: float | None) -> ClientUpdate:
        """The client's update per modality (global - local over that modality's encoder)."""
        deltas: dict[str, np.ndarray] = {}
        if getattr(self.policy, "uses_updates", False):
            for m in modalities:
                keys = [k for k in local if k.startswith(f"encoders.{m}.") and np.issubdtype(local[k].dtype, np.floating)]
                if keys:
                    deltas[m] = np.concatenate(
                        [(self._global[k] - local[k]).ravel().astype(np.float32) for k in keys]
                    )
        return ClientUpdate(node_id=node, modalities=modalities, num_examples=n, deltas=deltas,
                            loss=loss, imbalance_ratio=ratio)

    def _row(self, server_round: int, node: int, sent: Assignment | None) -> dict[str, Any]:
        state = self.clients.get(node)
        return {
            "round": server_round,
            "node-id": node,
            "partition-id": self.partition_of.get(node, -1),
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
