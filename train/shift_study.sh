#!/usr/bin/env bash
# The sampling-shift question (issue 28, study Q2): adherence of a multi-resolution model at each
# of its sizes under FLUX.2's empirical shift (what `flux2 generate` uses by default; for this
# model's few tokens exp(mu) ~ 6.0 at 64² and 128² alike), and fixed shifts, the same captions
# and noise for every setting (judge.py, PROMPTS captions, seed 1000, guidance 2, 24 steps).
# The FLUX.2 notes' rule alpha = alpha_base * sqrt(m/n) predicts that the best 128² shift is
# twice the best 64² shift (4x the tokens); the table shows whether it is.
#   PY=/path/to/python MODEL=runs/v2/checkpoint SEED_TAG=s1 train/shift_study.sh -> runs/shift/table.md
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-../.pyref/bin/python}
MODEL=${MODEL:-runs/v2/checkpoint}
TAG=${SEED_TAG:-s1}
PROMPTS=${PROMPTS:-192}
SIZES=${SIZES:-"64 128"}
SHIFTS=${SHIFTS:-"empirical fixed:1.5 fixed:3 fixed:6 fixed:12 fixed:24"}
OUT=${OUT:-runs/shift}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TRAIN_THREADS=${TRAIN_THREADS:-1}
mkdir -p "$OUT"
for size in $SIZES; do
  for shift in $SHIFTS; do
    dir="$OUT/${size}px-$TAG/eval-${shift//:/}"
    [ -f "$dir/report.json" ] || "$PY" judge.py --model "$MODEL" --size "$size" --steps 24 --guidance 2 --shift "$shift" \
      --prompts "$PROMPTS" --seed 1000 --out "$dir" 2>&1 | grep -v "Loading weights" | tee -a "$OUT/judge.log"
  done
done
"$PY" study2_table.py "$OUT" "sampling shift per size (judge.py, $PROMPTS captions)"
