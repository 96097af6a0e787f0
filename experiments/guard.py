"""The numbers guard: record a set of in-process federations, then check that a change leaves them
bit-identical.

    python experiments/guard.py record guard.json     # before a change
    python experiments/guard.py check guard.json      # after each step: exit 1 on any difference

The cases: `make demo`'s federation (HAPT), every strategy, every objective and every selection
policy on a small `synthetic` federation, and an M = 3 case. Each case keeps every numeric column
of ``rounds.csv`` except wall times (``seconds``, ``selection-seconds``) plus a SHA-256 of the final
model's weights. Extra ``--set`` overrides apply to every case (e.g. a key a change adds, set to its "off" value).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SMALL = [
    "dataset=synthetic",
    "partition=dirichlet",
    "num-clients=6",
    "dirichlet-alpha=1.0",
    "num-server-rounds=3",
    "local-epochs=1",
    "clients-per-round=3",
    "engine=inline",
]


def cases() -> dict[str, tuple[str | None, list[str]]]:
    from fedmm.objectives.registry import objective_names
    from fedmm.strategies.recipes import STRATEGIES
    from fedmm.strategies.selection import policy_names

    out: dict[str, tuple[str | None, list[str]]] = {
        "demo": (str(REPO / "experiments/configs/demo.toml"), ["engine=inline"]),
        "m3-arm": (None, SMALL + ["dataset.num-modalities=3", "objective=arm"]),
    }
    for name in STRATEGIES.names():
        out[f"strategy-{name}"] = (None, SMALL + [f"strategy={name}"])
    for name in objective_names():
        if name not in ("fedcmi", "cmsfed"):  # the strategies' own, covered above
            out[f"objective-{name}"] = (None, SMALL + [f"objective={name}"])
    for name in policy_names():
        out[f"selection-{name}"] = (None, SMALL + [f"selection={name}"])
    return out


def run_case(config: str | None, overrides: list[str]) -> dict:
    import tempfile

    import pandas as pd
    from inprocess import simulate_in_process  # the tests' in-process engine
    from safetensors.numpy import load_file

    from fedmm.config import load_config
    from fedmm.inline import server_identity

    run = load_config(config, overrides)
    with tempfile.TemporaryDirectory() as tmp, server_identity():
        simulate_in_process(run, tmp)
        rounds = pd.read_csv(Path(tmp) / "rounds.csv")
        weights = load_file(str(Path(tmp) / "model.safetensors"))
    digest = hashlib.sha256()
    for key in sorted(weights):
        digest.update(key.encode())
        digest.update(weights[key].tobytes())
    numeric = rounds.select_dtypes("number")
    numeric = numeric.drop(columns=[c for c in numeric.columns if c.endswith("seconds")])  # wall times
    cols = {
        c: [None if (isinstance(v, float) and math.isnan(v)) else v for v in numeric[c].tolist()]
        for c in numeric.columns
    }
    return {"rounds": cols, "model-sha256": digest.hexdigest()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["record", "check"])
    parser.add_argument("file")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--only", default="", help="comma-separated case names")
    args = parser.parse_args()
    wanted = [c for c in args.only.split(",") if c]
    results = {}
    for name, (config, overrides) in cases().items():
        if wanted and name not in wanted:
            continue
        results[name] = run_case(config, overrides + args.overrides)
        print(f"{name}: {results[name]['model-sha256'][:12]}", flush=True)
    if args.mode == "record":
        Path(args.file).write_text(json.dumps(results, indent=1))
        return 0
    recorded = json.loads(Path(args.file).read_text())
    bad = 0
    for name, got in results.items():
        want = recorded.get(name)
        if want is None:
            print(f"  {name}: not recorded")
            continue
        same_model = want["model-sha256"] == got["model-sha256"]
        diff_cols = [c for c in want["rounds"] if want["rounds"][c] != got["rounds"].get(c)]
        if same_model and not diff_cols:
            print(f"  {name}: identical")
        else:
            bad += 1
            print(f"  {name}: DIFFERENT (model {'same' if same_model else 'differs'}; columns {diff_cols})")
    print(f"{len(results) - bad} identical, {bad} different")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
