"""FedCMI: class-wise temperature, teacher/student direction, fill-in forward pass, aggregation,
the proximal weight."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedmm.config import load_config
from fedmm.data import load_dataset
from fedmm.data.base import ModalitySpec
from fedmm.models.net import ModelConfig, MultimodalNet
from fedmm.models.projectors import filled_slots, project
from fedmm.objectives import RoundContext, build_objective
from fedmm.objectives.fedcmi import class_wise_temperature
from fedmm.params import config_name
from fedmm.records import aggregate
from fedmm.training import TrainConfig, build_model, evaluate, train_local


def specs(num: int = 2) -> list[ModalitySpec]:
    return [ModalitySpec(f"m{i}", (4,), "vector") for i in range(num)]


def mlps(num: int = 2) -> dict[str, str]:
    """The vector encoder for modalities ``m0 .. m{num-1}``."""
    return {f"m{i}": "mlp" for i in range(num)}


def fedcmi_model(num_modalities: int = 2, seed: int = 0, **params):
    objective = build_objective("fedcmi", {config_name(k): v for k, v in params.items()})
    torch.manual_seed(seed)
    return objective, build_model(
        specs(num_modalities), 3, ModelConfig(embed_dim=4, encoders=mlps(num_modalities)), objective
    )


def ctx(modalities, server_round=2, global_model=None) -> RoundContext:
    return RoundContext(server_round=server_round, num_rounds=5, modalities=list(modalities), global_model=global_model)


def softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def hand_model(objective, own: float = 1.0, infiltration: float = 1.0) -> MultimodalNet:
    """d = K = 2, identity encoders and classifiers: ``C_m(S_m(x)) = own * x`` and
    ``C_m(I_m(x)) = infiltration * x`` (no biases)."""
    model = MultimodalNet(specs_2d(), 2, ModelConfig(embed_dim=2, encoders=mlps(2), heads=True))
    objective.extend_model(model)
    with torch.no_grad():
        for m in ("m0", "m1"):
            model.encoders[m] = nn.Identity()
            model.heads[m].weight.copy_(torch.eye(2))
            model.heads[m].bias.zero_()
            model.projectors[m].own.weight.copy_(own * torch.eye(2))
            model.projectors[m].own.bias.zero_()
            model.projectors[m].infiltration.weight.copy_(infiltration * torch.eye(2))
            model.projectors[m].infiltration.bias.zero_()
    return model


def specs_2d() -> list[ModalitySpec]:
    return [ModalitySpec(m, (2,), "vector") for m in ("m0", "m1")]


# -- class-wise temperature ----------------------------------------------------------------------------
def test_temperature_sharpens_classes_above_the_mean_ratio():
    p_a = torch.tensor([0.8, 0.4, 0.6, 0.0])
    p_v = torch.tensor([0.2, 0.4, 0.3, 0.0])
    present = torch.tensor([True, True, True, False])  # class 3 is absent on this client
    tau = class_wise_temperature(p_a, p_v, present, kappa=2.0)
    ratios = [4.0, 1.0, 2.0]
    mean = sum(ratios) / 3  # 7/3 > 1: the first modality dominates
    assert tau[0].item() == pytest.approx(1.0 / (1.0 + 2.0 * math.log(4.0 / mean)))
    assert tau[1].item() == 1.0 and tau[2].item() == 1.0  # at or below the mean ratio
    assert tau[3].item() == 1.0  # absent class


def test_temperature_swaps_direction_when_the_second_modality_dominates():
    p_a = torch.tensor([0.2, 0.4, 0.3])
    p_v = torch.tensor([0.8, 0.4, 0.6])
    tau = class_wise_temperature(p_a, p_v, torch.ones(3, dtype=torch.bool), kappa=2.0)
    mean = (0.25 + 1.0 + 0.5) / 3  # mean of p_a / p_v = 0.583 <= 1
    inv_mean = 1.0 / mean  # the reference compares p_v / p_a with 1 / mean
    assert tau[0].item() == pytest.approx(1.0 / (1.0 + 2.0 * math.log(4.0 / inv_mean)))
    assert tau[1].item() == 1.0
    assert tau[2].item() == pytest.approx(1.0 / (1.0 + 2.0 * math.log(2.0 / inv_mean)))


def test_class_confidences_come_from_the_received_models_self_branches():
    objective = build_objective("fedcmi", {"kappa": 2.0})
    received = hand_model(objective, own=1.0, infiltration=0.0).eval().requires_grad_(False)
    local = hand_model(objective, own=-1.0, infiltration=1.0)  # differs from the received model
    # self logits of the received model = x: class 0 confidences m0 0.9, 0.7 (mean 0.8) and
    # m1 0.2, 0.2; class 1 confidences 0.5 for both
    data = {
        "m0": torch.tensor([[math.log(9.0), 0.0], [math.log(7.0 / 3.0), 0.0], [0.0, 0.0]]),
        "m1": torch.tensor([[-math.log(4.0), 0.0], [-math.log(4.0), 0.0], [0.0, 0.0]]),
        "y": torch.tensor([0, 0, 1]),
    }
    objective.begin_round(local, data, ctx(["m0", "m1"], global_model=received))
    # r = [0.8 / 0.2, 0.5 / 0.5] = [4, 1], mean 2.5 > 1: m0 dominates, class 0 is above the mean
    # (the local model's self branches would give r = [0.25, 1] and tau_0 = 1 / (1 + 2 ln 2.5);
    # the received infiltration branches give 0.5 everywhere and tau = 1)
    tau = objective.temperatures[("m0", "m1")]
    assert tau[0].item() == pytest.approx(1.0 / (1.0 + 2.0 * math.log(4.0 / 2.5)), rel=1e-5)
    assert tau[1].item() == 1.0


def test_temperature_of_a_client_without_counted_classes_is_one():
    tau = class_wise_temperature(torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.bool), kappa=2.0)
    assert torch.equal(tau, torch.ones(3))


# -- model pieces ---------------------------------------------------------------------------------------
def test_projector_parameters_belong_to_their_modality_group():
    _, model = fedcmi_model()
    keys = set(model.state_dict())
    assert {"projectors.m0.own.weight", "projectors.m0.infiltration.weight", "heads.m1.weight"} <= keys


def test_unimodal_fill_in_uses_the_infiltration_projector():
    objective, model = fedcmi_model()
    model.eval()
    x = torch.randn(5, 4)
    h = model.encoders["m0"](x)
    u = model.projectors["m0"].own(h)
    u_inf = model.projectors["m0"].infiltration(h)
    expected = model.fusion.linear(torch.cat([u, u_inf], dim=1))  # F([u_a; u~_a])
    assert torch.allclose(objective.predict_filled(model, {"m0": x}), expected, atol=1e-6)
    zero = model.fusion.linear(torch.cat([u, torch.zeros_like(u)], dim=1))  # F([u_a; 0])
    assert torch.allclose(objective.predict(model, {"m0": x}), zero, atol=1e-6)


def test_three_modalities_fill_a_missing_slot_with_the_mean_of_the_present_infiltrations():
    own = {"m0": torch.ones(2, 3), "m2": 3 * torch.ones(2, 3)}
    inf = {"m0": torch.zeros(2, 3), "m2": 4 * torch.ones(2, 3)}
    slots = filled_slots(["m0", "m1", "m2"], own, inf)
    assert torch.equal(slots["m1"], 2 * torch.ones(2, 3)) and slots["m0"] is own["m0"]


# -- loss: teacher and student -------------------------------------------------------------------------
def test_global_dominant_self_branch_teaches_the_weak_infiltration_branch():
    objective, model = fedcmi_model(lambda1=0.0, class_wise=False)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad():  # the teacher (global model) differs from the local model
        for p in teacher.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.eval()
    x = {"m0": torch.randn(6, 4), "m1": torch.randn(6, 4)}
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    objective.begin_round(model, {**x, "y": y}, ctx(["m0", "m1"], global_model=teacher))
    own, inf = project(model, model.encode(x))
    self_logits = model.head_logits(own)
    d = objective.dominant(self_logits, y)
    w = "m1" if d == "m0" else "m0"
    got = objective.infiltration_loss(model, {**x, "y": y}, self_logits, inf)
    t_own, _ = project(teacher, {d: teacher.encoders[d](x[d])})
    target = teacher.heads[d](t_own[d]).softmax(dim=1)  # GLOBAL model, dominant SELF branch
    student = model.heads[w](inf[w]).log_softmax(dim=1)  # LOCAL model, weak INFILTRATION branch
    assert got.item() == pytest.approx(-(target * student).sum(dim=1).mean().item(), rel=1e-5)
    got.backward()
    assert model.projectors[w].infiltration.weight.grad is not None  # the student learns
    assert model.projectors[d].own.weight.grad is None  # the teacher side gets nothing
    assert all(p.grad is None for p in teacher.parameters())


def test_infiltration_loss_with_a_class_wise_temperature_table():
    objective = build_objective("fedcmi", {})
    model = hand_model(objective)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    batch = {
        "m0": torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
        "m1": torch.tensor([[1.0, 0.0], [0.0, 0.0]]),
        "y": torch.tensor([0, 1]),
    }
    objective.begin_round(model, batch, ctx(["m0", "m1"], global_model=teacher))
    tau = torch.tensor([0.5, 1.0])
    objective.temperatures = {("m0", "m1"): tau, ("m1", "m0"): tau}
    own, inf = project(model, model.encode(batch))
    self_logits = model.head_logits(own)
    got = objective.infiltration_loss(model, batch, self_logits, inf)
    # local self confidences: m0 sigmoid(2) + sigmoid(1) > m1 sigmoid(1) + 1/2 -> m0 teaches m1
    assert objective.last_dominant == "m0"
    # sample 0 (y = 0, tau = 0.5): teacher [2, 0] / 0.5 = [4, 0], student [1, 0] / 0.5 = [2, 0]
    h0 = sigmoid(4.0) * softplus(-2.0) + sigmoid(-4.0) * softplus(2.0)
    # sample 1 (y = 1, tau = 1): teacher [0, 1], student [0, 0] -> H = log 2
    h1 = math.log(2.0)
    assert got.item() == pytest.approx((h0 + h1) / 2, rel=1e-6)


def test_dominance_and_tie_rule():
    objective, _ = fedcmi_model()
    y = torch.tensor([0, 1])
    strong = torch.tensor([[5.0, 0, 0], [0, 5.0, 0]])
    flat = torch.zeros(2, 3)
    assert objective.dominant({"m0": strong, "m1": flat}, y) == "m0"
    assert objective.dominant({"m0": flat, "m1": strong}, y) == "m1"
    assert objective.dominant({"m0": flat, "m1": flat}, y) == "m1"  # reference: ratio > 1 -> first, else second


def test_multimodal_loss_is_task_plus_self_branches_plus_weighted_cmi():
    objective, model = fedcmi_model(lambda1=2.0, lambda2=0.5, class_wise=False)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    batch = {"m0": torch.randn(6, 4), "m1": torch.randn(6, 4), "y": torch.tensor([0, 1, 2, 0, 1, 2])}
    model.eval()
    objective.begin_round(model, batch, ctx(["m0", "m1"], global_model=teacher))
    own, inf = project(model, model.encode(batch))
    task = F.cross_entropy(model.fuse(own), batch["y"])
    heads = model.head_logits(own)
    selfs = sum(F.cross_entropy(z, batch["y"]) for z in heads.values())
    cmi = objective.infiltration_loss(model, batch, heads, inf)
    assert objective.loss(model, batch).item() == pytest.approx((task + 2.0 * selfs + 0.5 * cmi).item(), rel=1e-5)
    objective.begin_round(model, batch, ctx(["m0", "m1"], server_round=1, global_model=teacher))  # warm-up
    assert objective.loss(model, batch).item() == pytest.approx((task + 2.0 * selfs).item(), rel=1e-5)


def test_unimodal_client_trains_the_filled_fusion_only():
    objective, model = fedcmi_model()
    batch = {"m1": torch.randn(6, 4), "y": torch.tensor([0, 1, 2, 0, 1, 2])}
    model.eval()
    objective.begin_round(model, batch, ctx(["m1"], global_model=copy.deepcopy(model)))
    own, inf = project(model, model.encode(batch))
    expected = F.cross_entropy(model.fusion.linear(torch.cat([inf["m1"], own["m1"]], dim=1)), batch["y"])
    assert objective.loss(model, batch).item() == pytest.approx(expected.item(), rel=1e-6)


def test_class_wise_temperatures_come_from_the_received_model_per_round():
    objective, model = fedcmi_model()
    data = load_dataset("synthetic", num_classes=3, dim=4).train
    objective.begin_round(model, data, ctx(["m0", "m1"], global_model=copy.deepcopy(model)))
    tau = objective.temperatures[("m0", "m1")]
    assert tau.shape == (3,) and bool((tau > 0).all() and (tau <= 1).all())
    assert torch.equal(objective.temperatures[("m1", "m0")], tau)
    objective.begin_round(model, data, ctx(["m0", "m1"], server_round=1, global_model=copy.deepcopy(model)))
    assert objective.temperatures == {}  # warm-up round: no distillation, no temperatures


# -- training and aggregation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("num_modalities", "held"), [(2, ["m0", "m1"]), (3, ["m0", "m1", "m2"]), (3, ["m0", "m2"]), (2, ["m1"])]
)
def test_one_local_epoch_and_missing_modality_metrics(num_modalities, held):
    dataset = load_dataset("synthetic", num_modalities=num_modalities, num_classes=3, dim=4, num_train=120)
    objective, model = fedcmi_model(num_modalities)
    data = {**{m: dataset.train[m] for m in held}, "y": dataset.train["y"]}
    before = copy.deepcopy(model.state_dict())
    result = train_local(
        model,
        data,
        objective,
        ctx(held, global_model=copy.deepcopy(model).eval()),
        TrainConfig(epochs=1, batch_size=16, lr=0.05),
    )
    assert math.isfinite(result.loss)
    for key, value in model.state_dict().items():
        modality = key.split(".")[1] if not key.startswith("fusion") else None
        if modality is not None and modality not in held:
            assert torch.equal(value, before[key]), key  # an absent modality's groups stay as received
    metrics = evaluate(model, dataset.test, objective)
    assert {f"acc-fill/m{i}" for i in range(num_modalities)} <= set(metrics)


def test_projector_parameters_aggregate_only_over_clients_holding_their_modality():
    global_state = {
        "projectors.m0.own.weight": np.zeros(2, dtype=np.float32),
        "projectors.m1.own.weight": np.zeros(2, dtype=np.float32),
        "fusion.linear.bias": np.zeros(2, dtype=np.float32),
    }
    both = {k: np.full(2, 1.0, dtype=np.float32) for k in global_state}
    only_m0 = {
        "projectors.m0.own.weight": np.full(2, 4.0, dtype=np.float32),
        "fusion.linear.bias": np.full(2, 4.0, dtype=np.float32),
    }
    out = aggregate(global_state, [(10, both), (30, only_m0)])
    assert out["projectors.m0.own.weight"] == pytest.approx([3.25, 3.25])  # (10*1 + 30*4) / 40
    assert out["projectors.m1.own.weight"] == pytest.approx([1.0, 1.0])  # only the multimodal client
    assert out["fusion.linear.bias"] == pytest.approx([3.25, 3.25])


def test_bad_parameters():
    with pytest.raises(ValueError, match="lambda2"):
        build_objective("fedcmi", {"lambda2": -1})
    with pytest.raises(ValueError, match="projector"):
        build_objective("fedcmi", {"projector": "conv"})


# -- the proximal weight ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "mu"),
    [
        (["strategy=fedcmi", "objective.proximal=true"], 1.0),  # the reference's --mu
        (["strategy=fedcmi", "objective.proximal=true", "objective.mu=0.25"], 0.25),  # the user's value wins
        (["strategy=fedcmi"], 0.0),
        (["strategy=fedprox"], 0.01),
        (["strategy=fedprox", "strategy.mu=0.3"], 0.3),
        (["strategy=fedprox", "strategy.mu=2"], 2.0),  # an integer is a float here
        (["strategy.name=fedprox", "strategy.mu=0.5"], 0.5),  # [strategy] name = "fedprox", mu = 0.5
    ],
)
def test_proximal_weight_the_clients_use(overrides, mu):
    """FedProx sends its weight with every training request; FedCMI's client adds its objective's
    (``fedmm.clients.app.train``: request weight + objective weight)."""
    from fedmm.server.plan import build_strategy, prepare

    run = load_config(None, ["dataset=synthetic", "partition=iid", "num-clients=2", "device=cpu", *overrides])
    plan = prepare(run)
    sent = build_strategy(plan).training_options()["proximal_mu"]
    assert sent + plan.objective.proximal_mu == pytest.approx(mu)
    assert sent == (pytest.approx(mu) if run.strategy == "fedprox" else 0.0)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["strategy=fedprox", "proximal-mu=0.3"], r"'proximal-mu' is now 'strategy.mu"),  # the old key
        (["strategy=fedcmi", "objective.proximal=true", "strategy.mu=0.3"], r"strategy 'fedcmi' takes no param"),
        (["strategy=fedprox", "strategy.mu=-0.1"], r"'strategy.mu' must be >= 0"),
        (["strategy=fedprox", "strategy.mu='high'"], r"'strategy.mu' expects float"),
        (["strategy=fedprox", "strategy.mu=true"], r"'strategy.mu' expects float"),
        (["strategy=fedprox", "strategy.nu=0.3"], r"unknown parameter 'nu' of strategy 'fedprox'; did you mean 'mu'"),
    ],
)
def test_strategy_parameters_are_refused_where_they_do_not_apply(overrides, match):
    from fedmm.server.plan import prepare

    with pytest.raises(ValueError, match=match):
        prepare(load_config(None, ["dataset=synthetic", "partition=iid", "num-clients=2", "device=cpu", *overrides]))


def test_bad_mu():
    with pytest.raises(ValueError, match="mu"):
        build_objective("fedcmi", {"mu": -1.0})
