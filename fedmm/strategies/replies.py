"""Replies: matching each to the message it answers, vetting them, the clients.csv rows and byte counts."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord

from fedmm.facts import IMBALANCE_RATIO
from fedmm.groups import is_encoder_key, keys_for_modalities
from fedmm.protocol import decode_evaluation, decode_loss, decode_model_facts, decode_train_reply, reply_bytes
from fedmm.records import RecordMismatch
from fedmm.strategies.roster import Roster, answered_nodes, client_row
from fedmm.strategies.selection.base import Assignment, ClientUpdate

log = logging.getLogger("fedmm")


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


def accept(
    roster: Roster,
    server_round: int,
    replies: Iterable[Message],
    sent: Mapping[int, Assignment],
    messages: Mapping[int, Message],
    global_state: Mapping[str, np.ndarray],
    client_facts: Collection[str],
    timeout: float,
) -> tuple[list[Accepted], list[dict[str, Any]], int]:
    """Vet every training reply (:func:`~fedmm.protocol.decode_train_reply`: arrays exactly the
    trained groups of ``global_state``, the ``client_facts`` asked for numbers): the usable ones (by
    client id), every client's outcome row (ok, error, rejected, no-reply, and in a training round
    ``disconnected`` for each known client whose node is away, :meth:`Roster.absent_rows`; by
    partition id, so that neither the tables nor the average depend on the order in which replies
    arrived) and the bytes the accepted ones uploaded.

    A reply counts for the node whose message (in ``messages``, by node) it answers, so the error
    the SuperLink sends for a node that died counts once, for that node's partition. A second reply
    for the same node is ignored. ``timeout`` is the wait that ran out for a missing reply (logged)."""
    accepted: list[Accepted] = []
    rows: list[dict[str, Any]] = []
    answered: set[int] = set()
    uploaded = 0
    for node, reply in answered_nodes(replies, messages):
        if node in answered:
            log.warning("round %d: node %d sent a second reply; it is ignored", server_round, node)
            continue
        answered.add(node)
        assignment = sent.get(node)
        row = client_row(roster, server_round, node, assignment)
        rows.append(row)
        if reply.has_error():
            row["status"] = f"error: {reply.error.reason}"
            log.warning("round %d: node %d failed: %s", server_round, node, reply.error.reason)
            continue
        try:
            if assignment is None:
                raise RecordMismatch("no training request was sent to this node")
            r = decode_train_reply(
                reply,
                limit=roster.limit(node),
                global_state=global_state,
                expected=keys_for_modalities(global_state, assignment.modalities),
                client_facts=client_facts,
            )
            item = Accepted(
                assignment.client_id, assignment.modalities, r.num_examples, r.loss, r.arrays, r.facts, r.seconds
            )
        except RecordMismatch as err:
            row["status"] = f"rejected: {err}"
            log.warning(
                "round %d: rejected reply of node %d (partition %d): %s", server_round, node, row["partition-id"], err
            )
            continue
        accepted.append(item)
        size = reply_bytes(reply)
        uploaded += size
        row.update(
            {
                "status": "ok",
                "num-examples": item.num_examples,
                "train-loss": item.loss,
                "bytes-up": size,
                "seconds": item.seconds,
            }
        )
    for node in sorted(set(sent) - answered):
        row = client_row(roster, server_round, node, sent[node])
        row["status"] = "no-reply"
        log.warning("round %d: node %d sent no reply within %.0f s", server_round, node, timeout)
        rows.append(row)
    if server_round > 0:  # a training round (not the update pass): the clients whose node is away
        rows.extend(roster.absent_rows(server_round, skip=answered | set(sent)))
    return sorted(accepted, key=lambda r: r.client_id), sorted(rows, key=lambda r: r["partition-id"]), uploaded


def probed_losses(
    roster: Roster, server_round: int, replies: Iterable[Message], messages: Mapping[int, Message]
) -> None:
    """Set each probed client's ``loss`` from its reply to a Power-of-Choice probe (``messages``, by
    node); error replies are skipped, unusable ones left out (logged)."""
    for node, reply in answered_nodes(replies, messages):
        client = roster.client_of.get(node)
        if reply.has_error() or client is None:
            continue
        try:
            roster.clients[client].loss = decode_loss(reply)
        except RecordMismatch as err:
            log.warning("round %d: node %d's loss probe is left out: %s", server_round, node, err)


def model_facts(
    roster: Roster, server_round: int, replies: Iterable[Message], messages: Mapping[int, Message]
) -> list[tuple[int, dict[str, Any]]]:
    """``(num-examples, facts)`` of every usable reply with facts of the global model; a client that
    does not answer, or answers without facts, is left out (logged)."""
    facts = []
    for node, reply in answered_nodes(replies, messages):
        if reply.has_error():
            log.warning(
                "round %d: node %d did not report on the global model: %s", server_round, node, reply.error.reason
            )
            continue
        try:
            n, node_facts = decode_model_facts(reply, roster.limit(node))
        except RecordMismatch as err:
            log.warning("round %d: node %d's report on the global model is left out: %s", server_round, node, err)
            continue
        if node_facts:
            facts.append((n, node_facts))
    return facts


def evaluation(roster: Roster, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
    """Example-weighted accuracy and loss of the nodes' evaluations; error replies and replies
    without usable ``num-examples``, ``acc`` and ``loss`` are left out (logged)."""
    rows = []
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("round %d: node %d did not evaluate: %s", server_round, node, reply.error.reason)
            continue
        try:
            rows.append(decode_evaluation(reply, roster.limit(node)))
        except RecordMismatch as err:
            log.warning("round %d: evaluation of node %d is left out: %s", server_round, node, err)
    if not rows:
        return None
    n, acc, loss = zip(*rows)
    return MetricRecord(
        {"fedeval/acc": float(np.average(acc, weights=n)), "fedeval/loss": float(np.average(loss, weights=n))}
    )


def client_updates(
    roster: Roster,
    server_round: int,
    accepted: list[Accepted],
    global_state: Mapping[str, np.ndarray],
    parameter_keys: Collection[str] | None,
) -> list[ClientUpdate]:
    """Record each accepted client's loss, round and imbalance ratio in its state and return what the
    policy observes of it (its facts included); with ``parameter_keys`` (a policy that uses update vectors) its update
    vectors (:func:`update_vectors`), else none."""
    updates = []
    for r in accepted:
        state = roster.clients[r.client_id]
        state.loss, state.last_round = r.loss, server_round
        if IMBALANCE_RATIO in r.facts:
            state.imbalance_ratio = float(r.facts[IMBALANCE_RATIO])
        deltas = update_vectors(global_state, parameter_keys, r) if parameter_keys is not None else {}
        updates.append(
            ClientUpdate(
                client_id=r.client_id,
                modalities=r.modalities,
                num_examples=r.num_examples,
                deltas=deltas,
                loss=r.loss,
                imbalance_ratio=state.imbalance_ratio,
                facts=dict(r.facts),
            )
        )
        updates[-1].seconds = r.seconds
    return updates


def update_vectors(
    global_state: Mapping[str, np.ndarray], parameter_keys: Collection[str], r: Accepted
) -> dict[str, np.ndarray]:
    """The client's update per trained modality, ``global - local`` over that modality's encoder
    parameters (``parameter_keys``; buffers never enter), in the global model's key order."""
    deltas: dict[str, np.ndarray] = {}
    for m in r.modalities:
        keys = [k for k in global_state if is_encoder_key(k, m) and k in parameter_keys and k in r.arrays]
        if keys:
            deltas[m] = np.concatenate([(global_state[k] - r.arrays[k]).ravel().astype(np.float32) for k in keys])
    return deltas
