"""The per-round learning-rate schedule (lr-min, lr-decay-start) and mixed-precision training."""

from __future__ import annotations

import math
import types

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedmm.config import RunConfig, load_config
from fedmm.data import load_dataset
from fedmm.data.base import LABEL_KEY, Dataset, TensorDict
from fedmm.data.registry import dataset_entry
from fedmm.models.net import ModelConfig, MultimodalNet
from fedmm.objectives import Objective, RoundContext, build_objective
from fedmm.objectives.base import FP32, Precision
from fedmm.objectives.boost import ACTIVE_KEY, boosting_loss
from fedmm.training import TrainConfig, add_proximal_hook, build_model, evaluate, train_local
from fedmm.workspace import round_lr, train_config_of


# -- learning-rate schedule ------------------------------------------------------------------------
def schedule(**keys: object) -> RunConfig:
    return RunConfig.from_mapping({"lr": 1e-3, "lr-min": 1e-4, "lr-decay-start": 80, "num-server-rounds": 180, **keys})


def test_constant_phase_then_linear_decay_to_lr_min() -> None:
    run = schedule()
    assert [round_lr(run, r) for r in (1, 2, 79, 80)] == [1e-3] * 4
    # lr - (lr - lr_min) * r / T: round 81 -> 1e-3 - 9e-4 * 81 / 180 = 5.95e-4, round 120 -> 4e-4
    assert round_lr(run, 81) == pytest.approx(5.95e-4, rel=1e-12)
    assert round_lr(run, 120) == pytest.approx(4.0e-4, rel=1e-12)
    assert round_lr(run, 179) == pytest.approx(1e-3 - 9e-4 * 179 / 180, rel=1e-12)
    assert round_lr(run, 180) == 1e-4  # exactly lr-min in the last round
    rates = [round_lr(run, r) for r in range(81, 181)]
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))


def test_lr_decay_start_zero_keeps_lr_constant() -> None:
    run = RunConfig.from_mapping({"lr": 0.05, "num-server-rounds": 10})
    assert run.lr_decay_start == 0 and run.lr_min == 0.0
    assert [round_lr(run, r) for r in range(1, 11)] == [0.05] * 10


def test_round_lr_rejects_rounds_outside_the_run() -> None:
    run = schedule()
    assert round_lr(run, 0) == 1e-3  # the update pass before round 1 trains at lr
    for bad in (181, -3):
        with pytest.raises(ValueError, match=r"server_round must be in 0\.\.180"):
            round_lr(run, bad)


def test_train_config_of_carries_the_round_lr_and_the_precision() -> None:
    run = schedule(precision="bf16")
    early = train_config_of(run, server_round=10, proximal_mu=0.0, seed=3)
    late = train_config_of(run, server_round=180, proximal_mu=0.01, seed=4)
    assert (early.lr, late.lr) == (1e-3, 1e-4)
    assert early.precision == late.precision == "bf16"
    assert (late.proximal_mu, late.seed, late.epochs, late.batch_size) == (0.01, 4, run.local_epochs, run.batch_size)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lr-decay-start=180"], r"'lr-decay-start' must be < num-server-rounds \(180\) or 0"),
        (["lr-decay-start=200"], r"'lr-decay-start' must be < num-server-rounds"),
        (["lr-min=2e-3"], r"'lr-min' must be in \(0, lr\] = \(0, 0\.001\] when lr-decay-start > 0.*got 0\.002"),
        (["lr-min=0.0"], r"'lr-min' must be in \(0, lr\]"),
        (["lr-min=-1e-4"], r"'lr-min' must be >= 0\.0"),
        (["lr-decay-start=-1"], r"'lr-decay-start' must be >= 0"),
        (["lr-decay-start=1.5"], r"'lr-decay-start' expects int"),
        (["precision=fp8"], r"'precision' must be one of \['fp32', 'bf16', 'fp16'\], got 'fp8'"),
        (["precision=bf32"], r"did you mean"),
    ],
)
def test_bad_schedule_and_precision_keys_name_the_key(overrides: list[str], message: str) -> None:
    base = ["lr=1e-3", "lr-min=1e-4", "lr-decay-start=80", "num-server-rounds=180"]
    with pytest.raises(ValueError, match=message):
        load_config(None, [*base, *overrides])


def test_lr_min_is_free_while_the_schedule_is_off() -> None:
    run = load_config(None, ["lr=0.01", "lr-min=0.5"])  # ignored: lr-decay-start = 0
    assert round_lr(run, 1) == 0.01
    assert load_config(None, ["precision=fp16"]).precision == "fp16"


def test_train_config_checks_precision() -> None:
    assert TrainConfig(epochs=1, batch_size=2, lr=0.1).precision == "fp32"
    message = r"TrainConfig.precision must be one of \['fp32', 'bf16', 'fp16'\], got 'half'"
    with pytest.raises(ValueError, match=message):
        TrainConfig(epochs=1, batch_size=2, lr=0.1, precision="half")
    with pytest.raises(ValueError, match="precision must be one of"):
        Precision("fp64")


# -- mixed precision -------------------------------------------------------------------------------
def synthetic() -> Dataset:
    return load_dataset("synthetic", num_train=240, num_test=80)


def model_for(dataset: Dataset, objective: Objective, seed: int = 0) -> MultimodalNet:
    torch.manual_seed(seed)
    encoders = dataset_entry("synthetic").default_encoders(dataset.modalities)
    return build_model(dataset.modalities, dataset.num_classes, ModelConfig(embed_dim=8, encoders=encoders), objective)


def round_ctx(dataset: Dataset, extras: dict | None = None) -> RoundContext:
    return RoundContext(server_round=1, num_rounds=5, modalities=dataset.modality_names, extras=extras or {})


def record_output_dtypes(module: nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    module.register_forward_hook(lambda _m, _args, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_epoch_runs_under_autocast(precision: str, dtype: torch.dtype) -> None:
    dataset = synthetic()
    objective = build_objective("ce", {})
    model = model_for(dataset, objective)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = record_output_dtypes(model.fusion)
    result = train_local(
        model,
        dataset.train,
        objective,
        round_ctx(dataset),
        TrainConfig(epochs=1, batch_size=16, lr=0.05, precision=precision),
    )
    assert seen and set(seen) == {dtype}  # the fusion layer ran in the half type at every step
    assert math.isfinite(result.loss) and result.num_steps == 15
    used = objective.ctx.precision
    assert used.name == precision and (used.scaler is not None) == (precision == "fp16")
    state = model.state_dict()
    assert all(v.dtype == before[k].dtype for k, v in state.items())  # weights stay float32
    assert not torch.equal(state["fusion.linear.weight"], before["fusion.linear.weight"])
    seen.clear()
    metrics = evaluate(model, dataset.test, objective)
    assert set(seen) == {torch.float32}  # evaluation stays fp32
    assert metrics["acc"] > 1 / dataset.num_classes


def test_boost_steps_under_bf16_autocast() -> None:
    dataset = synthetic()
    objective = build_objective("boost", {"n-max": 3})
    model = model_for(dataset, objective)
    seen = record_output_dtypes(model.fusion.boost_out)
    result = train_local(
        model,
        dataset.train,
        objective,
        round_ctx(dataset, {ACTIVE_KEY: [2, 2]}),
        TrainConfig(epochs=1, batch_size=16, lr=0.05, precision="bf16"),
    )
    assert seen and set(seen) == {torch.bfloat16}
    assert math.isfinite(result.loss)
    for m in dataset.modality_names:  # the confidences are true probabilities summed per sample
        assert 0.0 < result.facts[f"boost-conf-{m}"] <= result.facts[f"boost-count-{m}"] == 240.0


def linear_batch() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    x = torch.randn(8, 4) * 0.05  # small: the scaled fp16 gradients (scale 2**16) must not overflow
    return layer, x, torch.arange(8) % 3


def test_fp16_backward_leaves_true_gradients_for_adjust_gradients_and_the_proximal_hook() -> None:
    layer, x, y = linear_batch()
    with torch.autocast("cpu", dtype=torch.float16):
        F.cross_entropy(layer(x), y).backward()
    reference = layer.weight.grad.clone()  # the unscaled fp16-autocast gradient
    layer.zero_grad(set_to_none=True)

    params = list(layer.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    add_proximal_hook(optimizer, params, mu=0.5)
    with torch.no_grad():
        layer.weight += 0.3  # w - w_0 = 0.3 for the proximal term
    start = layer.weight.detach().clone()
    seen_by_hooks: list[torch.Tensor] = []
    optimizer.register_step_pre_hook(lambda opt, a, k: seen_by_hooks.append(layer.weight.grad.clone()))

    precision = Precision("fp16", "cpu")
    with precision.autocast():
        loss = F.cross_entropy(layer(x), y)
    precision.backward(loss, optimizer)
    torch.testing.assert_close(layer.weight.grad, reference, rtol=1e-3, atol=1e-5)  # what adjust_gradients sees
    precision.step(optimizer)
    assert len(seen_by_hooks) == 1  # the step was taken (no overflow) ...
    torch.testing.assert_close(seen_by_hooks[0], reference + 0.5 * 0.3, rtol=1e-3, atol=1e-5)  # ... on true grads
    torch.testing.assert_close(layer.weight.detach(), start - 0.1 * (reference + 0.15), rtol=1e-4, atol=1e-6)


def test_fp16_skips_a_step_whose_gradients_overflow_and_lowers_the_scale() -> None:
    layer, x, y = linear_batch()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    precision = Precision("fp16", "cpu")
    start = layer.weight.detach().clone()
    scale = precision.scaler.get_scale()
    with precision.autocast():
        loss = F.cross_entropy(layer(x * 1e4), y) * 1e4  # scaled by 2**16 this overflows fp16
    precision.backward(loss, optimizer)
    precision.step(optimizer)
    assert torch.equal(layer.weight.detach(), start)
    assert precision.scaler.get_scale() < scale


def test_fp32_precision_is_a_no_op() -> None:
    assert FP32.name == "fp32" and FP32.scaler is None and FP32.dtype is None
    assert RoundContext(server_round=1, num_rounds=1, modalities=["m0"]).precision.name == "fp32"
    layer, x, y = linear_batch()
    with FP32.autocast():
        assert layer(x).dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")


# -- fp32 is what it was before precision existed ----------------------------------------------------
def old_train_step(self: Objective, model: nn.Module, batch: TensorDict, optimizer: torch.optim.Optimizer) -> float:
    """``Objective.train_step`` as it was before mixed precision."""
    optimizer.zero_grad(set_to_none=True)
    loss = self.loss(model, batch)
    loss.backward()
    self.adjust_gradients(model, batch)
    optimizer.step()
    return float(loss.detach())


def old_boost_train_step(self, model: nn.Module, batch: TensorDict, optimizer: torch.optim.Optimizer) -> float:
    """``SustainedBoosting.train_step`` as it was before mixed precision (its reported loss as now:
    ``CE(Z_n, y)`` of each modality before its step, not the boosting loss)."""
    y = batch[LABEL_KEY]
    losses = []
    for m in self.trained_modalities(model, batch):
        optimizer.zero_grad(set_to_none=True)
        out = self.outputs(model, m, model.encoders[m](batch[m]))
        loss = boosting_loss(out, y, self.params.lam)
        with torch.no_grad():
            p_y = out.total.softmax(dim=1).gather(1, y[:, None]).sum()
            reported = nn.functional.cross_entropy(out.total, y)
            self._conf[m] = self._conf.get(m, 0.0) + float(p_y)
            self._count[m] = self._count.get(m, 0) + int(y.shape[0])
        loss.backward()
        self.adjust_gradients(model, batch)
        optimizer.step()
        losses.append(float(reported))
    optimizer.zero_grad(set_to_none=True)
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize(
    ("name", "params", "old_step", "extras"),
    [
        ("ce", {}, old_train_step, {}),
        ("ogm-ge", {"alpha": 0.8}, old_train_step, {}),  # adjust_gradients with Gaussian noise (global RNG)
        ("boost", {"n-max": 3}, old_boost_train_step, {ACTIVE_KEY: [2, 1]}),
    ],
)
def test_fp32_gives_bit_identical_weights_to_the_step_before_precision(
    name: str, params: dict, old_step: types.FunctionType, extras: dict
) -> None:
    dataset = synthetic()
    runs = {}
    for label, precision in (("old", None), ("default", None), ("fp32", "fp32")):
        objective = build_objective(name, params)
        if label == "old":
            objective.train_step = types.MethodType(old_step, objective)
        model = model_for(dataset, objective)
        config = TrainConfig(
            epochs=2, batch_size=16, lr=0.05, proximal_mu=0.1, seed=7, **({"precision": precision} if precision else {})
        )
        torch.manual_seed(11)  # OGM-GE's noise
        result = train_local(model, dataset.train, objective, round_ctx(dataset, extras), config)
        runs[label] = (model.state_dict(), result)
    old_state, old_result = runs["old"]
    for label in ("default", "fp32"):
        state, result = runs[label]
        assert all(torch.equal(state[k], old_state[k]) for k in old_state), label
        assert result.loss == old_result.loss and result.facts == old_result.facts
