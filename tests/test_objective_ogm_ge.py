"""OGM-GE (``ogm-ge``): coefficients on hand cases, the M-modality rule, gradient modulation, params."""

from __future__ import annotations

import math

import pytest
import torch
from schedules import scheduled_epochs
from torch import nn

from fedmm.data.base import ModalitySpec
from fedmm.models.net import ModelConfig, MultimodalNet
from fedmm.objectives.base import RoundContext
from fedmm.objectives.ogm_ge import (
    OGMGE,
    confidence_sums,
    discrepancy_ratios,
    modulated_parameters,
    modulation_coefficients,
)
from fedmm.objectives.registry import build_objective
from fedmm.params import config_name
from fedmm.training import TrainConfig, build_model, train_local

P = OGMGE.Params


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def reference_two_modality(s_a: float, s_v: float, alpha: float) -> tuple[float, float]:
    """The reference code's branch, transcribed: returns ``(coeff_a, coeff_v)``."""
    ratio_v = s_v / s_a
    ratio_a = 1 / ratio_v
    if ratio_v > 1:
        return 1.0, 1 - math.tanh(alpha * ratio_v)
    return 1 - math.tanh(alpha * ratio_a), 1.0


def ctx(modalities: list[str], server_round: int = 1) -> RoundContext:
    return RoundContext(server_round=server_round, num_rounds=100, modalities=modalities)


def hand_model() -> MultimodalNet:
    """Linear identity encoders (d = 2, with a zero bias), K = 2, fusion [W_a | W_v] = [2 I | 0.5 I]."""
    model = MultimodalNet(
        [ModalitySpec(m, (2,), "vector") for m in ("a", "v")],
        2,
        ModelConfig(embed_dim=2, encoders=dict.fromkeys(("a", "v"), "mlp")),
    )
    with torch.no_grad():
        for m in ("a", "v"):
            enc = nn.Linear(2, 2)
            enc.weight.copy_(torch.eye(2))
            enc.bias.zero_()
            model.encoders[m] = enc
        model.fusion.linear.weight.copy_(torch.cat([2.0 * torch.eye(2), 0.5 * torch.eye(2)], dim=1))
        model.fusion.linear.bias.zero_()
    return model


# Slot logits: a -> [2, 0] / [0, 2]; v -> [0.5, 0] / [0, 0.5]; both samples predicted correctly,
# a far more confidently: s^a = 2 sigmoid(2), s^v = 2 sigmoid(0.5).
BATCH = {"a": torch.eye(2), "v": torch.eye(2), "y": torch.tensor([0, 1])}
S_A, S_V = 2 * sigmoid(2.0), 2 * sigmoid(0.5)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_confidence_sums_are_batch_sums() -> None:
    model = hand_model()
    feats = model.encode(BATCH)
    s = confidence_sums(model.slot_logits(feats), BATCH["y"])
    assert s["a"] == pytest.approx(S_A, rel=1e-6)
    assert s["v"] == pytest.approx(S_V, rel=1e-6)


def test_dominant_encoder_is_damped_by_k_and_the_rest_untouched() -> None:
    alpha = 0.8
    obj = OGMGE(P(alpha=alpha, ge=False))
    model = hand_model()
    obj.begin_round(model, BATCH, ctx(["a", "v"]))
    loss = obj.loss(model, BATCH)
    k_a = 1 - math.tanh(alpha * S_A / S_V)  # rho_a = 1.415..., k_a = 0.167...
    assert obj.last_coefficients == pytest.approx({"a": k_a, "v": 1.0}, rel=1e-6)
    assert 0.1 < k_a < 0.2
    loss.backward()
    before = grads(model)
    obj.adjust_gradients(model, BATCH)
    after = grads(model)
    assert before["encoders.a.weight"].abs().sum() > 0
    assert torch.allclose(after["encoders.a.weight"], k_a * before["encoders.a.weight"])
    for name in before:
        if name != "encoders.a.weight":  # v encoder, a's bias (1-D) and the fusion layer
            assert torch.equal(after[name], before[name]), name


def test_the_damped_modality_follows_the_confidence() -> None:
    obj = OGMGE(P(alpha=0.5, ge=False))
    model = hand_model()
    with torch.no_grad():  # now v is the confident one
        model.fusion.linear.weight.copy_(torch.cat([0.5 * torch.eye(2), 2.0 * torch.eye(2)], dim=1))
    obj.begin_round(model, BATCH, ctx(["a", "v"]))
    obj.loss(model, BATCH)
    assert obj.last_coefficients == pytest.approx({"a": 1.0, "v": 1 - math.tanh(0.5 * S_A / S_V)}, rel=1e-6)


def test_outside_the_window_and_single_modality_is_plain_ce() -> None:
    for context in (ctx(["a", "v"], server_round=52), ctx(["a"], server_round=1)):
        obj = OGMGE(P(alpha=0.8, ge=True))
        model = hand_model()
        obj.begin_round(model, BATCH, context)
        loss = obj.loss(model, BATCH)
        expected = nn.functional.cross_entropy(model({m: BATCH[m] for m in context.modalities}), BATCH["y"])
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        loss.backward()
        before = grads(model)
        obj.adjust_gradients(model, BATCH)
        assert obj.last_coefficients is None
        assert all(torch.equal(g, grads(model)[n]) for n, g in before.items())
        assert obj.end_round(model, BATCH) == {}
    # The last round of the window still modulates.
    obj = OGMGE(P(modulation_start_round=3, modulation_end_round=5))
    obj.begin_round(hand_model(), BATCH, ctx(["a", "v"], server_round=5))
    assert obj.modulating()
    obj.begin_round(hand_model(), BATCH, ctx(["a", "v"], server_round=2))
    assert not obj.modulating()


def test_general_rule_reduces_to_the_reference_two_modality_rule() -> None:
    cases = [(3.0, 1.0), (1.0, 3.0), (2.5, 2.5), (0.7, 0.69), (10.0, 0.01), (4.0, 4.0)]
    for alpha in (0.1, 0.8, 2.0):
        for s_a, s_v in cases:
            coeffs = modulation_coefficients({"a": s_a, "v": s_v}, alpha)
            ref_a, ref_v = reference_two_modality(s_a, s_v, alpha)
            assert coeffs["a"] == pytest.approx(ref_a, rel=1e-12), (s_a, s_v, alpha)
            assert coeffs["v"] == pytest.approx(ref_v, rel=1e-12), (s_a, s_v, alpha)
    # The tie damps the first modality, as the reference's else branch damps audio.
    assert modulation_coefficients({"a": 2.0, "v": 2.0}, 0.8) == pytest.approx({"a": 1 - math.tanh(0.8), "v": 1.0})


def test_three_modality_rule_by_hand() -> None:
    # s = (3, 1, 2): rho = 3 / 1.5 = 2, 1 / 2.5 = 0.4, 2 / 2 = 1 -> only a is damped.
    assert discrepancy_ratios({"a": 3.0, "v": 1.0, "t": 2.0}) == pytest.approx({"a": 2.0, "v": 0.4, "t": 1.0})
    assert modulation_coefficients({"a": 3.0, "v": 1.0, "t": 2.0}, 0.5) == pytest.approx(
        {"a": 1 - math.tanh(1.0), "v": 1.0, "t": 1.0}
    )
    # s = (3, 3, 1): rho_a = rho_v = 3 / 2 -> both damped, t untouched.
    k = 1 - math.tanh(0.5 * 1.5)
    assert modulation_coefficients({"a": 3.0, "v": 3.0, "t": 1.0}, 0.5) == pytest.approx({"a": k, "v": k, "t": 1.0})
    # All equal: the first modality is damped with rho = 1.
    assert modulation_coefficients({"a": 1.0, "v": 1.0, "t": 1.0}, 0.5) == pytest.approx(
        {"a": 1 - math.tanh(0.5), "v": 1.0, "t": 1.0}
    )


def test_selector_takes_conv_kernels_and_linear_weights_only() -> None:
    specs = [ModalitySpec("s", (3, 16), "series"), ModalitySpec("f", (5,), "vector")]
    model = MultimodalNet(specs, 3, ModelConfig(embed_dim=8, encoders={"s": "cnn1d", "f": "mlp"}))
    conv = modulated_parameters(model, "s")
    assert [p.ndim for p in conv] == [3, 3, 3]  # the three Conv1d kernels, no BN, no bias
    lin = modulated_parameters(model, "f")
    assert [tuple(p.shape) for p in lin] == [(128, 5), (8, 128)]


def test_ge_noise_has_the_gradient_std_and_spares_1d_tensors() -> None:
    torch.manual_seed(0)
    specs = [ModalitySpec(m, (40,), "vector") for m in ("a", "v")]
    model = MultimodalNet(specs, 4, ModelConfig(embed_dim=16, encoders={"a": "mlp", "v": "mlp"}))
    obj = OGMGE(P(alpha=0.8, ge=True))
    batch = {"a": torch.randn(32, 40), "v": torch.randn(32, 40), "y": torch.randint(0, 4, (32,))}
    obj.begin_round(model, batch, ctx(["a", "v"]))
    obj.loss(model, batch).backward()
    coeffs = dict(obj.last_coefficients)
    before = grads(model)
    obj.adjust_gradients(model, batch)
    after = grads(model)
    for m in ("a", "v"):
        name = f"encoders.{m}.1.weight"  # the 128 x 40 first linear layer
        noise = after[name] - coeffs[m] * before[name]
        ratio = float(noise.std() / before[name].std())
        assert 0.9 < ratio < 1.1, (m, ratio)
        assert torch.equal(after[f"encoders.{m}.1.bias"], before[f"encoders.{m}.1.bias"])
        assert torch.equal(after[f"encoders.{m}.2.weight"], before[f"encoders.{m}.2.weight"])  # batch norm
    assert torch.equal(after["fusion.linear.weight"], before["fusion.linear.weight"])
    facts = obj.end_round(model, batch)
    assert facts == pytest.approx({f"ogm-coeff/{m}": coeffs[m] for m in ("a", "v")})


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"modulation_start_round": -1}, "modulation-start-round"),
        ({"modulation_start_round": 10, "modulation_end_round": 5}, "modulation-end-round"),
        ({"modulation_start": 0.6, "modulation_end": 0.5}, "modulation-start"),
        ({"modulation_end": 1.5}, "modulation-end"),
        ({"modulation_end": 0.4, "modulation_end_round": 8}, "not both"),
    ],
)
def test_bad_params(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OGMGE(P(**params))
    with pytest.raises(ValueError, match=match):
        build_objective("ogm-ge", {config_name(k): v for k, v in params.items()})


@pytest.mark.parametrize("held", [["m0", "m1"], ["m0", "m1", "m2"], ["m0"]])
def test_one_local_epoch(held: list[str]) -> None:
    torch.manual_seed(0)
    specs = [ModalitySpec(m, (6,), "vector") for m in ("m0", "m1", "m2")[: max(2, len(held))]]
    obj = build_objective("ogm-ge", {"alpha": 0.8})
    model = build_model(specs, 3, ModelConfig(embed_dim=8, encoders={s.name: "mlp" for s in specs}), obj)
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (40,), generator=g)
    data = {m: torch.randn(40, 6, generator=g) + y[:, None].float() for m in held}
    data["y"] = y
    result = train_local(model, data, obj, ctx(held), TrainConfig(epochs=1, batch_size=8, lr=0.05))
    assert math.isfinite(result.loss)
    facts = obj.end_round(model, data)
    if len(held) >= 2:
        assert set(facts) == {f"ogm-coeff/{m}" for m in held}
        assert all(0.0 <= v <= 1.0 for v in facts.values())
    else:
        assert facts == {}


# -- schedule: a fraction of the run's local epochs ------------------------------------------------
def modulated_epochs(params: OGMGE.Params, num_rounds: int, local_epochs: int) -> list[tuple[int, int]]:
    """``(round, local epoch)`` of every epoch whose batches ``loss`` modulates."""
    obj = OGMGE(params)
    model = hand_model()

    def modulates(epoch: int) -> bool:
        obj.loss(model, BATCH)
        return obj.last_coefficients is not None

    return scheduled_epochs(obj, model, BATCH, num_rounds, local_epochs, modulates)


def test_window_is_a_fraction_of_the_runs_local_epochs() -> None:
    # T = 40 local epochs in both runs; epoch g is modulated when g / 40 <= 0.5: g = 0..20, 21 of 40.
    a = modulated_epochs(P(), num_rounds=20, local_epochs=2)
    b = modulated_epochs(P(), num_rounds=10, local_epochs=4)
    assert a == [(r, e) for r in range(1, 11) for e in range(2)] + [(11, 0)]  # round 11 is half inside
    assert b == [(r, e) for r in range(1, 6) for e in range(4)] + [(6, 0)]
    assert [(r - 1) * 2 + e for r, e in a] == [(r - 1) * 4 + e for r, e in b] == list(range(21))
    # the reference: epochs 0..50 (inclusive) of 100
    assert modulated_epochs(P(), num_rounds=100, local_epochs=1) == [(r, 0) for r in range(1, 52)]


def test_window_in_rounds_is_an_explicit_override() -> None:
    assert modulated_epochs(P(modulation_end_round=3), num_rounds=6, local_epochs=2) == [
        (r, e) for r in (1, 2, 3) for e in (0, 1)
    ]
    assert modulated_epochs(P(modulation_start_round=5), num_rounds=6, local_epochs=1) == [(5, 0), (6, 0)]
    assert modulated_epochs(P(modulation_start=0.5, modulation_end=0.75), num_rounds=4, local_epochs=1) == [
        (3, 0),
        (4, 0),
    ]
    # the update pass before round 1 (round 0) is the start of training
    obj = OGMGE(P())
    obj.begin_round(
        hand_model(), BATCH, RoundContext(server_round=0, num_rounds=20, local_epochs=2, modalities=["a", "v"])
    )
    assert obj.modulating()
