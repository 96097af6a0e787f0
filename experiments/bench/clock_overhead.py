"""What the simulated clock costs in wall time: the same federation with device profiles off and on,
side by side in one run.

Part 1, a round's wall time (engine ``inline``: every client in this process, the least noisy):
``synthetic``, IID, ``--clients`` clients, ``--k`` per round chosen by ``selection=random``, 1 local
epoch, ``--rounds`` rounds, with

* ``devices=off`` (today's run);
* ``devices=model``, every client online, ``round-close=all`` (the same clients train as with
  ``off``: the difference is the clock's arithmetic alone);
* ``devices=model``, ``devices.online-share=0.3``, ``round-close=deadline`` (availability filter,
  drop-outs and late clients on top; a different set of clients trains).

The three runs are repeated ``--repeats`` times, interleaved and in rotated order, and the table gives the median over
the repeats of each run's median later-round wall time (round 1 left out) and its ratio to ``off``.

Part 2, ``--scale N`` (default 10,000): the ``experiments/bench/scale.py`` harness (Ray, the
scenario roster, K = 100 ``random``), once without profiles and once with a trace file of N clients
(drawn from the model with 30 % online, written as CSV with one row per online interval, read back
by ``devices=<file>``): round 1, median later round and peak memory, each run its own process.

Usage: ``.venv/bin/python experiments/bench/clock_overhead.py [--clients 200] [--k 20] [--rounds 6]
[--repeats 3] [--scale 10000] [--no-scale]``. Benchmarks are not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import fedmm  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(HERE.parents[1]))

OUT = Path("experiments/out/clock")
VARIANTS = {
    "off": [],
    "model, all online": ["devices=model"],
    "model, 30 % online, deadline": [
        "devices=model",
        "devices.online-share=0.3",
        "round-close=deadline",
        "round-deadline=30",
    ],
}


CLOCK_SECONDS: list[float] = []  # CPU seconds spent in the strategy's clock steps, per call


def _time_clock_steps() -> None:
    """Time the strategy's clock steps (the online filter, and planning + closing the round) in
    CPU seconds of this process (``time.process_time``: other processes on a busy machine do not
    count). ``_online_states`` includes listing the connected clients, which a run without
    profiles does too (its "off" value)."""
    from fedmm.strategies.fedavg import ModalityAwareFedAvg

    for name in ("_online_states", "_close"):
        original = getattr(ModalityAwareFedAvg, name)

        def timed(self, *args, _original=original, **kwargs):
            started = time.process_time()
            try:
                return _original(self, *args, **kwargs)
            finally:
                CLOCK_SECONDS.append(time.process_time() - started)

        setattr(ModalityAwareFedAvg, name, timed)


def round_times(flat: list[str]) -> tuple[list[float], list[float], float]:
    """Wall seconds and CPU seconds (this process, all its threads) of every round after round 0 of
    one inline run (no output directory), and the median CPU seconds of a later round (round 1
    left out, as in the round columns) spent in the clock's steps."""
    from fedmm.config import load_config
    from fedmm.inline import server_identity
    from fedmm.simulation import simulate

    rows: list[dict] = []
    cpu: list[float] = []
    CLOCK_SECONDS.clear()

    in_clock: list[float] = []

    def on_round(row: dict) -> None:
        rows.append(row)
        cpu.append(time.process_time())
        in_clock.append(sum(CLOCK_SECONDS))

    with server_identity():
        simulate(load_config(None, flat), None, on_round=on_round)
    rounds = [float(r["seconds"]) for r in rows if r["round"] >= 1]
    cpu_rounds = [b - a for a, b in zip(cpu, cpu[1:])]  # from the end of one round's row to the next
    clock_rounds = [b - a for a, b in zip(in_clock, in_clock[1:])]
    return rounds, cpu_rounds, statistics.median(clock_rounds[1:])


def part1(args: argparse.Namespace) -> str:
    base = [
        "dataset=synthetic",
        f"dataset.num-train={20 * args.clients}",
        "partition=iid",
        f"num-clients={args.clients}",
        "selection=random",
        f"clients-per-round={args.k}",
        f"num-server-rounds={args.rounds}",
        "local-epochs=1",
        "batch-size=32",
        "device=cpu",
        "seed=0",
        "engine=inline",
    ]
    _time_clock_steps()
    medians: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpus: dict[str, list[float]] = {name: [] for name in VARIANTS}
    clock: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for i in range(args.repeats):
        # interleaved, so drift of the machine hits all alike, and rotated: each variant also runs
        # first in some repeats (later runs in one process may be slower: a larger heap, caches)
        for name in names[i % len(names) :] + names[: i % len(names)]:
            rounds, cpu_rounds, in_clock = round_times([*base, *VARIANTS[name]])
            medians[name].append(statistics.median(rounds[1:]))
            cpus[name].append(statistics.median(cpu_rounds[1:]))
            clock[name].append(in_clock)
    off, off_cpu = statistics.median(medians["off"]), statistics.median(cpus["off"])
    lines = [
        f"Part 1: {args.clients} clients, K = {args.k}, {args.rounds} rounds, engine inline, "
        f"{args.repeats} interleaved repeats (medians over the repeats of each run's median later round)\n",
        "| devices | wall s per round | ratio to off | CPU s per round | ratio to off | clock steps, CPU ms "
        "per round | clock steps / round CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        m, c, k = (statistics.median(v[name]) for v in (medians, cpus, clock))
        lines.append(
            f"| {name} | {m:.3f} | {m / off:.3f} | {c:.3f} | **{c / off_cpu:.3f}** | {1e3 * k:.2f} | "
            f"{100 * k / c:.2f} % |"
        )
    return "\n".join(lines)


def one_scale_run(n: int, trace: str, rounds: int, k: int) -> dict:
    """scale.py's :func:`one_run` with ``devices=<trace>`` added to its config (in this process)."""
    import scale

    config = scale._config
    if trace:
        scale._config = lambda *a: [*config(*a), f"devices={trace}", "devices.period-s=604800"]
    started = time.perf_counter()
    out = scale.one_run(n, "new", "random", rounds, k)
    out["wall"] = time.perf_counter() - started
    return out


def part2(args: argparse.Namespace) -> str:
    from fedmm.devices import DeviceParams, draw_profiles, write_trace

    n = args.scale
    OUT.mkdir(parents=True, exist_ok=True)
    trace = OUT / f"trace-{n}.csv"
    started = time.perf_counter()
    profiles = draw_profiles(n, seed=0, params=DeviceParams(online_share=0.3))
    write_trace(profiles, trace)
    made = time.perf_counter() - started
    results = {}
    for name, path in (("off", ""), (f"trace ({trace.stat().st_size / 2**20:.0f} MiB CSV)", str(trace))):
        cmd = [sys.executable, __file__, "--one", str(n), path or "-", str(args.scale_rounds), "100"]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"scale run {name} failed (exit {proc.returncode})")
        results[name] = json.loads(lines[-1][len("RESULT ") :])
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    out = [
        f"Part 2: N = {n:,}, K = 100 random, {args.scale_rounds} rounds, Ray (scale.py's harness, scenario "
        f"roster); the trace ({len(profiles.starts):,} online intervals) drawn and written in {made:.1f} s\n",
        "| devices | round 1 (s) | median later round (s) | whole run (s) | peak RSS GB: driver / all Ray |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        out.append(
            f"| {name} | {r['round1']:.2f} | {r['later']:.2f} | {r['wall']:.1f} | "
            f"{r['rss-driver'] / 2**30:.2f} / {r['rss-ray'] / 2**30:.2f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=int, default=10000)
    parser.add_argument("--scale-rounds", type=int, default=4)
    parser.add_argument("--no-scale", action="store_true")
    parser.add_argument("--no-rounds", action="store_true")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        n, trace, rounds, k = args.one
        print(
            "RESULT " + json.dumps(one_scale_run(int(n), "" if trace == "-" else trace, int(rounds), int(k))),
            flush=True,
        )
        return
    if not args.no_rounds:
        print(part1(args), flush=True)
    if not args.no_scale:
        print("\n" + part2(args), flush=True)


if __name__ == "__main__":
    main()
