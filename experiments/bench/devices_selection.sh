#!/usr/bin/env bash
# The selection benchmark on the simulated clock (docs/benchmarks.md, "Selection on the simulated
# clock"): 5 policies x 3 seeds, waiting for every client and with a 1 s deadline.
set -euo pipefail
FEDMM=${FEDMM:-.venv/bin/fedmm}
OUT=${OUT:-experiments/out}
POLICIES=${POLICIES:-random,powd,divfl,cmsfed,oort}
$FEDMM bench selection --config experiments/configs/cross_device_devices.toml \
    --policies "$POLICIES" --seeds 0,1,2 --out "$OUT/devices-all"
$FEDMM bench selection --config experiments/configs/cross_device_devices.toml \
    --set round-close=deadline --set round-deadline=1.0 \
    --policies "$POLICIES" --seeds 0,1,2 --out "$OUT/devices-deadline"
