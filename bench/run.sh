#!/usr/bin/env bash
# Benchmarks: each prints its figures as ratios measured side by side in one run (machines are
# noisy; absolute seconds mean little). Figures also go to bench/results/<name>.json, and the
# printed output to bench/RESULTS.md (committed: the figures the README quotes), one section per
# benchmark with the date and machine it ran on; naming benchmarks updates only their sections.
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
for name in "${names[@]}"; do
  [ -f "bench/$name.py" ] || { echo "no benchmark bench/$name.py" >&2; exit 2; }
done
for name in "${names[@]}"; do
  echo "== $name"
  section="bench/results/$name.md"
  {
    echo "## $name"
    echo
    echo "$(date -u +%Y-%m-%d), $(nproc) CPU cores, $(uname -m), no GPU${args[*]:+, ${args[*]}}"
    echo
    echo '```'
    "$PY" "bench/$name.py" "${args[@]}" --json "bench/results/$name.json" 2>&1 | tee /dev/stderr
    echo '```'
  } > "$section.tmp"
  mv "$section.tmp" "$section"
  # RESULTS.md: this section replaced (or added), the others kept, in the order of the files
  "$PY" - "$name" <<'PY'
import re
import sys
from pathlib import Path

out, name = Path("bench/RESULTS.md"), sys.argv[1]
head = (
    "# Benchmark results\n\nPrinted by `make bench` (`bench/run.sh`). Each figure is a ratio "
    "of variants measured side by side in one run; each section says when and where it ran.\n"
)
old = out.read_text() if out.exists() else ""
sections = {m.group(1): m.group(0).rstrip() for m in re.finditer(r"(?ms)^## (\S+)\n.*?(?=^## |\Z)", old)}
sections[name] = Path(f"bench/results/{name}.md").read_text().rstrip()
order = sorted(sections, key=lambda n: n)
tmp = out.with_suffix(".md.tmp")
tmp.write_text(head + "".join(f"\n{sections[n]}\n" for n in order))
tmp.replace(out)
PY
  echo
done
echo "figures written to bench/RESULTS.md"
