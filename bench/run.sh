#!/usr/bin/env bash
# Benchmarks: each prints its figures as ratios measured side by side in one run (machines are
# noisy; absolute seconds mean little). Results are also written to bench/results/*.json.
# Usage: bench/run.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p bench/results
for b in bench/bench_*.py; do
  name=$(basename "$b" .py)
  echo "== $name"
  "$PY" "$b" "$@" --json "bench/results/$name.json"
  echo
done
