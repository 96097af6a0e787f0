"""Modality competition on the `competition` dataset: FedAvg's weak modality against the same
encoder trained alone, and whether MNL / Data Remixing restore it.

One federation (10 IID clients, all trained every round, 20 rounds x 2 local epochs, SGD lr 0.05
momentum 0.9, engine inline, CPU) on three variants of the dataset:

- `default`: strong_present 0.95, weak_amp 2.5 (the gap), weak m1 with a random sign;
- `shift`: strong_present 1.0 in train, 0.5 in test (the strong modality less reliable at test);
- `control`: weak_sign_flip = false (m1 a plain mean shift: no competition expected);

and four methods: `ce` (FedAvg, every client holds m0 and m1), `mnl`, `remix`, and `m1-alone`
(FedAvg with every client holding m1 only: the weak encoder trained unimodally). It prints, as
mean ± std over the seeds: the final test accuracy, the test accuracy at the round chosen on
validation, the weak modality through the joint model (`test/acc/m1`, the m0 slot zero-filled),
the accuracy on the hard test rows (m0 carries no signal) and the linear probe of the m1 encoder
(fitted on the train split, scored on test), all of the last round unless said otherwise.
Usage:

    .venv/bin/python experiments/bench/competition.py [--seeds 0,1,2] [--variants default,shift,control]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from fedmm.bench import Case, mean_std_table, run_grid
from fedmm.results import SUMMARY_FILE

FEDERATION = (
    "dataset=competition",
    "partition=iid",
    "num-clients=10",
    "clients-per-round=10",
    "num-server-rounds=20",
    "engine=inline",
    "device=cpu",
)
VARIANTS = {
    "default": (),
    "shift": ("dataset.strong-present=1.0", "dataset.test-strong-present=0.5"),
    "control": ("dataset.weak-sign-flip=false",),
}
METHODS = {
    "ce": ("allocation=all", "objective=ce"),
    "mnl": ("allocation=all", "objective=mnl"),
    "remix": ("allocation=all", "objective=remix"),
    "m1-alone": ("allocation=fractions", "modality-fractions=m1=1.0", "objective=ce"),
}
COLUMNS = {
    "test/acc": "final acc",
    "test/acc-at-best-val": "acc at best val round",
    "test/acc/m1": "m1 via joint model",
    "test/acc-hard": "hard rows (m0 no signal)",
    "test/probe/m1": "linear probe m1",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=Path("experiments/out/competition"))
    args = parser.parse_args()
    from fedmm.simulation import simulate

    seeds = [int(s) for s in args.seeds.split(",")]
    cases = [
        Case({"variant": v, "method": m}, (*FEDERATION, *VARIANTS[v], *METHODS[m]))
        for v in args.variants.split(",")
        for m in args.methods.split(",")
    ]
    runs_dir = args.out / "runs"
    df = run_grid(
        None,
        [],
        cases,
        seeds,
        args.out / "runs.csv",
        runs_dir,
        simulate=simulate,
        on_row=lambda row: print(
            {k: row.get(k) for k in ("variant", "method", "seed", "test/acc", "test/acc/m1", "test/probe/m1")},
            flush=True,
        ),
    )
    at_best = pd.DataFrame(
        [
            {
                **c.labels,
                "seed": s,
                "test/acc-at-best-val": json.loads((runs_dir / c.slug(s) / SUMMARY_FILE).read_text())[
                    "test/acc-at-best-val"
                ],
            }
            for c in cases
            for s in seeds
        ]
    )
    df = df.merge(at_best, on=["variant", "method", "seed"])
    table = mean_std_table(df, ["variant", "method"], COLUMNS, sort=False)
    (args.out / "competition.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
