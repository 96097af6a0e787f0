"""ARM reconstruction (``arm``): loss on hand cases (two and three modalities), one local epoch by
hand, roles, the M = 2 reduction of the M-modality rule, params, 1-round federations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedmm.data.base import ModalitySpec
from fedmm.groups import parameter_group
from fedmm.models.net import ModelConfig, MultimodalNet
from fedmm.objectives.arm import ARMReconstruction, distillation_kl
from fedmm.objectives.base import RoundContext
from fedmm.objectives.registry import build_objective
from fedmm.params import config_name
from fedmm.training import TrainConfig, train_local

P = ARMReconstruction.Params


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def hand_model(obj: ARMReconstruction) -> MultimodalNet:
    """Identity encoders (d = 2), k = 1, K = 2: z_a = [u0, -u0], z_v = [2 u0, 0]."""
    model = MultimodalNet(
        [ModalitySpec(m, (2,), "vector") for m in ("a", "v")],
        2,
        ModelConfig(embed_dim=2, encoders=dict.fromkeys(("a", "v"), "mlp")),
    )
    obj.extend_model(model)
    with torch.no_grad():
        for m in ("a", "v"):
            model.encoders[m] = nn.Identity()
            model.heads[m].classifier.bias.zero_()
        model.heads["a"].proj.weight.copy_(torch.tensor([[1.0, 0.0]]))  # P^T P = 1: no penalty
        model.heads["a"].classifier.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model.heads["v"].proj.weight.copy_(torch.tensor([[2.0, 0.0]]))  # P^T P = 4: penalty (4 - 1)^2 = 9
        model.heads["v"].classifier.weight.copy_(torch.tensor([[1.0], [0.0]]))
    return model


def ctx(modalities: list[str]) -> RoundContext:
    return RoundContext(server_round=1, num_rounds=10, modalities=modalities)


BATCH = {"a": torch.tensor([[1.0, 0.0]]), "v": torch.tensor([[0.5, 0.0]]), "y": torch.tensor([0])}


def test_loss_matches_hand_computation() -> None:
    obj = ARMReconstruction(
        P(
            strong_modality="a",
            subspace_dim=1,
            distill_weight=1.0,
            temperature=2.0,
            ortho_weight=0.01,
            strong_ce_weight=1.0,
        )
    )
    model = hand_model(obj)
    obj.begin_round(model, BATCH, ctx(["a", "v"]))
    # z_a = [1, -1] (strong), z_v = [1, 0] (weak), y = 0
    ce_weak = math.log(1 + math.exp(-1))
    ce_strong = math.log(1 + math.exp(-2))
    p = [sigmoid(1.0), sigmoid(-1.0)]  # softmax([1, -1] / 2)
    q = [sigmoid(0.5), sigmoid(-0.5)]  # softmax([1, 0] / 2)
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    expected = ce_weak + kl + 0.01 * 9 + ce_strong
    assert obj.loss(model, BATCH).item() == pytest.approx(expected, rel=1e-6)


def test_teacher_gets_no_gradient_from_the_distillation() -> None:
    obj = ARMReconstruction(P(strong_modality="a", subspace_dim=1, strong_ce_weight=0.0, ortho_weight=0.0))
    model = hand_model(obj)
    obj.begin_round(model, BATCH, ctx(["a", "v"]))
    obj.loss(model, BATCH).backward()
    assert all(p.grad is None for p in model.heads["a"].parameters())
    assert model.heads["v"].classifier.weight.grad is not None


def test_roles_follow_confidence_when_not_fixed() -> None:
    obj = ARMReconstruction(P(subspace_dim=1))
    model = hand_model(obj)
    z = obj.logits(model, BATCH)
    # y = 0: p_a = sigmoid(2) > p_v = sigmoid(1) -> a strong; y = 1: sigmoid(-2) < sigmoid(-1) -> v strong
    assert obj.roles(model, z, torch.tensor([0])) == ("a", ("v",))
    assert obj.roles(model, z, torch.tensor([1])) == ("v", ("a",))
    fixed = ARMReconstruction(P(subspace_dim=1, strong_modality="v"))
    assert fixed.roles(hand_model(fixed), z, torch.tensor([0])) == ("v", ("a",))


def test_single_modality_loss_and_predict() -> None:
    obj = ARMReconstruction(P(subspace_dim=1, ortho_weight=0.1))
    model = hand_model(obj)
    obj.begin_round(model, BATCH, ctx(["v"]))
    # z_v = [1, 0], y = 0, penalty 9
    assert obj.loss(model, BATCH).item() == pytest.approx(math.log(1 + math.exp(-1)) + 0.9, rel=1e-6)
    both = obj.predict(model, BATCH)
    assert torch.allclose(both, torch.tensor([[1.0, -0.5]]))  # mean of [1, -1] and [1, 0]
    assert torch.allclose(obj.predict(model, {"v": BATCH["v"], "y": BATCH["y"]}), torch.tensor([[1.0, 0.0]]))


def test_orthogonality_penalty_starts_at_zero() -> None:
    obj = ARMReconstruction(P())
    model = MultimodalNet(
        [ModalitySpec(m, (5,), "vector") for m in ("a", "v")],
        3,
        ModelConfig(embed_dim=8, encoders=dict.fromkeys(("a", "v"), "mlp")),
    )
    obj.extend_model(model)
    assert model.heads["a"].proj.weight.shape == (4, 8)
    assert model.heads["a"].orthogonality_penalty().item() == pytest.approx(0.0, abs=1e-10)
    assert {parameter_group(n) for n, _ in model.named_parameters()} == {
        "encoders.a",
        "encoders.v",
        "heads.a",
        "heads.v",
        "fusion",
    }


def hand_model3(obj: ARMReconstruction) -> MultimodalNet:
    """:func:`hand_model` plus a third modality ``t``: z_t = [0, u0], no penalty."""
    model = MultimodalNet(
        [ModalitySpec(m, (2,), "vector") for m in ("a", "v", "t")],
        2,
        ModelConfig(embed_dim=2, encoders=dict.fromkeys(("a", "v", "t"), "mlp")),
    )
    obj.extend_model(model)
    two = hand_model(ARMReconstruction(obj.params))
    with torch.no_grad():
        for m in ("a", "v"):
            model.heads[m].load_state_dict(two.heads[m].state_dict())
        model.heads["t"].classifier.bias.zero_()
        model.heads["t"].proj.weight.copy_(torch.tensor([[1.0, 0.0]]))
        model.heads["t"].classifier.weight.copy_(torch.tensor([[0.0], [1.0]]))
    for m in ("a", "v", "t"):
        model.encoders[m] = nn.Identity()
    return model


BATCH3 = {**BATCH, "t": torch.tensor([[1.0, 0.0]])}


def test_three_modalities_the_strongest_regularises_every_weaker_one() -> None:
    obj = ARMReconstruction(P(subspace_dim=1))  # roles by confidence, defaults otherwise
    model = hand_model3(obj)
    obj.begin_round(model, BATCH3, ctx(["a", "v", "t"]))
    # z_a = [1, -1], z_v = [1, 0], z_t = [0, 1], y = 0. Target probabilities: a sigmoid(2) = 0.88,
    # v sigmoid(1) = 0.73, t sigmoid(-1) = 0.27 -> a strong; v and t each get CE + KL toward a.
    p = [sigmoid(1.0), sigmoid(-1.0)]  # softmax(z_a / 2), the teacher
    q = {"v": [sigmoid(0.5), sigmoid(-0.5)], "t": [sigmoid(-0.5), sigmoid(0.5)]}  # softmax(z_w / 2)
    kl = {w: sum(pi * math.log(pi / qi) for pi, qi in zip(p, q[w], strict=True)) for w in q}
    ce = {"a": softplus(-2.0), "v": softplus(-1.0), "t": softplus(1.0)}
    expected = 0.01 * 9 + (ce["v"] + kl["v"]) + (ce["t"] + kl["t"]) + ce["a"]
    assert obj.roles(model, obj.logits(model, BATCH3), BATCH3["y"]) == ("a", ("v", "t"))
    assert obj.loss(model, BATCH3).item() == pytest.approx(expected, rel=1e-6)
    # a fixed strong modality the batch does not train: the roles fall back to confidence (v > t)
    fixed = ARMReconstruction(P(subspace_dim=1, strong_modality="a"))
    z = fixed.logits(model, BATCH3, ["v", "t"])
    assert fixed.roles(model, z, BATCH3["y"]) == ("v", ("t",))


def two_modality_loss(obj: ARMReconstruction, model: MultimodalNet, batch: dict) -> torch.Tensor:
    """The two-modality loss as it was written before the M-modality rule (the oracle)."""
    p = obj.params
    y = batch["y"]
    z = obj.logits(model, batch, ["a", "v"])
    loss = p.ortho_weight * sum(model.heads[m].orthogonality_penalty() for m in z)
    if p.strong_modality:
        strong = p.strong_modality
        weak = "v" if strong == "a" else "a"
    else:
        conf = {m: z[m].softmax(dim=1).gather(1, y[:, None]).sum() for m in ("a", "v")}
        strong, weak = ("a", "v") if conf["a"] >= conf["v"] else ("v", "a")
    loss = loss + F.cross_entropy(z[weak], y)
    loss = loss + p.distill_weight * distillation_kl(z[weak], z[strong], p.temperature)
    return loss + p.strong_ce_weight * F.cross_entropy(z[strong], y)


@pytest.mark.parametrize("strong", ["", "a", "v"])
def test_two_modalities_reduce_exactly_to_the_two_modality_loss(strong: str) -> None:
    torch.manual_seed(0)
    obj = ARMReconstruction(P(strong_modality=strong, distill_weight=0.7, temperature=1.5, ortho_weight=0.05))
    model = MultimodalNet(
        [ModalitySpec(m, (5,), "vector") for m in ("a", "v")],
        3,
        ModelConfig(embed_dim=8, encoders=dict.fromkeys(("a", "v"), "mlp")),
    )
    obj.extend_model(model)
    for seed in range(4):  # batches on which either modality is the more confident one
        g = torch.Generator().manual_seed(seed)
        batch = {
            "a": torch.randn(6, 5, generator=g),
            "v": 3 * torch.randn(6, 5, generator=g),
            "y": torch.randint(0, 3, (6,), generator=g),
        }
        obj.begin_round(model, batch, ctx(["a", "v"]))
        assert torch.equal(obj.loss(model, batch), two_modality_loss(obj, model, batch))
    if not strong:  # a tie in confidence: the first modality is the strong one, as `conf_a >= conf_v`
        z = torch.tensor([[1.0, 0.0, -1.0]])
        assert obj.roles(model, {"a": z, "v": z.clone()}, torch.tensor([0])) == ("a", ("v",))


def test_model_dependent_param_errors() -> None:
    model = MultimodalNet(
        [ModalitySpec(m, (5,), "vector") for m in ("a", "v")],
        3,
        ModelConfig(embed_dim=8, encoders=dict.fromkeys(("a", "v"), "mlp")),
    )
    with pytest.raises(ValueError, match="strong-modality"):
        ARMReconstruction(P(strong_modality="x")).extend_model(model)
    with pytest.raises(ValueError, match="subspace-dim"):
        ARMReconstruction(P(subspace_dim=8)).extend_model(model)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"subspace_dim": -1}, "subspace-dim"),
        ({"distill_weight": -1.0}, "distill-weight"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"ortho_weight": -0.1}, "ortho-weight"),
        ({"strong_ce_weight": -1.0}, "strong-ce-weight"),
    ],
)
def test_bad_params(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ARMReconstruction(P(**params))
    with pytest.raises(ValueError):
        build_objective("arm", {config_name(k): v for k, v in params.items()})


def softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


@pytest.mark.parametrize("held", [["a", "v"], ["v"]])
def test_one_local_epoch_by_hand(held: list[str]) -> None:
    """One full batch through ``train_local`` with the default parameters (k = 1, T = 2, weights 1,
    ortho 0.01, roles by confidence): the reported loss is the hand value at the received weights,
    and the step moves every trained weight by -lr times the gradient of the formula of docs/methods/arm.md §2."""
    lr = 0.1
    obj = build_objective("arm", {})
    model = hand_model(obj)  # z_a = [u0, -u0], z_v = [2 u0, 0]
    x = {"a": torch.tensor([[1.0, 0.0], [-1.0, 3.0]]), "v": torch.tensor([[0.5, 1.0], [0.25, 0.0]])}
    y = torch.tensor([0, 1])
    data = {**{m: x[m] for m in held}, "y": y}
    # z_a = [1, -1], [-1, 1]; z_v = [1, 0], [0.5, 0]. Summed target probabilities: a 2 sigmoid(2) = 1.76,
    # v sigmoid(1) + sigmoid(-0.5) = 1.11 -> a is strong, v weak. Penalties: a 0, v (4 - 1)^2 = 9.
    ce_v = (softplus(-1.0) + softplus(0.5)) / 2
    ce_a = softplus(-2.0)
    if held == ["v"]:
        hand = ce_v + 0.01 * 9
    else:
        p = [[sigmoid(1.0), sigmoid(-1.0)], [sigmoid(-1.0), sigmoid(1.0)]]  # softmax(z_a / 2)
        q = [[sigmoid(0.5), sigmoid(-0.5)], [sigmoid(0.25), sigmoid(-0.25)]]  # softmax(z_v / 2)
        kl = sum(pc * math.log(pc / qc) for pr, qr in zip(p, q, strict=True) for pc, qc in zip(pr, qr, strict=True)) / 2
        hand = ce_v + kl + 0.01 * 9 + ce_a

    # the formula of docs/methods/arm.md §2 on plain tensors, for the gradient of the step
    proj = {m: model.heads[m].proj.weight.detach().clone().requires_grad_() for m in held}
    clf = {m: model.heads[m].classifier.weight.detach().clone().requires_grad_() for m in held}
    bias = {m: model.heads[m].classifier.bias.detach().clone().requires_grad_() for m in held}
    z = {m: x[m] @ proj[m].T @ clf[m].T + bias[m] for m in held}
    spec = F.cross_entropy(z["v"], y) + 0.01 * sum(((proj[m] @ proj[m].T) - 1).pow(2).sum() for m in held)
    if held == ["a", "v"]:
        teacher = (z["a"].detach() / 2).softmax(1)
        spec = spec + (teacher * (teacher.log() - (z["v"] / 2).log_softmax(1))).sum(1).mean()
        spec = spec + F.cross_entropy(z["a"], y)
    assert spec.item() == pytest.approx(hand, rel=1e-6)
    spec.backward()

    result = train_local(
        model, data, obj, ctx(held), TrainConfig(epochs=1, batch_size=2, lr=lr, momentum=0.0, weight_decay=0.0)
    )
    assert result.num_steps == 1
    assert result.loss == pytest.approx(hand, rel=1e-6)
    for m in held:
        head = model.heads[m]
        assert torch.allclose(head.proj.weight, proj[m].detach() - lr * proj[m].grad, atol=1e-6)
        assert torch.allclose(head.classifier.weight, clf[m].detach() - lr * clf[m].grad, atol=1e-6)
        assert torch.allclose(head.classifier.bias, bias[m].detach() - lr * bias[m].grad, atol=1e-6)


@pytest.mark.parametrize("num_modalities", [3, 4])
def test_one_round_federation_on_synthetic(flower_identity, num_modalities: int) -> None:
    """``objective = arm`` on synthetic with 3 and 4 modalities: every client trains, every
    modality's subspace head is aggregated and evaluated."""
    from inprocess import run_in_process

    from fedmm.config import load_config

    run = load_config(
        None,
        [
            "dataset=synthetic",
            f"dataset.num-modalities={num_modalities}",
            "objective=arm",
            "num-server-rounds=1",
            "num-clients=3",
            "partition=iid",
            "local-epochs=1",
            "device=cpu",
            "client-num-cpus=1",
        ],
    )
    heads = {}
    rows = run_in_process(
        run,
        on_round=lambda plan, row: heads.update(
            {m: plan.model.heads[m].proj.weight.shape for m in plan.model.modalities}
        ),
    )
    mods = [f"m{i}" for i in range(num_modalities)]
    assert [r["round"] for r in rows] == [0, 1] and rows[-1]["clients-ok"] == 3
    assert all(0.0 <= rows[-1][f"test/acc/{m}"] <= 1.0 for m in mods)
    assert heads == dict.fromkeys(mods, torch.Size([32, 64]))
