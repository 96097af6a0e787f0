"""CMSFed / BMSFed balanced greedy (docs/methods/cmsfed.md §4): client-wise modality selection, for any
number M >= 2 of modalities (docs/methods/cmsfed.md §4.4).

Two facility-location functions run side by side over the same candidates, one per mode:

* the multimodal one on full update vectors g_k = [g^m_k for every m] (coverage ``cov_mm``);
* the weak-mode one on the vectors of the round's weak modalities W, [g^w_k for w in W] (``cov_w``).

The modality order ``(pivot, *rest)`` defines rho_k = Acc_pivot / min_rest Acc (the client's
prototype accuracies); the global ratio rho_bar decides W: ``rest`` when rho_bar > 1 (the pivot
dominates and is dropped), else ``(pivot,)``. Each step draws the stochastic-greedy subset R of the
remaining clients, finds the best candidate of each function (i_mm, i_w), and picks (i_w, its
modalities in W) when i_w's own data is biased beyond the threshold delta toward the globally
dominant side, else (i_mm, all its modalities). Only the function that made the pick updates its
coverage; the pick leaves the candidate set. With M = 2 this is the reference's two-modality rule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from fedmm.params import Interval, Options, Search
from fedmm.strategies.selection.base import (
    MODE_MULTIMODAL,
    MODE_UNSEEN,
    MODE_WEAK,
    Assignment,
    ClientState,
)
from fedmm.strategies.selection.divfl import pick_unseen
from fedmm.strategies.selection.registry import register_policy
from fedmm.strategies.selection.sketch import UpdateVectorPolicy

#: Values of the ``slice_refresh`` parameter.
SLICE_REFRESH = ("unimodal", "every")


def global_imbalance_ratio(clients: Sequence[ClientState]) -> float:
    """rho_bar = sum n_k rho_k / sum n_k over all clients, with their latest (possibly stale) rho_k.

    Unimodal clients count with rho_k = 1 when they have not reported one; multimodal clients that
    have not reported yet are left out of both sums. 1.0 when nobody counts.
    """
    num = den = 0.0
    for c in clients:
        rho = c.imbalance_ratio
        if rho is None and len(c.modalities) == 1:
            rho = 1.0
        if rho is None or not math.isfinite(rho) or c.num_examples <= 0:
            continue
        num += c.num_examples * rho
        den += c.num_examples
    return num / den if den > 0 else 1.0


@register_policy("cmsfed")
class CMSFed(UpdateVectorPolicy):
    """CMSFed balanced stochastic greedy over (client, modality-subset) pairs, for M >= 2 modalities.

    The modality order ``(pivot, *rest)`` is the ``modalities`` parameter or, when empty, the order
    of the modality tuples of the multimodal clients (the dataset's declared order). Each client
    reports rho_k = Acc_pivot / min_{m in rest} Acc_m of its prototype (nearest-class-mean)
    accuracies (:func:`~fedmm.objectives.pmr.prototype_imbalance_ratio`; docs/methods/cmsfed.md §3.3 with
    M = 2: Acc_first / Acc_second). The global ratio rho_bar (:func:`global_imbalance_ratio`)
    decides the round's weak modalities W: ``rest`` if rho_bar > 1 (the pivot dominates on average),
    else ``(pivot,)`` (it trails the weakest other on average); with M = 2, ``second`` or ``first``
    as in the reference. A weak-mode pick trains the modalities of W it holds: with rho_bar > 1 it
    drops the dominant pivot (docs/methods/cmsfed.md §4.3: "its dominant modality is dropped"), otherwise
    it trains the pivot alone. It needs rho_{i_w} > delta (W = rest) or rho_{i_w} < 1/delta
    (W = (pivot,)); a client with no reported rho counts as balanced (1.0).

    Ground sets and candidates:

    * multimodal function: every client with a full vector (a client's full vector has zero blocks
      for the modalities it lacks, as in the reference); any remaining client is a candidate. A
      client holding none of W can only be picked here.
    * weak function: the clients holding a modality of W that have a slice of each of those they
      hold; its vectors are the joint vectors of their W slices (:meth:`UpdateStore.slice_features`,
      zero for a modality of W a client lacks). A client holding *only* modalities of W is a
      candidate too, and when it is i_w it is picked in weak mode regardless of delta: its update
      is a pure weak update (there is no dominant modality to drop), so it belongs to the weak
      coverage. (A deliberate deviation: the reference gives unimodal clients rho = 1, so with
      delta >= 1 it never picks them in weak mode.)

    Stored vectors (docs/methods/cmsfed.md §4.1, §8): the update pass gives every client its full vector
    g and its slices g^m; afterwards an update of every held modality replaces g only and a
    weak-mode update replaces the slices of what it trained only (``slice-refresh = 'unimodal'``,
    the reference's ``server/mmdrop.py``). ``slice-refresh = 'every'`` lets every update replace
    the slices of the modalities it trained. A unimodal client's update is both: its full vector
    and its one slice.

    Clients without a full vector are picked first (mode ``unseen``, all modalities), as in
    :class:`~fedmm.strategies.selection.divfl.DivFL`. ``history`` records per pick the mode
    (``multimodal``/``weak``/``unseen``) and the ``staleness`` of its full vector, plus ``rho_bar``
    and the round's ``weak`` and ``dominant`` modalities (comma-joined).

    Parameters
    ----------
    params:
        :class:`CMSFed.Params`: ``sketch-dim`` (256; 0 = exact vectors, as the reference), ``stochastic``
        (True), ``subsample`` (0.1), ``support-fraction`` (0.25), ``ground-limit`` (10,000), ``delta``
        (1.5), ``modalities`` ("" = inferred order), ``slice-refresh`` ("unimodal").
    seed:
        Seed of the policy's generator and of the sketch hash.
    """

    @dataclass
    class Params(UpdateVectorPolicy.Params):
        """CMSFed parameters (plus the update-vector ones).

        Parameters
        ----------
        delta:
            threshold on a client's rho beyond which it trains only the weak modality
        modalities:
            comma-separated modality order 'pivot,rest...' of rho = Acc_pivot / min Acc_rest (every
            modality the clients hold; empty: the order of the multimodal clients' modalities)
        slice_refresh:
            which updates replace a client's modality slices g^m: 'unimodal' (the update pass and
            updates that trained m alone, the reference) or 'every' (every update that trained m)
        """

        delta: Annotated[float, Interval(float, 1.0, None, closed="left"), Search(1.0, 3.0)] = 1.5
        modalities: str = ""
        slice_refresh: Annotated[str, Options(*SLICE_REFRESH)] = "unimodal"

    def __init__(self, params: CMSFed.Params | None = None, *, seed: int = 0) -> None:
        super().__init__(params, seed=seed)
        order = tuple(m.strip() for m in self.params.modalities.split(",") if m.strip())
        if order and (len(order) < 2 or len(set(order)) != len(order)):
            raise ValueError(
                f"parameter 'modalities' of selection 'cmsfed' must name 2 or more distinct modalities, got "
                f"{self.params.modalities!r}"
            )
        self.order: tuple[str, ...] = order

    def refreshes_slices(self, server_round: int, trained: Sequence[str], held: Sequence[str]) -> bool:
        """The reference rule (:meth:`UpdateVectorPolicy.refreshes_slices`) with ``slice-refresh =
        'unimodal'``; with ``'every'`` every update replaces the slices of the modalities it trained."""
        return self.params.slice_refresh == "every" or super().refreshes_slices(server_round, trained, held)

    def modality_order(self, clients: Sequence[ClientState]) -> tuple[str, ...]:
        """``(pivot, *rest)``: the fixed ``modalities`` or the inferred order; ValueError unless the
        clients hold 2 or more modalities, all of them named by a fixed order."""
        held: list[str] = []
        for c in sorted(clients, key=lambda c: -len(c.modalities)):  # stable: multimodal clients first
            held += [m for m in c.modalities if m not in held]
        if self.order:
            extra = sorted(set(held) - set(self.order))
            if extra:
                raise ValueError(
                    f"selection 'cmsfed' was given modalities {list(self.order)} but clients hold {extra} too"
                )
            return self.order
        if len(held) < 2:
            raise ValueError(
                f"selection 'cmsfed' needs 2 or more modalities (rho_k = Acc_pivot / min Acc_rest), but the "
                f"clients hold {len(held)}: {held}"
            )
        return tuple(held)

    def imbalance_order(self, clients: Sequence[ClientState]) -> tuple[str, ...]:
        """rho_k = Acc_pivot / min Acc_rest in :meth:`modality_order` ``(pivot, *rest)``."""
        return self.modality_order(clients)

    def select(self, server_round: int, clients: Sequence[ClientState], budget: int) -> list[Assignment]:
        started = time.perf_counter()
        k = self._check(server_round, clients, budget)
        self._remember(clients)
        pivot, *others = self.modality_order(clients)
        rho_bar = global_imbalance_ratio(clients)
        pivot_dominates = rho_bar > 1
        weak, dominant = (tuple(others), (pivot,)) if pivot_dominates else ((pivot,), tuple(others))
        delta = self.params.delta
        ids = [int(c.client_id) for c in clients]
        n = len(clients)

        has_full = self.store.has_full(ids)
        picks = [int(p) for p in pick_unseen(self.rng, np.flatnonzero(~has_full), k)]
        modes = [MODE_UNSEEN] * len(picks)
        mods: list[tuple[str, ...]] = [tuple(clients[p].modalities) for p in picks]

        mm_ground = np.flatnonzero(has_full)
        # clients holding a weak modality, with a slice of each weak modality they hold
        w_ok = np.array([any(w in c.modalities for w in weak) for c in clients], dtype=bool)
        for w in weak:
            w_ok &= self.store.has_slice(ids, w) | np.array([w not in c.modalities for c in clients], dtype=bool)
        w_ground = np.flatnonzero(w_ok)
        mm_pos = np.full(n, -1, dtype=np.intp)
        mm_pos[mm_ground] = np.arange(mm_ground.size)
        w_pos = np.full(n, -1, dtype=np.intp)
        w_pos[w_ground] = np.arange(w_ground.size)
        avail = has_full.copy()  # V: clients with a full vector, minus picks
        rest = k - len(picks)
        if rest > 0 and mm_ground.size:
            fl_mm = self._facility(self.store.full_features([ids[i] for i in mm_ground]))
            fl_w = (
                self._facility(self.store.slice_features([ids[i] for i in w_ground], weak)) if w_ground.size else None
            )
            m = self._sample_size(n, k)
            for _ in range(rest):
                remaining = np.flatnonzero(avail)
                if remaining.size == 0:
                    break
                pool = (
                    remaining if m is None or m >= remaining.size else self.rng.choice(remaining, size=m, replace=False)
                )
                # i_w first: i_mm matters only when i_w is not picked, so it is computed only then
                # (the same picks as computing both, with about half the multimodal evaluations).
                i_w, mode = -1, MODE_MULTIMODAL
                w_pool = pool[w_pos[pool] >= 0]
                if fl_w is not None and w_pool.size:
                    i_w = int(w_ground[fl_w.best(w_pos[w_pool])])
                    c = clients[i_w]
                    rho = 1.0 if c.imbalance_ratio is None else float(c.imbalance_ratio)
                    biased = rho > delta if pivot_dominates else rho < 1.0 / delta
                    if biased or set(c.modalities) <= set(weak):
                        mode = MODE_WEAK
                if mode == MODE_WEAK:
                    pick = i_w
                    fl_w.add(int(w_pos[pick]))  # type: ignore[union-attr]
                    mods.append(tuple(x for x in clients[pick].modalities if x in weak))
                else:
                    pick = int(mm_ground[fl_mm.best(mm_pos[pool])])
                    fl_mm.add(int(mm_pos[pick]))
                    mods.append(tuple(clients[pick].modalities))
                avail[pick] = False
                picks.append(pick)
                modes.append(mode)
        out = [Assignment(ids[p], mod) for p, mod in zip(picks, mods)]
        return self._record(
            server_round,
            out,
            modes,
            started,
            rho_bar=rho_bar,
            weak=",".join(weak),
            dominant=",".join(dominant),
            staleness=self.store.staleness([a.client_id for a in out], server_round).tolist(),
        )
