#!/usr/bin/env bash
# The main job, end to end on the built-in synthetic dataset, ending with OUT/report.md.
#
#   demo/run.sh [OUT]            (default OUT=demo/out)
#
# Rerunnable: a stage whose result exists is skipped (delete its folder to redo it); the store
# resumes by itself. Sizes are environment variables so the demo scales up:
#   CLASSES PER_CLASS SECONDS_PER_CLIP SIZE FPS  dataset           (12 36 3 64 15)
#   TEST_FRACTION                               test split's share (0.3; val: 0.2)
#   T N TRAIN_T                                 grid; segments in training (4 3 3)
#   BACKBONE EPOCHS FLOW_EPOCHS BATCH LR        segment networks  (resnet10t 16 6 8 0.003)
#   SHORT CROP                                  training frames: short side, crop (56 48)
#   AUDIO_WIDTH AUDIO_EPOCHS                    audio network     (0.125 8)
#   FUSE_EPOCHS SEEDS                           fusion heads      (20; seeds "0 1 2")
#   TVL1_EPSILON                                TV-L1 stopping threshold (0.05; OpenCV: 0.01)
#   WORKERS                                     processes         (2)
#   PRECISION                                   auto|fp32|bf16|fp16 of every network (auto)
# The defaults fit the demo in about 12 minutes on 2 CPU cores (the budget is 15).
#
# Protocol: the dataset has train / val / test splits (50/20/30 % per class: 216 / 84 / 132
# videos). Networks and heads keep their best epoch by val Prec@1; the report's figures are on
# test, which no model was selected on; the ensemble is cross-fitted on test (out-of-fold).
# The networks train once (seed 0); the fusion heads, seconds each, train once per seed in
# SEEDS (runs fuse-<head>-s<seed>) and the report gives their mean and spread; the ensemble
# stacks the first seed's heads.
set -euo pipefail
OUT=${1:-demo/out}
VF=${VIDFEAT:-.venv/bin/vidfeat}
PY=${PYTHON:-.venv/bin/python}
CLASSES=${CLASSES:-12}
PER_CLASS=${PER_CLASS:-36}
TEST_FRACTION=${TEST_FRACTION:-0.3}
SECS=${SECONDS_PER_CLIP:-3}
SIZE=${SIZE:-64}
FPS=${FPS:-15}
T=${T:-4}
N=${N:-3}
TRAIN_T=${TRAIN_T:-3}
BACKBONE=${BACKBONE:-resnet10t}
EPOCHS=${EPOCHS:-16}
FLOW_EPOCHS=${FLOW_EPOCHS:-6}
BATCH=${BATCH:-8}
LR=${LR:-0.003}
AUDIO_WIDTH=${AUDIO_WIDTH:-0.125}
AUDIO_EPOCHS=${AUDIO_EPOCHS:-8}
FUSE_EPOCHS=${FUSE_EPOCHS:-20}
SEEDS=${SEEDS:-0 1 2}
TVL1_EPSILON=${TVL1_EPSILON:-0.05}
WORKERS=${WORKERS:-2}
PRECISION=${PRECISION:-auto}
SHORT=${SHORT:-$(( SIZE * 7 / 8 ))}   # training frames are resized to this short side...
CROP=${CROP:-$(( SIZE * 3 / 4 ))}    # ...and randomly cropped to this square

DATA=$OUT/data
STORE=$OUT/store
RUNS=$OUT/runs
mkdir -p "$OUT" "$RUNS"
TIMES=$OUT/timings.tsv
[ -f "$TIMES" ] || printf 'stage\tseconds\n' > "$TIMES"

# A stage runs only while its completion marker is missing, so what its folder holds then is an
# unfinished attempt: the commands pass --overwrite to start it again (moved aside, not lost).
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
  --size "$SIZE" --fps "$FPS" --val-fraction 0.2 --test-fraction "$TEST_FRACTION"
"$VF" data probe "$DATA/val.csv" --quiet

ALL=$OUT/all.csv
if [ ! -f "$ALL" ]; then
  { head -n1 "$DATA/train.csv"; tail -n +2 "$DATA/train.csv"; tail -n +2 "$DATA/val.csv"
    tail -n +2 "$DATA/test.csv"; } \
    | sed "s#^videos/#data/videos/#" > "$ALL"
fi

# TV-L1 at OpenCV's defaults costs ~100 ms a pair even at 64 px; --epsilon 0.05 stops its inner
# iterations ~6x sooner, within 0.07 px of the default fields (the uint8 step is 0.16 px)
declare -A FLOW_OPTS=([tvl1]="--epsilon $TVL1_EPSILON" [farneback]="")
for method in tvl1 farneback; do
  # shellcheck disable=SC2086  # the method's options are words
  stage "2 flow fields ($method)" "" \
    "$VF" extract flow --method "$method" ${FLOW_OPTS[$method]} --videos "$ALL" --store "$STORE" \
    -T "$T" -N "$N" \
    --short-side "$SIZE" --workers "$WORKERS" --quiet
done

# AdamW with a cosine schedule: a short run spends no epochs at a tenth of its lr. No flips: the
# synthetic classes move left or right, and a mirrored "left" clip is a "right" clip.
COMMON=(--val "$DATA/val.csv" --segments "$TRAIN_T" --test-segments "$T" --frames "$N"
        --size "$CROP" --epochs "$EPOCHS" --batch-size "$BATCH" --workers "$WORKERS"
        --optimizer adamw --lr "$LR" --schedule cosine --no-flip --precision "$PRECISION"
        --quiet --overwrite)
stage "3a train rgb (StNet)" "$RUNS/rgb-stnet/best.pt" \
  "$VF" train rgb --videos "$DATA/train.csv" --out "$RUNS/rgb-stnet" --arch stnet \
  --backbone "$BACKBONE" --short-side "$SHORT" "${COMMON[@]}" --net-opt txb_width=256 \
  --net-opt tmb=residual
stage "3b train rgb (TSN)" "$RUNS/rgb-tsn/best.pt" \
  "$VF" train rgb --videos "$DATA/train.csv" --out "$RUNS/rgb-tsn" --arch tsn \
  --backbone "$BACKBONE" --short-side "$SHORT" "${COMMON[@]}"
for method in tvl1 farneback; do
  stage "3c train flow ($method)" "$RUNS/flow-$method/best.pt" \
    "$VF" train flow --method "$method" --store "$STORE" --videos "$DATA/train.csv" \
    --out "$RUNS/flow-$method" --arch tsn --backbone "$BACKBONE" "${COMMON[@]}" \
    --epochs "$FLOW_EPOCHS"
done
stage "3d train audio" "$RUNS/audio/best.pt" \
  "$VF" train audio --videos "$DATA/train.csv" --val "$DATA/val.csv" --out "$RUNS/audio" \
  --width "$AUDIO_WIDTH" --segments "$T" --epochs "$AUDIO_EPOCHS" --batch-size 16 \
  --workers "$WORKERS" --optimizer adamw --lr 0.001 --schedule cosine --precision "$PRECISION" \
  --quiet --overwrite

EXTRACT=(--videos "$ALL" --store "$STORE" -T "$T" --workers "$WORKERS" --batch-size 8
         --precision "$PRECISION" --quiet)
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

# The fusion heads: each trains once per seed in SEEDS and is evaluated on test, all in one
# Python process (demo/batch.py): a head trains in seconds, and importing torch again would cost
# ~4 s a command on 2 cores (24 trainings, 24 evaluations). A run with a best.pt is kept, an
# evaluation with a metrics.json too.
FUSE=(--store "$STORE" --train "$DATA/train.csv" --val "$DATA/val.csv"
      --epochs "$FUSE_EPOCHS" --batch-size 16 --precision "$PRECISION" --quiet --overwrite)
TRAINS=()
EVALS=()
add_head() {  # add_head NAME FUSE_TRAIN_OPTIONS...: runs fuse-NAME-s<seed>, for every seed
  local name=$1 s r; shift
  for s in $SEEDS; do
    r=$RUNS/fuse-$name-s$s
    [ -e "$r/best.pt" ] || TRAINS+=(fuse train "$@" --out "$r" --seed "$s" "${FUSE[@]}" ::)
    [ -e "$r/eval-test/metrics.json" ] \
      || EVALS+=(fuse eval --run "$r" --store "$STORE" --videos "$DATA/test.csv" --name test
                 --precision "$PRECISION" --overwrite ::)
  done
}
for m in rgb tvl1 farneback audio; do
  add_head "single-$m" --features "$m" --head single
done
declare -A HEAD_OPTS=([txn]="width=256" [itxn]="width=256" [fflstm]="hidden=128"
                      [attention-clusters]="clusters=32")
for head in txn fflstm attention-clusters itxn; do
  add_head "$head" --features rgb,tvl1,farneback,audio --head "$head" \
    --head-opt "${HEAD_OPTS[$head]}"
done
if [ ${#TRAINS[@]} -eq 0 ] && [ ${#EVALS[@]} -eq 0 ]; then
  echo; echo "== 5 fusion heads"; echo "(done: every head's runs and test evaluations exist)"
else
  stage "5 fusion heads (8 heads x seeds $SEEDS: train, eval on test)" "" \
    "$PY" demo/batch.py "${TRAINS[@]}" "${EVALS[@]}"
fi

read -ra SEED_LIST <<< "$SEEDS"
S0=${SEED_LIST[0]}  # the ensemble stacks the first seed's heads
stage "6 ensemble" "$OUT/ensemble/table.csv" \
  "$VF" ensemble --store "$STORE" --videos "$DATA/test.csv" --out "$OUT/ensemble" --overwrite \
  --members "$RUNS/fuse-txn-s$S0,$RUNS/fuse-fflstm-s$S0,$RUNS/fuse-attention-clusters-s$S0" \
  --members "$RUNS/fuse-itxn-s$S0" \
  --members "set:rgb,set:tvl1,set:farneback,set:audio"

# a contact sheet of one test video: its frames, flow fields, audio windows, feature norms and
# clip scores (what vidfeat computed for it, for people who would rather look than read)
SHEET_ID=$(sed -n 2p "$DATA/test.csv" | cut -d, -f3)
stage "7 contact sheet" "" "$VF" show "$SHEET_ID" --store "$STORE" --out "$OUT/sheet.png"

stage "8 report" "" "$PY" demo/tables.py "$OUT"
echo
echo "report: $OUT/report.md"
