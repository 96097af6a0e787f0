"""fedmm.protocol: the keys and codecs of every message; client facts requested and computed by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedmm.config import load_config
from fedmm.facts import CLIENT_FACTS, IMBALANCE_RATIO, register_client_fact
from fedmm.protocol import (
    ARRAYS,
    CLIENT_FACTS_KEY,
    CONFIG,
    EXTRA_ARRAYS,
    EXTRAS,
    FACTS,
    GLOBAL_MODEL_FACTS_KEY,
    IMBALANCE_ORDER,
    LOCAL_EPOCHS,
    METRICS,
    MODALITIES,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    RUN_CONFIG,
    SERVER_ROUND,
    TRAIN_LOSS,
    Request,
    decode_train_reply,
    message_bytes,
)
from fedmm.records import RecordMismatch, to_record
from fedmm.strategies.selection import ClientState, build_policy

pytestmark = pytest.mark.usefixtures("flower_identity")

GLOBAL = {
    "encoders.a.w": np.zeros(2, np.float32),
    "encoders.b.w": np.ones(3, np.float32),
    "encoders.c.w": np.ones(1, np.float32),
    "fusion.linear.weight": np.zeros(4, np.float32),
}


def test_a_train_request_travels_as_these_config_keys_and_comes_back_equal():
    request = Request(
        "x = 1",
        0,
        ("a", "b"),
        proximal_mu=0.25,
        client_facts=(IMBALANCE_RATIO,),
        order=("c", "a", "b"),
        epochs=1,
        extras={"active": [1, 2], "protos": np.eye(2, dtype=np.float32)},
    )
    msg = request.to_message(3, MessageType.TRAIN, to_record(GLOBAL), ("a", "b"))
    assert msg.metadata.dst_node_id == 3 and msg.metadata.message_type == MessageType.TRAIN
    assert dict(msg.content[CONFIG]) == {
        RUN_CONFIG: "x = 1",
        SERVER_ROUND: 0,
        MODALITIES: "a,b",
        PROXIMAL_MU: 0.25,
        CLIENT_FACTS_KEY: "imbalance-ratio",
        IMBALANCE_ORDER: "c,a,b",
        LOCAL_EPOCHS: 1,
    }
    assert sorted(msg.content[ARRAYS].keys()) == ["encoders.a.w", "encoders.b.w", "fusion.linear.weight"]
    assert list(msg.content[EXTRAS]["active"]) == [1, 2] and list(msg.content[EXTRA_ARRAYS].keys()) == ["protos"]
    back = Request.from_message(msg)
    np.testing.assert_array_equal(back.extras.pop("protos"), np.eye(2))
    assert back == Request(
        "x = 1",
        0,
        ("a", "b"),
        proximal_mu=0.25,
        client_facts=(IMBALANCE_RATIO,),
        order=("c", "a", "b"),
        epochs=1,
        extras={"active": [1, 2]},
    )


def test_an_evaluate_request_carries_only_round_modalities_and_the_facts_ask():
    msg = Request("x", 4, ("c",), global_model_facts=True).to_message(
        2, MessageType.EVALUATE, to_record(GLOBAL), ("c",)
    )
    assert dict(msg.content[CONFIG]) == {
        RUN_CONFIG: "x",
        SERVER_ROUND: 4,
        MODALITIES: "c",
        GLOBAL_MODEL_FACTS_KEY: True,
    }
    assert Request.from_message(msg) == Request("x", 4, ("c",), global_model_facts=True)


def test_bytes_down_count_the_extras_arrays_of_training_messages_only():
    extras = {"protos": np.zeros(5, np.float32)}
    train = Request("x", 1, ("a",), proximal_mu=0.0, extras=extras).to_message(
        1, MessageType.TRAIN, to_record(GLOBAL), ("a",)
    )
    probe = Request("x", 1, ("a",), extras=extras).to_message(1, MessageType.EVALUATE, to_record(GLOBAL), ("a",))
    groups = to_record({k: GLOBAL[k] for k in ("encoders.a.w", "fusion.linear.weight")}).count_bytes()
    assert message_bytes(train, extras=True) == groups + to_record(extras).count_bytes()
    assert message_bytes(probe, extras=False) == groups


def train_reply_with(facts):
    arrays = {k: GLOBAL[k] for k in ("encoders.a.w", "fusion.linear.weight")}
    content = RecordDict(
        {
            ARRAYS: to_record(arrays),
            METRICS: MetricRecord({NUM_EXAMPLES: 4, TRAIN_LOSS: 0.5}),
            FACTS: MetricRecord(facts),
        }
    )
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN))


def test_a_requested_fact_must_be_one_finite_number():
    expected = ["encoders.a.w", "fusion.linear.weight"]
    vet = dict(limit=10, global_state=GLOBAL, expected=expected)
    reply = train_reply_with({"my-fact": float("inf")})
    assert decode_train_reply(reply, **vet).facts == {"my-fact": float("inf")}  # not asked for: any number
    with pytest.raises(RecordMismatch, match="'my-fact' is inf, not a finite number"):
        decode_train_reply(reply, **vet, client_facts=("my-fact",))
    with pytest.raises(RecordMismatch, match="'my-fact' is \\[1.0, 2.0\\]"):
        decode_train_reply(train_reply_with({"my-fact": [1.0, 2.0]}), **vet, client_facts=("my-fact",))
    assert decode_train_reply(train_reply_with({"my-fact": 2}), **vet, client_facts=("my-fact",)).facts == {
        "my-fact": 2.0
    }


def test_a_policy_asks_for_the_imbalance_ratio_exactly_when_it_has_an_imbalance_order():
    clients = [ClientState(client_id=0, modalities=("a", "b"), num_examples=1)]
    assert build_policy("cmsfed", seed=0).client_facts(clients) == (IMBALANCE_RATIO,)
    assert build_policy("divfl", seed=0).client_facts(clients) == ()
    assert build_policy("all", seed=0).client_facts(clients) == ()


# -- the client computes each fact with its registered entry, when the entry says -------------------------
KEY = "fusion.linear.weight"


def _weight_sum(model: torch.nn.Module, data, order) -> float:
    return float(model.state_dict()[KEY].double().sum()) + 1000.0 * len(order)


register_client_fact("test-weight-sum-early", before_training_in_update_pass=True)(_weight_sum)
register_client_fact("test-weight-sum-late", before_training_in_update_pass=False)(_weight_sum)


@pytest.mark.parametrize("server_round", [0, 1])
def test_the_client_measures_each_requested_fact_from_the_received_or_the_trained_model(server_round):
    from test_node_config import context

    from fedmm.clients.app import app
    from fedmm.workspace import model_of, objective_of

    run = load_config(
        None,
        [
            "dataset=synthetic",
            "partition=iid",
            "num-clients=2",
            "local-epochs=1",
            "lr=0.5",
            "device=cpu",
            "batch-size=8",
        ],
    )
    received = model_of(run, objective_of(run))
    with torch.no_grad():
        received.state_dict()[KEY].fill_(0.25)
    sent = received.state_dict()
    mods = ("m0", "m1")
    request = Request(
        run.to_toml(),
        server_round,
        mods,
        proximal_mu=0.0,
        order=("m1", "m0", "m1"),
        client_facts=("test-weight-sum-early", "test-weight-sum-late"),
    )
    reply = app(
        request.to_message(7, MessageType.TRAIN, to_record(sent), mods),
        context(**{"partition-id": 0, "num-partitions": 2}),
    )
    facts = dict(reply.content[FACTS])
    trained = float(reply.content[ARRAYS][KEY].numpy().astype(np.float64).sum()) + 3000.0
    from_received = 0.25 * sent[KEY].numel() + 3000.0
    assert trained != pytest.approx(from_received)  # training moved the weights
    assert facts["test-weight-sum-late"] == pytest.approx(trained)
    assert facts["test-weight-sum-early"] == pytest.approx(from_received if server_round == 0 else trained)
    assert IMBALANCE_RATIO not in facts  # only what was asked for


def test_the_client_app_names_no_objective_module():
    from pathlib import Path

    import fedmm.clients.app as client_app

    source = Path(client_app.__file__).read_text()
    assert "fedmm.objectives." not in source and "prototype_imbalance_ratio" not in source


def test_an_unknown_fact_is_a_client_error_naming_it():
    with pytest.raises(ValueError, match="unknown client fact 'no-such-fact'"):
        CLIENT_FACTS.get("no-such-fact")


def test_config_records_are_never_shared_between_messages():
    request = Request("x", 1, ("a",), proximal_mu=0.0)
    one = request.to_message(1, MessageType.TRAIN, ArrayRecord(), ("a",))
    two = request.to_message(2, MessageType.TRAIN, ArrayRecord(), ("a",))
    assert one.content[CONFIG] is not two.content[CONFIG] and isinstance(one.content[CONFIG], ConfigRecord)
