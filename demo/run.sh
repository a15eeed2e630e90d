#!/usr/bin/env bash
# The main job, end to end on the built-in synthetic dataset, ending with OUT/report.md.
#
#   demo/run.sh [OUT]            (default OUT=demo/out)
#
# Rerunnable: a stage whose result exists is skipped (delete its folder to redo it); the store
# resumes by itself. Sizes are environment variables so the demo scales up:
#   CLASSES PER_CLASS SECONDS_PER_CLIP SIZE FPS   dataset  (12 24 3 112 15)
#   T N                                  grid              (4 3)
#   BACKBONE EPOCHS BATCH                segment networks  (resnet10t 8 8)
#   AUDIO_WIDTH AUDIO_EPOCHS             audio network     (0.25 8)
#   FUSE_EPOCHS                          fusion heads      (40)
#   WORKERS                              processes         (2)
set -euo pipefail
OUT=${1:-demo/out}
VF=${VIDFEAT:-.venv/bin/vidfeat}
PY=${PYTHON:-.venv/bin/python}
CLASSES=${CLASSES:-12}
PER_CLASS=${PER_CLASS:-24}
SECS=${SECONDS_PER_CLIP:-3}
SIZE=${SIZE:-112}
FPS=${FPS:-15}
T=${T:-4}
N=${N:-3}
BACKBONE=${BACKBONE:-resnet10t}
EPOCHS=${EPOCHS:-8}
BATCH=${BATCH:-8}
AUDIO_WIDTH=${AUDIO_WIDTH:-0.25}
AUDIO_EPOCHS=${AUDIO_EPOCHS:-8}
FUSE_EPOCHS=${FUSE_EPOCHS:-40}
WORKERS=${WORKERS:-2}
CROP=$(( SIZE * 7 / 8 / 8 * 8 ))   # random crops of 7/8 of the frame in training

DATA=$OUT/data
STORE=$OUT/store
RUNS=$OUT/runs
mkdir -p "$OUT" "$RUNS"
TIMES=$OUT/timings.tsv
[ -f "$TIMES" ] || printf 'stage\tseconds\n' > "$TIMES"

stage() {  # stage NAME DONE_MARKER COMMAND...
  local name=$1 marker=$2; shift 2
  echo; echo "== $name"
  if [ -n "$marker" ] && [ -e "$marker" ]; then
    echo "(done: $marker exists)"; return 0
  fi
  local t0=$SECONDS
  "$@"
  printf '%s\t%s\n' "$name" "$(( SECONDS - t0 ))" >> "$TIMES"
}

stage "1 synthetic dataset" "$DATA/synth.json" \
  "$VF" data synth "$DATA" --classes "$CLASSES" --per-class "$PER_CLASS" --seconds "$SECS" \
  --size "$SIZE" --fps "$FPS"
"$VF" data probe "$DATA/val.csv" --quiet

ALL=$OUT/all.csv
if [ ! -f "$ALL" ]; then
  { head -n1 "$DATA/train.csv"; tail -n +2 "$DATA/train.csv"; tail -n +2 "$DATA/val.csv"; } \
    | sed "s#^videos/#data/videos/#" > "$ALL"
fi

for method in tvl1 farneback; do
  stage "2 flow fields ($method)" "" \
    "$VF" extract flow --method "$method" --videos "$ALL" --store "$STORE" -T "$T" -N "$N" \
    --short-side "$SIZE" --workers "$WORKERS" --quiet
done

COMMON=(--val "$DATA/val.csv" --segments "$T" --frames "$N" --size "$CROP"
        --epochs "$EPOCHS" --batch-size "$BATCH" --workers "$WORKERS" --optimizer adamw
        --lr 0.002 --quiet)
stage "3a train rgb (StNet)" "$RUNS/rgb-stnet/best.pt" \
  "$VF" train rgb --videos "$DATA/train.csv" --out "$RUNS/rgb-stnet" --arch stnet \
  --backbone "$BACKBONE" --short-side "$SIZE" "${COMMON[@]}" --net-opt txb_width=256
stage "3b train rgb (TSN)" "$RUNS/rgb-tsn/best.pt" \
  "$VF" train rgb --videos "$DATA/train.csv" --out "$RUNS/rgb-tsn" --arch tsn \
  --backbone "$BACKBONE" --short-side "$SIZE" "${COMMON[@]}"
for method in tvl1 farneback; do
  stage "3c train flow ($method)" "$RUNS/flow-$method/best.pt" \
    "$VF" train flow --method "$method" --store "$STORE" --videos "$DATA/train.csv" \
    --out "$RUNS/flow-$method" --arch tsn --backbone "$BACKBONE" "${COMMON[@]}"
done
stage "3d train audio" "$RUNS/audio/best.pt" \
  "$VF" train audio --videos "$DATA/train.csv" --val "$DATA/val.csv" --out "$RUNS/audio" \
  --width "$AUDIO_WIDTH" --segments "$T" --epochs "$AUDIO_EPOCHS" --batch-size 16 \
  --workers "$WORKERS" --optimizer adamw --lr 0.001 --quiet

EXTRACT=(--videos "$ALL" --store "$STORE" -T "$T" --workers "$WORKERS" --batch-size 8 --quiet)
stage "4a extract rgb" "" "$VF" extract rgb --checkpoint "$RUNS/rgb-stnet" "${EXTRACT[@]}"
# TSN's clip scores too, for Table 1 (StNet vs TSN on the same test grid)
stage "4a extract rgb (TSN)" "" \
  "$VF" extract rgb --checkpoint "$RUNS/rgb-tsn" --name rgb-tsn "${EXTRACT[@]}"
for method in tvl1 farneback; do
  stage "4b extract flow ($method)" "" \
    "$VF" extract flow --method "$method" --checkpoint "$RUNS/flow-$method" "${EXTRACT[@]}" \
    -N "$N" --short-side "$SIZE"
done
stage "4c extract audio" "" "$VF" extract audio --checkpoint "$RUNS/audio" "${EXTRACT[@]}"

FUSE=(--store "$STORE" --train "$DATA/train.csv" --val "$DATA/val.csv"
      --epochs "$FUSE_EPOCHS" --batch-size 16 --quiet)
for m in rgb tvl1 farneback audio; do
  stage "5 fuse single ($m)" "$RUNS/fuse-single-$m/best.pt" \
    "$VF" fuse train --features "$m" --head single --out "$RUNS/fuse-single-$m" "${FUSE[@]}"
done
ALLF=rgb,tvl1,farneback,audio
declare -A HEAD_OPTS=([txn]="width=256" [itxn]="width=256" [fflstm]="hidden=128"
                      [attention-clusters]="clusters=32")
for head in txn fflstm attention-clusters itxn; do
  stage "5 fuse $head" "$RUNS/fuse-$head/best.pt" \
    "$VF" fuse train --features "$ALLF" --head "$head" --out "$RUNS/fuse-$head" "${FUSE[@]}" \
    --head-opt "${HEAD_OPTS[$head]}"
done
for r in "$RUNS"/fuse-*; do
  "$VF" fuse eval --run "$r" --store "$STORE" --videos "$DATA/val.csv" --name val > /dev/null
done

stage "6 ensemble" "" \
  "$VF" ensemble --store "$STORE" --videos "$DATA/val.csv" --out "$OUT/ensemble" \
  --members "$RUNS/fuse-txn,$RUNS/fuse-fflstm,$RUNS/fuse-attention-clusters,$RUNS/fuse-itxn" \
  --members "set:rgb,set:tvl1,set:farneback,set:audio"

stage "7 report" "" "$PY" demo/report.py "$OUT"
echo
echo "report: $OUT/report.md"
