"""Facility location: costs, marginal gains and greedy picks on a hand-made 5 x 5 matrix; lazy = eager;
supports give the gains of distance columns."""

from __future__ import annotations

import numpy as np
import pytest

from fedmm.strategies.selection.facility import (
    EuclideanDistances,
    FacilityLocation,
    MatrixDistances,
    facility_value,
    greedy,
)

# Five points on a line at 0, 4, 5, 6, 20: D[k, i] = |x_k - x_i|.
X = np.array([0.0, 4.0, 5.0, 6.0, 20.0])
D = np.abs(X[:, None] - X[None, :])


def test_costs_of_singletons_are_column_sums() -> None:
    fl = FacilityLocation(MatrixDistances(D))
    assert fl.value() == np.inf
    np.testing.assert_allclose(fl.costs(range(5)), [35, 23, 22, 23, 65])
    assert np.all(np.isinf(fl.gains(range(5))))


def test_marginal_gains_by_hand() -> None:
    fl = FacilityLocation(MatrixDistances(D))
    fl.add(2)  # coverage [5, 1, 0, 1, 15]
    np.testing.assert_allclose(fl.coverage, [5, 1, 0, 1, 15])
    assert fl.value() == 22
    # gain_j = sum_k max(cov_k - D[k, j], 0)
    np.testing.assert_allclose(fl.gains(range(5)), [5, 2, 0, 2, 15])
    np.testing.assert_allclose(fl.costs(range(5)), [17, 20, 22, 20, 7])  # G(S + j) = G(S) - gain_j
    fl.add(4)
    np.testing.assert_allclose(fl.gains([0, 1, 3]), [5, 2, 1])
    assert fl.value() == 7


@pytest.mark.parametrize("lazy", [True, False])
def test_greedy_picks_by_hand(lazy: bool) -> None:
    fl = FacilityLocation(MatrixDistances(D))
    # 2 (least singleton cost 22), 4 (gain 15), 0 (gain 5), then 1 and 3 tie at gain 1: first wins.
    assert greedy(fl, 4, lazy=lazy) == [2, 4, 0, 1]
    assert fl.value() == 1
    assert facility_value(MatrixDistances(D), [2, 4, 0, 1]) == 1


def test_greedy_respects_candidates_and_budget_beyond_them() -> None:
    fl = FacilityLocation(MatrixDistances(D))
    assert greedy(fl, 10, candidates=[0, 4]) == [0, 4]  # G({0}) = 35 < G({4}) = 65


def test_asymmetric_matrix_uses_columns_as_candidates() -> None:
    # D[k, i]: cost of serving k from i. Column 1 serves everybody for 1; column 0 serves only itself.
    A = np.array([[0.0, 1.0, 9.0], [9.0, 0.0, 9.0], [9.0, 1.0, 0.0]])
    fl = FacilityLocation(MatrixDistances(A))
    assert greedy(fl, 1) == [1]


def test_euclidean_rows_match_brute_force_and_self_is_zero() -> None:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(40, 7)) + 100.0  # an offset that centring removes
    oracle = EuclideanDistances(pts)
    exact = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
    cols = np.array([3, 0, 39])
    np.testing.assert_allclose(oracle.rows(cols), exact[:, cols].T, rtol=1e-4, atol=1e-4)
    assert np.all(oracle.rows(cols)[np.arange(3), cols] == 0.0)


@pytest.mark.parametrize("sample", [None, 25])
def test_lazy_greedy_matches_eager_and_small_blocks(sample: int | None) -> None:
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.normal(c, 1.0, size=(60, 16)) for c in (0.0, 6.0, 12.0, 30.0)])
    picks = []
    cases = ((True, 1 << 22, 0.25), (False, 1 << 22, 0.25), (True, 200, 0.25), (True, 1 << 22, 0.0))
    for lazy, block, supports in cases:
        fl = FacilityLocation(EuclideanDistances(pts), block_elements=block, support_fraction=supports)
        picks.append(greedy(fl, 12, sample_size=sample, rng=np.random.default_rng(7), lazy=lazy))
    assert picks[0] == picks[1] == picks[2] == picks[3]
    # the picks cover all four clusters
    assert {p // 60 for p in picks[0]} == {0, 1, 2, 3}


def test_lazy_evaluates_fewer_candidates() -> None:
    rng = np.random.default_rng(2)
    pts = rng.normal(size=(400, 8))
    lazy, eager = (FacilityLocation(EuclideanDistances(pts)) for _ in range(2))
    greedy(lazy, 20, lazy=True)
    greedy(eager, 20, lazy=False)
    assert lazy.selected == eager.selected
    assert lazy.evaluations + lazy.support_evaluations < (eager.evaluations + eager.support_evaluations) / 2


def clustered(seed: int, clusters: int = 8, size: int = 50, dim: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, size=(clusters, dim))
    return np.concatenate([rng.normal(c, 1.0, size=(size, dim)) for c in centres]).astype(np.float32)


def test_support_gains_equal_distance_column_gains() -> None:
    pts = clustered(3).astype(np.float64)
    # An explicit matrix gives every distance the same value in blocks of any shape (a BLAS product
    # can round a row differently in blocks of different sizes).
    D = MatrixDistances(np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1))
    kept = FacilityLocation(D)
    columns = FacilityLocation(D, support_fraction=0.0)  # never keeps a support
    everyone = np.arange(pts.shape[0])
    for j in (5, 120, 333, 17, 260):
        for fl in (kept, columns):
            fl.gains(everyone)  # the first call keeps supports (kept), later ones reuse them
            fl.add(j)
        # equal up to summation order: a support may still hold points the coverage has since reached
        np.testing.assert_allclose(kept.gains(everyone), columns.gains(everyone), rtol=1e-12, atol=0.0)
        np.testing.assert_array_equal(kept.coverage, columns.coverage)
    assert kept.support_evaluations > 0 and columns.support_evaluations == 0
    assert kept.evaluations < columns.evaluations


def test_supports_respect_their_limits() -> None:
    pts = clustered(4)
    n = pts.shape[0]
    fl = FacilityLocation(EuclideanDistances(pts), support_fraction=0.1, support_elements=300)
    fl.add(0)
    fl.gains(np.arange(n))
    assert fl._support_size <= 300
    assert all(k.size <= 0.1 * n for k, _ in fl._support.values())
    roomy = FacilityLocation(EuclideanDistances(pts))
    roomy.add(0)
    roomy.gains(np.arange(n))
    assert len(roomy._support) > len(fl._support)


def test_matrix_distances_validation() -> None:
    with pytest.raises(ValueError, match="square"):
        MatrixDistances(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        MatrixDistances(-np.ones((2, 2)))


def naive_greedy(D: np.ndarray, budget: int) -> list[int]:
    """The textbook greedy on an explicit matrix: argmin_j sum_k min(cov[k], D[k, j]) at every step."""
    cov = np.full(D.shape[0], np.inf)
    picks: list[int] = []
    for _ in range(budget):
        costs = [np.inf if j in picks else np.minimum(cov, D[:, j]).sum() for j in range(D.shape[1])]
        picks.append(int(np.argmin(costs)))
        cov = np.minimum(cov, D[:, picks[-1]])
    return picks


@pytest.mark.parametrize("seed", range(5))
def test_lazy_greedy_with_supports_matches_the_textbook_greedy(seed: int) -> None:
    pts = clustered(10 + seed, clusters=6, size=20, dim=16).astype(np.float64)
    D = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
    assert greedy(FacilityLocation(MatrixDistances(D)), 15) == naive_greedy(D, 15)
