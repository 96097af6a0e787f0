"""Hostile and broken replies on hand-made Flower messages: each one is rejected or skipped with a
reason, the round goes on with the others, and the global model keeps its keys, shapes and dtypes."""

import logging
from uuid import uuid4

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

from fedmm.facts import IMBALANCE_RATIO
from fedmm.protocol import (
    ACC,
    ARRAYS,
    FACTS,
    INFO,
    LOSS,
    METRICS,
    MODALITIES,
    NUM_EXAMPLES,
    PARTITION_ID,
    SECONDS,
    TRAIN_LOSS,
)
from fedmm.records import from_record, to_record
from fedmm.server.loop import train_messages
from fedmm.strategies import ModalityAwareFedAvg
from fedmm.strategies.selection import build_policy

pytestmark = pytest.mark.usefixtures("flower_identity")

GLOBAL = {
    "encoders.a.w": np.zeros(2, np.float32),
    "encoders.b.w": np.ones(2, np.float32),
    "fusion.linear.weight": np.zeros(2, np.float32),
    "fusion.bn.num_batches_tracked": np.zeros((), np.int64),
}
HELD = {1: ("a", "b"), 2: ("a",), 3: ("b",), 4: ("a", "b")}  # node n serves partition n - 1, 10 examples each


class FakeGrid:
    """Connected nodes; ``answer(msg) -> reply | None`` answers what the strategy sends itself."""

    def __init__(self, nodes, answer=None):
        self.nodes, self.answer = list(nodes), answer

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, timeout=None):
        messages = push(list(messages))
        return [r for r in (self.answer(m) for m in messages) if r is not None]


def push(messages):
    """Give each message the id a real grid gives it when it pushes it."""
    for m in messages:
        m.metadata.__dict__["_message_id"] = str(uuid4())
    return messages


def make_strategy(policy="all", **kw):
    s = ModalityAwareFedAvg(
        policy=build_policy(policy, kw.pop("params", None), seed=0),
        clients_per_round=4,
        min_available_nodes=4,
        run_config="x",
        num_partitions=4,
        **kw,
    )
    for node, mods in HELD.items():
        s.roster.register(node, node - 1, mods, 10)
    s.roster.waited_for_nodes = True
    return s


def train_round(s):
    return {m.metadata.dst_node_id: m for m in push(list(train_messages(s, 1, to_record(GLOBAL), FakeGrid(HELD), 600)))}


def good_arrays(node):
    """What node ``node`` uploads: its trained groups at ``2 * node - 1`` (a), ``2 * node`` (b) and
    ``node`` (fusion), the step counter at ``node``."""
    out = {"fusion.linear.weight": np.full(2, node, np.float32), "fusion.bn.num_batches_tracked": np.array(node)}
    if "a" in HELD[node]:
        out["encoders.a.w"] = np.full(2, 2 * node - 1, np.float32)
    if "b" in HELD[node]:
        out["encoders.b.w"] = np.full(2, 2 * node, np.float32)
    return out


def reply(msg, arrays, metrics=None, **records):
    metrics = {NUM_EXAMPLES: 10, TRAIN_LOSS: 0.5} if metrics is None else metrics
    content = RecordDict({ARRAYS: to_record(arrays) if isinstance(arrays, dict) else arrays, **records})
    if metrics is not False:
        content[METRICS] = metrics if isinstance(metrics, (MetricRecord, ConfigRecord)) else MetricRecord(metrics)
    return Message(content, reply_to=msg)


def undecodable():
    record = to_record(
        {
            "encoders.a.w": np.zeros(2, np.float32),
            "fusion.linear.weight": np.zeros(2, np.float32),
            "fusion.bn.num_batches_tracked": np.zeros((), np.int64),
        }
    )
    a = record["encoders.a.w"]
    record["encoders.a.w"] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=b"not numpy")
    return record


def node2(arrays=None, **kw):
    """Node 2 (trains ``a``) sends ``arrays`` (default: its good upload) and ``kw``."""
    return lambda msg: reply(msg, good_arrays(2) if arrays is None else arrays, **kw)


def with_(**changes):
    out = {k: v for k, v in good_arrays(2).items() if changes.get(k, 0) is not None}
    out.update({k: v for k, v in changes.items() if v is not None})
    return out


HOSTILE = {
    "shape (1,)": (node2(with_(**{"fusion.linear.weight": np.full(1, 99, np.float32)})), "has shape (1,)"),
    "dtype float64": (node2(with_(**{"encoders.a.w": np.full(2, 99, np.float64)})), "dtype float64"),
    "step counter as float": (node2(with_(**{"fusion.bn.num_batches_tracked": np.array(9.0)})), "dtype float64"),
    "no metrics": (node2(metrics=False), "no 'metrics' record"),
    "metrics as config": (node2(metrics=ConfigRecord({NUM_EXAMPLES: 10, TRAIN_LOSS: "low"})), "no 'metrics'"),
    "unknown key": (node2(with_(**{"encoders.a.extra": np.zeros(2, np.float32)})), "unknown parameters"),
    "unknown shared key": (node2(with_(**{"fusion.something_new": np.zeros(2, np.float32)})), "unknown parameters"),
    "key of no group": (node2(with_(evil=np.zeros(2, np.float32))), "unknown parameters"),
    "missing key": (node2(with_(**{"encoders.a.w": None})), "missing parameters"),
    "no arrays": (node2(arrays=ArrayRecord()), "missing parameters"),
    "arrays not a record": (
        lambda m: Message(RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 10, TRAIN_LOSS: 1.0})}), reply_to=m),
        "no 'arrays' record",
    ),
    "undecodable array": (node2(undecodable()), "cannot be read"),
    "num-examples 0": (node2(metrics={NUM_EXAMPLES: 0, TRAIN_LOSS: 0.5}), "num-examples 0"),
    "num-examples < 0": (node2(metrics={NUM_EXAMPLES: -3, TRAIN_LOSS: 0.5}), "num-examples -3"),
    "num-examples 1e9": (node2(metrics={NUM_EXAMPLES: 1e9, TRAIN_LOSS: 0.5}), "not an integer in 1..10"),
    "num-examples 11": (node2(metrics={NUM_EXAMPLES: 11, TRAIN_LOSS: 0.5}), "not an integer in 1..10"),
    "no num-examples": (node2(metrics={TRAIN_LOSS: 0.5}), "no 'num-examples'"),
    "no train-loss": (node2(metrics={NUM_EXAMPLES: 10}), "no 'train-loss'"),
    "train-loss list": (node2(metrics={NUM_EXAMPLES: 10, TRAIN_LOSS: [0.5, 0.1]}), "'train-loss' is [0.5, 0.1]"),
    "train-loss nan": (node2(metrics={NUM_EXAMPLES: 10, TRAIN_LOSS: float("nan")}), "not a finite number"),
    "seconds list": (node2(metrics={NUM_EXAMPLES: 10, TRAIN_LOSS: 0.5, SECONDS: [1.0]}), "'seconds'"),
    "facts of strings": (node2(facts=ConfigRecord({"conf.a": "high"})), "fact 'conf.a'"),
    "facts as arrays": (node2(facts=ArrayRecord()), "'facts' is not a record"),
    "imbalance-ratio list": (node2(facts=MetricRecord({IMBALANCE_RATIO: [1.0, 2.0]})), "'imbalance-ratio'"),
    "non-finite array": (node2(with_(**{"encoders.a.w": np.array([np.nan, 0], np.float32)})), "non-finite"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_training_reply_is_rejected_and_the_round_goes_on(case):
    answer, reason = HOSTILE[case]
    s = make_strategy()
    msgs = train_round(s)
    replies = [reply(msgs[n], good_arrays(n)) for n in (1, 3, 4)] + [answer(msgs[2])]
    arrays, metrics = s.aggregate_train(1, replies)
    status = {r["partition-id"]: r["status"] for r in s.client_rows}
    assert len(s.client_rows) == 4
    assert status[1].startswith("rejected: ") and reason in status[1], status[1]
    assert [status[p] for p in (0, 2, 3)] == ["ok"] * 3
    out = from_record(arrays)
    sent = from_record(to_record(GLOBAL))  # the global model as the server holds it
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {k: (v.shape, v.dtype) for k, v in sent.items()}
    np.testing.assert_allclose(out["encoders.a.w"], [4.0, 4.0])  # nodes 1 and 4: (1 + 7) / 2
    np.testing.assert_allclose(out["encoders.b.w"], [16 / 3, 16 / 3])  # nodes 1, 3, 4: (2 + 6 + 8) / 3
    np.testing.assert_allclose(out["fusion.linear.weight"], [8 / 3, 8 / 3])  # (1 + 3 + 4) / 3
    assert int(metrics[NUM_EXAMPLES]) == 30 and s.last_accepted == [0, 2, 3]


def test_a_killed_supernode_is_counted_once_under_its_partition():
    s = make_strategy()
    msgs = train_round(s)
    # the SuperLink answers the message of the dead node 3 itself, from its own node id (1, which is
    # also a real node here), replying to the message it could not deliver
    dead = create_message_error_unavailable_res_message(msgs[3].metadata, "node_unavail")
    assert dead.metadata.src_node_id == SUPERLINK_NODE_ID == 1
    arrays, _ = s.aggregate_train(1, [reply(msgs[n], good_arrays(n)) for n in (1, 2, 4)] + [dead])
    rows = {r["partition-id"]: (r["node-id"], r["status"]) for r in s.client_rows}
    assert len(s.client_rows) == 4 and sorted(rows) == [0, 1, 2, 3]
    assert rows[2][0] == 3 and rows[2][1].startswith("error: ") and "Node Unavailable" in rows[2][1]
    assert [rows[p] for p in (0, 1, 3)] == [(1, "ok"), (2, "ok"), (4, "ok")]
    np.testing.assert_allclose(from_record(arrays)["encoders.b.w"], [5.0, 5.0])  # nodes 1 and 4: (2 + 8) / 2


def test_a_second_reply_of_a_node_counts_once():
    s = make_strategy()
    msgs = train_round(s)
    twice = [reply(msgs[2], good_arrays(2)), reply(msgs[2], with_(**{"encoders.a.w": np.full(2, 99, np.float32)}))]
    arrays, _ = s.aggregate_train(1, [reply(msgs[n], good_arrays(n)) for n in (1, 3, 4)] + twice)
    assert [r["partition-id"] for r in s.client_rows] == [0, 1, 2, 3]
    np.testing.assert_allclose(from_record(arrays)["encoders.a.w"], [11 / 3, 11 / 3])  # nodes 1, 2, 4: (1 + 3 + 7) / 3


# -- discovery -------------------------------------------------------------------------------------
BAD_INFO = {
    5: None,  # no info record
    6: MetricRecord({PARTITION_ID: 1, NUM_EXAMPLES: 10}),
    7: ConfigRecord({PARTITION_ID: 1, NUM_EXAMPLES: 10}),  # no modalities
    8: ConfigRecord({PARTITION_ID: 1, MODALITIES: "a,c", NUM_EXAMPLES: 10}),
    9: ConfigRecord({PARTITION_ID: 4, MODALITIES: "a", NUM_EXAMPLES: 10}),
    10: ConfigRecord({PARTITION_ID: -1, MODALITIES: "a", NUM_EXAMPLES: 10}),
    11: ConfigRecord({PARTITION_ID: 1, MODALITIES: "a", NUM_EXAMPLES: 0}),
    12: ConfigRecord({PARTITION_ID: "1", MODALITIES: "a", NUM_EXAMPLES: 10}),
}


def test_discovery_skips_a_node_whose_info_is_bad(caplog):
    def answer(msg):
        node = msg.metadata.dst_node_id
        if msg.metadata.message_type != MessageType.QUERY:
            return None
        if node in BAD_INFO:
            info = BAD_INFO[node]
            return Message(RecordDict({} if info is None else {INFO: info}), reply_to=msg)
        return Message(
            RecordDict(
                {INFO: ConfigRecord({PARTITION_ID: node - 1, MODALITIES: ",".join(HELD[node]), NUM_EXAMPLES: 10})}
            ),
            reply_to=msg,
        )

    s = ModalityAwareFedAvg(
        policy=build_policy("all", seed=0), clients_per_round=4, min_available_nodes=1, run_config="x", num_partitions=4
    )
    with caplog.at_level(logging.WARNING, logger="fedmm"):
        msgs = list(train_messages(s, 1, to_record(GLOBAL), FakeGrid([*HELD, *BAD_INFO], answer), 600))
    assert s.roster.client_of == {1: 0, 2: 1, 3: 2, 4: 3}
    assert sorted(m.metadata.dst_node_id for m in msgs) == [1, 2, 3, 4]
    skipped = [r.getMessage() for r in caplog.records if "is skipped" in r.getMessage()]
    assert [m.split()[1] for m in skipped] == [str(n) for n in BAD_INFO]
    assert "'a,c'" in skipped[3] and "0..3" in skipped[4] and "--node-config" in skipped[0]


# -- federated evaluation, PowD probe, global-model facts ---------------------------------------------
def evaluation(msg, **metrics):
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


def test_federated_evaluation_skips_replies_without_usable_metrics():
    s = make_strategy(fraction_evaluate=1.0)
    s.roster.connected = set(HELD)
    sent = s.configure_evaluate(1, to_record(GLOBAL))
    msgs = {m.metadata.dst_node_id: m for m in sent}
    replies = [
        evaluation(msgs[1], **{NUM_EXAMPLES: 10, ACC: 0.8, LOSS: 1.0}),
        Message(RecordDict({}), reply_to=msgs[2]),
        evaluation(msgs[3], **{NUM_EXAMPLES: 10, LOSS: 2.0}),
        evaluation(msgs[4], **{NUM_EXAMPLES: 10, ACC: 0.1, LOSS: float("inf")}),
    ]
    assert dict(s.aggregate_evaluate(1, replies)) == {"fedeval/acc": 0.8, "fedeval/loss": 1.0}
    assert s.aggregate_evaluate(1, replies[1:]) is None


def test_powd_probe_skips_replies_without_a_loss():
    s = make_strategy("powd", params={"d": 4})
    s.clients_per_round = 2
    losses = {1: {LOSS: 0.3}, 2: {}, 3: {LOSS: [1.0]}}

    def answer(msg):
        node = msg.metadata.dst_node_id
        return None if node == 4 else evaluation(msg, **{NUM_EXAMPLES: 10, **losses[node]})

    msgs = list(train_messages(s, 1, to_record(GLOBAL), FakeGrid(HELD, answer), 600))
    assert [s.roster.clients[c].loss for c in range(4)] == [0.3, None, None, None]
    assert len(msgs) == 2


def test_global_model_facts_skip_replies_without_metrics_or_with_bad_facts():
    seen = []
    s = make_strategy(observe_fn=lambda r, facts: seen.append((r, facts)))
    s.last_accepted = [0, 1, 2, 3]
    s.roster.connected = set(HELD)
    answers = {
        1: lambda m: Message(
            RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 10}), FACTS: MetricRecord({"proto.a": [1.0, 2.0]})}),
            reply_to=m,
        ),
        2: lambda m: Message(RecordDict({FACTS: MetricRecord({"proto.a": [1.0]})}), reply_to=m),
        3: lambda m: Message(
            RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 10}), FACTS: ConfigRecord({"proto.a": "x"})}), reply_to=m
        ),
        4: lambda m: Message(Error(code=0, reason="crashed"), reply_to=m),
    }
    grid = FakeGrid(HELD, lambda m: answers[m.metadata.dst_node_id](m))
    s.aggregate_global_model_facts(1, grid.send_and_receive(s.configure_global_model_facts(1, to_record(GLOBAL))))
    assert seen == [(1, [(10, {"proto.a": [1.0, 2.0]})])]


def test_an_old_reply_without_message_ids_still_counts_for_its_sender():
    """Replies to messages no grid pushed (no ids) keep their sender (as the other tests' FakeGrids)."""
    s = make_strategy()
    msgs = {m.metadata.dst_node_id: m for m in train_messages(s, 1, to_record(GLOBAL), FakeGrid(HELD), 600)}
    arrays, _ = s.aggregate_train(1, [reply(msgs[n], good_arrays(n)) for n in HELD])
    assert [r["status"] for r in s.client_rows] == ["ok"] * 4
