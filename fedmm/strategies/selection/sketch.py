"""Update vectors and their memory: seeded count-sketch projections and a per-client store
(docs/methods/selection.md §7).

Why a count sketch
------------------
DivFL and CMSFed compare clients by the Euclidean distance between their model updates. Updates have
P = 1e5 to 1e7 entries per modality, and the server keeps one (or three) per client, so they are
stored as k-dimensional random projections (``sketch-dim = k``, default 256). A dense Gaussian or
Rademacher k x P matrix would be 4 k P bytes (1 GB for k = 256, P = 1e6) and O(kP) work per vector.
We use the *count sketch* (hashing trick with sign hashing; Charikar et al. 2002, Weinberger et al.
2009), the sparsest JL transform: coordinate j goes to bucket h(j) in [0, k) with sign s(j) = +-1,

    (S x)_b = sum_{j : h(j) = b} s(j) x_j.

It needs no scaling: E <Sx, Sy> = <x, y> (cross terms vanish because E s(i)s(j) = 0 for i != j),
hence E ||Sx - Sy||^2 = ||x - y||^2, and Var ||Sz||^2 = (2/k)(||z||_2^4 - ||z||_4^4) <= 2 ||z||^4 / k,
the same relative spread sqrt(2/k) as a dense Gaussian projection (6.3 % for the squared distance,
about half that for the distance, at k = 512). Sketching is O(P) (one ``np.bincount``). The hash is
generated in chunks of ``CHUNK`` columns, each from its own counter-based seed
``SeedSequence([seed, crc32(modality), chunk])``, so any column range can be regenerated
independently, nothing of size k x P ever exists, and the same seed gives the same sketch in every
process. Generated chunks are cached (O(P) memory, bounded by ``cache_entries``).

Full vectors: sum of the per-modality sketches
----------------------------------------------
The multimodal vector is the concatenation g = [g_a; g_v] (docs/methods/cmsfed.md §4.1). A linear projection
of a concatenation is the sum of the blockwise projections: for R = [R_a, R_v],
R g = R_a g_a + R_v g_v. For count sketches with independent hashes per modality, S_a g_a + S_v g_v
is *exactly* the count sketch of g with k buckets (coordinate (m, j) of g hashed to h_m(j) with sign
s_m(j)), so it inherits every property above: E ||S g - S g'||^2 = ||g - g'||^2, relative spread
sqrt(2/k). The store keeps one sketch per modality (the weak-modality function of CMSFed needs them)
and builds the full sketch as their sum (zero for a modality the client lacks, as in the reference
code, where the untrained encoder's delta is 0).

We use the sum, not the concatenation [S_a g_a; S_v g_v] (the block-diagonal projection, also an
unbiased sketch, with M k dimensions): the distance blocks of the greedy cost O(dimension) per
entry and dominate selection time, and the sum keeps the multimodal function at k dimensions (the
same accuracy as each per-modality sketch) instead of M k. Raise ``sketch-dim`` for more accuracy.

``sketch-dim = 0`` stores the exact vectors instead (memory N x P per modality).

Why one module of this size: the count sketch and the streaming update vectors are one algorithm
with its numerics.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from fedmm.params import FRACTION, NON_NEGATIVE_INT, Checked, Interval, Search
from fedmm.strategies.selection.base import (
    UPDATE_PASS_ROUND,
    ClientState,
    ClientUpdate,
    SelectionPolicy,
    StateValue,
)
from fedmm.strategies.selection.facility import EuclideanDistances, FacilityLocation

#: Round number stored for "never refreshed".
NEVER = -1


class CountSketch:
    """Seeded count-sketch projection R^P -> R^k, one independent hash per key (modality).

    Parameters
    ----------
    dim:
        Sketch dimension k (number of buckets), at least 1.
    seed:
        Seed of the hash functions; the same seed gives the same projection everywhere.
    cache_entries:
        Most hash entries (columns) kept in memory across keys (12 bytes each); beyond it, chunks are
        regenerated on every call.
    """

    CHUNK = 1 << 16

    def __init__(self, dim: int, seed: int, *, cache_entries: int = 1 << 22) -> None:
        if dim < 1:
            raise ValueError(f"sketch dimension must be >= 1, got {dim}")
        self.dim = int(dim)
        self.seed = int(seed)
        self.cache_entries = int(cache_entries)
        self._cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self._cached = 0

    def _chunk(self, key: str, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Buckets (intp) and signs (float32, +-1) of columns [c*CHUNK, (c+1)*CHUNK) for ``key``."""
        hit = self._cache.get((key, c))
        if hit is not None:
            return hit
        rng = np.random.default_rng([self.seed, zlib.crc32(key.encode()), c])
        v = rng.integers(0, 2 * self.dim, size=self.CHUNK, dtype=np.int64)
        bucket = (v >> 1).astype(np.intp)
        sign = (1 - 2 * (v & 1)).astype(np.float32)
        if self._cached + self.CHUNK <= self.cache_entries:
            self._cache[(key, c)] = (bucket, sign)
            self._cached += self.CHUNK
        return bucket, sign

    def __call__(self, x: np.ndarray, key: str) -> np.ndarray:
        """Sketch of the flat vector ``x`` under ``key``'s hash (float32, shape (dim,))."""
        x = np.asarray(x, dtype=np.float32).ravel()
        out = np.zeros(self.dim, dtype=np.float64)
        for c in range(math.ceil(x.size / self.CHUNK)):
            part = x[c * self.CHUNK : (c + 1) * self.CHUNK]
            bucket, sign = self._chunk(key, c)
            out += np.bincount(bucket[: part.size], weights=part * sign[: part.size], minlength=self.dim)
        return out.astype(np.float32)


class UpdateStore:
    """Per-client update vectors (sketched, or exact with ``sketch-dim = 0``) and their staleness.

    For every client row and modality m it keeps

    * ``slice[m]``: the client's modality-m slice g^m_k, from the latest update :meth:`add` was told
      to refresh the slices with (the policy decides which: :meth:`UpdateVectorPolicy.refreshes_slices`),
      with ``slice_round[m]``;
    * ``full[m]``: the m-block of the client's latest *full* update (a round in which it trained every
      modality it holds; zero for modalities it lacks), with ``full_round`` per client.

    The full vector of a client (docs/methods/cmsfed.md §4.1: g_k) is the sum of its ``full[m]`` sketches,
    or the concatenation of its exact ``full[m]`` blocks in :attr:`modalities` order when
    ``sketch-dim = 0``.

    Parameters
    ----------
    sketch_dim:
        Sketch dimension per modality; 0 stores exact vectors.
    seed:
        Seed of the count-sketch hash.
    """

    def __init__(self, sketch_dim: int, seed: int) -> None:
        self.sketch_dim = int(sketch_dim)
        self.seed = int(seed)
        self.sketch = CountSketch(self.sketch_dim, seed) if self.sketch_dim > 0 else None
        self._reset()

    def _reset(self) -> None:
        """Forget every stored vector (keeps the sketch and its hash cache)."""
        self.modalities: list[str] = []
        self.dims: dict[str, int] = {}
        self.rows: dict[int, int] = {}
        self.client_ids = np.zeros(0, dtype=np.uint64)
        self.slice: dict[str, np.ndarray] = {}
        self.slice_round: dict[str, np.ndarray] = {}
        self.full: dict[str, np.ndarray] = {}
        self.full_round = np.zeros(0, dtype=np.int64)

    @property
    def capacity(self) -> int:
        return int(self.full_round.size)

    def __len__(self) -> int:
        return len(self.rows)

    # -- writing -----------------------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        cap = max(need, 2 * self.capacity, 16)
        extra = cap - self.capacity
        self.client_ids = np.concatenate([self.client_ids, np.zeros(extra, dtype=np.uint64)])
        self.full_round = np.concatenate([self.full_round, np.full(extra, NEVER, dtype=np.int64)])
        for m in self.modalities:
            d = self.dims[m]
            self.slice[m] = np.concatenate([self.slice[m], np.zeros((extra, d), dtype=np.float32)])
            self.full[m] = np.concatenate([self.full[m], np.zeros((extra, d), dtype=np.float32)])
            self.slice_round[m] = np.concatenate([self.slice_round[m], np.full(extra, NEVER, dtype=np.int64)])

    def _add_modality(self, m: str, dim: int) -> None:
        self.modalities.append(m)
        self.dims[m] = dim
        cap = self.capacity
        self.slice[m] = np.zeros((cap, dim), dtype=np.float32)
        self.full[m] = np.zeros((cap, dim), dtype=np.float32)
        self.slice_round[m] = np.full(cap, NEVER, dtype=np.int64)

    def row(self, client_id: int) -> int:
        """The row of ``client_id``, created if new."""
        r = self.rows.get(int(client_id))
        if r is None:
            r = len(self.rows)
            self._grow(r + 1)
            self.rows[int(client_id)] = r
            self.client_ids[r] = int(client_id)
        return r

    def project(self, x: np.ndarray, modality: str) -> np.ndarray:
        """The stored representation of a flat update: its sketch, or the float32 vector itself."""
        x = np.asarray(x, dtype=np.float32).ravel()
        if not np.all(np.isfinite(x)):
            raise ValueError(f"update of modality {modality!r} has non-finite values")
        return self.sketch(x, modality) if self.sketch is not None else x.copy()

    def add(
        self,
        client_id: int,
        deltas: Mapping[str, np.ndarray],
        server_round: int,
        *,
        full: bool,
        slices: Collection[str] | None = None,
    ) -> None:
        """Store a client's per-modality updates of ``server_round``.

        ``full`` says the update covers every modality the client holds: then its full vector is
        replaced (blocks of modalities absent from ``deltas`` become zero). ``slices`` names the
        modalities of ``deltas`` whose slices the update replaces (``None``: all of them).
        """
        vecs = {m: self.project(x, m) for m, x in deltas.items()}
        for m, v in vecs.items():
            if m not in self.dims:
                self._add_modality(m, v.size)
            elif v.size != self.dims[m]:
                raise ValueError(
                    f"update of modality {m!r} has {v.size} values, earlier ones had {self.dims[m]} "
                    "(exact vectors, sketch-dim = 0, need a fixed size per modality)"
                )
        r = self.row(client_id)
        for m, v in vecs.items():
            if slices is not None and m not in slices:
                continue
            self.slice[m][r] = v
            self.slice_round[m][r] = server_round
        if full and vecs:
            for m in self.modalities:
                self.full[m][r] = vecs[m] if m in vecs else 0.0
            self.full_round[r] = server_round

    # -- reading -----------------------------------------------------------------------------------------
    def _rows_of(self, client_ids: Sequence[int]) -> np.ndarray:
        return np.array([self.rows.get(int(n), -1) for n in client_ids], dtype=np.intp)

    def has_full(self, client_ids: Sequence[int]) -> np.ndarray:
        """Boolean mask: which of ``client_ids`` have a full vector."""
        rows = self._rows_of(client_ids)
        ok = rows >= 0
        ok[ok] = self.full_round[rows[ok]] != NEVER
        return ok

    def has_slice(self, client_ids: Sequence[int], modality: str) -> np.ndarray:
        """Boolean mask: which of ``client_ids`` have an update of ``modality``."""
        rows = self._rows_of(client_ids)
        ok = rows >= 0
        if modality not in self.slice_round:
            return np.zeros(len(rows), dtype=bool)
        ok[ok] = self.slice_round[modality][rows[ok]] != NEVER
        return ok

    def full_features(self, client_ids: Sequence[int]) -> np.ndarray:
        """Full vectors of ``client_ids`` (caller checks :meth:`has_full`), float32.

        Sketched: (len, sketch-dim), the sum of the per-modality sketches (the count sketch of the
        concatenation). Exact: (len, sum of dims), the concatenation.
        """
        rows = self._rows_of(client_ids)
        if not self.modalities:
            return np.zeros((len(rows), max(self.sketch_dim, 0)), dtype=np.float32)
        if self.sketch is None:
            return np.concatenate([self.full[m][rows] for m in self.modalities], axis=1)
        out = self.full[self.modalities[0]][rows]
        for m in self.modalities[1:]:
            out += self.full[m][rows]
        return out

    def slice_features(self, client_ids: Sequence[int], modality: str | Sequence[str]) -> np.ndarray:
        """float32 rows of the latest ``modality`` updates (caller checks :meth:`has_slice`).

        One modality: (len(client_ids), dim). Several: the vector of their joint update, as
        :meth:`full_features` builds it from blocks (sketched: the sum of the slices; exact: their
        concatenation in the given order; zero for a modality a client has no slice of).
        """
        rows = self._rows_of(client_ids)
        names = [modality] if isinstance(modality, str) else list(modality)
        if len(names) == 1:
            return self.slice[names[0]][rows]
        names = [m for m in names if m in self.slice]  # a modality nobody sent a slice of adds nothing
        if self.sketch is None:
            return np.concatenate([self.slice[m][rows] for m in names], axis=1)
        out = self.slice[names[0]][rows]
        for m in names[1:]:
            out += self.slice[m][rows]
        return out

    def staleness(self, client_ids: Sequence[int], server_round: int) -> np.ndarray:
        """Rounds since each client's full vector was refreshed (-1 where it has none)."""
        rows = self._rows_of(client_ids)
        out = np.full(len(rows), -1, dtype=np.int64)
        ok = rows >= 0
        fr = self.full_round[rows[ok]]
        out[ok] = np.where(fr == NEVER, -1, server_round - fr)
        return out

    # -- checkpointing ---------------------------------------------------------------------------------------
    def state_dict(self, prefix: str = "store.") -> dict[str, StateValue]:
        n = len(self.rows)
        state: dict[str, StateValue] = {
            f"{prefix}sketch_dim": self.sketch_dim,
            f"{prefix}seed": self.seed,
            f"{prefix}modalities": json.dumps(self.modalities),
            f"{prefix}client_ids": self.client_ids[:n].copy(),
            f"{prefix}full_round": self.full_round[:n].copy(),
        }
        for i, m in enumerate(self.modalities):
            state[f"{prefix}slice.{i}"] = self.slice[m][:n].copy()
            state[f"{prefix}full.{i}"] = self.full[m][:n].copy()
            state[f"{prefix}slice_round.{i}"] = self.slice_round[m][:n].copy()
        return state

    def load_state_dict(self, state: Mapping[str, StateValue], prefix: str = "store.") -> None:
        if int(state[f"{prefix}sketch_dim"]) != self.sketch_dim:
            raise ValueError(
                f"state_dict has sketch-dim {int(state[f'{prefix}sketch_dim'])}, this policy {self.sketch_dim}"
            )
        client_ids = np.asarray(state[f"{prefix}client_ids"], dtype=np.uint64)
        if int(state[f"{prefix}seed"]) != self.seed:  # new updates must be sketched as the stored ones
            self.seed = int(state[f"{prefix}seed"])
            self.sketch = CountSketch(self.sketch_dim, self.seed) if self.sketch_dim > 0 else None
        self._reset()
        for i, m in enumerate(json.loads(str(state[f"{prefix}modalities"]))):
            self._add_modality(m, int(np.asarray(state[f"{prefix}slice.{i}"]).shape[1]))
        self._grow(client_ids.size)
        for n in client_ids:
            self.row(int(n))
        k = client_ids.size
        self.full_round[:k] = np.asarray(state[f"{prefix}full_round"], dtype=np.int64)
        for i, m in enumerate(self.modalities):
            self.slice[m][:k] = np.asarray(state[f"{prefix}slice.{i}"], dtype=np.float32)
            self.full[m][:k] = np.asarray(state[f"{prefix}full.{i}"], dtype=np.float32)
            self.slice_round[m][:k] = np.asarray(state[f"{prefix}slice_round.{i}"], dtype=np.int64)


class UpdateVectorPolicy(SelectionPolicy):
    """Base of the policies that select on update vectors (DivFL, CMSFed).

    It keeps an :class:`UpdateStore`, fills it in :meth:`observe`, and remembers the modalities each
    client holds (from the last :meth:`select`) to know whether an update is a full one.
    """

    uses_updates = True

    @dataclass
    class Params(Checked):
        """Parameters shared by the update-vector policies.

        Parameters
        ----------
        sketch_dim:
            count-sketch dimension per modality (0 = store exact vectors)
        stochastic:
            stochastic greedy (random candidate subset per step) instead of full greedy
        subsample:
            stochastic-greedy sample size m = max(budget, floor(subsample * N))
        support_fraction:
            largest share of the clients a candidate's kept support may hold (0 keeps none: less
            memory, slower selection)
        ground_limit:
            most clients L over which the greedy sums its objective G exactly; with n > L clients G
            is summed over a seeded uniform sample of ceil(L^2 / n) of them (every client stays a
            candidate), so a selection costs about as much as at L clients (0: always exact)
        """

        sketch_dim: Annotated[int, NON_NEGATIVE_INT] = 256
        stochastic: bool = True
        subsample: Annotated[float, Interval(float, 0.0, 1.0, closed="right"), Search(0.05, 0.5)] = 0.1
        support_fraction: Annotated[float, FRACTION, Search(0.1, 0.5)] = 0.25
        ground_limit: Annotated[int, NON_NEGATIVE_INT] = 10_000

    def __init__(self, params: UpdateVectorPolicy.Params | None = None, *, seed: int = 0) -> None:
        super().__init__(params, seed=seed)
        # The hash seed depends only on the policy seed (never on RNG consumption), so a restored
        # policy sketches new updates exactly as the original would.
        sketch_seed = int(np.random.SeedSequence([self.seed, 0x5CE7C4]).generate_state(1)[0])
        self.store = UpdateStore(self.params.sketch_dim, sketch_seed)
        self._held: dict[int, tuple[str, ...]] = {}

    def _remember(self, clients: Sequence[ClientState]) -> None:
        self._held = {int(c.client_id): tuple(c.modalities) for c in clients}

    def ground_sample(self, n: int) -> np.ndarray | None:
        """The sampled ground set of a facility-location function over ``n`` clients: None (all of
        them, the exact objective) when ``ground-limit`` is 0 or n <= ``ground-limit``; otherwise
        ceil(ground-limit ** 2 / n) distinct sorted row indices drawn uniformly from the policy's
        generator (which is left untouched in the exact case, so below the limit the selections are
        those of the exact greedy).

        Parameters
        ----------
        n:
            Number of clients (feature rows) of the function.
        """
        limit = self.params.ground_limit
        if limit <= 0 or n <= limit:
            return None
        size = min(n, -(-limit * limit // n))
        return np.sort(self.rng.choice(n, size=size, replace=False))

    def _facility(self, features: np.ndarray) -> FacilityLocation:
        """The facility-location function over ``features`` (one row per client; its ground set is
        :meth:`ground_sample`'s sample of them above ``ground-limit``, see
        :mod:`fedmm.strategies.selection.facility`)."""
        ground = self.ground_sample(features.shape[0])
        return FacilityLocation(EuclideanDistances(features, ground), support_fraction=self.params.support_fraction)

    def _sample_size(self, n_clients: int, budget: int) -> int | None:
        """Stochastic-greedy m = max(K, floor(subsample * N)); None for the full greedy."""
        if not self.params.stochastic:
            return None
        return max(budget, int(math.floor(self.params.subsample * n_clients)))

    def update_pass(self, clients: Sequence[ClientState]) -> list[int]:
        """Clients without a full update vector: they train a short pass before the first selection."""
        ids = [int(c.client_id) for c in clients]
        return [i for i, has in zip(ids, self.store.has_full(ids)) if not has]

    def refreshes_slices(self, server_round: int, trained: Sequence[str], held: Sequence[str]) -> bool:
        """Whether an update of ``server_round`` that trained ``trained`` of the client's ``held``
        modalities replaces the client's slices g^m of those modalities: at the update pass, when it
        trained one modality alone, and when it trained only part of what it holds (CMSFed's weak
        mode; docs/methods/cmsfed.md §4.1 and §8, ``server/mmdrop.py``); an update of every held
        modality after the pass replaces only the full vector g."""
        return server_round == UPDATE_PASS_ROUND or len(trained) == 1 or not set(trained) >= set(held)

    def observe(self, server_round: int, updates: Sequence[ClientUpdate]) -> None:
        """Store each update: as the full vector if it covers all held modalities; as the slice of
        each of its modalities when :meth:`refreshes_slices` says so, or when the client has no
        slice of that modality yet (a client whose update-pass reply was lost)."""
        for u in updates:
            deltas = {m: x for m, x in u.deltas.items() if x is not None}
            if not deltas:
                continue
            held = self._held.get(int(u.client_id), tuple(u.modalities) or tuple(deltas))
            refresh = self.refreshes_slices(server_round, tuple(deltas), held)
            slices = [m for m in deltas if refresh or not self.store.has_slice([u.client_id], m)[0]]
            self.store.add(u.client_id, deltas, server_round, full=set(deltas) >= set(held), slices=slices)

    def state_dict(self) -> dict[str, StateValue]:
        state = super().state_dict()
        state.update(self.store.state_dict())
        state["held"] = json.dumps({str(k): list(v) for k, v in self._held.items()})
        return state

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        super().load_state_dict(state)
        self.store.load_state_dict(state)
        self._held = {int(k): tuple(v) for k, v in json.loads(str(state["held"])).items()}
