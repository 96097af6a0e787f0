"""Sustained Boosting + Adaptive Classifier Assignment (``boost``): loss, server activation, freezing."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from fedmm.data.base import ModalitySpec
from fedmm.groups import parameter_group
from fedmm.models.net import ModelConfig, MultimodalNet
from fedmm.objectives.base import RoundContext, Schedule
from fedmm.objectives.boost import ACTIVE_KEY, BoostOutputs, SustainedBoosting, boosting_loss
from fedmm.objectives.registry import build_objective
from fedmm.training import TrainConfig, train_local

P = SustainedBoosting.Params


def make_model(obj: SustainedBoosting, names=("a", "v"), embed_dim: int = 4, num_classes: int = 3) -> MultimodalNet:
    torch.manual_seed(0)
    specs = [ModalitySpec(m, (5,), "vector") for m in names]
    model = MultimodalNet(specs, num_classes, ModelConfig(embed_dim=embed_dim, encoders=dict.fromkeys(names, "mlp")))
    obj.extend_model(model)
    return model


def synthetic(names: list[str], n: int = 24, num_classes: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, num_classes, (n,), generator=g)
    data = {m: torch.randn(n, 5, generator=g) + y[:, None].float() for m in names}
    data["y"] = y
    return data


# -- loss ----------------------------------------------------------------------------------------
def test_residual_loss_matches_hand_computation() -> None:
    # Two samples, K = 2. Sample 0: h1 = [2, 0], h2 = [0, 1], y = 0. Sample 1: h1 = [1, 0], h2 = [0, 0.5], y = 1.
    h1 = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    h2 = torch.tensor([[0.0, 1.0], [0.0, 0.5]])
    y = torch.tensor([0, 1])
    lam = 0.5
    out = BoostOutputs(total=h1 + h2, previous=h1, newest=h2)
    # CE(Z2): Z2 = [2, 1] (y 0), [1, 0.5] (y 1)
    ce_all = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(0.5))) / 2
    # CE(Z1): [2, 0] (y 0), [1, 0] (y 1)
    ce_pre = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2
    # residual: -(1 - lam * p_prev_y) * log softmax(h2)_y
    p0 = 1 / (1 + math.exp(-2))  # softmax([2, 0])_0
    p1 = 1 / (1 + math.exp(1))  # softmax([1, 0])_1
    res = ((1 - lam * p0) * math.log(1 + math.exp(1)) + (1 - lam * p1) * math.log(1 + math.exp(-0.5))) / 2
    expected = ce_all + ce_pre + res
    assert boosting_loss(out, y, lam) == pytest.approx(expected, rel=1e-6)
    # one classifier: plain CE of Z1
    single = BoostOutputs(total=h1, previous=None, newest=h1)
    assert boosting_loss(single, y, lam) == pytest.approx(ce_pre, rel=1e-6)


def test_residual_target_is_detached() -> None:
    prev = torch.tensor([[2.0, 0.0]], requires_grad=True)
    new = torch.tensor([[0.0, 1.0]], requires_grad=True)
    out = BoostOutputs(total=prev + new, previous=prev, newest=new)
    # Only the residual term reaches `new` and only CE(Z1) + CE(Z2) reach `prev`; the detached
    # target adds nothing to prev's gradient.
    boosting_loss(out, torch.tensor([0]), 0.5).backward()
    p = torch.softmax(prev.detach(), 1)
    q = torch.softmax((prev + new).detach(), 1)
    onehot = torch.tensor([[1.0, 0.0]])
    assert torch.allclose(prev.grad, (p - onehot) + (q - onehot), atol=1e-6)


def test_outputs_sum_active_classifiers_through_the_shared_layer() -> None:
    obj = SustainedBoosting(P(hidden_dim=2, n_max=3))
    model = make_model(obj, embed_dim=2, num_classes=2)
    slots = model.heads["a"].slots
    with torch.no_grad():
        model.fusion.boost_out.weight.copy_(torch.eye(2))
        model.fusion.boost_out.bias.copy_(torch.tensor([0.5, 0.0]))
        slots[0].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
        slots[0].bias.zero_()
        slots[1].weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        slots[1].bias.copy_(torch.tensor([0.0, -3.0]))  # ReLU clips the hidden unit to 0
    u = torch.tensor([[1.0, 0.0]])
    out = obj.outputs(model, "a", u, n=2)
    # h1 = [2, 0] + b, h2 = [0, relu(1 - 3)] + b = b; the output bias is counted twice.
    assert torch.allclose(out.previous, torch.tensor([[2.5, 0.0]]))
    assert torch.allclose(out.newest, torch.tensor([[0.5, 0.0]]))
    assert torch.allclose(out.total, torch.tensor([[3.0, 0.0]]))


# -- model shape and groups ----------------------------------------------------------------------
def test_slots_are_preallocated_in_the_right_groups() -> None:
    obj = SustainedBoosting(P(n_max=4))
    model = make_model(obj, names=("a", "v", "w"))
    groups = {parameter_group(n) for n, _ in model.named_parameters()}
    assert groups == {"encoders.a", "encoders.v", "encoders.w", "heads.a", "heads.v", "heads.w", "fusion"}
    assert len(model.heads["v"].slots) == 4
    assert "fusion.boost_out.weight" in dict(model.named_parameters())
    assert obj.active == {"a": 1, "v": 1, "w": 1}


# -- server-side activation ----------------------------------------------------------------------
def facts(**conf_count: tuple[float, float]) -> dict[str, float]:
    out = {}
    for m, (s, n) in conf_count.items():
        out[f"boost-conf-{m}"] = s
        out[f"boost-count-{m}"] = n
    return out


def test_weaker_modality_gets_the_slot() -> None:
    # A decision taken after round r takes effect from round r + 1: the counts of round r (its
    # training, its evaluations, obj.active on the server) stay as they were.
    obj = SustainedBoosting(P(assign_every=1))
    make_model(obj)
    obj.server_observe(1, [(10, facts(a=(8.0, 10), v=(5.0, 10)))])
    assert obj.active == obj.active_in_round(1) == {"a": 1, "v": 1}
    assert obj.active_in_round(2) == {"a": 1, "v": 2}
    assert obj.server_extras(1) == {ACTIVE_KEY: [1, 1]} and obj.server_extras(2) == {ACTIVE_KEY: [1, 2]}
    obj.server_observe(2, [(10, facts(a=(4.0, 10), v=(6.0, 10)))])
    assert obj.active == {"a": 1, "v": 2}
    assert obj.active_in_round(3) == {"a": 2, "v": 2}
    assert obj.decisions == [(1, "v"), (2, "a")]


def test_band_is_respected() -> None:
    obj = SustainedBoosting(P(assign_every=1, sigma=1.0, tau=0.01))
    make_model(obj)
    # ratio 1.005 and 0.995: inside [0.99, 1.01]
    obj.server_observe(1, [(10, facts(a=(5.025, 10), v=(5.0, 10)))])
    obj.server_observe(2, [(10, facts(a=(4.975, 10), v=(5.0, 10)))])
    assert obj.active_in_round(3) == {"a": 1, "v": 1}
    # ratio 1.02: outside
    obj.server_observe(3, [(10, facts(a=(5.1, 10), v=(5.0, 10)))])
    assert obj.active_in_round(4) == {"a": 1, "v": 2}


def test_means_pool_clients_with_different_modalities() -> None:
    obj = SustainedBoosting(P(assign_every=1))
    make_model(obj)
    # a: (9 + 1) / 20 = 0.5, v: 6 / 10 = 0.6 -> a is weaker, although client 0 alone says a is strong
    obj.server_observe(1, [(10, facts(a=(9.0, 10))), (10, facts(a=(1.0, 10), v=(6.0, 10)))])
    assert obj.active_in_round(2) == {"a": 2, "v": 1}


def test_only_one_reported_modality_decides_nothing() -> None:
    obj = SustainedBoosting(P(assign_every=1))
    make_model(obj)
    obj.server_observe(1, [(10, facts(a=(1.0, 10)))])
    assert obj.active_in_round(2) == {"a": 1, "v": 1}


def test_decision_schedule_and_window() -> None:
    obj = SustainedBoosting(P(assign_every=3))
    make_model(obj)
    obj.server_observe(1, [(10, facts(a=(5.0, 10), v=(5.0, 10)))])  # decision: tie
    obj.server_observe(2, [(10, facts(a=(9.0, 10), v=(1.0, 10)))])  # no decision round
    assert obj.active_in_round(3) == {"a": 1, "v": 1}
    # round 3 decides on rounds 2-3 together: a = 10/20, v = 9/20 -> ratio 1.11 -> v
    obj.server_observe(3, [(10, facts(a=(1.0, 10), v=(8.0, 10)))])
    assert obj.active_in_round(4) == {"a": 1, "v": 2}


def test_n_max_caps_activations() -> None:
    obj = SustainedBoosting(P(assign_every=1, n_max=2))
    make_model(obj)
    for r in range(1, 5):
        obj.server_observe(r, [(10, facts(a=(8.0, 10), v=(2.0, 10)))])
    assert obj.active_in_round(5) == {"a": 1, "v": 2}


def test_three_modalities_weakest_gets_the_slot() -> None:
    obj = SustainedBoosting(P(assign_every=1))
    make_model(obj, names=("a", "v", "t"))
    obj.server_observe(1, [(10, facts(a=(8.0, 10), v=(5.0, 10), t=(7.0, 10)))])
    assert obj.active_in_round(2) == {"a": 1, "v": 2, "t": 1}
    # weakest first in canonical order: ratio a / strongest < 0.99 -> a
    obj.server_observe(2, [(10, facts(a=(3.0, 10), v=(6.0, 10), t=(9.0, 10)))])
    assert obj.active_in_round(3) == {"a": 2, "v": 2, "t": 1}


# -- client side ---------------------------------------------------------------------------------
def ctx(modalities: list[str], extras: dict | None = None, server_round: int = 1) -> RoundContext:
    return RoundContext(server_round=server_round, num_rounds=10, modalities=modalities, extras=extras or {})


def test_client_reads_active_counts_from_extras() -> None:
    obj = SustainedBoosting(P(n_max=3))
    model = make_model(obj)
    data = synthetic(["a", "v"])
    obj.begin_round(model, data, ctx(["a", "v"], {ACTIVE_KEY: [2, 3]}))
    assert obj.active == {"a": 2, "v": 3}
    with pytest.raises(ValueError, match="boost-active"):
        obj.begin_round(model, data, ctx(["a", "v"], {ACTIVE_KEY: [2, 4]}))
    with pytest.raises(ValueError, match="boost-active"):
        obj.begin_round(model, data, ctx(["a", "v"], {ACTIVE_KEY: [1]}))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before: dict[str, torch.Tensor], model: nn.Module, prefix: str) -> bool:
    now = dict(model.named_parameters())
    return any(not torch.equal(before[n], now[n].detach()) for n in before if n.startswith(prefix))


def one_step(params: SustainedBoosting.Params, active: list[int]) -> tuple[SustainedBoosting, MultimodalNet, dict]:
    obj = SustainedBoosting(params)
    model = make_model(obj)
    data = synthetic(["a", "v"], n=8)
    obj.begin_round(model, data, ctx(["a", "v"], {ACTIVE_KEY: active}))
    before = snapshot(model)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):  # two steps so that momentum could move a parameter whose gradient vanished
        obj.train_step(model, data, opt)
    return obj, model, before


def test_inactive_slots_get_no_gradient_and_do_not_move() -> None:
    _, model, before = one_step(P(n_max=4, train_added_heads=True), [3, 1])
    assert changed(before, model, "heads.a.slots.2.")
    for prefix in ("heads.a.slots.3.", "heads.v.slots.1.", "heads.v.slots.2.", "heads.v.slots.3.", "fusion.linear."):
        assert not changed(before, model, prefix), prefix
        assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(prefix))
    assert changed(before, model, "heads.v.slots.0.")
    assert changed(before, model, "fusion.boost_out.")


def test_train_added_heads_false_keeps_added_classifiers_at_init() -> None:
    _, model, before = one_step(P(n_max=4, train_added_heads=False), [3, 2])
    assert changed(before, model, "heads.a.slots.0.")
    assert not changed(before, model, "heads.a.slots.1.")
    assert not changed(before, model, "heads.a.slots.2.")
    assert not changed(before, model, "heads.v.slots.1.")
    # frozen classifiers still pass gradients to the encoder and the shared layer
    assert changed(before, model, "encoders.a.")
    assert changed(before, model, "fusion.boost_out.")


def test_freeze_previous_heads_trains_only_the_newest() -> None:
    _, model, before = one_step(P(n_max=4, train_added_heads=True, freeze_previous_heads=True), [3, 1])
    assert not changed(before, model, "heads.a.slots.0.")
    assert not changed(before, model, "heads.a.slots.1.")
    assert changed(before, model, "heads.a.slots.2.")
    assert changed(before, model, "heads.v.slots.0.")  # one classifier: it is the newest


def test_train_step_alternates_unimodal_steps() -> None:
    obj = SustainedBoosting(P(n_max=3))
    model = make_model(obj)
    data = synthetic(["a", "v"], n=8)
    obj.begin_round(model, data, ctx(["a", "v"], {ACTIVE_KEY: [2, 1]}))
    start = copy.deepcopy(model)
    manual = copy.deepcopy(model)
    model.train()
    manual.train()
    sgd = {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.01}
    opt = torch.optim.SGD(model.parameters(), **sgd)
    obj.train_step(model, data, opt)
    obj.train_step(model, data, opt)  # second step: momentum must not move the idle modality
    # by hand: modality a's loss -> step, then v's loss with the updated shared layer -> step
    opt = torch.optim.SGD(manual.parameters(), **sgd)
    for m in ("a", "v", "a", "v"):
        opt.zero_grad(set_to_none=True)
        out = obj.outputs(manual, m, manual.encoders[m](data[m]))
        boosting_loss(out, data["y"], 0.5).backward()
        opt.step()
    for (n, p), q in zip(model.named_parameters(), manual.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), n
    # one joint step on the summed losses moves the shared layer differently
    joint = copy.deepcopy(start)
    joint.train()
    opt = torch.optim.SGD(joint.parameters(), **sgd)
    total = sum(boosting_loss(obj.outputs(joint, m, joint.encoders[m](data[m])), data["y"], 0.5) for m in ("a", "v"))
    total.backward()
    opt.step()
    assert not torch.allclose(joint.fusion.boost_out.weight, model.fusion.boost_out.weight, atol=1e-4)


def test_confidence_facts_sum_target_probability_before_the_step() -> None:
    obj = SustainedBoosting(P())
    model = make_model(obj)
    data = synthetic(["a", "v"], n=8)
    obj.begin_round(model, data, ctx(["a"]))
    model.train()
    with torch.no_grad():
        ref = copy.deepcopy(model)
        z = obj.outputs(ref, "a", ref.encoders["a"](data["a"])).total
        expected = float(z.softmax(1)[torch.arange(8), data["y"]].sum())
    obj.train_step(model, data, torch.optim.SGD(model.parameters(), lr=0.1))
    f = obj.end_round(model, data)
    assert f == pytest.approx({"boost-conf-a": expected, "boost-count-a": 8.0})


def test_predict_weights_present_modalities() -> None:
    obj = SustainedBoosting(P(merge_weights=[1.0, 3.0]))
    model = make_model(obj).eval()
    data = synthetic(["a", "v"], n=6)
    with torch.no_grad():
        za = obj.outputs(model, "a", model.encoders["a"](data["a"])).total
        zv = obj.outputs(model, "v", model.encoders["v"](data["v"])).total
        assert torch.allclose(obj.predict(model, data), 0.25 * za + 0.75 * zv, atol=1e-6)
        assert torch.allclose(obj.predict(model, {"v": data["v"], "y": data["y"]}), zv, atol=1e-6)
    equal = SustainedBoosting(P())
    m2 = make_model(equal).eval()
    with torch.no_grad():
        za = equal.outputs(m2, "a", m2.encoders["a"](data["a"])).total
        zv = equal.outputs(m2, "v", m2.encoders["v"](data["v"])).total
        assert torch.allclose(equal.predict(m2, data), 0.5 * (za + zv), atol=1e-6)


# -- params ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"lam": -0.1}, "lam"),
        ({"lam": 1.5}, "lam"),
        ({"n_max": 0}, "n-max"),
        ({"tau": -0.01}, "tau"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"lam": float("nan")}, "lam"),
        ({"assign_every": -1}, "assign-every"),
        ({"assign_interval": 0.0}, "assign-interval"),
        ({"assign_interval": 1.5}, "assign-interval"),
        ({"assign_every": 2, "assign_interval": 0.2}, "not both"),
        ({"hidden_dim": -1}, "hidden-dim"),
        ({"merge_weights": [0.5, -0.5]}, "merge-weights"),
        ({"freeze_previous_heads": True}, "train-added-heads"),
    ],
)
def test_bad_params(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SustainedBoosting(P(**params))


def test_registry_builds_and_validates() -> None:
    obj = build_objective("boost", {})
    assert isinstance(obj, SustainedBoosting)
    assert build_objective("boost", {"lambda": 0.2, "merge-weights": "0.4, 0.6"}).params.lam == 0.2
    with pytest.raises(ValueError, match="lam"):
        build_objective("boost", {"lambda": -1.0})
    with pytest.raises(ValueError, match="n-max"):
        build_objective("boost", {"n-max": 0})


def test_merge_weights_length_must_match_modalities() -> None:
    with pytest.raises(ValueError, match="merge-weights"):
        make_model(SustainedBoosting(P(merge_weights=[1.0, 1.0, 1.0])))


# -- one local epoch ---------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [["a", "v"], ["a", "v", "t"]])
@pytest.mark.parametrize("single", [False, True])
def test_one_local_epoch(names: list[str], single: bool) -> None:
    obj = build_objective("boost", {"n-max": 3})
    model = make_model(obj, names=tuple(names))
    held = names[:1] if single else names
    data = synthetic(held)
    active = [2] + [1] * (len(names) - 1)
    result = train_local(
        model, data, obj, ctx(held, {ACTIVE_KEY: active}), TrainConfig(epochs=1, batch_size=8, lr=0.05)
    )
    assert math.isfinite(result.loss)
    reported = {k for k in result.facts if k.startswith("boost-count-")}
    assert reported == {f"boost-count-{m}" for m in held}
    assert result.facts[f"boost-count-{names[0]}"] == 24.0


def test_the_update_pass_round_counts_but_decides_nothing() -> None:
    obj = SustainedBoosting(P(assign_every=2))
    make_model(obj)
    obj.server_observe(0, [(10, facts(a=(9.0, 10), v=(1.0, 10)))])  # round 0: the update pass of divfl/cmsfed
    assert obj.active_in_round(1) == {"a": 1, "v": 1}
    obj.server_observe(1, [(10, facts(a=(1.0, 10), v=(1.5, 10)))])  # a alone would get the slot ...
    assert obj.active_in_round(2) == {"a": 1, "v": 2}  # ... but the update pass's report counts in the window


# -- schedule: decisions a fraction of training apart ----------------------------------------------
def decision_rounds(num_rounds: int, local_epochs: int, **params: object) -> list[int]:
    obj = SustainedBoosting(P(**params))
    obj.schedule = Schedule(num_rounds, local_epochs)
    return [r for r in range(num_rounds + 1) if obj.decides(r)]


def reference_decision_epochs(epochs: int) -> list[int]:
    """``train_CREMAD.py``: after epoch ``e`` when ``(e + 1) % check == 0 or e == 0``."""
    check = int(epochs / 10) if epochs > 10 else 1
    return [e for e in range(epochs) if (e + 1) % check == 0 or e == 0]


def test_assignment_decisions_are_a_fraction_of_training_apart() -> None:
    # T = 40 local epochs in both runs: an interval of 4 epochs; the decision after epoch 0 is round 1's.
    a = decision_rounds(20, 2)
    b = decision_rounds(10, 4)
    assert a == [1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert b == list(range(1, 11))
    # at the same fractions of training (after the epoch-0 decision, which the 4-epoch round 1 absorbs)
    assert [r * 2 / 40 for r in a[1:]] == [r * 4 / 40 for r in b] == [k / 10 for k in range(1, 11)]
    # one epoch per round: exactly the reference's decision epochs (200 epochs: after 0, 19, 39, ..., 199)
    assert [r - 1 for r in decision_rounds(200, 1)] == reference_decision_epochs(200)
    assert [r - 1 for r in decision_rounds(7, 1)] == reference_decision_epochs(7) == list(range(7))
    # in general: the rounds that hold one of the reference's decision epochs (15 x 2: an interval of 3 epochs)
    assert decision_rounds(15, 2) == [1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15]
    for rounds, epochs in ((15, 2), (20, 2), (10, 4), (7, 3), (30, 1)):
        held = sorted({e // epochs + 1 for e in reference_decision_epochs(rounds * epochs)})
        assert decision_rounds(rounds, epochs) == held, (rounds, epochs)
    # explicit rounds override the fraction
    assert decision_rounds(10, 4, assign_every=3) == [1, 3, 6, 9]


def test_the_server_gets_the_runs_schedule() -> None:
    from fedmm.config import load_config
    from fedmm.workspace import objective_of

    run = load_config(None, ["dataset=synthetic", "objective=boost", "num-server-rounds=10", "local-epochs=4"])
    assert objective_of(run).schedule == Schedule(10, 4)
    with pytest.raises(RuntimeError, match="schedule"):
        SustainedBoosting(P()).decides(2)


# -- federation: no evaluation scores a classifier before a round has trained it -------------------
FEDERATION = [
    "dataset=synthetic",
    "partition=iid",
    "num-clients=4",
    "allocation=all",
    "num-server-rounds=3",
    "local-epochs=1",
    "batch-size=16",
    "device=cpu",
    "objective=boost",
    "objective.tau=0",
    "objective.train-added-heads=true",
    "selection=powd",
    "clients-per-round=2",
    "fraction-evaluate=0.5",
]


class InlineGrid:
    """A Flower Grid without Ray: every message goes straight to the ClientApp's handlers, in this
    process (node ``n`` serves partition ``n - 1``)."""

    def __init__(self, num_nodes: int) -> None:
        from flwr.app import Context, RecordDict

        self.contexts = {
            n: Context(
                run_id=1,
                node_id=n,
                node_config={"partition-id": n - 1, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for n in range(1, num_nodes + 1)
        }

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None) -> list:
        from flwr.app import MessageType

        from fedmm.clients.app import evaluate_local, query, train

        handlers = {MessageType.QUERY: query, MessageType.TRAIN: train, MessageType.EVALUATE: evaluate_local}
        return [handlers[m.metadata.message_type](m, self.contexts[m.metadata.dst_node_id]) for m in messages]


class SlotLog:
    """Patches ``SustainedBoosting`` (server and clients share this process): the added classifiers
    (slot ``j >= 1``) each training step uses, and those each prediction uses that no step had used."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.trained: set[tuple[str, int]] = set()
        self.evaluations = 0
        self.untrained: list[set[tuple[str, int]]] = []
        step, predict = SustainedBoosting.train_step, SustainedBoosting.predict

        def logged_step(obj, model, batch, optimizer):
            self.trained |= {(m, j) for m in obj.trained_modalities(model, batch) for j in range(1, obj.active[m])}
            return step(obj, model, batch, optimizer)

        def logged_predict(obj, model, batch):
            used = {(m, j) for m in model.modalities if m in batch for j in range(1, obj.active[m])}
            self.evaluations += 1
            if not used <= self.trained:
                self.untrained.append(used - self.trained)
            return predict(obj, model, batch)

        monkeypatch.setattr(SustainedBoosting, "train_step", logged_step)
        monkeypatch.setattr(SustainedBoosting, "predict", logged_predict)


@pytest.mark.usefixtures("flower_identity")
def test_no_evaluation_uses_an_untrained_classifier_and_a_resume_keeps_the_pending_decision(
    tmp_path, monkeypatch
) -> None:
    from fedmm.checkpoint import load_checkpoint
    from fedmm.config import load_config
    from fedmm.server.loop import run_federation
    from fedmm.server.plan import prepare

    run = load_config(None, FEDERATION)
    log = SlotLog(monkeypatch)
    plan = prepare(run, tmp_path / "whole")
    rows: list[dict] = []
    whole = run_federation(InlineGrid(4), plan, on_round=rows.append)
    # evaluations: central after rounds 0-3, federated after rounds 1-3, PowD's probes before rounds 1-3
    assert log.evaluations > 3 * (1 + 2) and log.untrained == []
    assert [r for r, _ in plan.objective.decisions] == [1, 2, 3]  # tau = 0: every round decides
    assert log.trained == {(m, j) for m in ("m0", "m1") for j in range(1, plan.objective.active[m])} != set()
    assert plan.objective.active == plan.objective.active_in_round(3) != plan.objective.active_in_round(4)
    assert whole["final"]["test/acc"] == rows[-1]["test/acc"]

    # Interrupted after round 1 (round 1's decision is pending), then resumed: the same run.
    def stop_after_round_1(row: dict) -> None:
        if row["round"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_federation(InlineGrid(4), prepare(run, tmp_path / "split"), on_round=stop_after_round_1)
    checkpoint = load_checkpoint(tmp_path / "split")
    assert checkpoint.server_round == 1
    resumed_plan = prepare(run, tmp_path / "split", resume=True)
    resumed = run_federation(InlineGrid(4), resumed_plan, resume=checkpoint)
    assert resumed_plan.objective.decisions == plan.objective.decisions
    assert resumed["final"] == pytest.approx(whole["final"], abs=1e-9)
    assert log.untrained == []


@pytest.mark.integration
@pytest.mark.slow  # over a minute on 2 cores: `make test-slow`
def test_ray_federation_evaluates_only_classifiers_that_moved(tmp_path, monkeypatch) -> None:
    """With ``train_added_heads`` a classifier that trained has left its initial weights: every
    model the server evaluates, or sends out to be evaluated (federated evaluation, PowD's probes),
    uses only added classifiers that have."""
    from fedmm.config import load_config
    from fedmm.protocol import ARRAYS, Request
    from fedmm.server.plan import prepare
    from fedmm.simulation import simulate
    from fedmm.strategies import ModalityAwareFedAvg
    from fedmm.workspace import model_of, objective_of

    run = load_config(None, FEDERATION)
    plan = prepare(run, tmp_path / "run")
    init = {k: v.detach().clone() for k, v in model_of(run, objective_of(run)).state_dict().items()}
    checked: list[tuple[str, int, bool]] = []  # (modality, slot, moved) of every use in an evaluation

    def check(counts: dict[str, int], weight) -> None:
        for m, n in counts.items():
            for j in range(1, n):
                key = f"heads.{m}.slots.{j}.weight"
                checked.append((m, j, not torch.equal(torch.as_tensor(weight(key)), init[key])))

    message = ModalityAwareFedAvg._evaluate_message

    def checked_message(strategy, client_id, server_round, arrays):
        msg = message(strategy, client_id, server_round, arrays)
        extras = Request.from_message(msg).extras
        sent = msg.content[ARRAYS]
        check(
            dict(zip(plan.objective.modalities, (int(c) for c in extras[ACTIVE_KEY]), strict=True)),
            lambda key: sent[key].numpy(),
        )
        return msg

    monkeypatch.setattr(ModalityAwareFedAvg, "_evaluate_message", checked_message)
    simulate(
        run,
        tmp_path / "run",
        plan=plan,
        on_round=lambda row: check(dict(plan.objective.active), lambda key: plan.model.state_dict()[key].cpu()),
    )
    assert [r for r, _ in plan.objective.decisions] == [1, 2, 3] and checked
    assert all(moved for *_, moved in checked), [c for c in checked if not c[2]]


def test_train_step_reports_the_inference_logits_cross_entropy() -> None:
    """The reported loss is CE(Z_n, y) per modality before its step (comparable over rounds), not
    the boosting loss, whose three terms for n >= 2 would triple it by construction."""
    obj = SustainedBoosting(P(n_max=3))
    model = make_model(obj)
    data = synthetic(["a", "v"], n=8)
    obj.begin_round(model, data, ctx(["a", "v"], {ACTIVE_KEY: [3, 1]}))
    model.train()
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    expected = []
    for m in ("a", "v"):  # the same alternating steps by hand, recording CE(Z_n) before each
        opt.zero_grad(set_to_none=True)
        out = obj.outputs(ref, m, ref.encoders[m](data[m]))
        expected.append(float(nn.functional.cross_entropy(out.total, data["y"])))
        boosting = boosting_loss(out, data["y"], 0.5)
        if m == "a":
            assert float(boosting) > expected[0] * 1.5  # three terms: the optimised loss is larger
        boosting.backward()
        opt.step()
    reported = obj.train_step(model, data, torch.optim.SGD(model.parameters(), lr=0.1))
    assert reported == pytest.approx(sum(expected) / 2, rel=1e-5)
