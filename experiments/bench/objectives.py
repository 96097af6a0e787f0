"""Every local objective on HAPT, centralized and federated, over several seeds.

Centralized = one client holding all training data and both modalities; federated = the default
federation of `make demo` (24 natural clients, multi-ratio 0.5, FedAvg, all clients per round).
Both run through `fedmm simulate` with the same rounds, epochs and optimizer; the only round-mapped
settings are the ones each method's spec defines in epochs (see ROUND_MAPPED).

Writes a tidy CSV (one row per setting, objective, seed) and a Markdown table of means and standard
deviations: multimodal accuracy, each modality alone, and the imbalance ratio (acc alone / gyro
alone). Usage:

    .venv/bin/python experiments/bench/objectives.py [--seeds 0,1,2] [--objectives ce,ogm-ge,...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from fedmm.config import STRATEGY_OBJECTIVES, load_config
from fedmm.objectives import objective_names
from fedmm.server.simulate import simulate

SETTINGS = {
    "centralized": ["partition=iid", "num-clients=1", "allocation=all", "client-num-cpus=2"],
    "federated": ["partition=natural", "allocation=multi-ratio", "multi-ratio=0.5"],
}
#: Epoch-based schedules of the specs mapped to rounds for a 15-round run (fraction of training kept).
ROUND_MAPPED = {
    "remix": ["objective.warmup_rounds=3"],  # the official code warms up for about 1/6 of training
    "ogm-ge": ["objective.modulation_end_round=8"],  # modulation epochs 0..50 of 100
}
OUT = Path("experiments/out")


def run_one(setting: str, objective: str, seed: int, rounds: int) -> dict:
    run = load_config(Path("experiments/configs/demo.toml"), [
        *SETTINGS[setting], f"objective={objective}", f"seed={seed}", f"num-server-rounds={rounds}",
        *ROUND_MAPPED.get(objective, []),
    ])
    started = time.perf_counter()
    summary = simulate(run, None)
    final = summary["final"]
    return {
        "setting": setting, "objective": objective, "seed": seed,
        "acc": final["test/acc"], "f1": final["test/f1"],
        "acc/acc": final["test/acc/acc"], "acc/gyro": final["test/acc/gyro"],
        "imbalance": final["test/acc/acc"] / max(final["test/acc/gyro"], 1e-9),
        "seconds": time.perf_counter() - started,
    }


def markdown(df: pd.DataFrame) -> str:
    cols = ["acc", "acc/acc", "acc/gyro", "imbalance"]
    agg = df.groupby(["setting", "objective"])[cols].agg(["mean", "std"])
    lines = ["| setting | objective | multimodal acc | acc alone | gyro alone | imbalance (acc/gyro) |",
             "|---|---|---|---|---|---|"]
    for (setting, objective), row in agg.iterrows():
        cells = [f"{row[(c, 'mean')]:.3f} ± {row[(c, 'std')]:.3f}" for c in cols]
        lines.append(f"| {setting} | {objective} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    local = [n for n in objective_names() if n not in STRATEGY_OBJECTIVES.values()]  # fedcmi, cmsfed: strategies
    parser.add_argument("--objectives", default=",".join(local))
    parser.add_argument("--settings", default="federated,centralized")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    csv = OUT / "objectives.csv"
    rows = pd.read_csv(csv).to_dict("records") if csv.exists() else []
    done = {(r["setting"], r["objective"], r["seed"]) for r in rows}
    for setting in args.settings.split(","):
        for objective in args.objectives.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                if (setting, objective, seed) in done:
                    continue
                rows.append(run_one(setting, objective, seed, args.rounds))
                pd.DataFrame(rows).to_csv(csv, index=False)  # kept after every run: nothing is lost
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    table = markdown(df)
    (OUT / "objectives.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
