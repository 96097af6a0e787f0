#!/bin/bash
# The cause measurements of docs/benchmarks.md, "Causes, measured": each reruns a tuned configuration
# (a study's best.toml, written by `fedmm bench methods --protocol tuned`) on seeds 0-4 with one change.
# Needs the tuned directories of that page under $OUT (default experiments/out/h22b). Usage:
#   experiments/bench/tuned_causes.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-experiments/out/h22b}
FEDMM=${FEDMM:-.venv/bin/fedmm}
PY=${PY:-.venv/bin/python}
SEEDS=0,1,2,3,4

# chosen STUDY_DIR [KEY_TO_LEAVE_OUT]: the study's tuned keys as --set flags
chosen() {
    "$PY" - "$1" "${2:-}" <<'PYEOF'
import sys, tomllib
import pandas as pd
study, leave_out = sys.argv[1], sys.argv[2]
best = tomllib.load(open(f"{study}/best.toml", "rb"))
keys = [c.removeprefix("params_") for c in pd.read_csv(f"{study}/trials.csv").columns if c.startswith("params_")]
print(" ".join(f"--set {k}={best[k]!r}" for k in keys if k != leave_out))
PYEOF
}

# rerun DATASET METHOD OUT_NAME FLAGS...: the default protocol (no tuning) with the given values
rerun() {
    local dataset=$1 method=$2 name=$3
    shift 3
    "$FEDMM" bench methods --protocol defaults --datasets "$dataset" --methods "$method" --seeds $SEEDS \
        --set engine=inline "$@" --out "$OUT/$name"
}

# a larger budget on skewed segment: 20 trials for FedAvg and the four methods that lost at 8
for m in fedavg fedavg+remix fedavg+arm fedavg+boost cmsfed; do
    "$FEDMM" bench methods --protocol tuned --trials 20 --jobs 1 --datasets segment --methods "$m" --seeds $SEEDS \
        --set engine=inline --out "$OUT/segment-tuned20"
done
# Remix without its unimodal batches: the whole run as warm-up
rerun segment-iid fedavg+remix remix-warm1-segment-iid \
    $(chosen "$OUT/segment-iid-tuned/tune/segment-iid-fedavg+remix" objective.warmup) --set objective.warmup=1.0
rerun segment fedavg+remix remix-warm1-segment \
    $(chosen "$OUT/rerun-segment/tune/segment-fedavg+remix" objective.warmup) --set objective.warmup=1.0
# ARM and Remix on skewed labels with every client multimodal
for m in fedavg fedavg+remix fedavg+arm; do
    "$FEDMM" bench methods --protocol tuned --trials 8 --jobs 1 --datasets segment --methods "$m" --seeds $SEEDS \
        --set engine=inline --set allocation=all --out "$OUT/segment-allmm-tuned"
done
# CMSFed without its ME loss at the tuned configuration
for d in mfeat synthetic competition-skewed; do
    study="$OUT/rerun-$d/tune/$d-cmsfed"
    [ -d "$study" ] || study="$OUT/$d-tuned/tune/$d-cmsfed"
    rerun "$d" cmsfed "cmsfed-noME-$d" $(chosen "$study" objective.alpha) --set objective.alpha=0.0
done
# CMSFed on competition-skewed at its study's trial 0 (collapsed there), with and without the ME loss
T0="--set local-epochs=3 --set lr=0.05910317077425309 --set momentum=0.5726252072680617
    --set weight-decay=0.00015119336467641018 --set selection.delta=2.7835460015641598
    --set selection.subsample=0.34065235087999524 --set selection.support-fraction=0.275034884505077"
for a in 0.0 1.9827917976861664; do
    rerun competition-skewed cmsfed "cmsfed-t0-alpha$a" $T0 --set objective.alpha=$a
done
