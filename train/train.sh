#!/usr/bin/env bash
# Trains the shipped model from scratch and writes models/flux2-shapes (diffusers layout +
# vocabulary.json), the way the committed one was made:
#   1. tokenizer + frozen text encoder with routed attention (build_text.py --routed: the DiT trains
#      on 3 content tokens + 1 filler instead of 21 + 1 pad);
#   2. VAE (VAE_STEPS steps of 32x32 crops; prints the classifier's accuracy on its reconstructions,
#      the ceiling for any DiT on its latents);
#   3. DiT: hidden 192 (3 heads), ln(0, 1) with training alpha 3, seed 0, batch 64, 12000 pictures
#      (45 % squares, 30 % triangles, 25 % circles), DIT_MINUTES of training
#      with a cosine learning-rate decay over that wall time (EMA weights saved in bf16), two
#      threads (DIT_THREADS; use 1 on a machine that is busy with other work).
# Logs and per-stage times go to train/runs/shipped/. Needs the pinned torch stack:
#   PY=/path/to/python VAE_STEPS=3000 DIT_MINUTES=42 train/train.sh
# The schedule follows wall time, so the step count depends on the machine: the shipped DiT got
# 8,119 steps in 42 minutes on a shared machine; an idle 2-core AVX2 EPYC measured 0.25 s/step, ~9,300
# steps in 42 minutes (the zero-init run of train/README.md).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-../.pyref/bin/python}
[ -x "$PY" ] || PY=/work/main/.pyref/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LOG=runs/shipped
mkdir -p "$LOG" cache
: > "$LOG/times.txt"
stage() { local name=$1; shift; local t0=$SECONDS; "$PY" "$@" 2>&1 | grep --line-buffered -v -E "Loading weights|Writing model" > "$LOG/$name.log"; echo "$name: $((SECONDS - t0)) s" | tee -a "$LOG/times.txt"; }
[ -f cache/text-routed/text_encoder/config.json ] || stage text build_text.py --out cache/text-routed --seed 0 --routed
[ -f cache/vae2/config.json ] || stage vae train_vae.py --out cache/vae2 --steps "${VAE_STEPS:-3000}" --batch 8 --crop 32 --lr 1e-3 --seed 0
TRAIN_THREADS=${DIT_THREADS:-2} OMP_NUM_THREADS=${DIT_THREADS:-2} \
  stage dit train_dit.py --vae cache/vae2 --text cache/text-routed --out "$LOG/checkpoint" --dist ln --alpha 3 --seed 0 \
  --size 64 --images 12000 --shape-mix 0.25,0.45,0.3 --steps 1000000 --max-minutes "${DIT_MINUTES:-42}" --batch 64 --lr 1.2e-3 \
  --sample-steps 12 --run-steps 24 --guidance 2 --eval-every 1500 --heads 3 --cosine --save-dtype bf16
[ "${SHIP:-1}" = 1 ] || { cat "$LOG/times.txt"; exit 0; }
rm -rf ../models/flux2-shapes.tmp && cp -r "$LOG/checkpoint" ../models/flux2-shapes.tmp
rm -f ../models/flux2-shapes.tmp/training.json.tmp
rm -rf ../models/flux2-shapes && mv ../models/flux2-shapes.tmp ../models/flux2-shapes
cat "$LOG/times.txt"
