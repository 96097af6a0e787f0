"""Issue 24, rows 7 and 10: replies whose numbers are outside what they can be (an accuracy of 5.0,
a negative evaluation loss, an imbalance ratio of -1) are rejected or skipped like the other
hostile replies (``fedmm.protocol.VALID``); a SuperNode that leaves before its discovery reply
leaves no row under partition -1. Hand-made messages, as in test_faults_replies.py."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from test_faults_replies import GLOBAL, HELD, FakeGrid, evaluation, good_arrays, make_strategy, reply, train_round

from fedmm.facts import IMBALANCE_RATIO
from fedmm.protocol import ACC, INFO, LOSS, MODALITIES, NUM_EXAMPLES, PARTITION_ID, SECONDS, TRAIN_LOSS
from fedmm.records import from_record, to_record
from fedmm.strategies.roster import Roster

pytestmark = pytest.mark.usefixtures("flower_identity")


@pytest.mark.parametrize(
    ("metrics", "facts", "says"),
    [
        ({NUM_EXAMPLES: 10, TRAIN_LOSS: 0.5}, {IMBALANCE_RATIO: -1.0}, "'imbalance-ratio' is -1.0, outside"),
        ({NUM_EXAMPLES: 10, TRAIN_LOSS: 0.5, SECONDS: -2.0}, None, "'seconds' is -2.0, outside"),
    ],
    ids=["imbalance-ratio -1", "seconds -2"],
)
def test_a_training_reply_with_an_impossible_value_is_rejected(metrics, facts, says):
    s = make_strategy()
    msgs = train_round(s)
    extra = {"facts": MetricRecord(facts)} if facts else {}
    replies = [reply(msgs[n], good_arrays(n)) for n in (1, 3, 4)] + [
        reply(msgs[2], good_arrays(2), metrics=metrics, **extra)
    ]
    arrays, _ = s.aggregate_train(1, replies)
    status = {r["node-id"]: r["status"] for r in s.client_rows}
    assert status[2].startswith("rejected: ") and says in status[2]
    assert [status[n] for n in (1, 3, 4)] == ["ok"] * 3
    np.testing.assert_allclose(from_record(arrays)["encoders.a.w"], [4.0, 4.0])  # nodes 1 and 4 only: (1 + 7) / 2


def test_an_imbalance_ratio_in_range_is_accepted():
    s = make_strategy()
    msgs = train_round(s)
    replies = [reply(msgs[n], good_arrays(n)) for n in (1, 3, 4)]
    replies.append(reply(msgs[2], good_arrays(2), facts=MetricRecord({IMBALANCE_RATIO: 0.0})))
    s.aggregate_train(1, replies)
    assert {r["status"] for r in s.client_rows} == {"ok"}


@pytest.mark.parametrize(("bad", "value"), [(ACC, 5.0), (ACC, -0.1), (LOSS, -1.0)])
def test_federated_evaluation_skips_an_accuracy_or_loss_out_of_range(bad, value, caplog):
    s = make_strategy(fraction_evaluate=1.0)
    s.roster.connected = set(HELD)
    msgs = {m.metadata.dst_node_id: m for m in s.configure_evaluate(1, to_record(GLOBAL))}
    good = {NUM_EXAMPLES: 10, ACC: 0.8, LOSS: 1.0}
    replies = [
        evaluation(msgs[1], **good),
        evaluation(msgs[2], **{**good, bad: value}),
        evaluation(msgs[3], **{**good, ACC: 0.4, LOSS: 2.0}),
    ]
    with caplog.at_level(logging.WARNING, logger="fedmm"):
        result = dict(s.aggregate_evaluate(1, replies))
    assert result == pytest.approx({"fedeval/acc": 0.6, "fedeval/loss": 1.5})  # nodes 1 and 3 only
    assert any("outside its valid range" in r.getMessage() for r in caplog.records)


def test_a_probe_with_a_negative_loss_is_skipped():
    s = make_strategy("powd", params={"d": 4})
    s.clients_per_round = 2
    losses = {1: 0.3, 2: -5.0, 3: 0.7, 4: 0.2}
    from fedmm.server.loop import train_messages

    train_messages(
        s,
        1,
        to_record(GLOBAL),
        FakeGrid(HELD, lambda m: evaluation(m, **{NUM_EXAMPLES: 10, LOSS: losses[m.metadata.dst_node_id]})),
        600,
    )
    assert [s.roster.clients[c].loss for c in range(4)] == [0.3, None, 0.7, 0.2]


# -- row 10: a node that leaves before it is discovered ------------------------------------------------
def info(msg: Message) -> Message:
    node = msg.metadata.dst_node_id
    return Message(
        RecordDict({INFO: ConfigRecord({PARTITION_ID: node - 1, MODALITIES: "a,b", NUM_EXAMPLES: 10})}), reply_to=msg
    )


def test_a_node_gone_before_discovery_gets_no_row_and_a_known_one_its_partition(caplog):
    roster = Roster(min_available_nodes=1, round_timeout=5, num_partitions=4)
    queries = roster.connect(FakeGrid([1, 2, 3]), 1, "x")
    assert sorted(queries) == [1, 2, 3] and roster.absent_rows(1) == []
    # node 3 was killed before it answered: only 1 and 2 are discovered
    for m in queries.values():
        m.metadata.__dict__["_message_id"] = f"q{m.metadata.dst_node_id}"
    roster.admit([info(queries[1]), info(queries[2])], queries, {"a", "b"})
    assert roster.client_of == {1: 0, 2: 1}
    with caplog.at_level(logging.WARNING, logger="fedmm"):
        roster.connect(FakeGrid([1]), 2, "x")  # nodes 2 (known) and 3 (never discovered) are gone
    rows = roster.absent_rows(2)
    assert [(r["node-id"], r["partition-id"], r["status"]) for r in rows] == [(2, 1, "disconnected")]
    assert any("node 3 left before it was discovered" in r.getMessage() for r in caplog.records)
