"""The loss rule of ``fedmm.collapse`` with and without its floor, on runs that break down and runs
that do not.

The grid: FedAvg with ``ce`` at lr 0.05, 0.1, 0.2 and 0.3 and with ``boost`` at lr 0.05 and 0.2
(momentum 0.9, the defaults otherwise) on the skewed federations of ``mfeat``, ``segment`` and
``competition`` (Dirichlet 0.5 over 20 clients, half of them unimodal, 10 at random a round, 20
rounds), seeds 0-2: 54 runs, about 25 minutes on one core. High learning rates and boost under skew
give both kinds: well-trained models with small noisy losses, and runs that break down.

For every run that the rule flags at some floor, the table prints the round it fires at for each
floor (``-``: never) and the run's late drop, its best validation accuracy less the mean of its last
5 rounds: a breakdown loses accuracy, a false alarm does not. Nothing here selects anything; the
floor was chosen on mfeat's runs and checked on segment's and competition's (docs/benchmarks.md,
"The loss rule's floor").

Usage::

    python experiments/bench/collapse_floor.py --run experiments/out/collapse-grid   # runs, then the table
    python experiments/bench/collapse_floor.py experiments/out/collapse-grid [more result dirs]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd

from fedmm.collapse import LOSS_FLOOR, loss_growth
from fedmm.model_selection import best_on_validation, last_rounds_val
from fedmm.results import LAST_ROUNDS

FLOORS = (0.0, 0.05, LOSS_FLOOR, 0.2)
DATASETS = ("mfeat", "segment", "competition")
GRID = [("ce", lr) for lr in (0.05, 0.1, 0.2, 0.3)] + [("boost", lr) for lr in (0.05, 0.2)]
SEEDS = (0, 1, 2)
FEDERATION = (
    "partition=dirichlet",
    "dirichlet-alpha=0.5",
    "num-clients=20",
    "clients-per-round=10",
    "selection=random",
    "allocation=multi-ratio",
    "multi-ratio=0.5",
    "engine=inline",
    "num-server-rounds=20",
)


def run_grid(out: Path) -> None:
    """Run the grid's missing runs into ``out/<dataset>-<objective>-lr<lr>-s<seed>``."""
    fedmm = Path(sys.executable).with_name("fedmm")
    for dataset in DATASETS:
        for objective, lr in GRID:
            for seed in SEEDS:
                run = out / f"{dataset}-{objective}-lr{lr}-s{seed}"
                if (run / "summary.json").is_file():
                    continue
                keys = (f"dataset={dataset}", *FEDERATION, f"objective={objective}", f"lr={lr}", f"seed={seed}")
                sets = [arg for key in keys for arg in ("--set", key)]
                cmd = [str(fedmm), "simulate", "--quiet", *sets, "--out", str(run), "--overwrite"]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def late_drop(rounds: list[dict]) -> float:
    """The run's best validation accuracy less its mean over the last :data:`LAST_ROUNDS` rounds
    (the summary's ``best-val/acc`` and ``last-rounds-val/acc``); NaN without a validation split."""
    best = best_on_validation(rounds).get("best-val/acc", math.nan)
    return best - last_rounds_val(rounds, LAST_ROUNDS).get("last-rounds-val/acc", math.nan)


def table(dirs: list[Path]) -> str:
    """One row per run flagged at some floor of :data:`FLOORS`, then the counts per floor."""
    lines = [
        "| run | " + " | ".join(f"floor {f:g}" for f in FLOORS) + " | late drop |",
        "|---|" + "---|" * (len(FLOORS) + 1),
    ]
    counts, total = dict.fromkeys(FLOORS, 0), 0
    for path in sorted(p for d in dirs for p in d.rglob("rounds.csv")):
        rounds = pd.read_csv(path).to_dict("records")
        total += 1
        hits = {f: loss_growth(rounds, floor=f) for f in FLOORS}
        if not any(hits.values()):
            continue
        for f, hit in hits.items():
            counts[f] += bool(hit)
        cells = " | ".join(f"r{hit['round']}" if hit else "-" for hit in hits.values())
        lines.append(f"| {path.parent.name} | {cells} | {late_drop(rounds):+.3f} |")
    lines.append(f"| **flagged, of {total} runs** | " + " | ".join(str(counts[f]) for f in FLOORS) + " | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="result directories to scan for rounds.csv")
    parser.add_argument("--run", type=Path, help="run the grid's missing runs into this directory first")
    args = parser.parse_args()
    if args.run:
        run_grid(args.run)
    dirs = args.dirs + ([args.run] if args.run else [])
    if not dirs:
        parser.error("name a result directory or --run DIR")
    print(table(dirs))


if __name__ == "__main__":
    main()
