"""Facility location on update vectors, and its (stochastic, lazy) greedy, vectorized in numpy
(docs/methods/selection.md §6).

DivFL (Balakrishnan et al., ICLR 2022) and CMSFed (docs/methods/cmsfed.md §4.2) pick the set S of clients
whose updates best "cover" everybody's: with D[k, i] the distance between the updates of clients k
and i, the approximation error of representing each client by its nearest selected one is

    G(S) = sum_{k in V} min_{i in S} D[k, i],

and F(S) = const - G(S) is monotone submodular, so greedy maximisation of F (minimisation of G) is a
(1 - 1/e) approximation. The greedy keeps the *coverage* vector cov[k] = min_{i in S} D[k, i]
(+inf while S is empty; the reference code used 1e11) and, for candidates R, evaluates

    cost_j = G(S + j) = sum_k min(cov[k], D[k, j]),   gain_j = G(S) - cost_j = sum_k max(cov[k] - D[k, j], 0)

from one |R| x N distance block (computed from the vectors with ||a - b||^2 = |a|^2 + |b|^2 - 2 a.b,
clipped at 0; never an N x N matrix), in column chunks of at most ``block_elements`` entries.
While S is empty every gain is +inf, and the pick is the candidate of least cost G({j}).

Lazy evaluation (Minoux 1978). By submodularity a candidate's gain can only shrink as S grows, so a
gain computed in an earlier step is an upper bound now. :meth:`FacilityLocation.best` evaluates the
candidates without a bound in one block, then walks the others in decreasing order of their bounds,
in batches of ``LAZY_BATCH``, and stops when the next bound is below the best exact gain found. It
returns the same pick as evaluating every candidate (ties: the first in ``cols`` order, up to float
rounding). With stochastic greedy (a random 10 % of the clients per step) this evaluates about 2N
candidates over a selection of K clients instead of K |R| = 10 N (N = 10,000, K = 100).

Supports (exact sparse re-evaluation). When a candidate j is evaluated, the ground points it can
still improve, its support T_j = {k : D[k, j] < cov[k]}, are kept with their distances. Coverage
only decreases, so a point outside T_j never contributes to j's gain again, and

    gain_j = sum_{k in T_j} max(cov[k] - D[k, j], 0)

holds exactly in every later step. A stale candidate is then re-evaluated from its support (a
gather of |T_j| entries) instead of a new distance column (n products of the vector dimension), and
adding a candidate updates the coverage on its support only. A distance block is scanned for its
supports in squared distances (against a slightly enlarged cov ** 2), so only the entries found
need a square root. A gain from a support equals the gain from a new distance column up to the
summation order (points the coverage has reached since add exact zeros, which shift the pairwise
summation's grouping), and the coverage is the same. Supports larger than ``support-fraction * n``
are not kept (a distance column is about as cheap then), nor beyond ``support_elements`` entries in
all. With stochastic greedy most candidates are evaluated again a few steps after their first
evaluation, so this halves the distance columns of a selection (N = 10,000, K = 100).

Sampled ground set (large federations only). Lazy stochastic greedy still evaluates about every
client once as a candidate (K steps of ``subsample x N`` draws leave few never drawn), and each
evaluation is a column of n ground-set distances, so a selection costs O(N^2 d) and takes minutes at
N = 100,000. :class:`EuclideanDistances` can therefore sum G over a given subset of the clients
(``ground``: a seeded uniform sample, drawn by the caller) while every client stays a candidate:
candidates are indices 0..n_candidates-1 of the feature rows, the coverage and the supports live on
the sampled points. A uniform sample's sum is an unbiased estimate of (sample size / N) G(S), so
the greedy maximises an unbiased estimate of the same objective; the policies use it only above a
size threshold (``ground_limit``; :meth:`~fedmm.strategies.selection.sketch.UpdateVectorPolicy.ground_sample`).

Why one module of this size: the facility-location objective and its greedy (shared by DivFL and
CMSFed) with the numerics that keep it exact.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np

#: Relative slack on stale bounds, so float32 rounding in distance blocks never prunes a true best.
BOUND_SLACK = 1e-4
#: Relative slack of the squared-distance prefilter of supports (the exact test follows it).
SQUARE_SLACK = 1e-5
#: Candidates evaluated per batch while walking the stale bounds.
LAZY_BATCH = 32


class DistanceOracle(ABC):
    """Distances of candidate points to all ground-set points (candidates are ground-set indices).

    Attributes
    ----------
    n:
        Number of ground-set points.
    n_candidates:
        Number of candidates (indices 0..n_candidates-1); equal to ``n`` unless the ground set is a
        sample of the candidates.
    """

    n: int
    n_candidates: int

    @abstractmethod
    def squared_rows(self, cols: np.ndarray) -> np.ndarray:
        """``out[r, k] = D[k, cols[r]] ** 2`` up to rounding (tiny negatives allowed), with exact zeros for
        ``D[cols[r], cols[r]]``: shape (len(cols), n), float32 or float64, writable."""

    def rows(self, cols: np.ndarray) -> np.ndarray:
        """``out[r, k] = D[k, cols[r]]``: shape (len(cols), n)."""
        out = self.squared_rows(cols)
        np.abs(out, out=out)
        return np.sqrt(out, out=out)


class MatrixDistances(DistanceOracle):
    """An explicit n x n distance matrix (tests, small exact cases).

    Parameters
    ----------
    D:
        ``D[k, i]``: distance from ground-set point k to candidate i (need not be symmetric).
    """

    def __init__(self, D: np.ndarray) -> None:
        D = np.asarray(D, dtype=np.float64)
        if D.ndim != 2 or D.shape[0] != D.shape[1]:
            raise ValueError(f"distance matrix must be square, got shape {D.shape}")
        if np.any(D < 0) or not np.all(np.isfinite(D)):
            raise ValueError("distances must be finite and non-negative")
        self.D = D
        self.n = self.n_candidates = D.shape[0]

    def squared_rows(self, cols: np.ndarray) -> np.ndarray:
        # sqrt(fl(x * x)) == x in binary floating point, so rows() gives back D exactly
        return np.square(self.D[:, np.asarray(cols, dtype=np.intp)].T)


class EuclideanDistances(DistanceOracle):
    """Euclidean distances between the rows of a feature matrix (sketches or exact vectors).

    The rows are centred first (distances are translation invariant; centring reduces cancellation
    in ``|a|^2 + |b|^2 - 2 a.b``). One float32 BLAS product per block computes the squared distances
    directly, from the augmented rows ``[-2 x_j, 1, |x_j|^2] . [x_k, |x_k|^2, 1]``, and sets
    self-distances to exactly 0 (rounding can leave tiny negatives elsewhere).

    With ``ground`` the ground set is the rows ``X[ground]`` only, while every row of ``X`` stays a
    candidate (module docstring, "Sampled ground set"); a candidate's distance to its own ground row
    is exactly 0.

    Parameters
    ----------
    X:
        (n, d) features, one row per candidate (and per ground-set point when ``ground`` is None).
    ground:
        Distinct row indices of the ground-set points, or None for all rows.
    """

    def __init__(self, X: np.ndarray, ground: Sequence[int] | np.ndarray | None = None) -> None:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"features must be a 2-d array, got shape {X.shape}")
        n, d = X.shape
        rows: slice | np.ndarray = slice(None)
        size = n
        self._position: np.ndarray | None = None  # candidate -> its ground row (-1: none); None: identity
        if ground is not None:
            rows = np.asarray(ground, dtype=np.intp)
            size = rows.size
            if rows.ndim != 1 or (size and (rows.min() < 0 or rows.max() >= n)):
                raise ValueError(f"ground must be a 1-d array of row indices in [0, {n}), got shape {rows.shape}")
            self._position = np.full(n, -1, dtype=np.intp)
            self._position[rows] = np.arange(size)
            if np.count_nonzero(self._position >= 0) != size:
                raise ValueError("ground row indices must be distinct")
        centred = X - X.mean(axis=0, dtype=np.float64).astype(np.float32) if n else X
        sq = np.einsum("ij,ij->i", centred, centred, dtype=np.float64).astype(np.float32)
        self.ground = np.empty((size, d + 2), dtype=np.float32)  # [x, |x|^2, 1]
        self.ground[:, :d] = centred[rows]
        self.ground[:, d] = sq[rows]
        self.ground[:, d + 1] = 1.0
        self.candidates = np.empty((n, d + 2), dtype=np.float32)  # [-2 x, 1, |x|^2]
        self.candidates[:, :d] = -2.0 * centred
        self.candidates[:, d] = 1.0
        self.candidates[:, d + 1] = sq
        self.n = self.ground.shape[0]
        self.n_candidates = n

    def squared_rows(self, cols: np.ndarray) -> np.ndarray:
        cols = np.asarray(cols, dtype=np.intp)
        out = self.candidates[cols] @ self.ground.T
        if self._position is None:
            out[np.arange(cols.size), cols] = 0.0
        else:
            own = self._position[cols]
            hit = np.flatnonzero(own >= 0)
            out[hit, own[hit]] = 0.0
        return out


class FacilityLocation:
    """The facility-location cost G(S) with its coverage vector and lazy greedy steps.

    Parameters
    ----------
    oracle:
        Distances from candidates to the ground set; candidates are indices 0..oracle.n_candidates-1
        (the ground-set indices 0..n-1 unless the oracle's ground set is a sample).
    block_elements:
        Most entries of one distance block (bounds the temporary memory: 4 bytes each).
    support_fraction:
        A candidate's support is kept only if it has at most this fraction of the n ground points.
    support_elements:
        Most support entries kept over all candidates (8 bytes each with float32 distances).

    Attributes
    ----------
    coverage:
        ``cov[k] = min_{i in S} D[k, i]`` (float32; +inf while S is empty).
    selected:
        Indices added so far, in order.
    evaluations:
        Candidate columns (of n distances each) computed so far: a cost counter for benchmarks.
    support_evaluations:
        Gains computed from kept supports instead of distance columns.
    """

    def __init__(
        self,
        oracle: DistanceOracle,
        *,
        block_elements: int = 1 << 22,
        support_fraction: float = 0.25,
        support_elements: int = 1 << 24,
    ) -> None:
        self.oracle = oracle
        self.n = int(oracle.n)
        self.n_candidates = int(oracle.n_candidates)
        self.block_elements = int(block_elements)
        self.support_limit = int(support_fraction * self.n)
        self.support_elements = int(support_elements)
        self.coverage = np.full(self.n, np.inf, dtype=np.float32)
        self.selected: list[int] = []
        self.evaluations = 0
        self.support_evaluations = 0
        self._bound = np.full(self.n_candidates, np.inf, dtype=np.float64)  # stale gains (+inf: none yet)
        self._empty_cost = np.full(self.n_candidates, np.nan, dtype=np.float64)  # G({j}), exact while S is empty
        self._support: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # j -> (points k, D[k, j])
        self._support_size = 0
        self._reach = self.coverage.copy()  # coverage ** 2, a little enlarged: prefilter of supports

    def _chunks(self, size: int) -> Iterator[slice]:
        step = max(1, self.block_elements // max(self.n, 1))
        for start in range(0, size, step):
            yield slice(start, start + step)

    def value(self) -> float:
        """G(S); +inf for the empty set."""
        return float(self.coverage.sum(dtype=np.float64)) if self.selected else float("inf")

    def costs(self, cols: Sequence[int] | np.ndarray) -> np.ndarray:
        """G(S + j) for every j in ``cols`` (float64)."""
        cols = np.asarray(cols, dtype=np.intp)
        out = np.empty(cols.size, dtype=np.float64)
        for s in self._chunks(cols.size):
            block = self.oracle.rows(cols[s])
            np.minimum(block, self.coverage[None, :], out=block)
            out[s] = block.sum(axis=1, dtype=np.float64)
        self.evaluations += cols.size
        return out

    def gains(self, cols: Sequence[int] | np.ndarray) -> np.ndarray:
        """Marginal gains G(S) - G(S + j) for every j in ``cols`` (+inf while S is empty)."""
        cols = np.asarray(cols, dtype=np.intp)
        if not self.selected:
            return np.full(cols.size, np.inf)
        out = np.empty(cols.size, dtype=np.float64)
        kept = np.fromiter((int(j) in self._support for j in cols), dtype=bool, count=cols.size)
        if kept.any():
            parts = [self._support[int(j)] for j in cols[kept]]
            counts = np.array([p[0].size for p in parts], dtype=np.intp)
            out[kept] = self._segment_gains(
                counts, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            )
            self.support_evaluations += len(parts)
        fresh = np.flatnonzero(~kept)
        for s in self._chunks(fresh.size):
            rows = fresh[s]
            squares = self.oracle.squared_rows(cols[rows])
            flat = np.flatnonzero(squares < self._reach[None, :])  # a superset of D < cov, by row
            counts = np.diff(np.searchsorted(flat, np.arange(rows.size + 1) * self.n))
            k = (flat - np.repeat(np.arange(rows.size) * self.n, counts)).astype(np.int32)
            d = squares.ravel()[flat]
            np.sqrt(np.abs(d, out=d), out=d)  # the entries rows() would give
            out[rows] = self._segment_gains(counts, k, d)
            self._keep(cols[rows], counts, k, d)
        self.evaluations += fresh.size
        return out

    def _segment_gains(self, counts: np.ndarray, k: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Per segment (``counts`` entries each, in order) the sum of max(cov[k] - d, 0): the gains of
        distance columns and of supports alike."""
        w = self.coverage[k] - d  # float32 for sketches, float64 for an explicit matrix
        np.maximum(w, 0.0, out=w)
        out = np.zeros(counts.size, dtype=np.float64)
        filled = counts > 0
        if filled.any():
            out[filled] = np.add.reduceat(w, (np.cumsum(counts) - counts)[filled], dtype=np.float64)
        return out

    def _keep(self, cols: np.ndarray, counts: np.ndarray, k: np.ndarray, d: np.ndarray) -> None:
        """Store the supports of ``cols`` (``counts`` entries each, concatenated in ``k``, ``d``)."""
        ends = np.cumsum(counts)
        for j, count, end in zip(cols.tolist(), counts.tolist(), ends.tolist()):
            fits = count <= self.support_limit and self._support_size + count <= self.support_elements
            if fits and j not in self._support:
                self._support[j] = (k[end - count : end].copy(), d[end - count : end].copy())
                self._support_size += count

    def add(self, j: int) -> None:
        """Add ground-set index ``j`` to S (update the coverage)."""
        j = int(j)
        support = self._support.pop(j, None)
        if support is None:
            col = self.oracle.rows(np.array([j], dtype=np.intp))[0]
            np.minimum(self.coverage, col, out=self.coverage, casting="unsafe")
        else:  # outside its support, j is no closer than the coverage already is
            k, d = support
            self._support_size -= k.size
            self.coverage[k] = np.minimum(self.coverage[k], d)
        self.selected.append(j)
        np.square(self.coverage, out=self._reach)
        self._reach *= 1.0 + SQUARE_SLACK

    def best(self, cols: Sequence[int] | np.ndarray, *, lazy: bool = True) -> int:
        """The candidate of ``cols`` with the largest marginal gain (smallest G(S + j)); ties: first.

        With ``lazy`` it skips candidates whose stale gain bound is below the best exact gain.
        """
        cols = np.asarray(cols, dtype=np.intp)
        if cols.size == 0:
            raise ValueError("no candidates to choose from")
        if not self.selected:  # gains are all +inf: compare the (finite) costs G({j}), cached
            todo = cols[np.isnan(self._empty_cost[cols])]
            if todo.size:
                self._empty_cost[todo] = self.costs(todo)
            return int(cols[np.argmin(self._empty_cost[cols])])
        gains = np.full(cols.size, -np.inf)
        bound = self._bound[cols] if lazy else np.full(cols.size, np.inf)
        fresh = np.flatnonzero(np.isinf(bound))
        if fresh.size:
            gains[fresh] = g = self.gains(cols[fresh])
            self._bound[cols[fresh]] = g
        stale = np.flatnonzero(np.isfinite(bound))
        stale = stale[np.argsort(-bound[stale], kind="stable")]
        top = gains.max()
        for start in range(0, stale.size, LAZY_BATCH):
            if bound[stale[start]] * (1.0 + BOUND_SLACK) < top:
                break
            batch = stale[start : start + LAZY_BATCH]
            gains[batch] = g = self.gains(cols[batch])
            self._bound[cols[batch]] = g
            top = max(top, float(g.max()))
        return int(cols[np.argmax(gains)])


def greedy(
    fl: FacilityLocation,
    budget: int,
    *,
    candidates: Sequence[int] | np.ndarray | None = None,
    sample_size: int | None = None,
    rng: np.random.Generator | None = None,
    lazy: bool = True,
) -> list[int]:
    """Greedy minimisation of G: ``budget`` picks from ``candidates`` (default: the whole ground set).

    Parameters
    ----------
    fl:
        The facility-location function (picks are added to it).
    budget:
        Number of picks (fewer if the candidates run out).
    candidates:
        Candidate indices that may be picked (default: every candidate of ``fl``).
    sample_size:
        Stochastic greedy (Mirzasoleiman et al. 2015): each step considers a uniform random subset of
        this many remaining candidates (all of them if fewer remain). ``None``: the full greedy.
    rng:
        Generator for the subsets (required with ``sample_size``).
    lazy:
        Use stale gain bounds to skip evaluations (same picks).
    """
    avail = np.zeros(fl.n_candidates, dtype=bool)
    avail[np.arange(fl.n_candidates) if candidates is None else np.asarray(candidates, dtype=np.intp)] = True
    if sample_size is not None and rng is None:
        raise ValueError("stochastic greedy needs an rng")
    picks: list[int] = []
    for _ in range(budget):
        remaining = np.flatnonzero(avail)
        if remaining.size == 0:
            break
        if sample_size is None or sample_size >= remaining.size:
            pool = remaining
        else:
            pool = rng.choice(remaining, size=sample_size, replace=False)  # type: ignore[union-attr]
        j = fl.best(pool, lazy=lazy)
        fl.add(j)
        avail[j] = False
        picks.append(j)
    return picks


def facility_value(oracle: DistanceOracle, selected: Sequence[int]) -> float:
    """G(S) = sum_k min_{i in S} D[k, i] for a given set (+inf if empty)."""
    sel = np.asarray(selected, dtype=np.intp)
    if sel.size == 0:
        return float("inf")
    return float(oracle.rows(sel).min(axis=0).sum(dtype=np.float64))
