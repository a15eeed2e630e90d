#!/usr/bin/env bash
# Benchmarks: each prints its figures as ratios measured side by side in one run (machines are
# noisy; absolute seconds mean little). Figures also go to bench/results/<name>.json, and the
# printed output of the whole run to bench/RESULTS.md (committed: the figures the README quotes).
# Usage: bench/run.sh [--quick] [NAME...]   (NAME: e.g. bench_audio; default: every bench_*.py)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p bench/results
args=()
names=()
for a in "$@"; do
  case "$a" in
    --*) args+=("$a") ;;
    *) names+=("$a") ;;
  esac
done
if [ ${#names[@]} -eq 0 ]; then
  for b in bench/bench_*.py; do names+=("$(basename "$b" .py)"); done
fi
out=bench/RESULTS.md
{
  echo "# Benchmark results"
  echo
  echo "Printed by \`make bench\` ($(date -u +%Y-%m-%d), $(nproc) CPU cores, $(uname -m)," \
    "no GPU${args[*]:+, ${args[*]}}). Each figure is a ratio of variants measured side by side."
  echo
} > "$out.tmp"
for name in "${names[@]}"; do
  echo "== $name"
  {
    echo "## $name"
    echo
    echo '```'
    "$PY" "bench/$name.py" "${args[@]}" --json "bench/results/$name.json" 2>&1 | tee /dev/stderr
    echo '```'
    echo
  } >> "$out.tmp"
  echo
done
mv "$out.tmp" "$out"
echo "figures written to $out"
