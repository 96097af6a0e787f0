"""CMSFed's client objective, global prototypes, rho_k, and the strategy's update pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict
from torch.nn import functional as F

from fedmm.config import load_config
from fedmm.data.base import ModalitySpec
from fedmm.facts import IMBALANCE_RATIO
from fedmm.models.net import ModelConfig, MultimodalNet
from fedmm.objectives import RoundContext, build_objective
from fedmm.objectives.cmsfed import global_present_key, global_proto_key, proto_count_key, proto_key
from fedmm.objectives.pmr import prototype_accuracies, prototype_imbalance_ratio
from fedmm.protocol import (
    ARRAYS,
    CONFIG,
    FACTS,
    IMBALANCE_ORDER,
    LOCAL_EPOCHS,
    METRICS,
    MODALITIES,
    NUM_EXAMPLES,
    SERVER_ROUND,
    TRAIN_LOSS,
)
from fedmm.records import to_record
from fedmm.server.loop import train_messages
from fedmm.strategies import ModalityAwareFedAvg
from fedmm.strategies.selection import build_policy

pytestmark = pytest.mark.usefixtures("flower_identity")


def identity_model(modalities: tuple[str, ...] = ("a", "v")) -> MultimodalNet:
    """2-d modalities (default two) whose encoders are the identity (features = inputs)."""
    model = MultimodalNet(
        [ModalitySpec(m, (2,), "vector") for m in modalities],
        2,
        ModelConfig(embed_dim=2, encoders=dict.fromkeys(modalities, "mlp")),
    )
    for m in modalities:
        model.encoders[m] = torch.nn.Identity()
    return model


# -- the ME loss ----------------------------------------------------------------------------------------
def test_me_loss_pulls_the_weak_modality_toward_the_global_prototypes():
    objective = build_objective("cmsfed", {"alpha": 2.0})
    model = identity_model()
    batch = {
        "a": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        "v": torch.tensor([[0.2, 0.1], [0.1, 0.2]]),
        "y": torch.tensor([0, 1]),
    }
    centers = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # global prototypes: class c at unit vector c
    extras = {
        global_proto_key("a"): centers,
        global_present_key("a"): np.ones(2, np.int8),
        global_proto_key("v"): centers,
        global_present_key("v"): np.ones(2, np.int8),
    }
    objective.begin_round(
        model, batch, RoundContext(server_round=3, num_rounds=5, modalities=["a", "v"], extras=extras)
    )
    assert torch.equal(objective.prototypes["v"].centers, torch.from_numpy(centers))  # global, not local
    s_v = -torch.cdist(batch["v"], torch.from_numpy(centers))
    expected = F.cross_entropy(model(batch), batch["y"]) + 2.0 * F.cross_entropy(s_v, batch["y"])
    assert objective.loss(model, batch).item() == pytest.approx(expected.item(), rel=1e-5)  # a dominates: v term only
    assert objective.last_scores["a"] > objective.last_scores["v"]


def test_me_loss_of_three_modalities_pulls_the_weakest_only():
    objective = build_objective("cmsfed", {"alpha": 2.0})
    model = identity_model(("a", "v", "t"))
    centers = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    extras = {}
    for m in ("a", "v", "t"):
        extras.update({global_proto_key(m): centers, global_present_key(m): np.ones(2, np.int8)})
    y = torch.tensor([0, 1])
    # distances to the class prototypes: a at its own prototype, v halfway, t at the other class's
    a, v, t = torch.eye(2), torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    ctx = RoundContext(server_round=3, num_rounds=5, modalities=["a", "v", "t"], extras=extras)
    for batch, weak in (
        ({"a": a, "v": v, "t": t, "y": y}, ["t"]),
        ({"a": a, "v": t, "t": t.clone(), "y": y}, ["v", "t"]),
    ):  # v, t tied at the minimum
        objective.begin_round(model, batch, ctx)
        # summed target softmax of s = -distance: a 2 sigmoid(sqrt 2) = 1.61, v 1 (equidistant),
        # t 2 sigmoid(-sqrt 2) = 0.39
        conf = {"a": 2 * sigmoid(2**0.5), "v": 1.0, "t": 2 * sigmoid(-(2**0.5))}
        s = {m: -torch.cdist(batch[m], torch.from_numpy(centers)) for m in weak}
        expected = F.cross_entropy(model(batch), y) + sum(2.0 * F.cross_entropy(s[m], y) for m in weak)
        assert objective.loss(model, batch).item() == pytest.approx(expected.item(), rel=1e-6)
        assert objective.last_scores["a"] == pytest.approx(conf["a"], rel=1e-6)
        assert objective.last_scores["t"] == pytest.approx(conf["t"], rel=1e-6)
        if weak == ["t"]:
            assert objective.last_scores["v"] == pytest.approx(conf["v"], rel=1e-6)


def sigmoid(x: float) -> float:
    return 1 / (1 + np.exp(-x))


def test_update_pass_without_global_prototypes_uses_local_ones():
    objective = build_objective("cmsfed")
    model = identity_model()
    data = {
        "a": torch.tensor([[2.0, 0.0], [0.0, 4.0]]),
        "v": torch.tensor([[1.0, 1.0], [3.0, 3.0]]),
        "y": torch.tensor([0, 1]),
    }
    objective.begin_round(model, data, RoundContext(server_round=0, num_rounds=5, modalities=["a", "v"]))
    assert torch.equal(objective.prototypes["a"].centers, data["a"])  # one sample per class: the samples


# -- server half: global prototypes ------------------------------------------------------------------------
def test_global_prototypes_are_class_count_weighted_and_keep_unreported_classes():
    objective = build_objective("cmsfed")

    def facts(m, sums, counts):
        return {proto_key(m): list(np.ravel(sums)), proto_count_key(m): list(counts)}

    # client 1: class 0 mean (1, 1) over 3 samples; client 2: class 0 mean (5, 5) over 1, class 1 mean (2, 0)
    c1 = facts("a", [[3.0, 3.0], [0.0, 0.0]], [3, 0])
    c2 = {**facts("a", [[5.0, 5.0], [4.0, 0.0]], [1, 2]), **facts("v", [[1.0, 1.0], [0.0, 0.0]], [1, 0])}
    objective.server_observe(0, [(3, c1), (3, c2)])
    extras = objective.server_extras(1)
    np.testing.assert_allclose(extras[global_proto_key("a")], [[2.0, 2.0], [2.0, 0.0]])  # (3*1 + 1*5) / 4
    np.testing.assert_array_equal(extras[global_present_key("a")], [1, 1])
    np.testing.assert_array_equal(extras[global_present_key("v")], [1, 0])  # only client 2 holds v
    objective.server_observe(1, [(2, facts("a", [[0.0, 0.0], [6.0, 6.0]], [0, 2]))])
    np.testing.assert_allclose(objective.server_extras(2)[global_proto_key("a")], [[2.0, 2.0], [3.0, 3.0]])


# -- rho_k --------------------------------------------------------------------------------------------------
def test_prototype_imbalance_ratio_by_hand():
    model = identity_model()
    # a separates the classes; v puts one sample of class 1 nearer to the class-0 mean
    data = {
        "a": torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]]),
        "v": torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.4, 0.0], [9.0, 0.0]]),
        "y": torch.tensor([0, 0, 1, 1]),
    }
    acc = prototype_accuracies(model, data, ["a", "v"])
    assert acc == {"a": 1.0, "v": 0.75}  # v's class means 0.5 and 4.7: 0.4 goes to class 0
    assert prototype_imbalance_ratio(model, data, ("a", "v")) == pytest.approx(1.0 / 0.75)
    assert prototype_imbalance_ratio(model, {"a": data["a"], "y": data["y"]}, ("a", "v")) == 1.0  # unimodal


def test_prototype_imbalance_ratio_of_three_modalities_by_hand():
    model = identity_model(("a", "v", "t"))
    data = {
        "a": torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]]),
        "v": torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.4, 0.0], [9.0, 0.0]]),
        "t": torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]),
        "y": torch.tensor([0, 0, 1, 1]),
    }
    # t's class means coincide at (0.5, 0): every sample goes to class 0 (the first of the tie)
    assert prototype_accuracies(model, data, ["a", "v", "t"]) == {"a": 1.0, "v": 0.75, "t": 0.5}
    # rho = Acc_pivot / the weakest other's
    assert prototype_imbalance_ratio(model, data, ("a", "v", "t")) == pytest.approx(1.0 / 0.5)
    assert prototype_imbalance_ratio(model, data, ("v", "a", "t")) == pytest.approx(0.75 / 0.5)
    assert prototype_imbalance_ratio(model, data, ("t", "a", "v")) == pytest.approx(0.5 / 0.75)
    # a client without t compares the pivot with what it holds; without the pivot: 1.0
    held_av = {m: data[m] for m in ("a", "v", "y")}
    assert prototype_imbalance_ratio(model, held_av, ("a", "v", "t")) == pytest.approx(1.0 / 0.75)
    assert prototype_imbalance_ratio(model, held_av, ("t", "a", "v")) == 1.0


@pytest.mark.parametrize(
    "v_rows",
    [
        [[0.0, 0.0], [1.0, 0.0], [0.4, 0.0], [9.0, 0.0]],  # Acc_v 0.75 = Acc_a
        [[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0]],  # 1.0 > Acc_a
        [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]],
    ],
)  # 0.5 < Acc_a
def test_two_modality_ratio_reduces_exactly_to_acc_first_over_acc_second(v_rows):
    model = identity_model()
    data = {
        "a": torch.tensor([[0.0, 0.0], [3.0, 0.0], [2.0, 0.0], [9.0, 0.0]]),
        "v": torch.tensor(v_rows),
        "y": torch.tensor([0, 0, 1, 1]),
    }
    acc = prototype_accuracies(model, data, ["a", "v"])
    for first, second in (("a", "v"), ("v", "a")):  # the two-modality rule, as it was written
        assert prototype_imbalance_ratio(model, data, (first, second)) == acc[first] / max(acc[second], 1e-3)


# -- strategy: update pass and imbalance order -----------------------------------------------------------
class Grid:
    """Answers train messages like a client would: a fixed update and the requested facts."""

    def __init__(self, nodes):
        self.nodes, self.sent = nodes, []

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, timeout=None):
        out = []
        for msg in messages:
            self.sent.append(msg)
            arrays = {
                k: v.numpy() - 0.1 * msg.metadata.dst_node_id
                for k, v in msg.content[ARRAYS].items()
                if k.split(".")[1] in str(msg.content[CONFIG][MODALITIES]).split(",") or k.startswith("fusion")
            }
            facts = MetricRecord({IMBALANCE_RATIO: 3.0 if msg.metadata.dst_node_id == 2 else 1.0})
            out.append(
                Message(
                    RecordDict(
                        {
                            ARRAYS: to_record(arrays),
                            METRICS: MetricRecord({NUM_EXAMPLES: 10, TRAIN_LOSS: 0.5}),
                            FACTS: facts,
                        }
                    ),
                    reply_to=msg,
                )
            )
        return out


def test_update_pass_runs_once_before_the_first_selection_and_feeds_rho():
    global_state = {
        "encoders.a.w": np.zeros(3, np.float32),
        "encoders.v.w": np.zeros(3, np.float32),
        "fusion.linear.weight": np.zeros(2, np.float32),
    }
    observed = []
    s = ModalityAwareFedAvg(
        policy=build_policy("cmsfed", {"delta": 1.5, "stochastic": False}, seed=0),
        clients_per_round=2,
        min_available_nodes=3,
        run_config="x",
        observe_fn=lambda r, facts: observed.append((r, len(facts))),
        parameter_keys=list(global_state),
    )
    for node in (1, 2, 3):
        s.roster.register(node, node - 1, ("a", "v"), 10)
    s.roster.waited_for_nodes = True
    grid = Grid([1, 2, 3])
    msgs = list(train_messages(s, 1, to_record(global_state), grid, 600))
    probes = grid.sent
    assert len(probes) == 3 and all(int(m.content[CONFIG][SERVER_ROUND]) == 0 for m in probes)
    assert all(int(m.content[CONFIG][LOCAL_EPOCHS]) == 1 and m.content[CONFIG][MODALITIES] == "a,v" for m in probes)
    assert observed == [(0, 3)]  # the objective's server half saw every client (global prototypes)
    assert s.roster.clients[1].imbalance_ratio == 3.0 and s.roster.clients[0].imbalance_ratio == 1.0
    assert [r["round"] for r in s.client_rows] == [0, 0, 0]
    # Every client now has a vector (node n's update is 0.1 n everywhere), so the greedy selects: its
    # first pick is the central client 1, whose rho = 3 > delta = 1.5 sends it to the weak modality
    # (rho_bar = 5/3 > 1: v is weak); the second pick trains both.
    assert len(msgs) == 2 and all(m.content[CONFIG][IMBALANCE_ORDER] == "a,v" for m in msgs)
    picked = {s.roster.client_of[m.metadata.dst_node_id]: m for m in msgs}
    assert picked[1].content[CONFIG][MODALITIES] == "v"
    assert "encoders.a.w" in picked[1].content[ARRAYS].keys()  # still sent, to measure rho with both
    assert [m.content[CONFIG][MODALITIES] for c, m in picked.items() if c != 1] == ["a,v"]
    grid.sent = []
    list(train_messages(s, 2, to_record(global_state), grid, 600))
    assert all(int(m.content[CONFIG][SERVER_ROUND]) == 2 for m in grid.sent)  # no second update pass


def test_cmsfed_config_defaults():
    run = load_config(None, ["strategy=cmsfed"])
    assert (run.objective, run.selection) == ("cmsfed", "cmsfed")
    assert load_config(None, ["strategy=cmsfed", "selection=random"]).selection == "random"  # an ablation


def test_cmsfed_on_one_modality_or_foreign_names_fails_before_any_file(tmp_path):
    from fedmm.server.plan import prepare

    base = ["dataset=synthetic", "partition=iid", "num-clients=3", "strategy=cmsfed"]
    with pytest.raises(ValueError, match="needs 2 or more modalities"):
        prepare(load_config(None, [*base, "dataset.num-modalities=1"]), tmp_path / "a")
    with pytest.raises(ValueError, match="was given modalities"):
        prepare(load_config(None, [*base, "selection.modalities=audio,visual"]), tmp_path / "b")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("num_modalities", [3, 4])
def test_one_round_of_cmsfed_on_synthetic(num_modalities):
    """``strategy = cmsfed`` with its own selection on synthetic with 3 and 4 modalities: the update
    pass and round 1 run, every client reports rho_k, global prototypes exist for every modality,
    and the round's weak and dominant modalities split the pivot order."""
    from inprocess import run_in_process

    run = load_config(
        None,
        [
            "dataset=synthetic",
            f"dataset.num-modalities={num_modalities}",
            "strategy=cmsfed",
            "num-server-rounds=1",
            "num-clients=6",
            "clients-per-round=3",
            "partition=iid",
            "local-epochs=1",
            "device=cpu",
            "client-num-cpus=1",
        ],
    )
    seen = {}
    rows = run_in_process(
        run,
        on_round=lambda plan, row: seen.update(
            history=list(plan.policy.history), centers=sorted(plan.objective.global_centers)
        ),
    )
    mods = [f"m{i}" for i in range(num_modalities)]
    assert rows[-1]["round"] == 1 and rows[-1]["clients-ok"] == 3
    assert seen["centers"] == mods
    last = seen["history"][-1]
    assert last["round"] == 1 and len(last["modes"]) == 3
    sides = {last["weak"], last["dominant"]}
    assert sides == {"m0", ",".join(mods[1:])}  # the pivot m0 on one side, every other on the other


# -- the ClientApp: rho_k and the prototypes of a modality left out of training ---------------------------
def cmsfed_run():
    return load_config(
        None,
        [
            "dataset=synthetic",
            "dataset.num-train=40",
            "dataset.num-test=8",
            "partition=iid",
            "num-clients=2",
            "allocation=all",
            "strategy=cmsfed",
            "local-epochs=2",
            "batch-size=8",
            "lr=0.2",
            "device=cpu",
            "client-num-cpus=1",
        ],
    )


def client_train(run, server_round: int, modalities: str):
    """The ClientApp's reply to a CMSFed train message: the groups of both held modalities, training
    ``modalities``; also the node's data and the model the node received."""
    from flwr.app import MessageType
    from test_node_config import context

    from fedmm.clients.app import Node, app
    from fedmm.protocol import Request
    from fedmm.workspace import model_of, objective_of

    received = model_of(run, objective_of(run))
    with torch.no_grad():  # a received model that differs from the node's own initialisation
        for p in received.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = received.state_dict()
    request = Request(
        run.to_toml(),
        server_round,
        tuple(modalities.split(",")),
        proximal_mu=0.0,
        client_facts=(IMBALANCE_RATIO,),
        order=("m0", "m1"),
    )
    msg = request.to_message(7, MessageType.TRAIN, to_record(state), ("m0", "m1"))
    node_config = {"partition-id": 0, "num-partitions": 2}
    reply = app(msg, context(**node_config))
    return dict(reply.content[FACTS]), Node.from_message(msg, context(**node_config)).data, received


def test_client_in_weak_mode_reports_rho_and_no_prototypes():
    facts, data, received = client_train(cmsfed_run(), 3, "m1")
    assert facts[IMBALANCE_RATIO] > 0
    assert not [k for k in facts if k.startswith("proto")]  # the server asks the global model's instead


def client_global_model_facts(run, server_round: int):
    """The ClientApp's reply to the strategy's request for facts of the aggregated model (an
    ``evaluate`` message with the global-model-facts key); also the node's data and that model."""
    from flwr.app import MessageType
    from test_node_config import context

    from fedmm.clients.app import Node, app
    from fedmm.protocol import Request
    from fedmm.workspace import model_of, objective_of

    received = model_of(run, objective_of(run))
    with torch.no_grad():
        for p in received.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = received.state_dict()
    request = Request(run.to_toml(), server_round, ("m0", "m1"), global_model_facts=True)
    msg = request.to_message(7, MessageType.EVALUATE, to_record(state), ("m0", "m1"))
    node_config = {"partition-id": 0, "num-partitions": 2}
    reply = app(msg, context(**node_config))
    return reply, Node.from_message(msg, context(**node_config)).data, received


def test_client_reports_the_prototypes_of_the_received_global_model_for_every_held_modality():
    reply, data, received = client_global_model_facts(cmsfed_run(), 3)
    facts = dict(reply.content[FACTS])
    assert int(reply.content[METRICS][NUM_EXAMPLES]) == data["y"].shape[0]
    received.eval()
    with torch.no_grad():
        for m in ("m0", "m1"):  # by hand: per class the sum of the received encoder's features
            u = received.encoders[m](data[m]).numpy()
            y = data["y"].numpy()
            expected = np.stack([u[y == c].sum(axis=0) for c in range(received.num_classes)])
            np.testing.assert_allclose(facts[proto_key(m)], expected.ravel(), rtol=1e-5, atol=1e-5)
            assert facts[proto_count_key(m)] == [float((y == c).sum()) for c in range(received.num_classes)]


def test_update_pass_measures_rho_with_the_received_model():
    facts, data, received = client_train(cmsfed_run(), 0, "m0,m1")  # before training (3.5 step 1)
    assert facts[IMBALANCE_RATIO] == pytest.approx(prototype_imbalance_ratio(received, data, ("m0", "m1")))


def test_client_in_the_update_pass_reports_the_received_models_prototypes():
    from fedmm.objectives.pmr import class_feature_sums

    facts, data, received = client_train(cmsfed_run(), 0, "m0,m1")  # 3.5 step 1, 3.10
    sums, counts = class_feature_sums(received.eval(), data, ["m0", "m1"])
    for m in ("m0", "m1"):
        np.testing.assert_allclose(facts[proto_key(m)], sums[m].flatten().numpy(), rtol=1e-5, atol=1e-6)
        assert facts[proto_count_key(m)] == counts.tolist()


def test_the_strategy_gets_the_models_parameter_names_not_its_buffers():
    from fedmm.server.plan import build_strategy, prepare

    plan = prepare(load_config(None, ["dataset=synthetic", "partition=iid", "num-clients=3", "strategy=cmsfed"]))
    keys = build_strategy(plan).parameter_keys
    buffers = {name for name, _ in plan.model.named_buffers()}
    assert any(name.endswith("running_mean") and name.startswith("encoders.") for name in buffers)
    assert keys == {name for name, _ in plan.model.named_parameters()} and not keys & buffers


# -- the prototypes that seed the global ones: the received model's in the update pass ----------------------
def linear_model() -> MultimodalNet:
    """Two 2-d modalities whose encoders are linear maps initialised to the identity."""
    torch.manual_seed(0)
    model = MultimodalNet(
        [ModalitySpec("a", (2,), "vector"), ModalitySpec("v", (2,), "vector")],
        2,
        ModelConfig(embed_dim=2, encoders={"a": "mlp", "v": "mlp"}),
    )
    with torch.no_grad():
        for m in ("a", "v"):
            model.encoders[m] = torch.nn.Linear(2, 2)
            model.encoders[m].weight.copy_(torch.eye(2))
            model.encoders[m].bias.zero_()
    return model


LINEAR_DATA = {
    "a": torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]]),
    "v": torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 2.0]]),
    "y": torch.tensor([0, 0, 1]),
}


def test_update_pass_reports_the_prototypes_of_the_received_model():
    from fedmm.training import TrainConfig, train_local

    model = linear_model()
    ctx = RoundContext(server_round=0, num_rounds=5, modalities=["a", "v"])
    result = train_local(
        model, LINEAR_DATA, build_objective("cmsfed"), ctx, TrainConfig(epochs=2, batch_size=3, lr=0.5)
    )
    assert not torch.allclose(model.encoders["a"].weight, torch.eye(2))  # training moved the encoders
    # identity encoders as received: the class sums of the inputs (class 0: rows 1 and 2; class 1: row 3)
    assert result.facts[proto_key("a")] == [4.0, 2.0, 0.0, 5.0]
    assert result.facts[proto_key("v")] == [1.0, 2.0, 2.0, 2.0]
    assert result.facts[proto_count_key("a")] == [2.0, 1.0] == result.facts[proto_count_key("v")]


def test_a_round_reports_no_prototypes_of_the_trained_model():
    from fedmm.training import TrainConfig, train_local

    model = linear_model()
    centers = np.array([[2.0, 1.0], [0.0, 5.0]], np.float32)
    extras = {global_proto_key(m): centers for m in ("a", "v")} | {
        global_present_key(m): np.ones(2, np.int8) for m in ("a", "v")
    }
    ctx = RoundContext(server_round=1, num_rounds=5, modalities=["a", "v"], extras=extras)
    result = train_local(
        model, LINEAR_DATA, build_objective("cmsfed"), ctx, TrainConfig(epochs=2, batch_size=3, lr=0.5)
    )
    assert result.facts == {}


def test_strategy_asks_the_rounds_accepted_clients_for_facts_of_the_aggregated_model():
    from test_strategy import FakeGrid

    from fedmm.protocol import GLOBAL_MODEL_FACTS_KEY

    seen = []
    s = ModalityAwareFedAvg(
        policy=build_policy("all", seed=0),
        clients_per_round=3,
        min_available_nodes=3,
        run_config="x",
        observe_fn=lambda r, f: seen.append((r, f)),
    )
    for node, mods in {1: ("a", "v"), 2: ("a",), 3: ("v",)}.items():
        s.roster.register(node, node - 1, mods, 20)
    s.roster.connected, s.last_accepted = {1, 2, 3}, [0, 2]  # client 1 (node 2) failed this round
    arrays = to_record(
        {
            "encoders.a.w": np.ones(2, np.float32),
            "encoders.v.w": np.zeros(3, np.float32),
            "fusion.linear.weight": np.ones(1, np.float32),
        }
    )

    class Grid(FakeGrid):
        def send_and_receive(self, messages, timeout=None):
            self.sent = list(messages)
            return [
                Message(
                    RecordDict(
                        {
                            METRICS: MetricRecord({NUM_EXAMPLES: 4 * m.metadata.dst_node_id}),
                            FACTS: MetricRecord({"proto-count/a": [1.0, 2.0]}),
                        }
                    ),
                    reply_to=m,
                )
                for m in self.sent
            ]

    grid = Grid({1: 0, 2: 0, 3: 0})
    s.aggregate_global_model_facts(5, grid.send_and_receive(s.configure_global_model_facts(5, arrays)))
    assert [m.metadata.dst_node_id for m in grid.sent] == [1, 3]
    assert all(m.metadata.message_type == "evaluate" and GLOBAL_MODEL_FACTS_KEY in m.content[CONFIG] for m in grid.sent)
    assert sorted(grid.sent[1].content[ARRAYS].keys()) == ["encoders.v.w", "fusion.linear.weight"]  # its groups
    assert seen == [(5, [(4, {"proto-count/a": [1.0, 2.0]}), (12, {"proto-count/a": [1.0, 2.0]})])]


def test_cmsfed_training_stays_stable_with_its_defaults(flower_identity):
    """The federation on which trained-model prototypes diverged (loss 3 -> 660 in 20 rounds):
    with the aggregated model's prototypes the training loss stays below its round-1 value x 3."""
    from inprocess import run_in_process

    run = load_config(
        None, ["dataset=synthetic", "strategy=cmsfed", "partition=dirichlet", "num-clients=20", "device=cpu"]
    )
    loss = [r["train/loss"] for r in run_in_process(run) if r["round"] >= 1]
    assert max(loss) < 3 * loss[0], loss


def test_the_objective_and_the_strategy_agree_on_the_update_pass_round():
    from fedmm.objectives import cmsfed
    from fedmm.strategies.selection import base

    assert cmsfed.UPDATE_PASS_ROUND == base.UPDATE_PASS_ROUND
