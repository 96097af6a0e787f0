"""The multimodal model: parameter groups, zero-fill, slot logits, shapes for 2 and 3 modalities."""

from __future__ import annotations

import pytest
import torch

from fedmm.data.base import ModalitySpec
from fedmm.groups import group_modality, parameter_group
from fedmm.models.net import ModelConfig, MultimodalNet

SPECS = [ModalitySpec("m0", (6,), "vector"), ModalitySpec("m1", (2, 16), "series"), ModalitySpec("m2", (4,), "vector")]
ENCODERS = {"m0": "mlp", "m1": "cnn1d", "m2": "mlp"}


def make(n: int, heads: bool = False, embed_dim: int = 8, num_classes: int = 3) -> MultimodalNet:
    torch.manual_seed(0)
    encoders = {s.name: ENCODERS[s.name] for s in SPECS[:n]}
    return MultimodalNet(
        SPECS[:n], num_classes, ModelConfig(embed_dim=embed_dim, encoders=encoders, heads=heads)
    ).eval()


def batch(n: int, rows: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = {s.name: torch.randn(rows, *s.shape, generator=g) for s in SPECS[:n]}
    out["y"] = torch.randint(0, 3, (rows,), generator=g)
    return out


def test_every_key_has_its_group() -> None:
    model = make(3, heads=True)
    groups = {}
    for key in model.state_dict():  # buffers (batch-norm statistics) included
        groups[key] = parameter_group(key)
        prefix = key.split(".")[0]
        expected = "fusion" if prefix == "fusion" else ".".join(key.split(".")[:2])
        assert groups[key] == expected
    assert set(groups.values()) == {f"{p}.{m}" for p in ("encoders", "heads") for m in ("m0", "m1", "m2")} | {"fusion"}
    assert any("running_mean" in k and groups[k] == "encoders.m1" for k in groups)
    assert group_modality("projectors.m2") == "m2" and group_modality("fusion") is None


@pytest.mark.parametrize("key", ["encoders.m0", "heads", "classifier.weight", "m0.0.weight"])
def test_keys_outside_the_groups_are_rejected(key: str) -> None:
    with pytest.raises(ValueError, match="belongs to no group"):
        parameter_group(key)


@pytest.mark.parametrize("n", [2, 3])
def test_a_lone_modality_is_fused_with_zero_slots(n: int) -> None:
    model = make(n)
    data = batch(n)
    with torch.no_grad():
        for i, spec in enumerate(SPECS[:n]):
            u = model.encoders[spec.name](data[spec.name])
            slots = [torch.zeros(5, 8) for _ in range(n)]
            slots[i] = u
            by_hand = model.fusion.linear(torch.cat(slots, dim=1))
            assert torch.allclose(model({spec.name: data[spec.name]}), by_hand, atol=1e-6)
            # the features sit in the modality's own slot, in canonical order
            assert torch.equal(model.slots({spec.name: u})[:, i * 8 : (i + 1) * 8], u)


@pytest.mark.parametrize("n", [2, 3])
def test_slot_logits_sum_to_the_fused_logits(n: int) -> None:
    model = make(n)
    with torch.no_grad():
        feats = model.encode(batch(n))
        fused = model.fuse(feats)
        parts = model.slot_logits(feats)
    assert set(parts) == {s.name for s in SPECS[:n]}
    assert torch.allclose(sum(parts.values()), fused, atol=1e-5)
    # W_m u_m + b / M, by hand for the first modality
    w = model.fusion.linear.weight[:, :8]
    assert torch.allclose(parts["m0"], feats["m0"] @ w.T + model.fusion.linear.bias / n, atol=1e-6)


@pytest.mark.parametrize("n", [2, 3])
def test_shapes(n: int) -> None:
    model = make(n, heads=True, embed_dim=8, num_classes=4)
    data = batch(n, rows=7)
    with torch.no_grad():
        feats = model.encode(data)
        assert {m: tuple(u.shape) for m, u in feats.items()} == {s.name: (7, 8) for s in SPECS[:n]}
        assert model.slots(feats).shape == (7, 8 * n)
        assert model(data).shape == (7, 4)
        assert {m: tuple(z.shape) for m, z in model.head_logits(feats).items()} == {s.name: (7, 4) for s in SPECS[:n]}
    assert model.fusion.linear.in_features == 8 * n


def test_head_logits_need_heads() -> None:
    model = make(2, heads=False)
    with pytest.raises(RuntimeError, match="heads"):
        model.head_logits(model.encode(batch(2)))
