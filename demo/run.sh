#!/usr/bin/env bash
# The main job on the built-in synthetic dataset. Rerunnable: finished stages are skipped.
# Usage: demo/run.sh [OUT]   (sizes: CLASSES, PER_CLASS, SECONDS, SIZE environment variables)
set -euo pipefail
OUT=${1:-demo/out}
VF=${VIDFEAT:-.venv/bin/vidfeat}
CLASSES=${CLASSES:-12}
PER_CLASS=${PER_CLASS:-24}
SECONDS_PER_CLIP=${SECONDS:-3}
SIZE=${SIZE:-112}
mkdir -p "$OUT"

stage() { echo; echo "== $*"; }

stage "1. synthetic dataset -> $OUT/data"
if [ -f "$OUT/data/synth.json" ]; then
  echo "(exists; delete $OUT/data to regenerate)"
else
  "$VF" data synth "$OUT/data" --classes "$CLASSES" --per-class "$PER_CLASS" \
    --seconds "$SECONDS_PER_CLIP" --size "$SIZE"
fi
cat "$OUT/data/README.txt"

stage "2. probe the videos"
"$VF" data probe "$OUT/data/train.csv" --quiet
"$VF" data probe "$OUT/data/val.csv" --quiet
