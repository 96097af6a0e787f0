"""Selection policies: registry and params, all/random/powd basics, DivFL, the CMSFed delta rule,
determinism by seed, and state_dict round trips."""

from __future__ import annotations

import numpy as np
import pytest

from fedmm.strategies.selection import (
    Assignment,
    ClientState,
    ClientUpdate,
    SelectionPolicy,
    build_policy,
    policy_names,
    register_policy,
)
from fedmm.strategies.selection.cmsfed import global_imbalance_ratio

AV = ("a", "v")


def states(n: int, mods: tuple[str, ...] = AV, **kw) -> list[ClientState]:
    return [ClientState(client_id=100 + i, modalities=mods, num_examples=10 + i, **kw) for i in range(n)]


# -- registry and parameters ---------------------------------------------------------------------------
def test_registry_names_and_errors() -> None:
    assert policy_names() == ["all", "cmsfed", "divfl", "oort", "powd", "random"]
    with pytest.raises(ValueError, match=r"unknown selection policy 'divf'; did you mean 'divfl'\?"):
        build_policy("divf", None, seed=0)
    with pytest.raises(ValueError, match=r"unknown parameter 'sketch-dm' .*did you mean 'sketch-dim'\?"):
        build_policy("cmsfed", {"sketch-dm": 8}, seed=0)
    with pytest.raises(ValueError, match="'d' of selection 'powd' expects int"):
        build_policy("powd", {"d": 2.5}, seed=0)
    with pytest.raises(ValueError, match="'delta' of selection 'cmsfed' must be >= 1.0"):
        build_policy("cmsfed", {"delta": 0.5}, seed=0)
    with pytest.raises(ValueError, match="'subsample' .* must be > 0.0"):
        build_policy("divfl", {"subsample": 0}, seed=0)
    with pytest.raises(ValueError, match="'stochastic' .* expects bool"):
        build_policy("divfl", {"stochastic": 1}, seed=0)
    with pytest.raises(ValueError, match="takes no parameters"):
        build_policy("random", {"d": 3}, seed=0)
    with pytest.raises(ValueError, match="seed"):
        build_policy("random", None, seed=-1)
    for order in ("a", "a,b,a"):  # any number >= 2 of distinct names (three are fine: "a,b,c")
        with pytest.raises(ValueError, match="2 or more distinct modalities"):
            build_policy("cmsfed", {"modalities": order}, seed=0)
    assert build_policy("cmsfed", {"modalities": "a,b,c"}, seed=0).order == ("a", "b", "c")


def test_params_are_kebab_case_and_the_snake_spelling_is_refused_naming_it() -> None:
    p = build_policy("cmsfed", {"sketch-dim": 16, "delta": 2, "subsample": 0.5, "stochastic": False}, seed=1)
    assert (p.params.sketch_dim, p.params.delta, p.params.subsample, p.params.stochastic) == (16, 2.0, 0.5, False)
    with pytest.raises(ValueError, match="parameter 'sketch_dim' of selection 'divfl' is now parameter 'sketch-dim'"):
        build_policy("divfl", {"sketch_dim": 0}, seed=1)
    assert build_policy("powd", {"d": 3.0}, seed=1).params.d == 3
    assert [build_policy(n, None, seed=0).uses_updates for n in policy_names()] == [
        False,
        True,
        True,
        False,
        False,
        False,
    ]


def test_register_policy_rejects_duplicates_and_the_old_bare_form() -> None:
    class Other(SelectionPolicy):
        def select(self, server_round, clients, budget):  # pragma: no cover - never called
            return []

    with pytest.raises(ValueError, match="already registered"):
        register_policy("random")(Other)
    with pytest.raises(TypeError, match=r'write @register_policy\("<name>"\) above .*Other'):
        register_policy(Other)  # type: ignore[arg-type]


# -- all / random --------------------------------------------------------------------------------------
def test_all_selects_everybody_with_their_modalities() -> None:
    clients = states(3) + [ClientState(7, ("v",), 5)]
    out = build_policy("all", None, seed=0).select(1, clients, budget=2)
    assert out == [Assignment(100, AV), Assignment(101, AV), Assignment(102, AV), Assignment(7, ("v",))]


def test_random_samples_distinct_clients_capped_at_n() -> None:
    pol = build_policy("random", None, seed=0)
    clients = states(10)
    out = pol.select(1, clients, budget=4)
    ids = [a.client_id for a in out]
    assert len(set(ids)) == 4 and set(ids) <= {c.client_id for c in clients}
    assert all(a.modalities == AV for a in out)
    assert sorted(a.client_id for a in pol.select(2, clients, budget=50)) == [c.client_id for c in clients]
    assert pol.history[0]["client_ids"] == ids and pol.history[0]["modes"] == ["all"] * 4
    with pytest.raises(ValueError, match="budget must be a positive integer"):
        pol.select(3, clients, budget=0)
    with pytest.raises(ValueError, match="duplicate client ids"):
        pol.select(3, clients + clients[:1], budget=1)


def test_random_is_roughly_uniform() -> None:
    pol = build_policy("random", None, seed=3)
    counts = np.zeros(10)
    for r in range(2000):
        for a in pol.select(r, states(10), budget=2):
            counts[a.client_id - 100] += 1
    assert np.all(np.abs(counts / 4000 - 0.1) < 0.02)


# -- powd ----------------------------------------------------------------------------------------------
def test_powd_selects_highest_losses_among_probed() -> None:
    pol = build_policy("powd", {"d": 5}, seed=0)
    clients = states(20)
    probed = pol.probe(1, clients, budget=3)
    assert len(probed) == 5 and len(set(probed)) == 5
    by_id = {c.client_id: c for c in clients}
    for c in clients:  # the highest losses overall belong to clients that were NOT probed
        c.loss = 1000.0 if c.client_id not in probed else float(c.client_id)
    by_id[probed[2]].loss = None  # never measured: explored first
    out = [a.client_id for a in pol.select(1, clients, budget=3)]
    rest = sorted((p for p in probed if p != probed[2]), reverse=True)
    assert out == [probed[2], *rest[:2]]
    assert pol.history[-1]["candidates"] == probed


def test_powd_probes_at_least_budget_and_weights_by_examples() -> None:
    pol = build_policy("powd", {"d": 2}, seed=0)
    assert len(pol.probe(1, states(10), budget=4)) == 4
    clients = [ClientState(i, AV, num_examples=0 if i % 2 else 100) for i in range(10)]
    for r in range(20):  # proportional to examples: clients without examples are never drawn
        assert all(n % 2 == 0 for n in pol.probe(r, clients, budget=5))
    # without a probe for the round, select draws the candidates itself
    assert len(pol.select(99, clients, budget=2)) == 2


# -- update vectors --------------------------------------------------------------------------------------
def updates_for(assignments: list[Assignment], vectors: dict[int, dict[str, np.ndarray]]) -> list[ClientUpdate]:
    return [
        ClientUpdate(a.client_id, a.modalities, 10, {m: vectors[a.client_id][m] for m in a.modalities})
        for a in assignments
    ]


def test_divfl_picks_unseen_first_then_one_per_cluster() -> None:
    rng = np.random.default_rng(0)
    clients = states(12)
    centers = {0: 0.0, 1: 10.0, 2: 25.0}
    vectors = {c.client_id: {m: rng.normal(centers[i % 3], 0.1, size=50) for m in AV} for i, c in enumerate(clients)}
    pol = build_policy("divfl", {"sketch-dim": 64, "stochastic": False}, seed=0)
    first = pol.select(1, clients, budget=3)
    assert pol.history[-1]["modes"] == ["unseen"] * 3
    pol.observe(1, updates_for([Assignment(c.client_id, AV) for c in clients], vectors))
    out = pol.select(2, clients, budget=3)
    assert pol.history[-1]["modes"] == ["multimodal"] * 3
    assert sorted((a.client_id - 100) % 3 for a in out) == [0, 1, 2]
    assert all(a.modalities == AV for a in out + first)
    # a new client without a vector jumps the queue
    newcomer = ClientState(5, AV, 10)
    assert pol.select(3, clients + [newcomer], budget=2)[0].client_id == 5


def cms_policy(**params) -> SelectionPolicy:
    return build_policy("cmsfed", {"sketch-dim": 0, "stochastic": False, **params}, seed=0)


def feed(pol: SelectionPolicy, clients: list[ClientState], vectors: dict[int, dict[str, np.ndarray]]) -> None:
    pol.select(0, clients, budget=len(clients))  # round 0: everybody is unseen
    pol.observe(0, updates_for([Assignment(c.client_id, c.modalities) for c in clients], vectors))


# Four multimodal clients. In each modality's space client 100 is the centre of the other three
# (the best weak-function facility); in the full space [a; v] client 103 is the most central.
CROSS = [np.array([0.0, 0.0]), np.array([1.0, 0.0]), np.array([-1.0, 0.0]), np.array([0.0, 1.0])]
FAR = [np.array([5.0, 5.0]), np.zeros(2), np.zeros(2), np.zeros(2)]


@pytest.mark.parametrize(
    ("rhos", "vectors", "expected", "mode", "weak"),
    [
        # audio dominates (rho_bar > 1): weak = v; client 100 is biased toward audio (3.0 > 1.5)
        ((3.0, 1.2, 1.2, 1.2), {"a": FAR, "v": CROSS}, Assignment(100, ("v",)), "weak", "v"),
        # same, but client 100 is balanced: the multimodal function's pick, with both modalities
        ((1.0, 1.2, 1.2, 1.2), {"a": FAR, "v": CROSS}, Assignment(103, AV), "multimodal", "v"),
        # just below the threshold still counts as balanced
        ((1.5, 1.2, 1.2, 1.2), {"a": FAR, "v": CROSS}, Assignment(103, AV), "multimodal", "v"),
        # video dominates (rho_bar < 1): weak = a; client 100 is biased toward video (0.3 < 1/1.5)
        ((0.3, 0.9, 0.9, 0.9), {"a": CROSS, "v": FAR}, Assignment(100, ("a",)), "weak", "a"),
        ((0.8, 0.9, 0.9, 0.9), {"a": CROSS, "v": FAR}, Assignment(103, AV), "multimodal", "a"),
    ],
)
def test_cmsfed_delta_rule(rhos, vectors, expected, mode, weak) -> None:
    clients, out, record = select_one(rhos, vectors, AV)
    assert out == [expected]
    assert record["modes"] == [mode] and record["weak"] == weak
    assert record["rho_bar"] == pytest.approx(global_imbalance_ratio(clients))


def select_one(rhos, vectors, mods):
    """Round-1 pick (budget 1) of CMSFed over four clients holding ``mods`` with these rho_k and
    per-modality vectors (after the update pass); returns the clients, the pick and its history."""
    clients = states(4, mods)
    for c, rho in zip(clients, rhos):
        c.imbalance_ratio = rho
    vecs = {c.client_id: {m: vectors[m][i] for m in mods} for i, c in enumerate(clients)}
    pol = cms_policy()
    feed(pol, clients, vecs)
    out = pol.select(1, clients, budget=1)
    return clients, out, pol.history[-1]


def test_cmsfed_weak_pick_updates_only_the_weak_coverage() -> None:
    clients = states(4)
    for c, rho in zip(clients, (3.0, 3.0, 3.0, 3.0)):  # everybody biased: every pick is weak-only
        c.imbalance_ratio = rho
    vecs = {c.client_id: {"a": FAR[i], "v": CROSS[i]} for i, c in enumerate(clients)}
    pol = cms_policy()
    feed(pol, clients, vecs)
    out = pol.select(1, clients, budget=4)
    assert [a.modalities for a in out] == [("v",)] * 4 and out[0].client_id == 100
    # the weak-only update refreshes the v slice, not the full vector
    pol.observe(1, updates_for(out[:1], {100: {"v": np.array([9.0, 9.0])}}))
    np.testing.assert_array_equal(pol.store.slice_features([100], "v"), [[9, 9]])
    np.testing.assert_array_equal(pol.store.full_features([100]), [[5, 5, 0, 0]])


def test_cmsfed_weak_pick_grows_only_the_weak_function_coverage() -> None:
    # Client 100 (rho 3 > delta) is the centre of the v space: the first step picks it in weak mode.
    # The full vectors [a; v] lie near the line a = 0, 1, 10, 11, 12 (v is within 0.01 of 0). With
    # the multimodal coverage still empty, the second step's multimodal pick is the best single
    # facility among 101..104 over all five points: 102 (cost ~ 10+9+0+1+2 = 22; 103: 23, 104: 26,
    # 101: 31). Had the weak pick also covered the multimodal function (cov = |a - 0|), it would be
    # 103 (cost ~ 0+1+1+0+1 = 3; 102 and 104: 4).
    clients = states(5)
    for c, rho in zip(clients, (3.0, 1.2, 1.2, 1.2, 1.2)):
        c.imbalance_ratio = rho
    a = [0.0, 1.0, 10.0, 11.0, 12.0]
    v = [0.0, 0.01, -0.01, 0.01, -0.01]
    vecs = {c.client_id: {"a": np.array([a[i]]), "v": np.array([v[i]])} for i, c in enumerate(clients)}
    pol = cms_policy()
    feed(pol, clients, vecs)
    out = pol.select(1, clients, budget=2)
    assert out == [Assignment(100, ("v",)), Assignment(102, AV)]
    assert pol.history[-1]["modes"] == ["weak", "multimodal"]


class DrawSpy:
    """A policy's generator that records the size of every ``choice`` draw."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.sizes = rng, []

    def choice(self, a, size=None, replace=True):
        self.sizes.append(size)
        return self.rng.choice(a, size=size, replace=replace)

    def permutation(self, x):
        return self.rng.permutation(x)


@pytest.mark.parametrize("name", ["divfl", "cmsfed"])
@pytest.mark.parametrize(("n", "budget", "m"), [(59, 2, 5), (50, 8, 8)])
def test_stochastic_greedy_sample_size_is_max_of_budget_and_a_tenth(name: str, n: int, budget: int, m: int) -> None:
    # m = max(K, floor(0.1 N)) (the reference's stochastic_greedy): floor(5.9) = 5 > K = 2; K = 8 > 5
    clients = states(n)
    rng = np.random.default_rng(0)
    pol = build_policy(name, {"sketch-dim": 0}, seed=0)
    feed(pol, clients, {c.client_id: {x: rng.normal(size=3) for x in AV} for c in clients})
    pol.rng = spy = DrawSpy(pol.rng)
    assert len(pol.select(1, clients, budget=budget)) == budget
    assert spy.sizes == [m] * budget  # one subset per greedy step, drawn from more than m clients


def test_cmsfed_slices_are_refreshed_by_the_pass_and_by_one_modality_updates() -> None:
    clients = states(3)
    vecs = {
        100: {"a": np.array([1.0, 0.0]), "v": np.array([0.0, 1.0])},
        101: {"a": np.array([4.0, 4.0]), "v": np.array([4.0, 4.0])},
    }  # 102 lost its update-pass reply
    pol = cms_policy()
    pol.select(0, clients, budget=3)
    pol.observe(0, updates_for([Assignment(100, AV), Assignment(101, AV)], vecs))
    store = pol.store
    # a multimodal update after the pass replaces g and leaves g^a, g^v as the pass left them
    pol.observe(1, [ClientUpdate(100, AV, 10, {"a": np.array([2.0, 2.0]), "v": np.array([3.0, 3.0])})])
    np.testing.assert_array_equal(store.full_features([100]), [[2, 2, 3, 3]])
    np.testing.assert_array_equal(store.slice_features([100], "a"), [[1, 0]])
    np.testing.assert_array_equal(store.slice_features([100], "v"), [[0, 1]])
    # a weak-only update replaces g^v and nothing else
    pol.observe(2, [ClientUpdate(100, ("v",), 10, {"v": np.array([5.0, 5.0])})])
    np.testing.assert_array_equal(store.slice_features([100], "v"), [[5, 5]])
    np.testing.assert_array_equal(store.slice_features([100], "a"), [[1, 0]])
    np.testing.assert_array_equal(store.full_features([100]), [[2, 2, 3, 3]])
    assert store.slice_round["v"][store.rows[100]] == 2 and store.slice_round["a"][store.rows[100]] == 0
    # a client without slices (its pass reply was lost) gets them from its first update
    pol.observe(3, [ClientUpdate(102, AV, 10, {"a": np.array([6.0, 0.0]), "v": np.array([0.0, 6.0])})])
    np.testing.assert_array_equal(store.slice_features([102], "a"), [[6, 0]])
    pol.observe(4, [ClientUpdate(102, AV, 10, {"a": np.array([7.0, 7.0]), "v": np.array([7.0, 7.0])})])
    np.testing.assert_array_equal(store.slice_features([102], "a"), [[6, 0]])

    # the former rule, as an explicit choice: every update replaces the slices of what it trained
    every = cms_policy(**{"slice-refresh": "every"})
    every.select(0, clients, budget=3)
    every.observe(0, updates_for([Assignment(100, AV)], vecs))
    every.observe(1, [ClientUpdate(100, AV, 10, {"a": np.array([2.0, 2.0]), "v": np.array([3.0, 3.0])})])
    np.testing.assert_array_equal(every.store.slice_features([100], "a"), [[2, 2]])
    np.testing.assert_array_equal(every.store.slice_features([100], "v"), [[3, 3]])
    with pytest.raises(ValueError, match="'slice-refresh' of selection 'cmsfed' must be one of"):
        cms_policy(**{"slice-refresh": "never"})


def test_cmsfed_unimodal_clients() -> None:
    # 100..102 multimodal and balanced (rho 1.2, so weak = v); 103 holds only v, 104 only a.
    clients = states(3, imbalance_ratio=1.2) + [ClientState(103, ("v",), 10), ClientState(104, ("a",), 10)]
    vecs = {
        100: {"a": np.array([1.0, 0.0]), "v": np.array([1.0, 0.0])},
        101: {"a": np.array([-1.0, 0.0]), "v": np.array([-1.0, 0.0])},
        102: {"a": np.array([0.0, 1.0]), "v": np.array([0.0, 1.0])},
        103: {"v": np.array([0.0, 0.0])},  # the centre of the v space
        104: {"a": np.array([0.0, 0.0])},
    }
    pol = cms_policy()
    feed(pol, clients, vecs)
    np.testing.assert_array_equal(pol.store.full_features([103, 104]), [[0, 0, 0, 0], [0, 0, 0, 0]])
    out = pol.select(1, clients, budget=5)
    modes = dict(zip([a.client_id for a in out], pol.history[-1]["modes"]))
    # the v-only client is the weak function's best and trains its (weak) modality in weak mode;
    # the a-only client has no weak slice: it comes in through the multimodal function only
    assert out[0] == Assignment(103, ("v",)) and modes[103] == "weak"
    assert modes[104] == "multimodal" and Assignment(104, ("a",)) in out
    assert sorted(a.client_id for a in out) == [100, 101, 102, 103, 104]


def test_global_imbalance_ratio_by_hand() -> None:
    clients = [
        ClientState(1, AV, 10, imbalance_ratio=2.0),
        ClientState(2, AV, 30, imbalance_ratio=1.0),
        ClientState(3, ("a",), 20),
        ClientState(4, AV, 50),
    ]  # unimodal: 1.0; unreported: left out
    assert global_imbalance_ratio(clients) == pytest.approx((10 * 2.0 + 30 * 1.0 + 20 * 1.0) / 60)
    assert global_imbalance_ratio([ClientState(4, AV, 50)]) == 1.0


def test_cmsfed_needs_two_modalities() -> None:
    clients = [ClientState(i, ("a",), 10) for i in range(3)]
    with pytest.raises(ValueError, match=r"'cmsfed' needs 2 or more modalities .* hold 1"):
        cms_policy().select(1, clients, budget=1)
    three = [ClientState(i, ("a", "v", "t"), 10) for i in range(3)]
    with pytest.raises(ValueError, match=r"clients hold \['t'\] too"):
        cms_policy(modalities="a,v").select(1, three, budget=1)
    # an explicit order decides which modality is the pivot (rho = Acc_pivot / min Acc_rest)
    pol = cms_policy(modalities="v,a")
    assert pol.modality_order(states(2)) == ("v", "a")
    assert cms_policy().imbalance_order(three) == ("a", "v", "t")  # inferred: the clients' order
    assert cms_policy(modalities="t,a,v").imbalance_order(three) == ("t", "a", "v")


AVT = ("a", "v", "t")


@pytest.mark.parametrize(
    ("rhos", "vectors", "expected", "weak", "dominant"),
    [
        # the pivot a dominates (rho_bar > 1): W = (v, t); client 100 (rho 3 > 1.5) is the centre of the
        # joint [v; t] space (cost 3 sqrt 2 against 101: sqrt 2 + 2 sqrt 2 + 2) and drops a
        ((3.0, 1.2, 1.2, 1.2), {"a": FAR, "v": CROSS, "t": CROSS}, Assignment(100, ("v", "t")), "v,t", "a"),
        # the weak function sees [v; t], not v alone: with t = FAR the joint vectors are 100 (0, 0, 5, 5),
        # 101 (1, 0, 0, 0), 102 (-1, 0, 0, 0), 103 (0, 1, 0, 0); costs 100: 3 sqrt 51 = 21.4,
        # 101 and 102: sqrt 51 + 2 + sqrt 2 = 10.6, 103: sqrt 51 + 2 sqrt 2 = 10.0 -> 103 (v alone: 100)
        ((3.0, 3.0, 3.0, 3.0), {"a": FAR, "v": CROSS, "t": FAR}, Assignment(103, ("v", "t")), "v,t", "a"),
        # the pivot trails (rho_bar < 1): W = (a,); client 100 (0.3 < 1/1.5) trains a alone
        ((0.3, 0.9, 0.9, 0.9), {"a": CROSS, "v": FAR, "t": FAR}, Assignment(100, ("a",)), "a", "v,t"),
        # balanced client 100 (rho 1.2 < 1.5): the multimodal pick, with all three modalities; full
        # vectors [a; v; t] = 100 (5, 5, 0, 0, 0, 0), 101 (0, 0, 1, 0, 1, 0), 102 (0, 0, -1, 0, -1, 0),
        # 103 (0, 0, 0, 1, 0, 1): 103 costs sqrt 52 + 2 + 2 = 11.2, 101 and 102 sqrt 52 + 2 + 2 sqrt 2 = 12.0
        ((1.2, 1.2, 1.2, 1.2), {"a": FAR, "v": CROSS, "t": CROSS}, Assignment(103, AVT), "v,t", "a"),
    ],
)
def test_cmsfed_three_modalities_by_hand(rhos, vectors, expected, weak, dominant) -> None:
    _, out, record = select_one(rhos, vectors, AVT)
    assert out == [expected]
    assert (record["weak"], record["dominant"]) == (weak, dominant)
    assert record["modes"] == ["multimodal" if expected.modalities == AVT else "weak"]


def test_cmsfed_three_modalities_partial_holders() -> None:
    # a dominates (rho 1.2 for the three-modality clients); 103 holds only (v, t), the weak modalities,
    # and is the centre of the joint [v; t] space: a weak pick whatever its rho. 104 holds (a, v) and is
    # biased (rho 3): in weak mode it trains v, the weak modality it holds.
    clients = states(3, AVT, imbalance_ratio=1.2) + [
        ClientState(103, ("v", "t"), 10),
        ClientState(104, ("a", "v"), 10, imbalance_ratio=3.0),
    ]
    vecs = {
        100: {"a": np.array([0.0, 0.0]), "v": np.array([1.0, 0.0]), "t": np.array([1.0, 0.0])},
        101: {"a": np.array([0.0, 0.0]), "v": np.array([-1.0, 0.0]), "t": np.array([-1.0, 0.0])},
        102: {"a": np.array([0.0, 0.0]), "v": np.array([0.0, 1.0]), "t": np.array([0.0, 1.0])},
        103: {"v": np.array([0.0, 0.0]), "t": np.array([0.0, 0.0])},
        104: {"a": np.array([0.0, 0.0]), "v": np.array([0.0, -3.0])},
    }
    pol = cms_policy()
    feed(pol, clients, vecs)
    out = pol.select(1, clients, budget=2)
    # joint [v; t] vectors: 100..102 at distance sqrt 2 from 103 (the origin), 104 (0, -3, 0, 0) (no t
    # slice: zero) at 3. Step 1, weak costs: 103 3 sqrt 2 + 3 = 7.2, 100 9.6, 104 13.8 -> 103. Step 2,
    # gains over that coverage: 104: 3 (everybody else is nearer to 103 than to it), 100..102: sqrt 2
    assert out == [Assignment(103, ("v", "t")), Assignment(104, ("v",))]
    assert pol.history[-1]["modes"] == ["weak", "weak"]
    # a weak-mode update of two of three held modalities refreshes their slices, not g
    pol.observe(2, [ClientUpdate(100, ("v", "t"), 10, {"v": np.array([1.0, 1.0]), "t": np.array([2.0, 2.0])})])
    np.testing.assert_array_equal(pol.store.slice_features([100], ("v", "t")), [[1, 1, 2, 2]])
    np.testing.assert_array_equal(pol.store.full_features([100]), [[0, 0, 1, 0, 1, 0]])
    # sketched, the joint vector is the sum of the slices' sketches (the count sketch of [v; t])
    sketched = build_policy("cmsfed", {"sketch-dim": 8}, seed=0)
    feed(sketched, clients, vecs)
    ids = [c.client_id for c in clients]
    joint = sketched.store.slice_features(ids, ("v", "t"))
    np.testing.assert_array_equal(
        joint, sketched.store.slice_features(ids, "v") + sketched.store.slice_features(ids, "t")
    )
    assert np.abs(joint).sum() > 0


# -- determinism and checkpoints ---------------------------------------------------------------------------
def run_rounds(pol: SelectionPolicy, rounds: range, clients: list[ClientState]) -> list[list[Assignment]]:
    """Probe, select, observe (updates from a fixed generator keyed by round and node)."""
    out = []
    for r in rounds:
        if pol.probe(r, clients, 5):
            for c in clients:
                c.loss = float(np.random.default_rng([r, c.client_id]).random())
        picks = pol.select(r, clients, 5)
        ups = []
        for a in picks:
            g = np.random.default_rng([r, a.client_id])
            ups.append(ClientUpdate(a.client_id, a.modalities, 10, {m: g.normal(size=300) for m in a.modalities}))
        pol.observe(r, ups)
        out.append(picks)
    return out


def make_clients() -> list[ClientState]:
    rng = np.random.default_rng(0)
    mods = [AV, AV, ("a",), ("v",)]
    return [
        ClientState(i, mods[i % 4], 10 + i, imbalance_ratio=float(rng.lognormal(0.3, 0.5)) if i % 4 < 2 else 1.0)
        for i in range(40)
    ]


PARAMS = {
    "all": {},
    "random": {},
    "powd": {"d": 8},
    "divfl": {"sketch-dim": 32},
    "cmsfed": {"sketch-dim": 32, "subsample": 0.2},
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_same_seed_same_sequence(name: str) -> None:
    a = run_rounds(build_policy(name, PARAMS[name], seed=4), range(4), make_clients())
    b = run_rounds(build_policy(name, PARAMS[name], seed=4), range(4), make_clients())
    assert a == b
    if name != "all":
        c = run_rounds(build_policy(name, PARAMS[name], seed=5), range(4), make_clients())
        assert a != c


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_state_dict_round_trip_reproduces_next_selection(name: str) -> None:
    clients = make_clients()
    original = build_policy(name, PARAMS[name], seed=1)
    run_rounds(original, range(3), clients)
    state = original.state_dict()
    assert all(isinstance(v, (np.ndarray, float, int, str)) for v in state.values())
    restored = build_policy(name, PARAMS[name], seed=99)  # the seed comes from the state
    restored.load_state_dict(state)
    assert restored.history == original.history
    assert run_rounds(restored, range(3, 6), clients) == run_rounds(original, range(3, 6), clients)
    after, expected = restored.state_dict(), original.state_dict()  # incl. sketches of new updates
    assert sorted(after) == sorted(expected)
    for key, value in expected.items():
        if key == "history":  # selection timings differ
            continue
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_load_state_dict_of_another_policy_fails() -> None:
    state = build_policy("random", None, seed=0).state_dict()
    with pytest.raises(ValueError, match="written by selection 'random', not 'divfl'"):
        build_policy("divfl", None, seed=0).load_state_dict(state)


@pytest.mark.parametrize("name", ["divfl", "cmsfed"])
def test_kept_supports_do_not_change_the_picks(name: str) -> None:
    with_supports = run_rounds(build_policy(name, PARAMS[name], seed=2), range(5), make_clients())
    without = run_rounds(
        build_policy(name, {**PARAMS[name], "support-fraction": 0.0}, seed=2), range(5), make_clients()
    )
    assert with_supports == without
    with pytest.raises(ValueError, match="support-fraction"):
        build_policy(name, {"support-fraction": 1.5}, seed=0)
