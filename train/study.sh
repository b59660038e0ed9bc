#!/usr/bin/env bash
# The training-distribution study (README "Training timestep distributions"): the same DiT,
# data, seed and step budget trained with t ~ ts, ln and pln (alpha 1), and ln at a second
# training alpha-shift (3), each with the shipped recipe of train.sh (routed text encoder, hidden
# 192, batch 64, cosine decay over STEPS, shape mix) unless RECIPE says otherwise. Reuses
# train/cache/{text-routed,vae2} from train.sh. Phase 1 trains every run; phase 2 exports each
# run with `flux2 export` and judges it with `flux2 eval` (same captions and noise for all) when
# EVAL=1; without it the table shows each run's end-of-training check (train_dit.py: the same
# sampler on 48 fixed captions, judged by classify.py, the Python mirror of the Rust classifier).
# at the model's own size, steps and guidance (vocabulary.json).
#   STEPS=2500 train/study.sh [EVAL=1 PROMPTS=96]  -> train/runs/study/<name>/, train/runs/study/table.md
# The first study (previous model: q = 0 text encoder, hidden 128, batch 32, lr 1e-3 constant):
#   TEXT=cache/text IMAGES=6000 RECIPE="--batch 32 --lr 1e-3" OUT=runs/study-v1 train/study.sh
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-../.pyref/bin/python}
[ -x "$PY" ] || PY=/work/main/.pyref/bin/python
FLUX2=${FLUX2:-../target/release/flux2}
STEPS=${STEPS:-2500}
VAE=${VAE:-cache/vae2}
PROMPTS=${PROMPTS:-96}
SEED=${SEED:-0}
TEXT=${TEXT:-cache/text-routed}
IMAGES=${IMAGES:-12000}
RECIPE=${RECIPE:-"--batch 64 --lr 1.2e-3 --heads 3 --cosine --shape-mix 0.25,0.45,0.3 --guidance 2 --run-steps 24"}
OUT=${OUT:-runs/study}
RUNS=${RUNS:-"ts:1 ln:1 pln:1 ln:3"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TRAIN_THREADS=${TRAIN_THREADS:-2}
mkdir -p "$OUT"
for run in $RUNS; do
  dist=${run%%:*}; alpha=${run##*:}; name="$dist-a$alpha"
  [ -f "$OUT/$name/checkpoint/training.json" ] && continue
  t0=$SECONDS
  # shellcheck disable=SC2086
  "$PY" train_dit.py --vae "$VAE" --text "$TEXT" --images "$IMAGES" --out "$OUT/$name/checkpoint" \
    --dist "$dist" --alpha "$alpha" --seed "$SEED" --steps "$STEPS" $RECIPE \
    --sample-steps "${SAMPLE_STEPS:-12}" 2>&1 | grep --line-buffered -v -E "Loading weights|Writing model" > "$OUT/$name.log"
  echo "$name: train $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"
done
for run in $RUNS; do
  [ "${EVAL:-0}" = 1 ] || break
  dist=${run%%:*}; alpha=${run##*:}; name="$dist-a$alpha"
  [ -f "$OUT/$name/eval/report.json" ] && continue
  t0=$SECONDS
  "$FLUX2" export --checkpoint "$OUT/$name/checkpoint" --out "$OUT/$name/onnx" > /dev/null
  "$FLUX2" eval --model "$OUT/$name/onnx" --prompts "$PROMPTS" --seed 1000 --out "$OUT/$name/eval" | tee -a "$OUT/$name.log"
  echo "$name: export+eval $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"
done
"$PY" study_table.py "$OUT" | tee "$OUT/table.md"
