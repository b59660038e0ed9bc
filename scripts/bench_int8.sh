#!/usr/bin/env bash
# INT8 / FP8 DiT benchmark on ONNX Runtime CPU (issue 6 acceptance figures).
#
#   scripts/bench_int8.sh [WORK_DIR]            (default target/bench-int8 in the repository, git-ignored)
#   HEADS=8 scripts/bench_int8.sh               hidden = HEADS x 128 (default 4 -> 512)
#   PRECISIONS=int8 scripts/bench_int8.sh       only INT8 (default: int8 fp8)
#
# 1. a random medium FLUX.2 DiT in the diffusers layout (scripts/bench_int8_checkpoint.py,
#    needs the reference venv: FLUX2_REF_PYTHON, default .venv-ref/bin/python in the repository),
# 2. `flux2 export` (f32), `flux2 calibrate --precision int8` and `--precision fp8`
#    (trajectories at 512x512, 640x384, 384x640; distilled klein schedule, 4 steps),
# 3. scripts/bench_int8_report.py on each: onnx.checker, Q/DQ types, per-channel weights,
#    fused kernels, alternating float/quantised latency (wall and CPU time), output NMSE.
# Nothing is written outside WORK_DIR; re-running reuses the checkpoint and the export.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$ROOT/target/bench-int8}"
HEADS="${HEADS:-4}"
REF_PY="${FLUX2_REF_PYTHON:-$ROOT/.venv-ref/bin/python}"
PY="${FLUX2_PYTHON:-$ROOT/.venv/bin/python}"
RUNS="${RUNS:-9}"
FLUX2="$ROOT/target/release/flux2"

cd "$ROOT"
cargo build --release -q -p flux2-cli
mkdir -p "$WORK"
CKPT="$WORK/ckpt-h$HEADS"
if [ ! -f "$CKPT/transformer/config.json" ]; then
  "$REF_PY" scripts/bench_int8_checkpoint.py --out "$CKPT" --heads "$HEADS"
fi
if [ ! -f "$WORK/f32-h$HEADS/manifest.json" ]; then
  "$FLUX2" export --checkpoint "$CKPT" --out "$WORK/f32-h$HEADS"
fi
for P in ${PRECISIONS:-int8 fp8}; do
  OUT="$WORK/$P-h$HEADS"
  rm -rf "$OUT"
  "$FLUX2" calibrate --model "$WORK/f32-h$HEADS" --precision "$P" --out "$OUT" \
    --samples 32 --heldout 4 --latency-runs "$RUNS" --eval-images 0
  echo "== $P (hidden $((HEADS * 128))) =="
  echo "CPU: $("$FLUX2" doctor --cpu)"
  "$PY" scripts/bench_int8_report.py "$WORK/f32-h$HEADS" "$OUT" --runs "$RUNS"
done
