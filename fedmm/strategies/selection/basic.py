"""Modality-blind baselines: ``all``, ``random`` and Power-of-Choice (``powd``); docs/methods/selection.md
§2, §3 and §4.

Each selected client trains all the modalities it holds (mode ``all`` in ``history``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from fedmm.params import Checked, Interval, Search
from fedmm.strategies.selection.base import (
    MODE_ALL,
    Assignment,
    ClientState,
    SelectionPolicy,
    StateValue,
)
from fedmm.strategies.selection.registry import register_policy


@register_policy("all")
class AllClients(SelectionPolicy):
    """Every client, every round, with all its modalities (``budget`` is ignored)."""

    def select(self, server_round: int, clients: Sequence[ClientState], budget: int) -> list[Assignment]:
        started = time.perf_counter()
        self._check(server_round, clients, max(int(budget), 1))
        out = [Assignment(c.client_id, tuple(c.modalities)) for c in clients]
        return self._record(server_round, out, [MODE_ALL] * len(out), started)


@register_policy("random")
class RandomClients(SelectionPolicy):
    """A uniform sample of ``budget`` clients without replacement (FedAvg), all their modalities."""

    def select(self, server_round: int, clients: Sequence[ClientState], budget: int) -> list[Assignment]:
        started = time.perf_counter()
        k = self._check(server_round, clients, budget)
        picks = self.rng.choice(len(clients), size=k, replace=False) if k else np.empty(0, dtype=int)
        out = [Assignment(clients[i].client_id, tuple(clients[i].modalities)) for i in picks]
        return self._record(server_round, out, [MODE_ALL] * len(out), started)


@register_policy("powd")
class PowerOfChoice(SelectionPolicy):
    """Power-of-Choice (Cho, Wang and Joshi, AISTATS 2022): probe d candidates, keep the highest losses.

    :meth:`probe` draws ``d' = min(N, max(d, budget))`` distinct candidates; with ``weighted`` (the
    default, as in the paper) client k is drawn with probability proportional to its
    ``num_examples`` (sequential sampling without replacement, i.e. ``Generator.choice(p=...)``);
    clients with zero examples are only drawn when fewer than ``d'`` clients have examples. With
    ``weighted=False`` the candidates are a uniform sample. The strategy then measures the local loss
    of every candidate under the current global model and :meth:`select` keeps the ``budget``
    candidates with the highest :attr:`ClientState.loss`; a candidate whose loss is ``None`` counts
    as +inf (explored first); ties keep the probe order.

    The candidate set is kept as an array of client ids (the reference code indexed a Python list with
    a NumPy array). If :meth:`select` is called for a round without a :meth:`probe` for that round, it
    draws the candidates itself and uses whatever losses the states hold.
    """

    @dataclass
    class Params(Checked):
        """Power-of-Choice parameters.

        Parameters
        ----------
        d:
            number of candidates probed per round (at least the budget)
        weighted:
            draw candidates proportional to num-examples (paper) instead of uniformly
        """

        d: Annotated[int, Interval(int, 1, None, closed="left"), Search(2, 20)] = 10
        weighted: bool = True

    def __init__(self, params: PowerOfChoice.Params | None = None, *, seed: int = 0) -> None:
        super().__init__(params, seed=seed)
        self._candidates: np.ndarray = np.empty(0, dtype=np.uint64)
        self._candidates_round = -1

    def probe(self, server_round: int, clients: Sequence[ClientState], budget: int) -> list[int]:
        k = self._check(server_round, clients, budget)
        size = min(len(clients), max(self.params.d, k))
        picks = self._draw(clients, size)
        self._candidates = np.array([clients[i].client_id for i in picks], dtype=np.uint64)
        self._candidates_round = int(server_round)
        return [int(n) for n in self._candidates]

    def _draw(self, clients: Sequence[ClientState], size: int) -> np.ndarray:
        if not self.params.weighted:
            return self.rng.choice(len(clients), size=size, replace=False)
        n = np.array([max(c.num_examples, 0) for c in clients], dtype=np.float64)
        positive = np.flatnonzero(n > 0)
        if positive.size >= size:
            return self.rng.choice(len(clients), size=size, replace=False, p=n / n.sum())
        zero = np.flatnonzero(n <= 0)
        rest = self.rng.choice(zero, size=size - positive.size, replace=False)
        return np.concatenate([self.rng.permutation(positive), rest])

    def select(self, server_round: int, clients: Sequence[ClientState], budget: int) -> list[Assignment]:
        started = time.perf_counter()
        k = self._check(server_round, clients, budget)
        if self._candidates_round != server_round:
            self.probe(server_round, clients, budget)
        by_id = {c.client_id: c for c in clients}
        cands = [by_id[int(n)] for n in self._candidates if int(n) in by_id]
        losses = np.array([np.inf if c.loss is None else float(c.loss) for c in cands], dtype=np.float64)
        order = np.argsort(-losses, kind="stable")[:k]
        out = [Assignment(cands[i].client_id, tuple(cands[i].modalities)) for i in order]
        return self._record(
            server_round,
            out,
            [MODE_ALL] * len(out),
            started,
            candidates=[c.client_id for c in cands],
            losses=[None if c.loss is None else float(c.loss) for c in cands],
        )

    def state_dict(self) -> dict[str, StateValue]:
        state = super().state_dict()
        state["candidates"] = self._candidates.copy()
        state["candidates_round"] = self._candidates_round
        return state

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        super().load_state_dict(state)
        self._candidates = np.asarray(state["candidates"], dtype=np.uint64).copy()
        self._candidates_round = int(state["candidates_round"])


__all__ = ["AllClients", "PowerOfChoice", "RandomClients"]
