"""MNL (``mnl``): guide selection, the loss on hand cases, the mean-of-heads fusion and the concat
alternative, M = 3, warm-up, single modality, one local epoch by hand, params."""

from __future__ import annotations

import math

import pytest
import torch
from schedules import scheduled_epochs
from torch import nn
from torch.nn import functional as F

from fedmm.data.base import ModalitySpec
from fedmm.models.net import ModelConfig, MultimodalNet
from fedmm.objectives.base import RoundContext
from fedmm.objectives.mnl import MNL, negative_learning_term, select_guides, strongest_competitor
from fedmm.objectives.registry import build_objective
from fedmm.training import TrainConfig, evaluate, train_local

P = MNL.Params


def softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def ce(z: list[float], y: int) -> float:
    """Cross-entropy of one row of logits, by hand."""
    return math.log(sum(math.exp(v) for v in z)) - z[y]


def softmax(z: list[float]) -> list[float]:
    total = sum(math.exp(v) for v in z)
    return [math.exp(v) / total for v in z]


def ctx(modalities: list[str], server_round: int = 1) -> RoundContext:
    return RoundContext(server_round=server_round, num_rounds=10, modalities=modalities)


def hand_model(names: tuple[str, ...], obj: MNL) -> MultimodalNet:
    """Identity encoders and identity heads (d = K = 2): z^m = x^m; fusion = mean of the z^m."""
    model = MultimodalNet(
        [ModalitySpec(m, (2,), "vector") for m in names],
        2,
        ModelConfig(embed_dim=2, encoders=dict.fromkeys(names, "mlp")),
    )
    obj.extend_model(model)
    with torch.no_grad():
        for m in names:
            model.encoders[m] = nn.Identity()
            model.heads[m].weight.copy_(torch.eye(2))
            model.heads[m].bias.zero_()
        model.fusion.linear.weight.copy_(torch.cat([torch.eye(2) / len(names)] * len(names), dim=1))
        model.fusion.linear.bias.zero_()
    return model


def reference_mnl_loss(
    out: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor, w: float
) -> torch.Tensor:
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
    batch = {
        "a": torch.tensor([[2.0, 0.0], [0.0, 0.0]]),
        "v": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        "y": torch.tensor([0, 1]),
    }
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
    obj = MNL(P(lam=0.7))  # default fusion: the reference's out = 0.5 * z_a + 0.5 * z_v
    model = MultimodalNet(
        [ModalitySpec(m, (5,), "vector") for m in ("a", "v")],
        5,
        ModelConfig(embed_dim=5, encoders=dict.fromkeys(("a", "v"), "mlp")),
    )
    obj.extend_model(model)
    with torch.no_grad():
        for m in ("a", "v"):
            model.encoders[m] = nn.Identity()
            model.heads[m].weight.copy_(torch.randn(5, 5) * 2)
            model.heads[m].bias.zero_()
    batch = {"a": torch.randn(16, 5), "v": torch.randn(16, 5), "y": torch.randint(0, 5, (16,))}
    obj.begin_round(model, batch, ctx(["a", "v"]))
    loss = obj.loss(model, batch)
    z = {m: model.heads[m](batch[m]) for m in ("a", "v")}
    ref = reference_mnl_loss(0.5 * z["a"] + 0.5 * z["v"], z["a"], z["v"], batch["y"], 0.7)
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
    z = {m: model.heads[m](batch[m]) for m in ("a", "v")}
    base = F.cross_entropy((z["a"] + z["v"]) / 2, batch["y"]) + sum(F.cross_entropy(v, batch["y"]) for v in z.values())
    base.backward()
    assert torch.allclose(guided, model.heads["a"].weight.grad)  # a guides: its head is untouched
    assert obj.last_guides == ["a"]


def test_three_modalities_guide_every_other_modality() -> None:
    lam = 0.5
    obj = MNL(P(lam=lam))
    model = hand_model(("a", "v", "t"), obj)
    batch = {
        "a": torch.tensor([[2.0, 0.0]]),
        "v": torch.tensor([[1.0, 0.0]]),
        "t": torch.tensor([[0.0, 0.0]]),
        "y": torch.tensor([0]),
    }
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
    # mean fusion of the lone head v: z^f = z^v = [1, 0], one CE
    assert obj.loss(model, batch).item() == pytest.approx(softplus(-1.0), rel=1e-6)
    concat = MNL(P(lam=0.7, fusion="concat"))
    model = hand_model(("a", "v"), concat)
    concat.begin_round(model, batch, ctx(["v"], server_round=5))
    # concat fusion: fused = [0.5, 0] (a slot zero) + head v
    assert concat.loss(model, batch).item() == pytest.approx(softplus(-0.5) + softplus(-1.0), rel=1e-6)


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


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"lambda": -0.1}, "lambda"),
        ({"lambda": float("nan")}, "lambda"),
        ({"start-round": -1}, "start-round"),
        ({"start": 1.5}, "start"),
        ({"start": 0.25, "start-round": 3}, "not both"),
    ],
)
def test_bad_params(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_objective("mnl", params)
    direct = {("lam" if k == "lambda" else k.replace("-", "_")): v for k, v in params.items()}
    with pytest.raises(ValueError, match=match):
        MNL(P(**direct))


# -- fusion: the mean of the head logits by default, the concat head under fusion = "concat" ------
def k3_model(obj: MNL) -> MultimodalNet:
    """d = K = 3, identity encoders and heads (z^m = x^m); the concat fusion head ignores its input
    and always says [0, 0, 3], so it differs from the mean of the heads."""
    model = MultimodalNet(
        [ModalitySpec(m, (3,), "vector") for m in ("a", "v")],
        3,
        ModelConfig(embed_dim=3, encoders=dict.fromkeys(("a", "v"), "mlp")),
    )
    obj.extend_model(model)
    with torch.no_grad():
        for m in ("a", "v"):
            model.encoders[m] = nn.Identity()
            model.heads[m].weight.copy_(torch.eye(3))
            model.heads[m].bias.zero_()
        model.fusion.linear.weight.zero_()
        model.fusion.linear.bias.copy_(torch.tensor([0.0, 0.0, 3.0]))
    return model


K3_BATCH = {"a": torch.tensor([[2.0, 0.0, 1.0]]), "v": torch.tensor([[1.0, 1.0, -2.0]]), "y": torch.tensor([0])}


def test_default_fusion_is_the_mean_of_the_heads_and_the_guide_comes_from_it() -> None:
    lam = 0.7
    obj = build_objective("mnl", {"lambda": lam})
    assert obj.params.fusion == "mean"
    model = k3_model(obj)
    obj.begin_round(model, K3_BATCH, ctx(["a", "v"]))
    loss = obj.loss(model, K3_BATCH)
    za, zv = [2.0, 0.0, 1.0], [1.0, 1.0, -2.0]
    fused = [(p + q) / 2 for p, q in zip(za, zv, strict=True)]  # [1.5, 0.5, -0.5]: j = 1
    # j = 1: xi^a = 2 - 0 = 2 > xi^v = 1 - 1 = 0, pi^a = softmax(za)_0 > pi^v -> a guides v
    assert softmax(za)[0] > softmax(zv)[0] and obj.last_guides == ["a"]
    pa, qv = softmax(za), softmax(zv)
    term = -math.log(qv[0]) - lam * (pa[1] * math.log(qv[1]) + pa[2] * math.log(qv[2]))
    expected = ce(fused, 0) + ce(za, 0) + ce(zv, 0) + term / 3  # B K = 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert model.fusion.linear.weight.grad is None  # the concat head takes no part


def test_concat_fusion_under_its_parameter() -> None:
    obj = build_objective("mnl", {"lambda": 0.7, "fusion": "concat"})
    model = k3_model(obj)
    obj.begin_round(model, K3_BATCH, ctx(["a", "v"]))
    loss = obj.loss(model, K3_BATCH)
    # fused = [0, 0, 3]: j = 2; xi^a = 2 - 1 = 1 < xi^v = 1 + 2 = 3 but pi^a > pi^v -> nobody guides
    assert obj.last_guides == [None]
    za, zv = [2.0, 0.0, 1.0], [1.0, 1.0, -2.0]
    assert loss.item() == pytest.approx(ce([0.0, 0.0, 3.0], 0) + ce(za, 0) + ce(zv, 0), rel=1e-6)
    loss.backward()
    assert model.fusion.linear.bias.grad is not None


def test_predict_is_the_fused_output_and_one_modality_gives_its_head() -> None:
    obj = MNL(P())
    model = k3_model(obj).eval()
    both = {m: K3_BATCH[m] for m in ("a", "v")}
    assert torch.allclose(obj.predict(model, both), torch.tensor([[1.5, 0.5, -0.5]]))
    assert torch.allclose(obj.predict(model, {"a": K3_BATCH["a"]}), K3_BATCH["a"])
    assert torch.allclose(obj.predict(model, {"v": K3_BATCH["v"]}), K3_BATCH["v"])
    # central evaluation: head a and the mean say class 0, head v (tie 0/1) says 0, the concat head 2
    metrics = evaluate(model, K3_BATCH, obj)
    assert (metrics["acc"], metrics["acc/a"], metrics["acc/v"]) == (1.0, 1.0, 1.0)
    concat = MNL(P(fusion="concat"))
    model = k3_model(concat).eval()
    assert torch.allclose(concat.predict(model, both), torch.tensor([[0.0, 0.0, 3.0]]))
    assert torch.allclose(concat.predict(model, {"a": K3_BATCH["a"]}), torch.tensor([[0.0, 0.0, 3.0]]))
    assert evaluate(model, K3_BATCH, concat)["acc"] == 0.0


def test_bad_fusion() -> None:
    with pytest.raises(ValueError, match="fusion"):
        build_objective("mnl", {"fusion": "sum"})
    with pytest.raises(ValueError, match="fusion"):
        MNL(P(fusion="sum"))


# -- one local epoch, checked by hand ---------------------------------------------------------------
def spec_mnl_loss(z: dict[str, torch.Tensor], y: torch.Tensor, lam: float) -> torch.Tensor:
    """docs/methods/mnl.md §2 with the mean fusion, written out on its own: z^f = mean_m z^m, j from z^f, the
    guide d_i has the largest xi and the largest pi (ties: the later modality), (1/(B K)) sum."""
    mods = list(z)
    b, k = z[mods[0]].shape
    fused = sum(z.values()) / len(z)
    loss = F.cross_entropy(fused, y) if len(z) > 1 else 0.0
    loss = loss + sum(F.cross_entropy(v, y) for v in z.values())
    if len(z) == 1:
        return loss
    for i in range(b):
        yi = int(y[i])
        probs = fused[i].detach().softmax(0).tolist()
        j = max((c for c in range(k) if c != yi), key=lambda c: probs[c])
        xi = [float((z[m][i, yi] - z[m][i, j]).detach()) for m in mods]
        pi = [float(z[m][i].detach().softmax(0)[yi]) for m in mods]
        by_xi = max(range(len(mods)), key=lambda n: (xi[n], n))
        by_pi = max(range(len(mods)), key=lambda n: (pi[n], n))
        if by_xi != by_pi:
            continue
        p_d = z[mods[by_xi]][i].detach().softmax(0)
        for n, w in enumerate(mods):
            if n != by_xi:
                log_q = z[w][i].log_softmax(0)
                weights = torch.tensor([1.0 if c == yi else lam * float(p_d[c]) for c in range(k)])
                loss = loss - (weights * log_q).sum() / (b * k)
    return loss


@pytest.mark.parametrize("held", [["m0", "m1"], ["m0", "m1", "m2"], ["m0"]])
def test_one_local_epoch_by_hand(held: list[str]) -> None:
    """One full batch through ``train_local``: the reported loss is the value of docs/methods/mnl.md §2 at the
    received weights, and the step moves each trained head by -lr times that loss's gradient."""
    lam, lr = 0.7, 0.1
    names = ("m0", "m1", "m2")[: max(2, len(held))]
    obj = build_objective("mnl", {"lambda": lam})
    model = MultimodalNet(
        [ModalitySpec(m, (3,), "vector") for m in names],
        3,
        ModelConfig(embed_dim=3, encoders=dict.fromkeys(names, "mlp")),
    )
    obj.extend_model(model)
    weights = {
        "m0": [[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        "m1": [[0.5, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 1.0]],
        "m2": [[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.5]],
    }
    with torch.no_grad():
        for m in names:
            model.encoders[m] = nn.Identity()
            model.heads[m].weight.copy_(torch.tensor(weights[m]))
            model.heads[m].bias.copy_(torch.tensor([0.1, 0.0, -0.1]))
    fusion_before = model.fusion.linear.weight.detach().clone()
    x = {
        "m0": torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
        "m1": torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]),
        "m2": torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 2.0]]),
    }
    y = torch.tensor([0, 1, 2])
    w = {m: torch.tensor(weights[m], requires_grad=True) for m in held}
    bias = {m: torch.tensor([0.1, 0.0, -0.1], requires_grad=True) for m in held}
    expected = spec_mnl_loss({m: x[m] @ w[m].T + bias[m] for m in held}, y, lam)
    expected.backward()
    data = {**{m: x[m] for m in held}, "y": y}
    result = train_local(
        model, data, obj, ctx(held), TrainConfig(epochs=1, batch_size=3, lr=lr, momentum=0.0, weight_decay=0.0)
    )
    assert result.num_steps == 1
    assert result.loss == pytest.approx(expected.item(), rel=1e-6)
    if len(held) > 1:
        assert any(g is not None for g in obj.last_guides)  # the batch has guidance
    for m in held:
        assert torch.allclose(model.heads[m].weight, w[m].detach() - lr * w[m].grad, atol=1e-6)
        assert torch.allclose(model.heads[m].bias, bias[m].detach() - lr * bias[m].grad, atol=1e-6)
    assert torch.equal(model.fusion.linear.weight, fusion_before)  # mean fusion: the concat head is not trained


# -- schedule: a fraction of the run's local epochs ------------------------------------------------
def guided_epochs(params: MNL.Params, num_rounds: int, local_epochs: int) -> list[tuple[int, int]]:
    """``(round, local epoch)`` of every epoch with the negative-learning term."""
    obj = MNL(params)
    model = hand_model(("a", "v"), obj)
    batch = {"a": torch.tensor([[2.0, 0.0]]), "v": torch.tensor([[1.0, 0.0]]), "y": torch.tensor([0])}
    return scheduled_epochs(obj, model, batch, num_rounds, local_epochs, lambda epoch: obj.guiding())


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
