"""Every local objective on HAPT, centralized and federated, over several seeds.

Centralized = one client holding all training data and both modalities; federated = the default
federation of `make demo` (24 natural clients, multi-ratio 0.5, FedAvg, all clients per round).
Both run through `fedmm simulate` with the same rounds, epochs and optimizer, and every method with
its default parameters (schedules the specs give in epochs default to the same fraction of the
run's local epochs, see docs/objectives.md).

Writes a tidy CSV (one row per setting, objective, seed) and a Markdown table of means and standard
deviations: multimodal accuracy, each modality alone, and the imbalance ratio (acc alone / gyro
alone). Usage:

    .venv/bin/python experiments/bench/objectives.py [--seeds 0,1,2] [--objectives ce,ogm-ge,...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from fedmm.bench import Case, mean_std_table, run_grid
from fedmm.objectives import objective_names
from fedmm.strategies import STRATEGIES

CONFIG = Path("experiments/configs/demo.toml")
SETTINGS = {
    "centralized": ("partition=iid", "num-clients=1", "allocation=all", "client-num-cpus=2"),
    "federated": ("partition=natural", "allocation=multi-ratio", "multi-ratio=0.5"),
}


def markdown(df: pd.DataFrame) -> str:
    df = df.assign(imbalance=df["test/acc/acc"] / df["test/acc/gyro"].clip(lower=1e-9))
    return mean_std_table(
        df,
        ["setting", "objective"],
        {
            "test/acc": "multimodal acc",
            "test/acc/acc": "acc alone",
            "test/acc/gyro": "gyro alone",
            "imbalance": "imbalance (acc/gyro)",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    local = [
        n for n in objective_names() if n not in {r.objective for _, r in STRATEGIES.items()}
    ]  # fedcmi, cmsfed: strategies
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--objectives", default=",".join(local))
    parser.add_argument("--settings", default="federated,centralized")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("experiments/out"))
    args = parser.parse_args()
    cases = [
        Case({"setting": s, "objective": o}, (*SETTINGS[s], f"objective={o}"))
        for s in args.settings.split(",")
        for o in args.objectives.split(",")
    ]
    seeds = [int(s) for s in args.seeds.split(",")]
    df = run_grid(
        CONFIG,
        [f"num-server-rounds={args.rounds}"],
        cases,
        seeds,
        args.out / "objectives.csv",
        on_row=lambda row: print({k: row[k] for k in ("setting", "objective", "seed", "test/acc")}, flush=True),
        on_start=lambda line: print(line, flush=True),
    )
    table = markdown(df)
    (args.out / "objectives.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
