#!/usr/bin/env bash
# flux2-shapes v2: the v1 model (models/flux2-shapes as committed before v2, or V1=DIR) trained on
# at 64² and 128² pictures, each batch one size (weights 1 : 2), with the training shift set per
# size by the FLUX.2 notes' rule alpha = alpha_64 * sqrt(m/n) (3 at 64², 6 at 128²), batch 64 at
# 64² and 16 at 128² (the same number of image tokens per step), ln(0, 1), lr 6e-4 cosine over
# V2_MINUTES of wall time, EMA 0.999, one thread (TRAIN_THREADS). Writes train/runs/v2/checkpoint;
# SHIP=1 copies it to models/flux2-shapes. A second phase continues a run:
#   INIT=runs/v2/checkpoint LOG=runs/v2b WEIGHTS=1,3 LR=3e-4 SEED=2 V2_MINUTES=50 train/train_v2.sh
#   PY=/path/to/python V2_MINUTES=50 train/train_v2.sh
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-../.pyref/bin/python}
V1=${V1:-cache/v1}
[ -d "$V1/transformer" ] || { mkdir -p cache; git -C .. archive --format=tar "${V1_COMMIT:-bf4ca24}" models/flux2-shapes | tar -x -C cache && rm -rf "$V1" && mv cache/models/flux2-shapes "$V1" && rm -rf cache/models; }
LOG=${LOG:-runs/v2}
INIT=${INIT:-$V1}
mkdir -p "$LOG"
t0=$SECONDS
OMP_NUM_THREADS=${TRAIN_THREADS:-1} TRAIN_THREADS=${TRAIN_THREADS:-1} "$PY" train_dit.py --vae "$V1/vae" --text "$V1" --init "$INIT" \
  --out "$LOG/checkpoint" --dist ln --alpha 3 --sizes 64,128 --size-weights "${WEIGHTS:-1,2}" --seed "${SEED:-1}" --images 12000 \
  --shape-mix 0.25,0.45,0.3 --batch 64 --lr "${LR:-6e-4}" --cosine --steps 1000000 --max-minutes "${V2_MINUTES:-50}" \
  --sample-steps 12 --run-steps 24 --guidance 2 --eval-every 2000 --save-dtype bf16 2>&1 \
  | grep --line-buffered -v -E "Loading weights|Writing model" > "$LOG/dit.log"
echo "v2 dit: $((SECONDS - t0)) s" | tee "$LOG/times.txt"
[ "${SHIP:-0}" = 1 ] || exit 0
rm -rf ../models/flux2-shapes.tmp && cp -r "$LOG/checkpoint" ../models/flux2-shapes.tmp
rm -rf ../models/flux2-shapes && mv ../models/flux2-shapes.tmp ../models/flux2-shapes
