"""Oort (fedmm.strategies.selection.oort): utility and speed penalty on hand values, the score,
exploration share, the pacer step, blacklist, fill-up, the clock-off duration and state_dict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmm.strategies.selection import ClientState, ClientUpdate, build_policy
from fedmm.strategies.selection.oort import (
    Oort,
    pacer_step,
    speed_penalty,
    statistical_utility,
)


def clients(n: int, seconds: list[float] | None = None, examples: list[int] | None = None) -> list[ClientState]:
    return [
        ClientState(
            client_id=i + 1,
            modalities=("a", "v") if i % 2 else ("a",),
            num_examples=examples[i] if examples else 10,
            sim_seconds=seconds[i] if seconds else None,
        )
        for i in range(n)
    ]


def feedback(
    policy: Oort, server_round: int, losses: dict[int, float], n: int = 10, sim: dict[int, float] | None = None
) -> None:
    policy.observe(
        server_round,
        [ClientUpdate(c, ("a",), n, loss=loss, sim_seconds=(sim or {}).get(c)) for c, loss in losses.items()],
    )


def test_statistical_utility_on_hand_values() -> None:
    # |B| * sqrt(mean loss^2) with the mean loss standing in for each sample's: 50 * 0.4
    assert statistical_utility(50, 0.4) == pytest.approx(20.0)
    assert statistical_utility(8, -1.5) == pytest.approx(12.0)


def test_speed_penalty_on_hand_values() -> None:
    # T = 2 s, alpha = 2: faster or equal -> 1; 4 s -> (2/4)^2 = 0.25; 8 s -> (2/8)^2; unknown -> 1
    got = speed_penalty(np.array([1.0, 2.0, 4.0, 8.0, math.nan]), 2.0, 2.0)
    np.testing.assert_allclose(got, [1.0, 1.0, 0.25, 0.0625, 1.0])
    np.testing.assert_allclose(speed_penalty(np.array([4.0]), 2.0, 3.0), [0.125])
    np.testing.assert_allclose(speed_penalty(np.array([4.0]), math.inf, 2.0), [1.0])


def test_score_on_hand_values() -> None:
    """Round 2: clients 1-3 gave feedback in round 1 (utilities 10, 20, 30), client 4 did not (its
    data size, 5, stands); durations 1, 2, 4, 3 s, so T = the 30th percentile = 2 s."""
    p = build_policy("oort", None, seed=0)
    states = clients(4, seconds=[1.0, 2.0, 4.0, 3.0], examples=[10, 10, 10, 5])
    p.select(1, states, 3)
    feedback(p, 1, {1: 1.0, 2: 2.0, 3: 3.0})
    p.select(2, states, 3)
    assert p.preferred == 2.0
    low, span = 0.999 * 5, 30 - 0.999 * 5  # min over positive utilities (incl. the unexplored 5), max 30
    bonus = math.sqrt(0.1 * math.log(2) / 1)  # last feedback in round 1
    want = [(10 - low) / span + bonus, (20 - low) / span + bonus, ((30 - low) / span + bonus) * (2 / 4) ** 2]
    got = p.scores(2, np.array([1, 2, 3]), 2.0, np.array([1, 2, 3, 4]))
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert got[2] < got[1]  # the slow client's higher utility is outweighed by its penalty
    # round 3, client 1 seen again in round 2: its staleness bonus shrinks, the others' grows with ln R
    feedback(p, 2, {1: 1.0})
    got = p.scores(3, np.array([1, 2]), math.inf, np.array([1, 2, 3, 4]))
    want = [(10 - low) / span + math.sqrt(0.1 * math.log(3) / 2), (20 - low) / span + math.sqrt(0.1 * math.log(3) / 1)]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_clip_bound_caps_the_utility() -> None:
    p = build_policy("oort", {"clip-bound": 0.5}, seed=0)
    states = clients(4, examples=[1, 1, 1, 1])
    p.select(1, states, 4)
    feedback(p, 1, {1: 10.0, 2: 20.0, 3: 30.0, 4: 40.0})  # utilities 100..400, clip at index 2 -> 300
    got = p.scores(3, np.array([3, 4]), math.inf, np.array([1, 2, 3, 4]))
    assert got[0] == pytest.approx(got[1])


def test_first_round_explores_everything_and_share_follows_epsilon() -> None:
    p = build_policy("oort", None, seed=3)
    states = clients(200)
    first = p.select(1, states, 20)
    assert len(first) == 20 and p.history[-1]["explored"] == 20 and p.history[-1]["exploited"] == 0
    feedback(p, 1, {a.client_id: 1.0 for a in first})
    p.select(2, states, 20)
    eps = 0.9 * 0.98 * 0.98  # decayed before every selection
    assert p.epsilon == pytest.approx(eps)
    assert p.history[-1]["exploited"] == 20 - int(20 * eps) == 3
    assert p.history[-1]["explored"] == 17
    for r in range(3, 200):
        p.select(r, states, 20)
    assert p.epsilon == pytest.approx(0.3)  # the floor
    assert p.history[-1]["exploited"] == 20 - int(20 * 0.3)


def test_exploration_prefers_fast_clients_through_the_penalty() -> None:
    # 100 fast (1 s) and 100 slow (10 s) clients of equal size: T = 30th percentile = 1 s, so a slow
    # unexplored client weighs (1/10)^2 = 1 % of a fast one: the pool of the best 5 x 10 is all fast
    seconds = [1.0] * 100 + [10.0] * 100
    p = build_policy("oort", None, seed=0)
    picked = [a.client_id for a in p.select(1, clients(200, seconds=seconds), 10)]
    assert p.preferred == 1.0 and all(c <= 100 for c in picked)
    q = build_policy("oort", {"round-penalty": 0}, seed=0)  # no system utility: both kinds
    picked = [a.client_id for a in q.select(1, clients(200, seconds=seconds), 100)]
    assert 0 < sum(c > 100 for c in picked) < 100


def test_pacer_step_rule() -> None:
    assert pacer_step(30, previous=100, current=105, delta=5) == 35  # flat within 10 %: relax T
    assert pacer_step(100, previous=100, current=100, delta=5) == 100  # at most 100
    assert pacer_step(30, previous=100, current=700, delta=5) == 25  # changed 6x: tighten
    assert pacer_step(5, previous=100, current=700, delta=5) == 5  # at least delta
    assert pacer_step(30, previous=100, current=150, delta=5) == 30  # in between: unchanged


def test_pacer_relaxes_when_utility_is_flat() -> None:
    p = build_policy("oort", {"pacer-step": 2}, seed=0)
    states = clients(50, seconds=[float(i + 1) for i in range(50)])
    thresholds = []
    for r in range(1, 9):
        p.select(r, states, 10)
        feedback(p, r, {c: 1.0 for c in p.history[-1]["client_ids"]}, sim={c: float(c) for c in range(1, 51)})
        thresholds.append(p.threshold)
    # exploited utility per selection: 0, 0 (nobody exploited before round 2), then 10 each (10
    # examples x loss 1). Round 4: 0 -> 20 is a sharp change, T's percentile tightens by 5; rounds 6
    # and 8: 20 -> 20 is flat, it relaxes by 5 each
    assert thresholds == [30, 30, 30, 25, 25, 30, 30, 35]


def test_blacklist_and_fill_up() -> None:
    p = build_policy("oort", {"blacklist-rounds": 0, "blacklist-max-len": 0.5}, seed=0)
    states = clients(6)
    first = p.select(1, states, 3)
    feedback(p, 1, {a.client_id: 1.0 for a in first})
    second = {a.client_id for a in p.select(2, states, 3)}
    assert not second & {a.client_id for a in first}  # count 1 > 0: left out (3 of 6 = the maximum)
    # fewer unexplored than the exploration share: the rest is filled, never more than the budget
    q = build_policy("oort", None, seed=0)
    got = q.select(1, clients(5), 5)
    assert sorted(a.client_id for a in got) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("wall_seconds", [False, True])
def test_wall_seconds_only_when_asked_with_the_clock_off(wall_seconds: bool) -> None:
    p = build_policy("oort", {"wall-seconds": wall_seconds}, seed=0)
    states = clients(3)
    p.select(1, states, 3)
    p.observe(
        1,
        [
            ClientUpdate(1, ("a",), 10, loss=1.0, seconds=2.5),
            ClientUpdate(2, ("a",), 10, loss=1.0, sim_seconds=7.0, seconds=2.5),
        ],
    )
    assert p._duration[2] == 7.0 and math.isnan(p._duration[3])  # the clock's seconds always win
    p.select(2, states, 3)
    if wall_seconds:  # a deployment: the client's own wall seconds
        assert p._duration[1] == 2.5 and p.preferred == 2.5  # the percentile of the known durations only
    else:  # a simulation stays a function of its seed: the machine's wall time is never read
        assert math.isnan(p._duration[1]) and p.preferred == 7.0


def test_state_dict_round_trip_continues_identically() -> None:
    states = clients(40, seconds=[float(i % 7 + 1) for i in range(40)])
    a, b = build_policy("oort", None, seed=5), build_policy("oort", None, seed=5)
    for r in range(1, 4):
        feedback(a, r, {x.client_id: 0.1 * r for x in a.select(r, states, 8)})
    b.load_state_dict(a.state_dict())
    for r in range(4, 7):
        sa, sb = a.select(r, states, 8), b.select(r, states, 8)
        assert sa == sb
        feedback(a, r, {x.client_id: 0.5 for x in sa})
        feedback(b, r, {x.client_id: 0.5 for x in sb})
    assert (a.epsilon, a.threshold) == (b.epsilon, b.threshold)


@pytest.mark.integration
def test_oort_on_the_clock_resumes_with_the_same_selections(tmp_path) -> None:
    """A federation with device profiles under Oort, interrupted after round 1 and resumed from its
    checkpoint, selects exactly the clients of the uninterrupted run (the arms, epsilon, the pacer
    and the generator are in the checkpoint)."""
    import pandas as pd

    from fedmm.checkpoint import load_checkpoint
    from fedmm.cli import main
    from fedmm.config import load_config
    from fedmm.simulation import simulate

    run = load_config(
        None,
        [
            "dataset=synthetic",
            "partition=iid",
            "num-clients=12",
            "allocation=multi-ratio",
            "multi-ratio=0.5",
            "strategy=fedavg",
            "selection=oort",
            "clients-per-round=3",
            "num-server-rounds=4",
            "local-epochs=1",
            "batch-size=16",
            "device=cpu",
            "seed=3",
            "engine=inline",
            "devices=model",
        ],
    )
    simulate(run, tmp_path / "whole")

    class Stop(Exception):
        pass

    def stop_after_round_2(row):
        if row["round"] == 2:
            raise Stop("stopped on purpose")

    with pytest.raises(Exception):  # noqa: B017 - however the engine reports the interrupt
        simulate(run, tmp_path / "split", on_round=stop_after_round_2)
    assert load_checkpoint(tmp_path / "split").server_round == 2
    assert main(["simulate", "--resume", str(tmp_path / "split"), "--quiet"]) == 0
    cols = ["round", "partition-id", "modalities-trained", "status"]
    a, b = (pd.read_csv(tmp_path / d / "clients.csv")[cols] for d in ("whole", "split"))
    pd.testing.assert_frame_equal(a, b)
    assert set(a["status"]) == {"ok"}
    ra, rb = (pd.read_csv(tmp_path / d / "rounds.csv") for d in ("whole", "split"))
    assert rb["sim-clock"].tolist() == pytest.approx(ra["sim-clock"].tolist())
