"""The local training loop and evaluation: learning, frozen modalities, FedProx, determinism."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedmm.data.base import ModalitySpec, TensorDict
from fedmm.metrics import accuracy
from fedmm.models.net import ModelConfig, MultimodalNet
from fedmm.objectives import Objective, RoundContext, Schedule, build_objective
from fedmm.training import (
    TrainConfig,
    add_proximal_hook,
    build_model,
    evaluate,
    resolve_device,
    train_local,
    trainable_parameters,
)

SPECS = [ModalitySpec("m0", (6,), "vector"), ModalitySpec("m1", (6,), "vector")]
ENCODERS = {"m0": "mlp", "m1": "mlp"}
NUM_CLASSES = 3


def synthetic(n: int = 96, seed: int = 0) -> TensorDict:
    """Three classes, separable in both modalities: class ``c`` shifts feature ``c`` (m0) and
    feature ``c + 3`` (m1) by 3."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % NUM_CLASSES
    data = {}
    for i, m in enumerate(("m0", "m1")):
        x = torch.randn(n, 6, generator=g) * 0.5
        x[torch.arange(n), y + 3 * i] += 3.0
        data[m] = x
    data["y"] = y
    return data


def model_for(objective: Objective, seed: int = 0) -> MultimodalNet:
    torch.manual_seed(seed)
    return build_model(SPECS, NUM_CLASSES, ModelConfig(embed_dim=8, encoders=ENCODERS), objective)


def ctx(modalities: list[str] | None = None) -> RoundContext:
    return RoundContext(server_round=1, num_rounds=5, modalities=modalities or ["m0", "m1"])


def cfg(**kw: object) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 16, "lr": 0.05, **kw})  # type: ignore[arg-type]


def test_imports_need_neither_flower_nor_ray() -> None:
    code = (
        "import sys, fedmm.models, fedmm.objectives, fedmm.training, fedmm.metrics\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flwr', 'ray'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- device, model, config -----------------------------------------------------------------------------
def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda:0") == torch.device("cuda:0")
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device("cuda:999")
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_build_model_adds_heads_and_is_reproducible() -> None:
    config = ModelConfig(embed_dim=8, encoders=ENCODERS)
    assert not model_for(build_objective("ce")).heads
    torch.manual_seed(3)
    a = build_model(SPECS, 3, config, build_objective("uniform"))
    torch.manual_seed(3)
    b = build_model(SPECS, 3, config, build_objective("uniform"))
    assert set(a.heads) == {"m0", "m1"} and config.heads is False  # the caller's config is unchanged
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_model_rejects_parameters_outside_the_groups() -> None:
    class Stray(Objective):
        def extend_model(self, model: nn.Module) -> None:
            model.extra = nn.Linear(2, 2)

    with pytest.raises(ValueError, match="extra.weight"):
        model_for(Stray())


@pytest.mark.parametrize(
    "kw",
    [
        {"epochs": 0},
        {"batch_size": 1},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"momentum": 1.0},
        {"weight_decay": -1e-4},
        {"proximal_mu": -0.1},
        {"epochs": 2.5},
        {"seed": True},
    ],
)
def test_train_config_validation(kw: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        cfg(**kw)


# -- training ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ce", "uniform"])
def test_training_learns_a_separable_task(name: str) -> None:
    obj = build_objective(name)
    model = model_for(obj)
    data = synthetic()
    before = evaluate(model, data, obj)
    result = train_local(model, data, obj, ctx(), cfg(epochs=4))
    after = evaluate(model, data, obj)
    assert result.num_examples == 96 and result.num_steps == 4 * 6  # 96 rows / 16 per batch
    assert after["loss"] < 0.5 * before["loss"]
    assert before["acc"] < 0.8 and after["acc"] >= 0.95
    assert result.loss < before["loss"]


class Spy(Objective):
    """``ce`` that records what the loop hands it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.batch_keys: set[tuple[str, ...]] = set()
        self.param_ids: set[int] = set()

    def begin_round(self, model: nn.Module, data: TensorDict, ctx: RoundContext) -> None:
        super().begin_round(model, data, ctx)
        self.calls.append("begin:" + ",".join(sorted(data)))

    def batches(
        self, model: nn.Module, data: TensorDict, epoch: int, batch_size: int, generator: torch.Generator
    ) -> Iterator[TensorDict]:
        self.calls.append(f"epoch:{epoch}")
        yield from super().batches(model, data, epoch, batch_size, generator)

    def train_step(self, model: nn.Module, batch: TensorDict, optimizer: torch.optim.Optimizer) -> float:
        self.batch_keys.add(tuple(sorted(batch)))
        self.param_ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
        return super().train_step(model, batch, optimizer)

    def end_round(self, model: nn.Module, data: TensorDict) -> dict[str, float | list[float]]:
        self.calls.append("end")
        return {"seen": 1.0}


def test_untrained_modality_is_left_exactly_as_received() -> None:
    obj = build_objective("uniform")
    model = model_for(obj)
    start = copy.deepcopy(model.state_dict())
    train_local(model, synthetic(), obj, ctx(["m0"]), cfg(epochs=2))
    end = model.state_dict()
    for key in start:
        same = torch.equal(start[key], end[key])
        if key.startswith(("encoders.m1.", "heads.m1.")):
            assert same, f"{key} changed"  # weights and batch-norm statistics alike
        elif key.startswith(("encoders.m0.", "heads.m0.")) and not key.endswith("num_batches_tracked"):
            assert not same, f"{key} did not change"
    assert any("running_mean" in k for k in start if k.startswith("encoders.m1."))
    assert not torch.equal(start["fusion.linear.weight"], end["fusion.linear.weight"])


def test_hooks_order_batches_and_optimizer_parameters() -> None:
    spy = Spy()
    model = model_for(spy)
    result = train_local(model, synthetic(), spy, ctx(["m1"]), cfg(epochs=2))
    assert spy.calls == ["begin:m1,y", "epoch:0", "epoch:1", "end"]
    assert spy.batch_keys == {("m1", "y")}  # m0 was dropped up front
    assert spy.param_ids == {id(p) for p in trainable_parameters(model, ["m1"])}
    names = {n for n, p in model.named_parameters() if id(p) in spy.param_ids}
    assert names and all(n.startswith(("encoders.m1.", "fusion.")) for n in names)
    assert result.facts == {"seen": 1.0}


class EpochSpy(Spy):
    """``Spy`` that also records ``begin_epoch`` and the training progress each step sees."""

    def __init__(self) -> None:
        super().__init__()
        self.progress_seen: list[tuple[int, float]] = []

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self.calls.append(f"begin-epoch:{epoch}")

    def train_step(self, model: nn.Module, batch: TensorDict, optimizer: torch.optim.Optimizer) -> float:
        self.progress_seen.append((self.epoch, self.progress()))
        return super().train_step(model, batch, optimizer)


def test_each_epoch_begins_before_its_batches_and_knows_its_place_in_the_run() -> None:
    spy = EpochSpy()
    # round 3 of 5 rounds of 2 local epochs: its epochs are the run's epochs 4 and 5 of 10
    context = RoundContext(server_round=3, num_rounds=5, local_epochs=2, modalities=["m0", "m1"])
    train_local(model_for(spy), synthetic(n=32), spy, context, cfg(epochs=2))
    assert spy.calls == ["begin:m0,m1,y", "begin-epoch:0", "epoch:0", "begin-epoch:1", "epoch:1", "end"]
    assert spy.progress_seen == [(0, 0.4), (0, 0.4), (1, 0.5), (1, 0.5)]


def test_schedule_counts_local_epochs_over_the_run() -> None:
    schedule = Schedule(num_rounds=20, local_epochs=2)
    assert schedule.total_epochs == 40
    assert schedule.global_epoch(11, 1) == 21 and schedule.progress(11, 0) == 0.5
    assert schedule.global_epoch(0) == schedule.global_epoch(1) == 0  # the update pass is the start of training
    assert Schedule(60, 1).progress(11) == 1 / 6  # one exact division: equal to the fraction where it falls on it
    assert RoundContext(server_round=2, num_rounds=20, modalities=["m0"], local_epochs=2).schedule == schedule
    with pytest.raises(ValueError, match="schedule"):
        Schedule(num_rounds=0, local_epochs=2)


def test_unknown_or_missing_modalities_are_errors() -> None:
    obj = build_objective("ce")
    data = synthetic()
    with pytest.raises(ValueError, match="the model does not have"):
        train_local(model_for(obj), data, obj, ctx(["m0", "m9"]), cfg())
    del data["m1"]
    with pytest.raises(ValueError, match="the local data does not have"):
        train_local(model_for(obj), data, obj, ctx(["m1"]), cfg())


def test_same_seed_same_model_other_seed_other_model() -> None:
    def run(seed: int) -> tuple[float, dict[str, torch.Tensor]]:
        obj = build_objective("uniform")
        model = model_for(obj, seed=0)
        result = train_local(model, synthetic(), obj, ctx(), cfg(seed=seed))
        return result.loss, model.state_dict()

    (loss_a, a), (loss_b, b), (_, c) = run(7), run(7), run(8)
    assert loss_a == loss_b and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# -- FedProx -----------------------------------------------------------------------------------------
def test_proximal_hook_by_hand() -> None:
    w = nn.Parameter(torch.tensor([1.0]))
    idle = nn.Parameter(torch.tensor([5.0]))
    opt = torch.optim.SGD([w, idle], lr=0.1, momentum=0.0)
    handle = add_proximal_hook(opt, [w, idle], mu=0.5)  # anchors: 1.0 and 5.0
    with torch.no_grad():
        w.fill_(3.0)
        idle.fill_(6.0)
    (0.5 * w**2).sum().backward()  # dL/dw = w = 3; idle gets no gradient
    opt.step()
    # w - lr * (3 + mu * (3 - 1)) = 3 - 0.1 * 4
    assert w.item() == pytest.approx(2.6)
    assert idle.item() == 6.0 and idle.grad is None  # no gradient, no proximal pull
    handle.remove()
    opt.zero_grad()
    (0.5 * w**2).sum().backward()
    opt.step()
    assert w.item() == pytest.approx(2.6 - 0.1 * 2.6)


def test_proximal_term_pulls_towards_the_received_weights() -> None:
    def distance(mu: float) -> float:
        obj = build_objective("ce")
        model = model_for(obj)
        start = [p.detach().clone() for p in trainable_parameters(model, ["m0", "m1"])]
        train_local(model, synthetic(), obj, ctx(), cfg(proximal_mu=mu, weight_decay=0.0))
        end = [p.detach() for p in trainable_parameters(model, ["m0", "m1"])]
        return float(sum(((a - b) ** 2).sum() for a, b in zip(start, end, strict=True)))

    assert distance(5.0) < 0.8 * distance(0.0)


# -- uniform objective -------------------------------------------------------------------------------
def test_uniform_loss_by_hand() -> None:
    obj = build_objective("uniform")
    model = model_for(obj).eval()
    data = synthetic(12)
    y = data["y"]
    with torch.no_grad():
        u0, u1 = model.encoders["m0"](data["m0"]), model.encoders["m1"](data["m1"])
        both = (
            F.cross_entropy(model.fusion.linear(torch.cat([u0, u1], 1)), y)
            + F.cross_entropy(model.heads["m0"](u0), y)
            + F.cross_entropy(model.heads["m1"](u1), y)
        )
        alone = F.cross_entropy(model.fusion.linear(torch.cat([u0, torch.zeros_like(u1)], 1)), y) + F.cross_entropy(
            model.heads["m0"](u0), y
        )
        assert obj.loss(model, data).item() == pytest.approx(both.item(), rel=1e-6)
        assert obj.loss(model, {"m0": data["m0"], "y": y}).item() == pytest.approx(alone.item(), rel=1e-6)
        half = build_objective("uniform", {"head-weight": 0.5})
        expected = F.cross_entropy(model(data), y) + 0.5 * (both - F.cross_entropy(model(data), y))
        assert half.loss(model, data).item() == pytest.approx(expected.item(), rel=1e-6)
        assert torch.equal(obj.predict(model, data), model(data))


# -- evaluation --------------------------------------------------------------------------------------
def test_evaluate_keys_and_values() -> None:
    obj = build_objective("uniform")
    model = model_for(obj)
    train_local(model, synthetic(), obj, ctx(), cfg(epochs=1))
    data = synthetic(30, seed=1)
    out = evaluate(model, data, obj, batch_size=7, device=torch.device("cpu"))
    assert set(out) == {"acc", "f1", "loss", "imbalance", "acc/m0", "f1/m0", "acc/m1", "f1/m1"}
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        full = model(data)
        alone = {m: model({m: data[m]}) for m in ("m0", "m1")}
    assert out["acc"] == pytest.approx(accuracy(full, data["y"]))
    assert out["loss"] == pytest.approx(F.cross_entropy(full, data["y"]).item(), rel=1e-5)
    for m in ("m0", "m1"):
        assert out[f"acc/{m}"] == pytest.approx(accuracy(alone[m], data["y"]))
    accs = [out["acc/m0"], out["acc/m1"]]
    assert out["imbalance"] == pytest.approx(max(accs) / max(min(accs), 1e-3))
    single = evaluate(model, {"m1": data["m1"], "y": data["y"]}, obj)
    assert set(single) == {"acc", "f1", "loss", "imbalance", "acc/m1", "f1/m1"} and single["imbalance"] == 1.0
    assert single["acc"] == pytest.approx(out["acc/m1"])
