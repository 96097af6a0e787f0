"""PMR (``pmr``): prototype logits, masking, weak-modality term, per-epoch EMA, facts, params."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedmm.data.base import ModalitySpec
from fedmm.models.net import ModelConfig, MultimodalNet
from fedmm.objectives.base import RoundContext
from fedmm.objectives.pmr import (
    PMR,
    Prototypes,
    class_feature_sums,
    momentum_update,
    prototype_logits,
    weak_modalities,
)
from fedmm.objectives.registry import build_objective
from fedmm.training import TrainConfig, build_model, train_local

P = PMR.Params


def ctx(modalities: list[str], server_round: int = 1) -> RoundContext:
    return RoundContext(server_round=server_round, num_rounds=10, modalities=modalities)


def hand_model(num_classes: int = 2) -> MultimodalNet:
    """Linear identity encoders (d = 2), K classes, fusion [I_a | I_v] (zero bias) when K = 2."""
    model = MultimodalNet(
        [ModalitySpec(m, (2,), "vector") for m in ("a", "v")],
        num_classes,
        ModelConfig(embed_dim=2, encoders=dict.fromkeys(("a", "v"), "mlp")),
    )
    with torch.no_grad():
        for m in ("a", "v"):
            enc = nn.Linear(2, 2)
            enc.weight.copy_(torch.eye(2))
            enc.bias.zero_()
            model.encoders[m] = enc
        if num_classes == 2:
            model.fusion.linear.weight.copy_(torch.cat([torch.eye(2), torch.eye(2)], dim=1))
        model.fusion.linear.bias.zero_()
    return model


def test_prototype_logits_are_negative_distances() -> None:
    protos = Prototypes(centers=torch.tensor([[0.0, 0.0], [3.0, 4.0]]), present=torch.tensor([True, True]))
    u = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    assert torch.allclose(prototype_logits(u, protos), torch.tensor([[0.0, -5.0], [-3.0, -4.0]]))


def test_absent_class_is_masked_and_gets_no_probability() -> None:
    protos = Prototypes(
        centers=torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]), present=torch.tensor([True, False, True])
    )
    u = torch.tensor([[0.0, 0.0]], requires_grad=True)
    logits = prototype_logits(u, protos)
    assert logits[0, 1].item() == -math.inf
    probs = logits.softmax(dim=1)
    assert probs[0, 1].item() == 0.0
    assert probs[0, 0].item() == pytest.approx(1 / (1 + math.exp(-1)))  # softmax([0, -1]) without class 1
    loss = F.cross_entropy(logits, torch.tensor([2]))
    assert loss.item() == pytest.approx(math.log(1 + math.e))
    loss.backward()
    assert torch.isfinite(u.grad).all()


def test_class_sums_counts_and_prototypes() -> None:
    model = hand_model(num_classes=3)
    data = {
        "a": torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]]),
        "v": torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 2.0]]),
        "y": torch.tensor([0, 0, 2]),
    }
    sums, counts = class_feature_sums(model, data, ["a", "v"])
    assert torch.equal(counts, torch.tensor([2.0, 0.0, 1.0]))
    assert torch.allclose(sums["a"], torch.tensor([[4.0, 2.0], [0.0, 0.0], [0.0, 5.0]]))
    obj = PMR(P())
    obj.begin_round(model, data, ctx(["a", "v"]))
    assert torch.allclose(obj.prototypes["a"].centers, torch.tensor([[2.0, 1.0], [0.0, 0.0], [0.0, 5.0]]))
    assert torch.equal(obj.prototypes["v"].present, torch.tensor([True, False, True]))
    assert model.training  # eval mode was only temporary
    assert torch.allclose(sums["v"], torch.tensor([[1.0, 2.0], [0.0, 0.0], [2.0, 2.0]]))


def test_weak_modality_rule() -> None:
    assert weak_modalities({"a": 3.0, "v": 1.0}) == ["v"]  # rho_a > 1 -> visual term
    assert weak_modalities({"a": 1.0, "v": 3.0}) == ["a"]
    assert weak_modalities({"a": 2.0, "v": 2.0}) == []  # rho_a == 1 -> no term
    assert weak_modalities({"a": 2.0, "v": 1.0, "t": 1.0}) == ["v", "t"]
    assert weak_modalities({"a": 2.0, "v": 3.0, "t": 1.0}) == ["t"]


# Data for the loss, y = [0, 0, 1, 1]. a: each sample sits on its class prototype ((1, 0) and
# (0, 1)); v: prototypes (0.5, 0) and (0, 0.5), two samples at equal distance from both -> v is weak.
DATA = {
    "a": torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]),
    "v": torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]),
    "y": torch.tensor([0, 0, 1, 1]),
}


def softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


def test_loss_adds_the_prototype_ce_of_the_weak_modality_only() -> None:
    alpha = 1.5
    obj = PMR(P(alpha=alpha))
    model = hand_model()
    obj.begin_round(model, DATA, ctx(["a", "v"]))
    loss = obj.loss(model, DATA)
    gap_a = math.sqrt(2)  # a: distances 0 and sqrt(2)
    gap_v = math.sqrt(1.25) - 0.5  # v samples 0 and 3: distances 0.5 and sqrt(1.25); samples 1, 2: equal
    assert obj.last_scores == pytest.approx({"a": 4 / (1 + math.exp(-gap_a)), "v": 2 / (1 + math.exp(-gap_v)) + 1})
    # fused logits a + v: [2, 0], [1, 0], [0, 1], [0, 2]
    fused_ce = (softplus(-2.0) + softplus(-1.0)) / 2
    proto_ce_v = (softplus(-gap_v) + math.log(2)) / 2
    assert loss.item() == pytest.approx(fused_ce + alpha * proto_ce_v, rel=1e-6)
    # Only the weak (v) encoder gets the prototype gradient: a's equals the fused CE gradient.
    loss.backward()
    g_a = model.encoders["a"].weight.grad.clone()
    g_v = model.encoders["v"].weight.grad.clone()
    model.zero_grad()
    F.cross_entropy(model(DATA), DATA["y"]).backward()
    assert torch.allclose(g_a, model.encoders["a"].weight.grad)
    assert not torch.allclose(g_v, model.encoders["v"].weight.grad)


def test_single_modality_client_uses_its_own_prototype_term() -> None:
    obj = PMR(P(alpha=2.0))
    model = hand_model()
    data = {"a": DATA["a"], "y": DATA["y"]}
    obj.begin_round(model, data, ctx(["a"]))
    assert set(obj.prototypes) == {"a"}
    # fused = [1, 0] / [0, 1] (v slot zero); prototype CE = log(1 + e^-sqrt2)
    expected = softplus(-1.0) + 2.0 * softplus(-math.sqrt(2))
    assert obj.loss(model, data).item() == pytest.approx(expected, rel=1e-6)


def test_prototypes_are_refreshed_with_momentum_after_the_first_epoch() -> None:
    obj = PMR(P(momentum=0.2))
    model = hand_model()
    obj.begin_round(model, DATA, ctx(["a", "v"]))
    old = obj.prototypes["a"].centers.clone()
    with torch.no_grad():
        model.encoders["a"].weight.mul_(3.0)  # new a prototypes: 3 x old
    gen = torch.Generator().manual_seed(0)
    list(obj.batches(model, DATA, 0, 2, gen))  # first epoch: begin_round's prototypes
    assert torch.equal(obj.prototypes["a"].centers, old)
    list(obj.batches(model, DATA, 1, 2, gen))
    assert torch.allclose(obj.prototypes["a"].centers, 0.8 * 3 * old + 0.2 * old)


def test_momentum_update_keeps_one_sided_classes() -> None:
    old = Prototypes(torch.tensor([[1.0], [2.0], [0.0]]), torch.tensor([True, True, False]))
    new = Prototypes(torch.tensor([[3.0], [0.0], [5.0]]), torch.tensor([True, False, True]))
    out = momentum_update(old, new, 0.25)
    assert torch.allclose(out.centers, torch.tensor([[0.75 * 3 + 0.25 * 1], [2.0], [5.0]]))
    assert torch.equal(out.present, torch.tensor([True, True, True]))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
    ],
)
def test_bad_params(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PMR(P(**params))
    with pytest.raises(ValueError, match=match):
        build_objective("pmr", params)


@pytest.mark.parametrize("held", [["m0", "m1"], ["m0", "m1", "m2"], ["m0"]])
def test_one_local_epoch(held: list[str]) -> None:
    torch.manual_seed(0)
    specs = [ModalitySpec(m, (6,), "vector") for m in ("m0", "m1", "m2")[: max(2, len(held))]]
    obj = build_objective("pmr", {})
    model = build_model(specs, 4, ModelConfig(embed_dim=8, encoders={s.name: "mlp" for s in specs}), obj)
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (40,), generator=g)  # class 3 never occurs on this client
    data = {m: torch.randn(40, 6, generator=g) + y[:, None].float() for m in held}
    data["y"] = y
    result = train_local(model, data, obj, ctx(held), TrainConfig(epochs=2, batch_size=8, lr=0.05))
    assert math.isfinite(result.loss)
    assert set(obj.prototypes) == set(held)
    assert not obj.prototypes[held[0]].present[3]
    assert obj.end_round(model, data) == {}  # no server reads prototypes of plain pmr: none are sent
