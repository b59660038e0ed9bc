#!/usr/bin/env bash
# The training-distribution study (README "Training timestep distributions"): the same DiT,
# data, seed and step budget trained with t ~ ts, ln and pln (alpha 1), and ln at a second
# training alpha-shift (3). Reuses train/cache/{text,vae2} from train.sh. Phase 1 trains every
# run; phase 2 exports each
# run with `flux2 export` and judges it with `flux2 eval` (same captions and noise for all) when
# EVAL=1; without it the table shows each run's end-of-training check (train_dit.py: the same
# sampler on 48 fixed captions, judged by classify.py, the Python mirror of the Rust classifier).
#   STEPS=2500 train/study.sh [EVAL=1 PROMPTS=48]  -> train/runs/study/<name>/, train/runs/study/table.md
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-../.pyref/bin/python}
[ -x "$PY" ] || PY=/work/main/.pyref/bin/python
FLUX2=${FLUX2:-../target/release/flux2}
STEPS=${STEPS:-2500}
VAE=${VAE:-cache/vae2}
PROMPTS=${PROMPTS:-48}
SEED=${SEED:-0}
OUT=runs/study
RUNS=${RUNS:-"ts:1 ln:1 pln:1 ln:3"}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
for run in $RUNS; do
  dist=${run%%:*}; alpha=${run##*:}; name="$dist-a$alpha"
  [ -f "$OUT/$name/checkpoint/training.json" ] && continue
  t0=$SECONDS
  "$PY" train_dit.py --vae "$VAE" --text cache/text --images 6000 --out "$OUT/$name/checkpoint" \
    --dist "$dist" --alpha "$alpha" --seed "$SEED" --steps "$STEPS" --batch 32 --lr 1e-3 \
    --sample-steps "${SAMPLE_STEPS:-12}" 2>&1 | grep --line-buffered -v -E "Loading weights|Writing model" > "$OUT/$name.log"
  echo "$name: train $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"
done
for run in $RUNS; do
  [ "${EVAL:-0}" = 1 ] || break
  dist=${run%%:*}; alpha=${run##*:}; name="$dist-a$alpha"
  [ -f "$OUT/$name/eval/report.json" ] && continue
  t0=$SECONDS
  "$FLUX2" export --checkpoint "$OUT/$name/checkpoint" --out "$OUT/$name/onnx" > /dev/null
  taskset -c 1 "$FLUX2" eval --model "$OUT/$name/onnx" --prompts "$PROMPTS" --seed 1000 --out "$OUT/$name/eval" | tee -a "$OUT/$name.log"
  echo "$name: export+eval $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"
done
"$PY" study_table.py "$OUT" | tee "$OUT/table.md"
