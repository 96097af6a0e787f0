"""DivFL (Balakrishnan et al., ICLR 2022): diverse, modality-blind client selection (docs/methods/selection.md §5).

Each round, greedy facility location (:mod:`fedmm.strategies.selection.facility`) over the clients'
FULL update vectors (all modality deltas concatenated; modalities play no role) picks the clients
whose updates best represent everybody's. Selected clients train all their modalities.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from fedmm.strategies.selection.base import MODE_MULTIMODAL, MODE_UNSEEN, Assignment, ClientState
from fedmm.strategies.selection.facility import greedy
from fedmm.strategies.selection.registry import register_policy
from fedmm.strategies.selection.sketch import UpdateVectorPolicy


def pick_unseen(rng: np.random.Generator, unseen: np.ndarray, budget: int) -> np.ndarray:
    """Clients without an update vector come first: a random ``budget`` of them, or all in random order."""
    if unseen.size >= budget:
        return rng.choice(unseen, size=budget, replace=False)
    return rng.permutation(unseen)


@register_policy("divfl")
class DivFL(UpdateVectorPolicy):
    """Facility-location selection on full update vectors (DivFL).

    Update vectors are the clients' latest full updates ``global - local`` over all encoder
    parameters (concatenation of the per-modality deltas), stored as count sketches
    (``sketch-dim``, see :mod:`fedmm.strategies.selection.sketch`) and refreshed only for clients
    that trained (stale otherwise, as in DivFL). Distances are Euclidean.

    Clients without a vector (never observed training all their modalities) are treated as
    maximally distant from everybody, i.e. unknown and worth exploring: they are picked first (a
    random subset when there are more of them than the budget; mode ``unseen``), and the greedy then
    fills the rest of the budget over the clients that have vectors (its ground set V). The strategy
    also runs a first-round pass that gives every client a vector, so this matters only for clients
    that join later.

    With ``stochastic`` (default) each greedy step evaluates a random subset of
    m = max(budget, floor(subsample * N)) remaining clients (N = all known clients), as the
    reference code's ``stochastic_greedy``; otherwise all remaining clients.

    ``history`` records per pick the mode (``multimodal``, or ``unseen``) and the ``staleness`` of
    its vector (rounds since it was refreshed; -1 for none).

    Parameters
    ----------
    params:
        :class:`DivFL.Params`: ``sketch-dim`` (default 256; 0 = exact vectors), ``stochastic``
        (default True), ``subsample`` (default 0.1), ``support-fraction`` (default 0.25),
        ``ground-limit`` (default 10,000: with more clients the greedy's objective is summed over a
        seeded sample of them; see :mod:`fedmm.strategies.selection.facility`).
    seed:
        Seed of the policy's generator and of the sketch hash.
    """

    def select(self, server_round: int, clients: Sequence[ClientState], budget: int) -> list[Assignment]:
        started = time.perf_counter()
        k = self._check(server_round, clients, budget)
        self._remember(clients)
        ids = [int(c.client_id) for c in clients]
        has = self.store.has_full(ids)
        picks = list(pick_unseen(self.rng, np.flatnonzero(~has), k))
        modes = [MODE_UNSEEN] * len(picks)
        seen = np.flatnonzero(has)
        if k > len(picks) and seen.size:
            fl = self._facility(self.store.full_features([ids[i] for i in seen]))
            local = greedy(fl, k - len(picks), sample_size=self._sample_size(len(clients), k), rng=self.rng)
            picks += [int(seen[j]) for j in local]
            modes += [MODE_MULTIMODAL] * len(local)
        out = [Assignment(ids[p], tuple(clients[p].modalities)) for p in picks]
        return self._record(
            server_round,
            out,
            modes,
            started,
            staleness=self.store.staleness([a.client_id for a in out], server_round).tolist(),
        )
