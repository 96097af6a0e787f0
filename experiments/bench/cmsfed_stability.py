"""Training stability of strategy `cmsfed` with its defaults on every shipped two-modality dataset.

For hapt (natural clients), segment and synthetic (Dirichlet alpha = 3 over 20 clients, the
default alpha) it runs strategy `cmsfed` (ME loss, balanced greedy selection) and `fedavg` on the
same federation with every other key at its default (20 rounds, 10 clients per round, 2 local
epochs, lr 0.05), over several seeds, and prints per dataset and strategy: the round-1 training
loss, the largest round training loss, their ratio, and the final and best multimodal accuracy.
Usage:

    .venv/bin/python experiments/bench/cmsfed_stability.py [--seeds 0,1,2] [--datasets hapt,segment,synthetic]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from fedmm.bench import Case, mean_std_table, run_grid
from fedmm.results import ROUNDS_FILE

FEDERATIONS = {
    "hapt": ("dataset=hapt", "partition=natural"),
    "segment": ("dataset=segment", "partition=dirichlet", "num-clients=20"),
    "synthetic": ("dataset=synthetic", "partition=dirichlet", "num-clients=20"),
}
STRATEGIES = ("cmsfed", "fedavg")


def loss_stats(rounds: pd.DataFrame) -> dict[str, float]:
    """Round-1 and largest training loss of one run, and their ratio."""
    loss = rounds.loc[rounds["round"] >= 1, "train/loss"]
    first = float(loss.iloc[0])
    return {"loss-round-1": first, "loss-max": float(loss.max()), "loss-growth": float(loss.max()) / first}


def markdown(df: pd.DataFrame) -> str:
    return mean_std_table(
        df,
        ["dataset", "strategy"],
        {
            "loss-round-1": "train loss round 1",
            "loss-max": "largest train loss",
            "loss-growth": "largest / round 1",
            "test/acc": "final acc",
            "best-test/acc": "best acc",
        },
        sort=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--datasets", default=",".join(FEDERATIONS))
    parser.add_argument("--out", type=Path, default=Path("experiments/out/cmsfed-stability"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    cases = [
        Case({"dataset": d, "strategy": s}, (*FEDERATIONS[d], f"strategy={s}"))
        for d in args.datasets.split(",")
        for s in STRATEGIES
    ]
    runs_dir = args.out / "runs"
    df = run_grid(
        None,
        [],
        cases,
        seeds,
        args.out / "runs.csv",
        runs_dir,
        on_row=lambda row: print({k: row[k] for k in ("dataset", "strategy", "seed", "test/acc")}, flush=True),
        on_start=lambda line: print(line, flush=True),
    )
    stats = pd.DataFrame([loss_stats(pd.read_csv(runs_dir / c.slug(s) / ROUNDS_FILE)) for c in cases for s in seeds])
    labels = pd.DataFrame([{**c.labels, "seed": s} for c in cases for s in seeds])
    df = labels.merge(df, on=["dataset", "strategy", "seed"]).join(stats)
    table = markdown(df)
    (args.out / "stability.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
