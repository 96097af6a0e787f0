"""FedCMI against modality-aware FedAvg and FedProx on HAPT, for several fractions of multimodal clients.

Runs experiments/configs/hapt_fedcmi.toml with strategy in {fedavg, fedprox, fedcmi} and
multi-ratio in {0.2, 0.5, 1.0}, over seeds, and writes a tidy CSV (one row per run) and a Markdown
table of means and standard deviations: multimodal accuracy, each modality alone with zero-filled
slots, and (FedCMI) each modality alone with the infiltration projectors filling the missing slot.
Usage:

    .venv/bin/python experiments/bench/fedcmi.py [--seeds 0,1,2] [--ratios 0.2,0.5,1.0] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from fedmm.bench import Case, mean_std_table, run_grid

CONFIG = Path("experiments/configs/hapt_fedcmi.toml")
STRATEGIES = ("fedavg", "fedprox", "fedcmi")
MODALITIES = ("acc", "gyro")


def markdown(df: pd.DataFrame) -> str:
    columns = {
        "test/acc": "multimodal acc",
        **{f"test/acc/{m}": f"{m} alone (zero fill)" for m in MODALITIES},
        **{f"test/acc-fill/{m}": f"{m} alone (infiltration fill)" for m in MODALITIES},
    }
    return mean_std_table(df, ["multi-ratio", "strategy"], columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ratios", default="0.2,0.5,1.0")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/fedcmi"))
    args = parser.parse_args()
    cases = [
        Case({"multi-ratio": float(r), "strategy": s}, (f"strategy={s}", f"multi-ratio={r}"))
        for r in args.ratios.split(",")
        for s in STRATEGIES
    ]
    seeds = [int(s) for s in args.seeds.split(",")]
    df = run_grid(
        CONFIG,
        [],
        cases,
        seeds,
        args.out / "fedcmi.csv",
        on_row=lambda row: print({k: row[k] for k in ("multi-ratio", "strategy", "seed", "test/acc")}, flush=True),
        on_start=lambda line: print(line, flush=True),
    )
    table = markdown(df)
    (args.out / "fedcmi.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
