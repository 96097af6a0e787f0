"""MNL (``mnl``): guide selection, the loss on hand cases, M = 3, warm-up, single modality, params."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedmm.data.base import ModalitySpec
from fedmm.models.net import ModelConfig, MultimodalNet
from fedmm.objectives.base import RoundContext
from fedmm.objectives.mnl import MNL, negative_learning_term, select_guides, strongest_competitor
from fedmm.objectives.registry import build_objective
from fedmm.training import TrainConfig, build_model, train_local

P = MNL.Params


def softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def ctx(modalities: list[str], server_round: int = 1) -> RoundContext:
    return RoundContext(server_round=server_round, num_rounds=10, modalities=modalities)


def hand_model(names: tuple[str, ...], obj: MNL) -> MultimodalNet:
    """Identity encoders and identity heads (d = K = 2): z^m = x^m; fusion = mean of the z^m."""
    model = MultimodalNet([ModalitySpec(m, (2,), "vector") for m in names], 2, ModelConfig(embed_dim=2))
    obj.extend_model(model)
    with torch.no_grad():
        for m in names:
            model.encoders[m] = nn.Identity()
            model.heads[m].weight.copy_(torch.eye(2))
            model.heads[m].bias.zero_()
        model.fusion.linear.weight.copy_(torch.cat([torch.eye(2) / len(names)] * len(names), dim=1))
        model.fusion.linear.bias.zero_()
    return model


def reference_mnl_loss(out: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor, w: float) -> torch.Tensor:
    """The reference ``model_forward`` loss for two modalities, transcribed with its masks."""
    k = out.shape[1]
    rows = torch.arange(y.shape[0])
    label = F.one_hot(y, k).float()
    masked = out.softmax(1).clone()
    masked[rows, y] = -1
    j = masked.argmax(1)
    xi1, xi2 = z1[rows, y] - z1[rows, j], z2[rows, y] - z2[rows, j]
    p1, p2 = z1.softmax(1)[rows, y], z2.softmax(1)[rows, y]
    loss = F.cross_entropy(z1, y) + F.cross_entropy(z2, y) + F.cross_entropy(out, y)
    for mask, guide, weak in (((xi1 > xi2) & (p1 > p2), z1, z2), ((xi1 <= xi2) & (p1 <= p2), z2, z1)):
        if mask.any():
            m = mask.float()[:, None]
            pd = guide.detach().softmax(1)
            lq = weak.log_softmax(1)
            loss = loss + torch.mean(-(label * lq * m) - w * (pd * lq * m) + w * (label * pd * lq * m))
    return loss


def test_strongest_competitor_ignores_the_target() -> None:
    fused = torch.tensor([[0.1, 0.5, 0.4], [5.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
    assert strongest_competitor(fused, torch.tensor([1, 0, 0])).tolist() == [2, 2, 1]


def test_per_sample_guide_selection() -> None:
    y = torch.zeros(5, dtype=torch.long)
    j = torch.ones(5, dtype=torch.long)
    z1 = torch.tensor([[3.0, 0, 0], [1, 0, 0], [2, 0, 5], [1, 0, 0], [1, 0, -5]])
    z2 = torch.tensor([[1.0, 0, 0], [2, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]])
    # 0: 1 wins both; 1: 2 wins both; 2: 1 has the larger margin, 2 the larger confidence -> none;
    # 3: exact tie -> 2 guides (the reference's <=); 4: margins tie, 1 more confident -> none.
    assert select_guides([z1, z2], y, j).tolist() == [0, 1, -1, 1, -1]


def test_three_modality_guide_needs_both_maxima() -> None:
    y = torch.zeros(3, dtype=torch.long)
    j = torch.ones(3, dtype=torch.long)
    z1 = torch.tensor([[1.0, 0], [3.0, 0], [0.0, 0]])
    z2 = torch.tensor([[3.0, 0], [1.0, 0], [0.0, 0]])
    z3 = torch.tensor([[2.0, 0], [2.0, 0], [0.0, 0]])
    assert select_guides([z1, z2, z3], y, j).tolist() == [1, 0, 2]  # last row: three-way tie -> the last


def test_loss_matches_hand_computation() -> None:
    lam = 0.7
    obj = MNL(P(lam=lam))
    model = hand_model(("a", "v"), obj)
    batch = {"a": torch.tensor([[2.0, 0.0], [0.0, 0.0]]), "v": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
             "y": torch.tensor([0, 1])}
    obj.begin_round(model, batch, ctx(["a", "v"]))
    loss = obj.loss(model, batch)
    # Sample 0 (y=0): a = [2, 0] beats v = [1, 0] on margin and confidence -> a guides v.
    # Sample 1 (y=1): v = [0, 1] beats a = [0, 0] -> v guides a.
    assert obj.last_guides == ["a", "v"]
    base = (softplus(-1.5) + softplus(-0.5)) / 2  # fused = mean: [1.5, 0], [0, 0.5]
    base += (softplus(-2.0) + math.log(2)) / 2 + softplus(-1.0)  # heads a and v
    l0 = softplus(-1.0) + lam * sigmoid(-2.0) * softplus(1.0)  # -log q^v_0 - lam p^a_1 log q^v_1
    l1 = math.log(2) + lam * sigmoid(-1.0) * math.log(2)  # q^a = [1/2, 1/2], p^v_0 = sigmoid(-1)
    assert loss.item() == pytest.approx(base + (l0 + l1) / 4, rel=1e-6)  # the mean over B * K = 4 entries
    fused = model(batch)
    ref = reference_mnl_loss(fused, batch["a"], batch["v"], batch["y"], lam)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_loss_matches_the_reference_on_random_logits() -> None:
    torch.manual_seed(0)
    obj = MNL(P(lam=0.7))
    model = MultimodalNet([ModalitySpec(m, (5,), "vector") for m in ("a", "v")], 5, ModelConfig(embed_dim=5))
    obj.extend_model(model)
    with torch.no_grad():
        for m in ("a", "v"):
            model.encoders[m] = nn.Identity()
            model.heads[m].weight.copy_(torch.randn(5, 5) * 2)
            model.heads[m].bias.zero_()
        model.fusion.linear.weight.copy_(torch.cat([model.heads["a"].weight, model.heads["v"].weight], 1) / 2)
        model.fusion.linear.bias.zero_()
    batch = {"a": torch.randn(16, 5), "v": torch.randn(16, 5), "y": torch.randint(0, 5, (16,))}
    obj.begin_round(model, batch, ctx(["a", "v"]))
    loss = obj.loss(model, batch)
    z = {m: model.heads[m](batch[m]) for m in ("a", "v")}
    ref = reference_mnl_loss(model(batch), z["a"], z["v"], batch["y"], 0.7)
    assert set(obj.last_guides) >= {"a", "v"}  # both directions occur in this batch
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_the_guide_gets_no_gradient_from_the_guidance() -> None:
    obj = MNL(P(lam=5.0))
    model = hand_model(("a", "v"), obj)
    batch = {"a": torch.tensor([[2.0, 0.0]]), "v": torch.tensor([[1.0, 0.0]]), "y": torch.tensor([0])}
    obj.begin_round(model, batch, ctx(["a", "v"]))
    obj.loss(model, batch).backward()
    guided = model.heads["a"].weight.grad.clone()
    model.zero_grad()
    base = F.cross_entropy(model(batch), batch["y"]) + sum(
        F.cross_entropy(model.heads[m](batch[m]), batch["y"]) for m in ("a", "v"))
    base.backward()
    assert torch.allclose(guided, model.heads["a"].weight.grad)  # a guides: its head is untouched
    assert obj.last_guides == ["a"]


def test_three_modalities_guide_every_other_modality() -> None:
    lam = 0.5
    obj = MNL(P(lam=lam))
    model = hand_model(("a", "v", "t"), obj)
    batch = {"a": torch.tensor([[2.0, 0.0]]), "v": torch.tensor([[1.0, 0.0]]), "t": torch.tensor([[0.0, 0.0]]),
             "y": torch.tensor([0])}
    obj.begin_round(model, batch, ctx(["a", "v", "t"]))
    loss = obj.loss(model, batch)
    assert obj.last_guides == ["a"]
    base = softplus(-1.0) + softplus(-2.0) + softplus(-1.0) + math.log(2)  # fused [1, 0]; heads a, v, t
    term_v = softplus(-1.0) + lam * sigmoid(-2.0) * softplus(1.0)
    term_t = math.log(2) + lam * sigmoid(-2.0) * math.log(2)
    assert loss.item() == pytest.approx(base + (term_v + term_t) / 2, rel=1e-6)


def test_warm_up_and_single_modality_have_no_guidance() -> None:
    batch = {"a": torch.tensor([[2.0, 0.0]]), "v": torch.tensor([[1.0, 0.0]]), "y": torch.tensor([0])}
    obj = MNL(P(lam=0.7, start_round=3))
    model = hand_model(("a", "v"), obj)
    obj.begin_round(model, batch, ctx(["a", "v"], server_round=2))
    base = softplus(-1.5) + softplus(-2.0) + softplus(-1.0)
    assert obj.loss(model, batch).item() == pytest.approx(base, rel=1e-6)
    assert obj.last_guides == []
    obj.begin_round(model, batch, ctx(["a", "v"], server_round=3))
    assert obj.loss(model, batch).item() > base + 1e-3
    obj.begin_round(model, batch, ctx(["v"], server_round=5))
    # fused = [0.5, 0] (a slot zero) + head v
    assert obj.loss(model, batch).item() == pytest.approx(softplus(-0.5) + softplus(-1.0), rel=1e-6)


def test_negative_learning_term_reduction() -> None:
    weak = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    dominant = torch.tensor([[math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    # Row 0 only: -log(1/3) - lam * (1/4 + 1/4) * log(1/3), over B K = 6.
    value = negative_learning_term(weak, dominant, y, torch.tensor([True, False]), 0.4)
    assert value.item() == pytest.approx((math.log(3) + 0.4 * 0.5 * math.log(3)) / 6, rel=1e-6)


def test_lambda_is_the_config_name() -> None:
    assert MNL.param_aliases == {"lambda": "lam"}
    assert build_objective("mnl", {"lambda": 0.3}).params.lam == pytest.approx(0.3)
    assert build_objective("mnl", {}).params.lam == pytest.approx(0.7)


@pytest.mark.parametrize(("params", "match"), [({"lambda": -0.1}, "lambda"), ({"lambda": float("nan")}, "lambda"),
                                               ({"start_round": -1}, "start_round"), ({"start": 1.5}, "start"),
                                               ({"start": 0.25, "start_round": 3}, "not both")])
def test_bad_params(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_objective("mnl", params)
    direct = {("lam" if k == "lambda" else k): v for k, v in params.items()}
    with pytest.raises(ValueError, match=match):
        MNL(P(**direct))


@pytest.mark.parametrize("held", [["m0", "m1"], ["m0", "m1", "m2"], ["m0"]])
def test_one_local_epoch(held: list[str]) -> None:
    torch.manual_seed(0)
    specs = [ModalitySpec(m, (6,), "vector") for m in ("m0", "m1", "m2")[: max(2, len(held))]]
    obj = build_objective("mnl", {"lambda": 0.7})
    model = build_model(specs, 3, ModelConfig(embed_dim=8), obj)
    assert set(model.heads) == {s.name for s in specs}
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (40,), generator=g)
    data = {m: torch.randn(40, 6, generator=g) + y[:, None].float() for m in held}
    data["y"] = y
    result = train_local(model, data, obj, ctx(held), TrainConfig(epochs=1, batch_size=8, lr=0.05))
    assert math.isfinite(result.loss)


# -- schedule: a fraction of the run's local epochs ------------------------------------------------
def guided_epochs(params: MNL.Params, num_rounds: int, local_epochs: int) -> list[tuple[int, int]]:
    """``(round, local epoch)`` of every epoch with the negative-learning term."""
    obj = MNL(params)
    model = hand_model(("a", "v"), obj)
    batch = {"a": torch.tensor([[2.0, 0.0]]), "v": torch.tensor([[1.0, 0.0]]), "y": torch.tensor([0])}
    out = []
    for r in range(1, num_rounds + 1):
        obj.begin_round(model, batch, RoundContext(server_round=r, num_rounds=num_rounds, local_epochs=local_epochs,
                                                   modalities=["a", "v"]))
        for e in range(local_epochs):
            obj.begin_epoch(e)
            if obj.guiding():
                out.append((r, e))
    return out


def test_start_is_a_fraction_of_the_runs_local_epochs() -> None:
    # the default: the reference guides from the first epoch
    assert guided_epochs(P(), num_rounds=3, local_epochs=2) == [(r, e) for r in (1, 2, 3) for e in (0, 1)]
    # T = 40 in both runs; epoch g guides when g / 40 >= 0.25: g = 10..39, 30 of 40.
    a = guided_epochs(P(start=0.25), num_rounds=20, local_epochs=2)
    b = guided_epochs(P(start=0.25), num_rounds=10, local_epochs=4)
    assert a == [(r, e) for r in range(6, 21) for e in (0, 1)]
    assert b == [(3, 2), (3, 3)] + [(r, e) for r in range(4, 11) for e in range(4)]
    assert [(r - 1) * 2 + e for r, e in a] == [(r - 1) * 4 + e for r, e in b] == list(range(10, 40))
    # an explicit start round overrides the fraction
    assert guided_epochs(P(start_round=3), num_rounds=4, local_epochs=2) == [(3, 0), (3, 1), (4, 0), (4, 1)]
