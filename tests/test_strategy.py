"""ModalityAwareFedAvg on hand-made Flower messages: per-node configs, partial uploads, failures."""

import numpy as np
import pytest
from flwr.app import Error, Message, MetricRecord, RecordDict

from fedmm.protocol import ARRAYS, CONFIG, EXTRAS, METRICS, MODALITIES, NUM_EXAMPLES, TRAIN_LOSS
from fedmm.records import from_record, to_record
from fedmm.server.loop import train_messages
from fedmm.strategies import ModalityAwareFedAvg
from fedmm.strategies.selection import build_policy

pytestmark = pytest.mark.usefixtures("flower_identity")

GLOBAL = {
    "encoders.a.w": np.zeros(2, np.float32),
    "encoders.b.w": np.ones(2, np.float32),
    "fusion.linear.weight": np.zeros(2, np.float32),
}
HELD = {1: ("a", "b"), 2: ("a",), 3: ("b",), 4: ("a", "b")}


class FakeGrid:
    """Answers nothing by itself: the test writes the replies."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def make_strategy():
    s = ModalityAwareFedAvg(
        policy=build_policy("all", seed=0),
        clients_per_round=4,
        min_available_nodes=4,
        run_config="x",
        extras_fn=lambda r: {"active": [1, 2]},
    )
    for node, mods in HELD.items():  # as discovery would have filled it: node n serves partition n - 1
        s.roster.register(node, node - 1, mods, 10)
    s.roster.waited_for_nodes = True
    return s


def reply(msg, arrays, n=10, loss=0.5):
    content = RecordDict({ARRAYS: to_record(arrays), METRICS: MetricRecord({NUM_EXAMPLES: n, TRAIN_LOSS: loss})})
    return Message(content, reply_to=msg)


def test_each_node_gets_its_own_config_and_only_its_groups():
    s = make_strategy()
    msgs = {m.metadata.dst_node_id: m for m in train_messages(s, 1, to_record(GLOBAL), FakeGrid(HELD), 600)}
    assert set(msgs) == {1, 2, 3, 4}
    assert set(msgs[2].content[ARRAYS].keys()) == {"encoders.a.w", "fusion.linear.weight"}
    assert set(msgs[3].content[ARRAYS].keys()) == {"encoders.b.w", "fusion.linear.weight"}
    assert msgs[2].content[CONFIG][MODALITIES] == "a" and msgs[1].content[CONFIG][MODALITIES] == "a,b"
    assert msgs[2].content[CONFIG] is not msgs[3].content[CONFIG]  # never one shared record
    assert list(msgs[1].content[EXTRAS]["active"]) == [1, 2]
    assert s.round_stats["bytes-down"] == sum(m.content[ARRAYS].count_bytes() for m in msgs.values())


def test_failures_are_recorded_and_left_out_of_the_average():
    s = make_strategy()
    msgs = {m.metadata.dst_node_id: m for m in train_messages(s, 1, to_record(GLOBAL), FakeGrid(HELD), 600)}
    good = reply(
        msgs[2], {"encoders.a.w": np.full(2, 4.0, np.float32), "fusion.linear.weight": np.full(2, 2.0, np.float32)}
    )
    nan = reply(
        msgs[1],
        {
            "encoders.a.w": np.array([np.nan, 0], np.float32),
            "encoders.b.w": np.zeros(2, np.float32),
            "fusion.linear.weight": np.zeros(2, np.float32),
        },
    )
    sneaky = reply(
        msgs[3], {"encoders.a.w": np.full(2, 9.0, np.float32), "fusion.linear.weight": np.zeros(2, np.float32)}
    )
    # node 4 never answers; node 3 sends a parameter of a modality it was not asked to train
    error = Message(Error(code=0, reason="crashed"), reply_to=msgs[4])
    arrays, metrics = s.aggregate_train(1, [good, nan, sneaky, error])
    out = from_record(arrays)
    np.testing.assert_allclose(out["encoders.a.w"], [4.0, 4.0])  # only the good reply counts
    np.testing.assert_allclose(out["fusion.linear.weight"], [2.0, 2.0])
    np.testing.assert_array_equal(out["encoders.b.w"], GLOBAL["encoders.b.w"])  # nobody trained it
    status = {r["node-id"]: r["status"] for r in s.client_rows}
    assert status[2] == "ok"
    assert status[1].startswith("rejected: non-finite")
    assert status[3].startswith("rejected: unexpected parameters")
    assert status[4] == "error: crashed"


def test_missing_reply_is_recorded_and_an_empty_round_keeps_the_model():
    s = make_strategy()
    list(train_messages(s, 1, to_record(GLOBAL), FakeGrid(HELD), 600))
    arrays, metrics = s.aggregate_train(1, [])
    assert arrays is None and metrics is None
    assert sorted(r["status"] for r in s.client_rows) == ["no-reply"] * 4


def test_only_connected_nodes_are_selected():
    s = make_strategy()
    msgs = list(train_messages(s, 1, to_record(GLOBAL), FakeGrid({1: 0, 2: 0, 4: 0}), 600))
    assert sorted(m.metadata.dst_node_id for m in msgs) == [1, 2, 4]  # node 3 is not connected


def test_every_round_a_client_misses_while_its_node_is_away_is_recorded_once():
    s = make_strategy()
    outcomes = []

    def round_(server_round, nodes, replies=()):
        msgs = {
            m.metadata.dst_node_id: m for m in train_messages(s, server_round, to_record(GLOBAL), FakeGrid(nodes), 600)
        }
        start = len(s.client_rows)
        s.aggregate_train(
            server_round,
            [
                reply(msgs[n], {k: v for k, v in GLOBAL.items() if not k.startswith("encoders.b") or n != 2})
                for n in replies
            ],
        )
        outcomes.append(sorted((r["partition-id"], r["node-id"], r["status"]) for r in s.client_rows[start:]))
        return msgs

    round_(1, {1: 0, 2: 0, 3: 0, 4: 0}, replies=[1, 2])
    round_(2, {1: 0, 2: 0}, replies=[1, 2])  # the nodes of partitions 2 and 3 die
    round_(3, {1: 0, 2: 0}, replies=[1, 2])  # and stay away
    s.roster.register(9, 3, HELD[4], 10)  # partition 3 comes back as node 9 (discovery maps it again)
    msgs = round_(4, {1: 0, 2: 0, 9: 0}, replies=[1, 2, 9])
    assert set(msgs) == {1, 2, 9}
    assert outcomes[0] == [(0, 1, "ok"), (1, 2, "ok"), (2, 3, "no-reply"), (3, 4, "no-reply")]
    for missed in outcomes[1:3]:  # one row per partition in every round, the absent ones disconnected
        assert missed == [(0, 1, "ok"), (1, 2, "ok"), (2, 3, "disconnected"), (3, 4, "disconnected")]
    assert outcomes[3] == [(0, 1, "ok"), (1, 2, "ok"), (2, 3, "disconnected"), (3, 9, "ok")]


# -- update vectors --------------------------------------------------------------------------------------
BN_GLOBAL = {
    "encoders.a.lin.weight": np.zeros(2, np.float32),
    "encoders.a.bn.weight": np.ones(1, np.float32),
    "encoders.a.bn.running_mean": np.zeros(1, np.float32),
    "encoders.a.bn.running_var": np.ones(1, np.float32),
    "encoders.a.bn.num_batches_tracked": np.zeros((), np.int64),
    "encoders.b.lin.weight": np.zeros(1, np.float32),
    "fusion.linear.weight": np.zeros(2, np.float32),
}
BN_PARAMETERS = ["encoders.a.lin.weight", "encoders.a.bn.weight", "encoders.b.lin.weight", "fusion.linear.weight"]


class TrainingGrid(FakeGrid):
    """Answers every train message like one local epoch would: the parameters move by -0.5 (so
    global - local = 0.5), the batch-norm statistics by +100 (50-200x, as in a real probe)."""

    @staticmethod
    def moved(key, value):
        if "running" in key:
            return value + 100
        return value + 1 if key.endswith("num_batches_tracked") else value - 0.5

    def send_and_receive(self, messages, timeout=None):
        out = []
        for msg in messages:
            trained = str(msg.content[CONFIG][MODALITIES]).split(",")
            out.append(
                reply(
                    msg,
                    {
                        k: self.moved(k, v.numpy())
                        for k, v in msg.content[ARRAYS].items()
                        if k.split(".")[1] in trained or k.startswith("fusion")
                    },
                )
            )
        return out


def test_update_vectors_hold_the_encoder_parameters_only():
    policy = build_policy("divfl", {"sketch-dim": 0}, seed=0)
    s = ModalityAwareFedAvg(
        policy=policy, clients_per_round=1, min_available_nodes=1, run_config="x", parameter_keys=BN_PARAMETERS
    )
    s.roster.register(1, 0, ("a", "b"), 10)
    s.roster.waited_for_nodes = True
    list(train_messages(s, 1, to_record(BN_GLOBAL), TrainingGrid({1: 0}), 600))  # the update pass
    # g = [lin.weight (2), bn.weight (1) of a; lin.weight (1) of b], each 0 - (-0.5); no running
    # statistics, no step counter, no fusion head
    np.testing.assert_array_equal(policy.store.full_features([0]), [[0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_array_equal(policy.store.slice_features([0], "a"), [[0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match="pass their names as parameter_keys"):
        ModalityAwareFedAvg(policy=policy, clients_per_round=1, min_available_nodes=1, run_config="x")
