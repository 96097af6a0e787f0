"""Selection policies at scale: DivFL and CMSFed select time and memory, and sketch fidelity.

Synthetic federation: two modalities (``audio``, ``video``) with P parameters each (default 100k,
an encoder-sized update); 60 % of the clients hold both, 20 % audio only, 20 % video only. A
client's update of modality m is ``base[c, m] + noise`` with c one of 20 clusters (clients with
similar data send similar updates) and i.i.d. Gaussian noise of 0.5x the base's scale; rho_k of
multimodal clients is log-normal around 1.3 (audio dominant), 1 for unimodal clients.

1. Scale: for N = 1,000 and 10,000 clients, every client's update goes through ``observe`` (count
   sketch, ``sketch-dim`` 256; reported per client), then ``select`` with K = 100 is timed alone
   (``time.perf_counter``; 3 calls, each with new stochastic-greedy subsets: median and slowest), and
   run once more under ``tracemalloc`` for its peak Python/numpy allocation. The same selections
   with ``support-fraction = 0`` (no kept supports: every evaluation computes a new distance
   column) run side by side; their time ratio does not depend on how fast the machine is at the
   moment. The process max RSS (``resource``) is reported too (it includes the data generation).
2. Fidelity: at N = 200, K = 20, the DivFL greedy in its deterministic form (``stochastic=false``:
   every remaining client is a candidate at every step, so no sampling noise) runs on sketches and on
   exact vectors (``sketch-dim=0``); both selected sets are scored by G(S) = sum_k min_{i in S} D[k, i]
   with EXACT float64 distances. ``G ratio`` = G(sketched picks) / G(exact greedy picks) (1.0 = as good
   as exact; the greedy is not optimal, so it can be below 1), averaged over 5 data seeds (max shown);
   a random set's ratio is shown for scale.

3. Every policy (``--policy-sizes 10000 100000``): random, powd, oort, divfl and cmsfed each select
   K of N clients that carry simulated durations (see :func:`policies`); ``--only-policies`` runs
   this section alone.

4. Sampled ground set (``--ground-sizes 20000 100000``): on the every-policy section's federation,
   DivFL selects K of N with ``ground-limit`` 0 (the exact greedy: G summed over all N clients) and
   with each of ``--ground-limits`` (G summed over a seeded sample of ceil(L^2 / N) clients), for
   ``--ground-seeds`` policy seeds each (each seed draws its own stochastic-greedy subsets and
   sample); every selected set is scored by G over ALL N clients (the same sketch distances).
   ``G ratio`` = G(picks) / mean G(exact greedy's picks over the seeds); the exact greedy's own
   spread over seeds and a random set's ratio are shown for scale.

Writes ``experiments/out/selection_scale.csv`` (tidy: one metric per row) and prints Markdown tables.
Usage: ``.venv/bin/python experiments/bench/selection_scale.py [--params 100000] [--sizes 1000 10000]
[--policy-sizes 10000 100000] [--only-policies] [--ground-sizes 20000 100000]``
"""

from __future__ import annotations

import argparse
import csv
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

try:
    import fedmm  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fedmm.strategies.selection import ClientState, ClientUpdate, build_policy
from fedmm.strategies.selection.facility import EuclideanDistances, MatrixDistances, facility_value

MODALITIES = ("audio", "video")
OUT = Path(__file__).resolve().parents[1] / "out" / "selection_scale.csv"
#: Label of the runs with ``support-fraction = 0`` (every evaluation computes a distance column).
NO_SUPPORTS = "(no supports)"


def federation(n: int, params: int, rng: np.random.Generator, clusters: int = 20):
    """Client states plus a generator of their (per-modality) updates, one client at a time."""
    kinds = rng.choice(3, size=n, p=[0.6, 0.2, 0.2])
    held = [MODALITIES if k == 0 else (MODALITIES[k - 1],) for k in kinds]
    rho = np.where(kinds == 0, rng.lognormal(np.log(1.3), 0.4, size=n), 1.0)
    states = [ClientState(i, held[i], int(rng.integers(50, 500)), imbalance_ratio=float(rho[i])) for i in range(n)]
    base = rng.standard_normal((clusters, len(MODALITIES), params), dtype=np.float32) * 1e-3
    member = rng.integers(0, clusters, size=n)

    def updates():
        for i in range(n):
            deltas = {}
            for m in held[i]:
                j = MODALITIES.index(m)
                deltas[m] = base[member[i], j] + rng.standard_normal(params, dtype=np.float32) * 5e-4
            yield ClientUpdate(i, held[i], states[i].num_examples, deltas)

    return states, updates


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def scale(n: int, params: int, budget: int, rows: list[dict], repeats: int = 3) -> None:
    rng = np.random.default_rng(n)
    states, updates = federation(n, params, rng)
    divfl = build_policy("divfl", {}, seed=0)
    sketch_s = 0.0
    batch: list[ClientUpdate] = []
    for u in updates():
        batch.append(u)
        if len(batch) == 100:
            t = time.perf_counter()
            divfl.observe(0, batch)
            sketch_s += time.perf_counter() - t
            batch = []
    if batch:
        t = time.perf_counter()
        divfl.observe(0, batch)
        sketch_s += time.perf_counter() - t
    policies = {"divfl": divfl}
    for name, kind, extra in (
        ("cmsfed", "cmsfed", {}),
        (f"divfl {NO_SUPPORTS}", "divfl", {"support-fraction": 0.0}),
        (f"cmsfed {NO_SUPPORTS}", "cmsfed", {"support-fraction": 0.0}),
    ):
        policies[name] = build_policy(kind, extra, seed=0)
        policies[name].store.load_state_dict(divfl.store.state_dict())  # same seed, same sketches
    common = {"n_clients": n, "budget": budget, "params_per_modality": params, "sketch_dim": 256}
    rows.append(
        {
            "section": "scale",
            "policy": "sketch",
            **common,
            "metric": "sketch_ms_per_client",
            "value": 1e3 * sketch_s / n,
        }
    )
    for name, policy in policies.items():
        times = []
        for r in range(repeats):  # each call draws new stochastic-greedy subsets from the policy's generator
            t = time.perf_counter()
            picks = policy.select(1 + r, states, budget)
            times.append(time.perf_counter() - t)
        tracemalloc.start()
        policy.select(1 + repeats, states, budget)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        weak = policy.history[0]["modes"].count("weak")
        for metric, value in (
            ("select_s", float(np.median(times))),
            ("select_s_max", max(times)),
            ("select_peak_mb", peak),
            ("max_rss_mb", max_rss_mb()),
            ("selected", len(picks)),
            ("weak_only_picks", weak),
        ):
            rows.append({"section": "scale", "policy": name, **common, "metric": metric, "value": value})


#: Every policy of the "policies" section, in table order.
ALL_POLICIES = ("random", "powd", "oort", "divfl", "cmsfed")


def policies(
    n: int, params: int, budget: int, rows: list[dict], repeats: int = 3, names: tuple[str, ...] = ALL_POLICIES
) -> None:
    """Every policy selects ``budget`` of ``n`` clients, each client with a simulated duration
    (log-normal, multimodal clients 1.5x slower) as the clock gives it; all ``n`` are handed to the
    policy (every client online: the worst case). DivFL and CMSFed first observe every client's
    update (``params`` per modality: their select time depends on the sketch dimension, not on
    ``params``); PowD probes, then gets its candidates' losses; Oort runs rounds with feedback so
    that its timed calls score explored clients. Select time: median and slowest of ``repeats``
    calls (rounds 2..), then one more under tracemalloc for its peak."""
    rng = np.random.default_rng(n + 1)
    states, updates = federation(n, params, rng)
    multi = np.array([len(s.modalities) > 1 for s in states])
    seconds = rng.lognormal(0.0, 0.8, size=n) * np.where(multi, 1.5, 1.0)
    for st, t in zip(states, seconds.tolist()):
        st.sim_seconds = t
    sketches = None
    for name in names:
        policy = build_policy(name, {}, seed=0)
        started = time.perf_counter()
        if policy.uses_updates:
            if sketches is None:
                batch: list[ClientUpdate] = []
                for u in updates():
                    batch.append(u)
                    if len(batch) == 1000:
                        policy.observe(0, batch)
                        batch = []
                if batch:
                    policy.observe(0, batch)
                sketches = policy.store.state_dict()
            else:
                policy.store.load_state_dict(sketches)
        prep = time.perf_counter() - started

        first = _timed_round(policy, 1, states, budget, seconds, rng)
        times = [_timed_round(policy, 2 + r, states, budget, seconds, rng) for r in range(repeats)]
        tracemalloc.start()
        _timed_round(policy, 2 + repeats, states, budget, seconds, rng)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        common = {"n_clients": n, "budget": budget, "params_per_modality": params, "sketch_dim": 256}
        for metric, value in (
            ("select_first_s", first),
            ("select_s", float(np.median(times))),
            ("select_s_max", max(times)),
            ("select_peak_mb", peak),
            ("prepare_s", prep),
            ("max_rss_mb", max_rss_mb()),
        ):
            rows.append({"section": "policies", "policy": name, **common, "metric": metric, "value": value})
        print(
            f"policies N={n} {name}: select {np.median(times):.2f} s (first {first:.2f} s)", file=sys.stderr, flush=True
        )


def _timed_round(
    policy, server_round: int, states: list[ClientState], budget: int, seconds: np.ndarray, rng: np.random.Generator
) -> float:
    """One round of ``policy``: PowD's probe answered with random losses, the timed ``select``, and
    Oort's feedback (random losses, the clients' durations); returns the select seconds."""
    if policy.name == "powd":
        for cid in policy.probe(server_round, states, budget):
            states[cid].loss = float(rng.random())
    started = time.perf_counter()
    picks = policy.select(server_round, states, budget)
    elapsed = time.perf_counter() - started
    if policy.name == "oort":
        policy.observe(
            server_round,
            [
                ClientUpdate(
                    a.client_id,
                    a.modalities,
                    states[a.client_id].num_examples,
                    loss=float(rng.random()),
                    sim_seconds=float(seconds[a.client_id]),
                )
                for a in picks
            ],
        )
    return elapsed


def policies_markdown(rows: list[dict]) -> str:
    get = {(r["policy"], r["n_clients"], r["metric"]): r["value"] for r in rows if r["section"] == "policies"}
    lines = [
        (
            "| N | policy | first select (s) | select (s, median of 3) | slowest (s) | select peak (MiB) | "
            "max RSS (MiB) |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for n in sorted({k[1] for k in get}):
        for p in ALL_POLICIES:
            if (p, n, "select_s") in get:
                lines.append(
                    f"| {n:,} | {p} | {get[(p, n, 'select_first_s')]:.2f} | {get[(p, n, 'select_s')]:.2f} | "
                    f"{get[(p, n, 'select_s_max')]:.2f} | {get[(p, n, 'select_peak_mb')]:.1f} | "
                    f"{get[(p, n, 'max_rss_mb')]:.0f} |"
                )
    return "\n".join(lines)


def ground(n: int, params: int, budget: int, rows: list[dict], limits: tuple[int, ...], seeds: int = 2) -> None:
    """DivFL's picks with the exact greedy (``ground-limit`` 0) and with sampled ground sets
    (``limits``), each scored by G over all ``n`` clients; the federation of :func:`policies`."""
    rng = np.random.default_rng(n + 1)
    states, updates = federation(n, params, rng)
    observer = build_policy("divfl", {}, seed=0)
    batch: list[ClientUpdate] = []
    for u in updates():
        batch.append(u)
        if len(batch) == 1000:
            observer.observe(0, batch)
            batch = []
    if batch:
        observer.observe(0, batch)
    sketches = observer.store.state_dict()
    everyone = EuclideanDistances(observer.store.full_features([s.client_id for s in states]))
    found: dict[int, list[tuple[float, float]]] = {}
    for limit in (0, *limits):
        for seed in range(seeds):
            policy = build_policy("divfl", {"ground-limit": limit}, seed=seed)
            policy.store.load_state_dict(sketches)
            started = time.perf_counter()
            picks = [a.client_id for a in policy.select(1, states, budget)]
            elapsed = time.perf_counter() - started
            found.setdefault(limit, []).append((facility_value(everyone, picks), elapsed))
            print(f"ground N={n} limit={limit} seed={seed}: {elapsed:.2f} s", file=sys.stderr, flush=True)
    exact = float(np.mean([g for g, _ in found[0]]))
    sampler = np.random.default_rng(n + 2)
    rand = [facility_value(everyone, sampler.choice(n, budget, replace=False)) for _ in range(5)]
    found[-1] = [(g, 0.0) for g in rand]  # -1: a random set
    common = {"section": "ground", "n_clients": n, "budget": budget, "params_per_modality": params, "sketch_dim": 256}
    for limit, results in found.items():
        sample = n if limit == 0 else -(-limit * limit // n) if limit > 0 else 0
        name = "random set" if limit < 0 else f"divfl ground-limit={limit}"
        ratios = [g / exact for g, _ in results]
        for metric, value in (
            ("ground_points", sample),
            ("G_ratio_mean", float(np.mean(ratios))),
            ("G_ratio_max", float(np.max(ratios))),
            ("select_s_mean", float(np.mean([t for _, t in results]))),
        ):
            rows.append({**common, "policy": name, "metric": metric, "value": value})


def ground_markdown(rows: list[dict]) -> str:
    get = {(r["policy"], r["n_clients"], r["metric"]): r["value"] for r in rows if r["section"] == "ground"}
    lines = [
        "| N | selection | ground points | G ratio (mean over seeds) | G ratio (max) | select (s, mean) |",
        "|---|---|---|---|---|---|",
    ]
    for n, p in dict.fromkeys((k[1], k[0]) for k in get):
        t = get[(p, n, "select_s_mean")]
        points = "-" if p == "random set" else f"{int(get[(p, n, 'ground_points')]):,}"
        lines.append(
            f"| {n:,} | {p} | {points} | {get[(p, n, 'G_ratio_mean')]:.4f} | "
            f"{get[(p, n, 'G_ratio_max')]:.4f} | {'-' if p == 'random set' else f'{t:.2f}'} |"
        )
    return "\n".join(lines)


def fidelity(
    params: int,
    rows: list[dict],
    n: int = 200,
    budget: int = 20,
    seeds: int = 5,
    dims: tuple[int, ...] = (64, 256, 512, 1024),
) -> None:
    ratios: dict[str, list[float]] = {**{f"sketch-{d}": [] for d in dims}, "random": []}
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        states, updates = federation(n, params, rng)
        ups = list(updates())
        full = np.zeros((n, len(MODALITIES) * params), dtype=np.float32)
        for u in ups:
            for m, x in u.deltas.items():
                j = MODALITIES.index(m)
                full[u.client_id, j * params : (j + 1) * params] = x
        gram = full.astype(np.float64) @ full.T.astype(np.float64)
        sq = np.diag(gram)
        exact_d = MatrixDistances(np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0)))

        def picks_of(sketch_dim: int) -> list[int]:
            policy = build_policy("divfl", {"sketch-dim": sketch_dim, "stochastic": False}, seed=seed)
            policy.observe(0, ups)
            return [a.client_id for a in policy.select(1, states, budget)]

        g_exact = facility_value(exact_d, picks_of(0))
        for d in dims:
            ratios[f"sketch-{d}"].append(facility_value(exact_d, picks_of(d)) / g_exact)
        rand = [facility_value(exact_d, rng.choice(n, budget, replace=False)) / g_exact for _ in range(20)]
        ratios["random"].append(float(np.mean(rand)))
    for name, values in ratios.items():
        for metric, value in (("G_ratio_mean", float(np.mean(values))), ("G_ratio_max", float(np.max(values)))):
            rows.append(
                {
                    "section": "fidelity",
                    "policy": f"divfl {name}",
                    "n_clients": n,
                    "budget": budget,
                    "params_per_modality": params,
                    "sketch_dim": name.split("-")[-1],
                    "metric": metric,
                    "value": value,
                }
            )


def markdown(rows: list[dict]) -> str:
    lines = [
        "| N | policy | select (s, median of 3) | slowest (s) | select peak (MiB, tracemalloc) | max RSS (MiB) "
        "| weak-only picks |",
        "|---|---|---|---|---|---|---|",
    ]
    get = {(r["section"], r["policy"], r["n_clients"], r["metric"]): r["value"] for r in rows}
    for n in sorted({r["n_clients"] for r in rows if r["section"] == "scale"}):
        for p in ("divfl", "cmsfed", f"divfl {NO_SUPPORTS}", f"cmsfed {NO_SUPPORTS}"):
            lines.append(
                f"| {n:,} | {p} | {get[('scale', p, n, 'select_s')]:.3f} | "
                f"{get[('scale', p, n, 'select_s_max')]:.3f} | "
                f"{get[('scale', p, n, 'select_peak_mb')]:.1f} | {get[('scale', p, n, 'max_rss_mb')]:.0f} | "
                f"{int(get[('scale', p, n, 'weak_only_picks')])} |"
            )
    lines.append("")
    lines.append("| N | policy | select time with supports / without (same run, same sketches) |")
    lines.append("|---|---|---|")
    for n in sorted({r["n_clients"] for r in rows if r["section"] == "scale"}):
        for p in ("divfl", "cmsfed"):
            ratio = get[("scale", p, n, "select_s")] / get[("scale", f"{p} {NO_SUPPORTS}", n, "select_s")]
            lines.append(f"| {n:,} | {p} | {ratio:.2f} |")
    lines.append("")
    lines.append("| N | sketch time per client (ms, all its modalities) |")
    lines.append("|---|---|")
    for n in sorted({r["n_clients"] for r in rows if r["section"] == "scale"}):
        lines.append(f"| {n:,} | {get[('scale', 'sketch', n, 'sketch_ms_per_client')]:.3f} |")
    lines.append("")
    lines.append("| fidelity (N=200, K=20, deterministic greedy) | G ratio mean | G ratio max |")
    lines.append("|---|---|---|")
    for r in rows:
        if r["section"] == "fidelity" and r["metric"] == "G_ratio_mean":
            mx = get[("fidelity", r["policy"], r["n_clients"], "G_ratio_max")]
            lines.append(f"| {r['policy']} | {r['value']:.4f} | {mx:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=int, default=100_000, help="parameters per modality")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000], help="numbers of clients")
    parser.add_argument("--budget", type=int, default=100, help="clients per round K")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--policy-sizes",
        type=int,
        nargs="*",
        default=[],
        help="numbers of clients of the every-policy section (e.g. 10000 100000); none by default",
    )
    parser.add_argument(
        "--policy-params", type=int, default=1000, help="parameters per modality of the every-policy section's updates"
    )
    parser.add_argument("--only-policies", action="store_true", help="run only the every-policy section")
    parser.add_argument(
        "--ground-sizes",
        type=int,
        nargs="*",
        default=[],
        help="numbers of clients of the sampled-ground-set section (e.g. 20000 100000); none by default",
    )
    parser.add_argument(
        "--ground-limits", type=int, nargs="+", default=[10_000, 20_000], help="ground-limit values to compare"
    )
    parser.add_argument("--ground-seeds", type=int, default=2, help="policy seeds per ground-limit")
    parser.add_argument("--only-ground", action="store_true", help="run only the sampled-ground-set section")
    parser.add_argument(
        "--policies", default=",".join(ALL_POLICIES), help="comma-separated policies of the every-policy section"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows: list[dict] = []
    for n in args.policy_sizes:
        policies(n, args.policy_params, args.budget, rows, names=tuple(args.policies.split(",")))
    for n in args.ground_sizes:
        ground(n, args.policy_params, args.budget, rows, tuple(args.ground_limits), seeds=args.ground_seeds)
    if args.only_policies or args.only_ground:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        if args.policy_sizes:
            print(policies_markdown(rows))
        if args.ground_sizes:
            print(ground_markdown(rows))
        return 0
    for n in args.sizes:
        scale(n, args.params, args.budget, rows)
    fidelity(args.params, rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(markdown([r for r in rows if r["section"] != "policies"]))
    if args.policy_sizes:
        print()
        print(policies_markdown(rows))
    if args.ground_sizes:
        print()
        print(ground_markdown(rows))
    print(f"\nwrote {args.out} ({len(rows)} rows) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
