"""Data Remixing (``remix``): KL assignment, unimodal batches, interleaving, warm-up, loss."""

from __future__ import annotations

import math

import pytest
import torch
from schedules import scheduled_epochs
from torch import nn

from fedmm.data.base import ModalitySpec
from fedmm.models.net import ModelConfig, MultimodalNet
from fedmm.objectives.base import RoundContext
from fedmm.objectives.registry import build_objective
from fedmm.objectives.remix import DataRemixing, interleaved_order, kl_to_uniform, split_batches
from fedmm.params import config_name
from fedmm.training import TrainConfig, train_local

P = DataRemixing.Params


def identity_model(obj: DataRemixing, names=("a", "v"), dim: int = 3, num_classes: int = 3) -> MultimodalNet:
    """A model whose encoders are identities and whose heads are the identity matrix (logits = input)."""
    specs = [ModalitySpec(m, (dim,), "vector") for m in names]
    model = MultimodalNet(specs, num_classes, ModelConfig(embed_dim=dim, encoders=dict.fromkeys(names, "mlp")))
    obj.extend_model(model)
    with torch.no_grad():
        for m in names:
            model.encoders[m] = nn.Identity()
            model.heads[m].weight.copy_(torch.eye(dim))
            model.heads[m].bias.zero_()
    return model


def ctx(modalities: list[str], server_round: int = 100) -> RoundContext:
    return RoundContext(server_round=server_round, num_rounds=100, modalities=modalities)


def test_kl_to_uniform_by_hand() -> None:
    e = math.e
    p = [e / (e + 2), 1 / (e + 2), 1 / (e + 2)]
    expected = sum(q * math.log2(3 * q) for q in p)
    got = kl_to_uniform(torch.tensor([p, [1 / 3] * 3, [1.0, 0.0, 0.0]]))
    # uniform -> 0 bits; one-hot -> log2(3) bits (the clipped zeros contribute ~1e-9 * log2(3e-9))
    assert got.tolist() == pytest.approx([expected, 0.0, math.log2(3)], abs=1e-6)


def test_assignment_goes_to_the_least_confident_modality() -> None:
    obj = DataRemixing(P())
    model = identity_model(obj)
    data = {
        # sample 0: a confident, v uniform -> v; sample 1: a uniform -> a;
        # sample 2: a = softmax([1, 0, 0]) is less peaked than v = softmax([2, 0, 0]) -> a;
        # sample 3: equal -> the earlier modality (a)
        "a": torch.tensor([[3.0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 2, 0]]),
        "v": torch.tensor([[0.0, 0, 0], [0, 3, 0], [2, 0, 0], [0, 2, 0]]),
        "y": torch.tensor([0, 1, 0, 1]),
    }
    model.train()
    assert obj.assign(model, data, ["a", "v"]).tolist() == [1, 0, 0, 0]
    assert model.training  # the eval-mode pass restores the mode


def test_assignment_three_modalities_argmin() -> None:
    obj = DataRemixing(P())
    model = identity_model(obj, names=("a", "v", "t"))
    data = {
        "a": torch.tensor([[3.0, 0, 0], [1, 0, 0]]),
        "v": torch.tensor([[2.0, 0, 0], [3, 0, 0]]),
        "t": torch.tensor([[4.0, 0, 0], [2, 0, 0]]),
        "y": torch.tensor([0, 0]),
    }
    assert obj.assign(model, data, ["a", "v", "t"]).tolist() == [1, 0]


def remix_data() -> dict[str, torch.Tensor]:
    # samples 0-3 go to a (a uniform), 4-7 to v (v uniform), 8 to v alone (a tiny subset)
    strong = torch.tensor([5.0, 0, 0])
    a = torch.stack([torch.zeros(3)] * 4 + [strong] * 5)
    v = torch.stack([strong] * 4 + [torch.zeros(3)] * 5)
    return {"a": a, "v": v, "y": torch.arange(9) % 3}


def test_unimodal_batches_cover_each_subset_once() -> None:
    obj = DataRemixing(P(interleave=False))
    model = identity_model(obj)
    data = remix_data()
    obj.begin_round(model, data, ctx(["a", "v"]))
    batches = list(obj.batches(model, data, 0, 2, torch.Generator().manual_seed(0)))
    keys = [sorted(k for k in b if k != "y") for b in batches]
    assert keys == [["a"], ["a"], ["v"], ["v"]]  # blocks in canonical order
    # the v subset has 5 rows: 2 + 3 (the trailing single row joins the previous batch)
    assert [len(b["y"]) for b in batches] == [2, 2, 2, 3]
    rows_a = sorted(int(r) for b in batches if "a" in b for r in b["y"])
    assert rows_a == sorted(data["y"][:4].tolist())
    # every batch of v holds rows whose v input is uniform, i.e. the rows assigned to v
    for b in batches:
        if "v" in b:
            assert torch.all(b["v"] == 0)
    assert obj.end_round(model, data) == {"remix-assigned-a": 4.0, "remix-assigned-v": 5.0}


def test_interleaving() -> None:
    assert interleaved_order([2, 2]) == [0, 1, 0, 1]
    assert interleaved_order([4, 2]) == [0, 1, 0, 0, 1, 0]
    assert interleaved_order([3, 0, 1]) == [0, 0, 2, 0]  # a tie goes to the earlier group
    obj = DataRemixing(P(interleave=True))
    model = identity_model(obj)
    data = remix_data()
    obj.begin_round(model, data, ctx(["a", "v"]))
    batches = list(obj.batches(model, data, 0, 2, torch.Generator().manual_seed(0)))
    assert [next(k for k in b if k != "y") for b in batches] == ["a", "v", "a", "v"]


def test_split_batches_handles_tiny_subsets() -> None:
    idx = torch.arange(5)
    assert [c.tolist() for c in split_batches(idx, 2)] == [[0, 1], [2, 3, 4]]
    assert split_batches(torch.arange(1), 4) == []
    assert split_batches(torch.arange(0), 4) == []
    assert [c.tolist() for c in split_batches(torch.arange(3), 4)] == [[0, 1, 2]]


def test_empty_and_single_row_subsets_are_skipped() -> None:
    obj = DataRemixing(P())
    model = identity_model(obj)
    strong = torch.tensor([5.0, 0, 0])
    data = {  # 4 rows to a, exactly one to v
        "a": torch.stack([torch.zeros(3)] * 4 + [strong]),
        "v": torch.stack([strong] * 4 + [torch.zeros(3)]),
        "y": torch.zeros(5, dtype=torch.long),
    }
    obj.begin_round(model, data, ctx(["a", "v"]))
    batches = list(obj.batches(model, data, 0, 2, torch.Generator().manual_seed(0)))
    assert all(set(b) == {"a", "y"} for b in batches) and len(batches) == 2
    data["a"] = torch.stack([torch.zeros(3)] * 5)  # everything to a: the v subset is empty
    assert all("v" not in b for b in obj.batches(model, data, 0, 2, torch.Generator().manual_seed(0)))


def test_warmup_rounds_train_jointly() -> None:
    obj = DataRemixing(P(warmup_rounds=3))
    model = identity_model(obj)
    data = remix_data()
    obj.begin_round(model, data, ctx(["a", "v"], server_round=3))
    assert obj.in_warmup()
    assert all({"a", "v", "y"} == set(b) for b in obj.batches(model, data, 0, 4, torch.Generator().manual_seed(0)))
    obj.begin_round(model, data, ctx(["a", "v"], server_round=4))
    assert not obj.in_warmup()
    assert all(len(b) == 2 for b in obj.batches(model, data, 0, 4, torch.Generator().manual_seed(0)))


def test_loss_weights_by_hand() -> None:
    obj = DataRemixing(P(warmup_rounds=1, warmup_head_weight=0.5, head_weight=1.0))
    model = identity_model(obj)
    with torch.no_grad():  # all logits zero -> every CE is log 3
        model.fusion.linear.weight.zero_()
        for m in ("a", "v"):
            model.heads[m].weight.zero_()
    batch = {"a": torch.ones(2, 3), "v": torch.ones(2, 3), "y": torch.tensor([0, 2])}
    obj.begin_round(model, batch, ctx(["a", "v"], server_round=1))
    assert obj.loss(model, batch).item() == pytest.approx(math.log(3) * (1 + 0.5 * 2))
    obj.begin_round(model, batch, ctx(["a", "v"], server_round=2))
    assert obj.loss(model, {"v": batch["v"], "y": batch["y"]}).item() == pytest.approx(2 * math.log(3))


def test_unimodal_loss_uses_zero_filled_fusion() -> None:
    obj = DataRemixing(P(warmup_rounds=0, head_weight=0.0))
    model = identity_model(obj)
    with torch.no_grad():
        model.fusion.linear.weight.copy_(torch.cat([torch.eye(3), 100 * torch.eye(3)], dim=1))
        model.fusion.linear.bias.zero_()
    batch = {"a": torch.tensor([[1.0, 0, 0]]).repeat(2, 1), "y": torch.tensor([0, 0])}
    obj.begin_round(model, batch, ctx(["a", "v"]))
    # the v slot is zero, so the fused logits are [1, 0, 0]
    assert obj.loss(model, batch).item() == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"warmup_rounds": -2}, "warmup-rounds"),
        ({"warmup": 1.5}, "warmup"),
        ({"warmup": 0.5, "warmup_rounds": 2}, "not both"),
        ({"warmup_head_weight": -0.5}, "warmup-head-weight"),
        ({"head_weight": -1.0}, "head-weight"),
        ({"head_weight": float("inf")}, "head-weight"),
    ],
)
def test_bad_params(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DataRemixing(P(**params))
    with pytest.raises(ValueError):
        build_objective("remix", {config_name(k): v for k, v in params.items()})


def synthetic(names: list[str], n: int = 30, num_classes: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, num_classes, (n,), generator=g)
    data = {m: torch.randn(n, 5, generator=g) + y[:, None].float() for m in names}
    data["y"] = y
    return data


@pytest.mark.parametrize("names", [["a", "v"], ["a", "v", "t"]])
@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("server_round", [1, 5])
def test_one_local_epoch(names: list[str], single: bool, server_round: int) -> None:
    obj = build_objective("remix", {"warmup-rounds": 2})
    torch.manual_seed(0)
    model = MultimodalNet(
        [ModalitySpec(m, (5,), "vector") for m in names],
        3,
        ModelConfig(embed_dim=8, encoders=dict.fromkeys(names, "mlp")),
    )
    obj.extend_model(model)
    held = names[:1] if single else names
    data = synthetic(held)
    result = train_local(model, data, obj, ctx(held, server_round), TrainConfig(epochs=1, batch_size=8, lr=0.05))
    assert math.isfinite(result.loss)
    if server_round > 2 and not single:
        assert sum(result.facts.values()) == 30


# -- schedule: a fraction of the run's local epochs ------------------------------------------------
def warmup_epochs(params: DataRemixing.Params, num_rounds: int, local_epochs: int) -> list[tuple[int, int]]:
    """``(round, local epoch)`` of every epoch whose batches are joint (warm-up), not unimodal."""
    obj = DataRemixing(params)
    model = identity_model(obj)
    data = remix_data()

    def joint(epoch: int) -> bool:
        batches = [
            set(b) == {"a", "v", "y"} for b in obj.batches(model, data, epoch, 4, torch.Generator().manual_seed(0))
        ]
        assert all(batches) or not any(batches)
        return all(batches)

    return scheduled_epochs(obj, model, data, num_rounds, local_epochs, joint)


def test_warmup_is_a_fraction_of_the_runs_local_epochs() -> None:
    # T = 40 in both runs; epoch g warms up when g / 40 < 1/6: g = 0..6, 7 of 40.
    a = warmup_epochs(P(), num_rounds=20, local_epochs=2)
    b = warmup_epochs(P(), num_rounds=10, local_epochs=4)
    assert a == [(r, e) for r in (1, 2, 3) for e in (0, 1)] + [(4, 0)]
    assert b == [(1, e) for e in range(4)] + [(2, 0), (2, 1), (2, 2)]
    assert [(r - 1) * 2 + e for r, e in a] == [(r - 1) * 4 + e for r, e in b] == list(range(7))
    # the reference: 10 warm-up epochs of 60
    assert warmup_epochs(P(), num_rounds=60, local_epochs=1) == [(r, 0) for r in range(1, 11)]
    # explicit rounds override the fraction
    assert warmup_epochs(P(warmup_rounds=2), num_rounds=10, local_epochs=2) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert warmup_epochs(P(warmup=0.0), num_rounds=5, local_epochs=2) == []
