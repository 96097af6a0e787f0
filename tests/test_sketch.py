"""Count sketches and the update store: distance fidelity, seeding, linearity, refresh rules."""

from __future__ import annotations

import numpy as np
import pytest

from fedmm.strategies.selection.sketch import NEVER, CountSketch, UpdateStore


def pairwise(V: np.ndarray) -> np.ndarray:
    V = V.astype(np.float64)
    sq = (V * V).sum(1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * V @ V.T, 0.0))


def test_sketch_distances_approximate_exact_ones_at_512() -> None:
    rng = np.random.default_rng(0)
    P = 70_000  # more than one hash chunk
    base = rng.normal(size=P)
    vecs = np.stack([base * rng.uniform(0.5, 1.5) + rng.normal(size=P) * rng.uniform(0.2, 2.0) for _ in range(24)])
    vecs = vecs.astype(np.float32)
    sketch = CountSketch(512, seed=3)
    sk = np.stack([sketch(v, "audio") for v in vecs])
    exact, approx = pairwise(vecs), pairwise(sk)
    iu = np.triu_indices(len(vecs), 1)
    rel = np.abs(approx[iu] - exact[iu]) / exact[iu]
    # JL: the relative spread of a distance is about sqrt(2/512)/2 = 3.1 %
    assert rel.mean() < 0.05
    assert rel.max() < 0.2
    norms_rel = np.abs(np.linalg.norm(sk, axis=1) / np.linalg.norm(vecs, axis=1) - 1)
    assert norms_rel.max() < 0.2


def test_sketch_is_seeded_linear_and_keyed() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2, 100_000)).astype(np.float32)
    a, b = CountSketch(64, seed=5), CountSketch(64, seed=5, cache_entries=0)  # no cache: regenerated
    np.testing.assert_array_equal(a(x, "m"), b(x, "m"))
    np.testing.assert_allclose(a(x + y, "m"), a(x, "m") + a(y, "m"), rtol=1e-4, atol=1e-3)
    assert not np.allclose(a(x, "m"), CountSketch(64, seed=6)(x, "m"))
    assert not np.allclose(a(x, "m"), a(x, "other"))
    # a coordinate lands in one bucket with sign +-1: the sketch of e_j is a signed unit vector
    e = np.zeros(10, dtype=np.float32)
    e[7] = 2.5
    s = a(e, "m")
    assert np.count_nonzero(s) == 1 and abs(s).max() == 2.5


def test_full_sketch_is_the_sum_of_modality_sketches_and_tracks_full_distances() -> None:
    rng = np.random.default_rng(2)
    store = UpdateStore(sketch_dim=512, seed=0)
    P = 30_000
    ups = [
        {"a": rng.normal(size=P).astype(np.float32), "v": rng.normal(size=2 * P).astype(np.float32)} for _ in range(12)
    ]
    for i, u in enumerate(ups):
        store.add(i, u, server_round=0, full=True)
    full = store.full_features(range(12))
    assert full.shape == (12, 512)
    np.testing.assert_allclose(full[3], store.sketch(ups[3]["a"], "a") + store.sketch(ups[3]["v"], "v"), rtol=1e-6)
    exact = pairwise(np.stack([np.concatenate([u["a"], u["v"]]) for u in ups]))
    iu = np.triu_indices(12, 1)
    assert (np.abs(pairwise(full)[iu] - exact[iu]) / exact[iu]).max() < 0.2


def test_store_refresh_rules_and_staleness() -> None:
    store = UpdateStore(sketch_dim=0, seed=0)  # exact vectors: easy to read back
    a1, v1 = np.array([1.0, 2.0]), np.array([3.0, 4.0, 5.0])
    store.add(10, {"a": a1, "v": v1}, server_round=1, full=True)
    np.testing.assert_array_equal(store.full_features([10]), [[1, 2, 3, 4, 5]])
    # weak-only update: replaces the v slice, keeps the full vector (and its round)
    store.add(10, {"v": np.array([7.0, 7.0, 7.0])}, server_round=3, full=False)
    np.testing.assert_array_equal(store.slice_features([10], "v"), [[7, 7, 7]])
    np.testing.assert_array_equal(store.full_features([10]), [[1, 2, 3, 4, 5]])
    assert store.staleness([10, 99], server_round=5).tolist() == [4, -1]
    assert store.slice_round["v"][store.rows[10]] == 3
    # a unimodal client's full vector has a zero block for the modality it lacks
    store.add(11, {"v": np.array([1.0, 1.0, 1.0])}, server_round=2, full=True)
    np.testing.assert_array_equal(store.full_features([11]), [[0, 0, 1, 1, 1]])
    assert store.has_full([10, 11, 12]).tolist() == [True, True, False]
    assert store.has_slice([10, 11], "a").tolist() == [True, False]
    assert store.slice_round["a"][store.rows[11]] == NEVER
    with pytest.raises(ValueError, match="modality 'a' has 3 values"):
        store.add(12, {"a": np.zeros(3)}, server_round=2, full=True)
    with pytest.raises(ValueError, match="non-finite"):
        store.add(12, {"a": np.array([np.nan, 0.0])}, server_round=2, full=True)


def test_store_state_dict_round_trip() -> None:
    rng = np.random.default_rng(3)
    store = UpdateStore(sketch_dim=32, seed=9)
    for i in range(40):  # more than the initial capacity
        store.add(2**63 + i, {"a": rng.normal(size=100)}, server_round=i, full=i % 2 == 0)
    state = store.state_dict()
    other = UpdateStore(sketch_dim=32, seed=9)
    other.load_state_dict(state)
    ids = [2**63 + i for i in range(40)]
    np.testing.assert_array_equal(other.slice_features(ids, "a"), store.slice_features(ids, "a"))
    np.testing.assert_array_equal(other.has_full(ids), store.has_full(ids))
    assert other.staleness(ids, 50).tolist() == store.staleness(ids, 50).tolist()
    with pytest.raises(ValueError, match="sketch-dim"):
        UpdateStore(sketch_dim=16, seed=9).load_state_dict(state)
