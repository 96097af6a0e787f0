"""Oort's training selector (Lai et al., "Oort: Efficient Federated Learning via Guided Participant
Selection", OSDI 2021), as FedScale maintains it (``thirdparty/oort/oort.py``), with the fixes that
version needs (docs/selection.md lists every departure).

Each client is an arm with a statistical utility (``reward``), a duration (``duration``, seconds of
its round), the round of its last feedback (``stamp``) and how often it gave feedback (``count``).
A round's selection:

1. The pacer: every ``pacer-step`` rounds it compares the summed utility of the clients exploited in
   the last ``pacer-step`` rounds with the ``pacer-step`` rounds before; when it is flat (changed by at
   most 10 %) the preferred-duration percentile grows by ``pacer-delta`` (slower clients admitted),
   when it changed sharply (5x) it shrinks.
2. The preferred round duration ``T`` = the ``round-threshold`` percentile of every registered
   client's duration.
3. Explored clients are scored: clipped, min-max normalised utility plus the staleness (temporal
   uncertainty) bonus ``sqrt(staleness-weight * ln R / L_i)`` (``L_i`` = round of the last feedback),
   times ``(T / t_i) ** round-penalty`` for a client slower than ``T``.
4. ``epsilon`` decays (``epsilon * exploration-decay``, floor ``exploration-min``); ``K (1 - eps)``
   clients are exploited (drawn with probability proportional to the score among those above
   ``cut-off-util`` times the cut-off score, at least 10x as many candidates), the rest explored:
   unexplored clients ranked by data size times the same speed penalty, the best
   ``sample-window`` x drawn proportional to that.
5. Whatever is still missing to reach ``K`` is drawn uniformly from the remaining feasible clients.

The statistical utility is ``|B_i| * sqrt(mean_k loss_k ** 2)`` in the paper. fedmm's clients
report their mean training loss and their number of examples, not per-sample losses, so fedmm
takes ``num_examples * loss``: the mean loss stands in for the root mean square of the per-sample
losses (a lower bound of it, equal when every sample has the same loss).

Why one module of this size: one policy: utility, speed penalty, exploration, pacer and blacklist
share the policy's state.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np

from fedmm.params import Checked, Interval, Search
from fedmm.strategies.selection.base import (
    MODE_ALL,
    Assignment,
    ClientState,
    ClientUpdate,
    SelectionPolicy,
    StateValue,
)
from fedmm.strategies.selection.registry import register_policy


def statistical_utility(num_examples: int, loss: float) -> float:
    """Oort's statistical utility ``|B_i| * sqrt(mean loss_k^2)`` from a client's example count and
    its mean training loss (the mean stands in for the root mean square, see the module docstring).

    Parameters
    ----------
    num_examples:
        Samples the client trained on (``|B_i|``).
    loss:
        Its mean training loss.
    """
    return float(num_examples) * math.sqrt(float(loss) ** 2)


def speed_penalty(duration: np.ndarray | float, preferred: float, alpha: float) -> np.ndarray:
    """Oort's system utility factor ``(T / t_i) ** alpha`` for clients slower than ``T``, 1 otherwise.

    Parameters
    ----------
    duration:
        The clients' round durations ``t_i`` (seconds); NaN (unknown) gives 1.
    preferred:
        The preferred round duration ``T`` (seconds; ``inf``: no penalty).
    alpha:
        The exponent ``round-penalty``.
    """
    t = np.asarray(duration, dtype=np.float64)
    slow = np.isfinite(t) & (t > preferred)
    out = np.ones_like(t)
    out[slow] = (preferred / np.maximum(t[slow], 1e-4)) ** alpha
    return out


def pacer_step(threshold: float, previous: float, current: float, delta: float) -> float:
    """The pacer's new duration percentile from the summed exploited utility of the previous and
    the current window (FedScale's rule: flat within 10 % -> ``+delta``, up to 100; a change of at
    least 5x the previous sum -> ``-delta``, down to ``delta``; else unchanged).

    Parameters
    ----------
    threshold:
        The current percentile (0-100).
    previous, current:
        Summed utility of the exploited clients over the window before and the last window.
    delta:
        The step in percentile points.
    """
    change = abs(current - previous)
    if change <= 0.1 * previous:
        return min(100.0, threshold + delta)
    if change >= 5.0 * previous:
        return max(delta, threshold - delta)
    return threshold


@register_policy("oort")
class Oort(SelectionPolicy):
    """Oort's guided participant selection (OSDI 2021, FedScale's version): statistical utility
    times a penalty for slow clients, epsilon-greedy exploration, the pacer; every selected client
    trains all its modalities (see the module docstring and docs/selection.md)."""

    @dataclass
    class Params(Checked):
        """Oort parameters (defaults: FedScale's ``config_parser.py``).

        Parameters
        ----------
        exploration_factor:
            initial share epsilon of the budget that explores never-selected clients
        exploration_decay:
            epsilon is multiplied by this before every selection
        exploration_min:
            floor of epsilon
        round_threshold:
            initial percentile (0-100) of the clients' durations taken as the preferred round duration T
        round_penalty:
            exponent alpha of the penalty (T / t_i) ** alpha of a client slower than T (0: no system utility)
        pacer_step:
            rounds W per pacer window
        pacer_delta:
            percentile points the pacer moves T's percentile by
        clip_bound:
            quantile of the utilities that caps every utility
        cut_off_util:
            exploited clients are drawn among those scoring at least this times the cut-off score
        sample_window:
            exploration draws from the best sample-window x (number explored) unexplored clients
        staleness_weight:
            weight c of the staleness bonus sqrt(c * ln R / L_i), L_i = round of client i's last feedback
        blacklist_rounds:
            clients that gave feedback more than this many times are left out (-1: never)
        blacklist_max_len:
            at most this share of the clients is left out by the blacklist
        wall_seconds:
            with the simulated clock off (devices = off), take the wall seconds a client reports for
            its training as its duration: true in a deployment, where they are the client's own;
            false (default) in a simulation, where they time the simulating machine and would make
            the run differ from its seed (durations unknown then: no speed penalty)
        """

        exploration_factor: Annotated[float, Interval(float, 0, 1, closed="both"), Search(0.1, 0.9)] = 0.9
        exploration_decay: Annotated[float, Interval(float, 0, 1, closed="right"), Search(0.9, 1.0)] = 0.98
        exploration_min: Annotated[float, Interval(float, 0, 1, closed="both"), Search(0.0, 0.5)] = 0.3
        round_threshold: Annotated[float, Interval(float, 0, 100, closed="both")] = 30.0
        round_penalty: Annotated[float, Interval(float, 0, None, closed="left")] = 2.0
        pacer_step: Annotated[int, Interval(int, 1, None, closed="left")] = 20
        pacer_delta: Annotated[float, Interval(float, 0, 100, closed="both")] = 5.0
        clip_bound: Annotated[float, Interval(float, 0, 1, closed="both")] = 0.9
        cut_off_util: Annotated[float, Interval(float, 0, 1, closed="both")] = 0.05
        sample_window: Annotated[float, Interval(float, 1, None, closed="left")] = 5.0
        staleness_weight: Annotated[float, Interval(float, 0, None, closed="left"), Search(0.0, 1.0)] = 0.1
        blacklist_rounds: Annotated[int, Interval(int, -1, None, closed="left")] = -1
        blacklist_max_len: Annotated[float, Interval(float, 0, 1, closed="both")] = 0.3
        wall_seconds: bool = False

    def __init__(self, params: Oort.Params | None = None, *, seed: int = 0) -> None:
        super().__init__(params, seed=seed)
        # the arms, by client id: utility, duration (NaN: unknown), round of last feedback, feedbacks
        self._reward: dict[int, float] = {}
        self._duration: dict[int, float] = {}
        self._stamp: dict[int, int] = {}
        self._count: dict[int, int] = {}
        self.epsilon = float(self.params.exploration_factor)
        self.threshold = float(self.params.round_threshold)
        self.preferred = math.inf  # T of the last selection (seconds)
        self._exploit_util: list[float] = []  # per selection: mean utility of the last exploited clients
        self._exploited: list[int] = []  # last selection's exploited clients
        self._fed_back: set[int] = set()  # clients that gave feedback since the last selection

    # -- arms ------------------------------------------------------------------------------------
    def _register(self, clients: Sequence[ClientState]) -> None:
        """New clients become unexplored arms (utility = data size); a known duration is refreshed
        from the strategy's (the simulated clock's) estimate."""
        for c in clients:
            cid = int(c.client_id)
            if cid not in self._reward:
                self._reward[cid] = float(max(c.num_examples, 0))
                self._stamp[cid] = 0
                self._count[cid] = 0
                self._duration[cid] = math.nan
            if c.sim_seconds is not None:
                self._duration[cid] = float(c.sim_seconds)

    def _blacklist(self) -> set[int]:
        """Clients with more than ``blacklist-rounds`` feedbacks, most frequent first, at most
        ``blacklist-max-len`` of all arms (FedScale's rule, with an int length)."""
        if self.params.blacklist_rounds < 0:
            return set()
        over = sorted(
            (c for c, n in self._count.items() if n > self.params.blacklist_rounds), key=lambda c: (-self._count[c], c)
        )
        return set(over[: int(self.params.blacklist_max_len * len(self._count))])

    def _pace(self, server_round: int) -> None:
        """Record last selection's exploited utility, then move T's percentile every ``pacer-step``."""
        got = [self._reward[c] for c in self._exploited if c in self._fed_back]
        self._exploit_util.append(sum(got) / (len(got) + 1e-4))
        self._fed_back = set()
        w = self.params.pacer_step
        if server_round >= 2 * w and server_round % w == 0 and len(self._exploit_util) >= 2 * w:
            previous = sum(self._exploit_util[-2 * w : -w])
            current = sum(self._exploit_util[-w:])
            self.threshold = pacer_step(self.threshold, previous, current, self.params.pacer_delta)

    def _preferred_duration(self) -> float:
        """T: the ``threshold`` percentile of every registered client's known duration (inf if none)."""
        if self.threshold >= 100:
            return math.inf
        known = np.fromiter(self._duration.values(), dtype=np.float64, count=len(self._duration))
        known = np.sort(known[np.isfinite(known)])
        if not known.size:
            return math.inf
        return float(known[min(int(known.size * self.threshold / 100.0), known.size - 1)])

    # -- selection -------------------------------------------------------------------------------
    def scores(self, server_round: int, ids: np.ndarray, preferred: float, feasible: np.ndarray) -> np.ndarray:
        """Exploitation scores of the explored clients ``ids`` (FedScale's ``getTopK``): utility
        clipped at the ``clip-bound`` quantile of the positive utilities of the ``feasible`` clients
        and min-max normalised, plus the staleness bonus, times the speed penalty; absolute value.

        Parameters
        ----------
        server_round:
            R (at least 1 is used).
        ids:
            Explored client ids to score.
        preferred:
            T (seconds).
        feasible:
            Ids of every feasible client (their utilities set the clip value and the scale).
        """
        all_r = np.array([self._reward[int(c)] for c in feasible], dtype=np.float64)
        positive = np.sort(all_r[all_r > 0])
        if positive.size:
            clip = positive[min(int(positive.size * self.params.clip_bound), positive.size - 1)]
            low, high = 0.999 * positive[0], positive[-1]
        else:  # nobody has a positive utility yet: FedScale's get_norm would fail here
            clip, low, high = 0.0, 0.0, 0.0
        span = max(high - low, 1e-4)
        r = np.array([self._reward[int(c)] for c in ids], dtype=np.float64)
        stamp = np.array([max(self._stamp[int(c)], 1) for c in ids], dtype=np.float64)
        t = np.array([self._duration[int(c)] for c in ids], dtype=np.float64)
        rounds = max(int(server_round), 1)
        s = (np.minimum(r, clip) - low) / span + np.sqrt(self.params.staleness_weight * math.log(rounds) / stamp)
        return np.abs(s * speed_penalty(t, preferred, self.params.round_penalty))

    def select(self, server_round: int, clients: Sequence[ClientState], budget: int) -> list[Assignment]:
        started = time.perf_counter()
        k = self._check(server_round, clients, budget)
        self._register(clients)
        blacklist = self._blacklist()
        self._pace(server_round)
        self.preferred = preferred = self._preferred_duration()
        feasible = np.array([int(c.client_id) for c in clients if int(c.client_id) not in blacklist], dtype=np.int64)
        count = np.array([self._count[int(c)] for c in feasible], dtype=np.int64)
        explored, unexplored = feasible[count > 0], feasible[count == 0]

        self.epsilon = max(self.epsilon * self.params.exploration_decay, self.params.exploration_min)
        n_exploit = min(k - int(k * self.epsilon), explored.size)
        exploit = self._exploit(server_round, explored, n_exploit, preferred, feasible)
        n_explore = min(unexplored.size, k - len(exploit))
        explore = self._explore(unexplored, n_explore, preferred)
        picked = [*exploit, *explore]
        rest = np.setdiff1d(
            feasible if feasible.size >= k else np.array([int(c.client_id) for c in clients]),
            np.array(picked, dtype=np.int64),
        )
        fill = [int(c) for c in self.rng.permutation(rest)[: max(k - len(picked), 0)]]
        self._exploited = exploit
        by_id = {int(c.client_id): c for c in clients}
        out = [Assignment(c, tuple(by_id[c].modalities)) for c in (*picked, *fill)]
        return self._record(
            server_round,
            out,
            [MODE_ALL] * len(out),
            started,
            preferred_seconds=None if math.isinf(preferred) else preferred,
            threshold=self.threshold,
            epsilon=self.epsilon,
            exploited=len(exploit),
            explored=len(explore),
            filled=len(fill),
        )

    def _exploit(
        self, server_round: int, explored: np.ndarray, n: int, preferred: float, feasible: np.ndarray
    ) -> list[int]:
        """``n`` explored clients drawn proportional to their score among the best ones."""
        if n <= 0:
            return []
        s = self.scores(server_round, explored, preferred, feasible)
        order = np.argsort(-s, kind="stable")
        cutoff = s[order[min(n, order.size - 1)]] * self.params.cut_off_util
        # the candidates: every score at least the cut-off, and more than 10 n of them if there are
        keep = max(int(np.sum(s[order] >= cutoff)), min(int(10 * n) + 1, order.size))
        cands = order[:keep]
        return [int(explored[i]) for i in self._draw(cands, s[cands], n)]

    def _explore(self, unexplored: np.ndarray, n: int, preferred: float) -> list[int]:
        """``n`` unexplored clients: the best ``sample-window * n`` by data size times the speed
        penalty, drawn proportional to that."""
        if n <= 0:
            return []
        size = np.array([self._reward[int(c)] for c in unexplored], dtype=np.float64)
        t = np.array([self._duration[int(c)] for c in unexplored], dtype=np.float64)
        init = size * speed_penalty(t, preferred, self.params.round_penalty)
        pool = np.argsort(-init, kind="stable")[: min(int(self.params.sample_window * n), unexplored.size)]
        return [int(unexplored[i]) for i in self._draw(pool, init[pool], n)]

    def _draw(self, items: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
        """``n`` of ``items`` without replacement, with probability proportional to ``weights``
        (a tiny floor keeps zero weights drawable when too few are positive)."""
        w = np.maximum(np.asarray(weights, dtype=np.float64), 0.0)
        if np.count_nonzero(w) < n:
            w = w + 1e-12 * max(float(w.max(initial=0.0)), 1.0)
        return self.rng.choice(items, size=n, replace=False, p=w / w.sum())

    def observe(self, server_round: int, updates: Sequence[ClientUpdate]) -> None:
        """Feedback of the clients that trained: utility ``num_examples * loss``, their duration (the
        simulated one; with the clock off, the reported wall seconds if ``wall-seconds``), this round
        as last seen."""
        for u in updates:
            cid = int(u.client_id)
            if cid not in self._reward:
                self._reward[cid], self._duration[cid] = 0.0, math.nan
                self._count[cid] = 0
            if u.loss is not None and math.isfinite(u.loss):
                self._reward[cid] = statistical_utility(u.num_examples, u.loss)
            duration = u.sim_seconds if u.sim_seconds is not None else u.seconds if self.params.wall_seconds else None
            if duration is not None and math.isfinite(duration):
                self._duration[cid] = float(duration)
            self._stamp[cid] = int(server_round)
            self._count[cid] += 1
            self._fed_back.add(cid)

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, StateValue]:
        state = super().state_dict()
        ids = np.array(sorted(self._reward), dtype=np.int64)
        state.update(
            {
                "arm-ids": ids,
                "arm-reward": np.array([self._reward[int(c)] for c in ids], dtype=np.float64),
                "arm-duration": np.array([self._duration[int(c)] for c in ids], dtype=np.float64),
                "arm-stamp": np.array([self._stamp[int(c)] for c in ids], dtype=np.int64),
                "arm-count": np.array([self._count[int(c)] for c in ids], dtype=np.int64),
                "oort": json.dumps(
                    {
                        "epsilon": self.epsilon,
                        "threshold": self.threshold,
                        "exploit-util": self._exploit_util,
                        "exploited": self._exploited,
                        "fed-back": sorted(self._fed_back),
                        "preferred": None if math.isinf(self.preferred) else self.preferred,
                    }
                ),
            }
        )
        return state

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        super().load_state_dict(state)
        ids = [int(c) for c in np.asarray(state["arm-ids"]).ravel()]
        columns = {k: np.asarray(state[f"arm-{k}"]).ravel() for k in ("reward", "duration", "stamp", "count")}
        self._reward = {c: float(v) for c, v in zip(ids, columns["reward"])}
        self._duration = {c: float(v) for c, v in zip(ids, columns["duration"])}
        self._stamp = {c: int(v) for c, v in zip(ids, columns["stamp"])}
        self._count = {c: int(v) for c, v in zip(ids, columns["count"])}
        extra: dict[str, Any] = json.loads(str(state["oort"]))
        self.epsilon, self.threshold = float(extra["epsilon"]), float(extra["threshold"])
        self._exploit_util = [float(v) for v in extra["exploit-util"]]
        self._exploited = [int(c) for c in extra["exploited"]]
        self._fed_back = {int(c) for c in extra["fed-back"]}
        self.preferred = math.inf if extra["preferred"] is None else float(extra["preferred"])


__all__ = ["Oort", "pacer_step", "speed_penalty", "statistical_utility"]
