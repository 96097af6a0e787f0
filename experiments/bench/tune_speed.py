"""What pruning and worker processes save in `fedmm tune`, side by side in one run.

The same study (one method on segment's skewed federation, `--trials` trials, the same sampler
seed) three times, each in a fresh directory:

- pruning (ASHA, `fedmm tune`'s default) with `--jobs 1`;
- no pruning with `--jobs 1`;
- pruning with `--jobs 2` (two worker processes sharing the study's journal file).

Prints the rounds trained by all trials together, the wall time, the best trial's mean validation
accuracy of the last rounds and the test accuracy (at the validation-chosen round) of its config
rerun once, for each; then the rounds pruning saved and the speed-up of `--jobs 2`. Usage:

    .venv/bin/python experiments/bench/tune_speed.py [--trials 20] [--rounds 10] [--method fedavg] [--pruner asha]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from fedmm.bench import METHOD_COMMON, METHOD_FEDERATIONS, METHODS
from fedmm.config import load_config
from fedmm.tune import TuneSettings, tune


def study(base, out: Path, trials: int, pruner: str, jobs: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = tune(base, out, TuneSettings(trials=trials, jobs=jobs, pruner=pruner, seed=0))
    wall = time.perf_counter() - started
    test = float("nan")
    if result.best_config is not None:
        from fedmm.simulation import simulate

        summary = simulate(load_config(result.best_config, ["engine=inline"]), None)
        test = summary.get("test/acc-at-best-val", float("nan"))
    return {
        "rounds": result.rounds,
        "wall": wall,
        "complete": result.complete,
        "pruned": result.pruned,
        "best": result.best_value,
        "test": test,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--method", default="fedavg", choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=Path("experiments/out/tune_speed"))
    parser.add_argument("--pruner", default="asha", choices=["asha", "median"], help="the pruned studies' pruner")
    args = parser.parse_args()
    base = load_config(
        None,
        [
            *METHOD_COMMON,
            *METHOD_FEDERATIONS["segment"],
            *METHODS[args.method],
            f"num-server-rounds={args.rounds}",
            "engine=inline",
            "device=cpu",
        ],
    )
    label = {"asha": "ASHA", "median": "median"}[args.pruner]
    cases = {
        f"{label} pruning, --jobs 1": (args.pruner, 1),
        "no pruning, --jobs 1": ("none", 1),
        f"{label} pruning, --jobs 2": (args.pruner, 2),
    }
    results = {}
    for name, (pruner, jobs) in cases.items():
        results[name] = study(base, args.out / f"{pruner}-jobs{jobs}", args.trials, pruner, jobs)
        print(f"{name}: {results[name]}", flush=True)  # partial results survive an interrupted benchmark
    print(
        f"# fedmm tune: {args.trials} trials of {args.method} on segment (Dirichlet 0.5, 20 clients), "
        f"{args.rounds} rounds each, sampler seed 0, {os.cpu_count()} CPUs\n"
    )
    print(
        "| study | trials complete / pruned | rounds trained | wall time (s) | best mean val acc (last rounds) | "
        "test acc of its config (rerun, at best-val round) |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        best = "n/a" if r["best"] is None else f"{r['best']:.4f}"
        print(
            f"| {name} | {r['complete']} / {r['pruned']} | {r['rounds']} | {r['wall']:.0f} | {best} | {r['test']:.4f} |"
        )
    pruned, full, two = results.values()
    print(
        f"\npruning saved {1 - pruned['rounds'] / full['rounds']:.0%} of the trained rounds "
        f"({pruned['rounds']} of {full['rounds']}) and {1 - pruned['wall'] / full['wall']:.0%} of the wall time; "
        f"--jobs 2 over --jobs 1 (both pruned): {pruned['wall'] / two['wall']:.2f}x"
    )


if __name__ == "__main__":
    main()
