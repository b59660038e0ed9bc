#!/usr/bin/env bash
# Weight-only INT8 / INT4 figures (issue 26, item 1) on the medium klein-shaped pipeline.
#
#   CKPT=DIR scripts/bench_lowbit.sh [WORK_DIR]      (default target/bench-lowbit, git-ignored)
#
# CKPT is a medium klein-shaped diffusers pipeline folder as scripts/compare_diffusers.py builds
# it (DiT hidden 512, 2 double + 4 single blocks; 28-layer Qwen3 encoder of hidden 256; VAE).
# 1. `flux2 export` f32, `--weights-precision int8` and `int4` (default block 128, DiT embedders /
#    modulation / final layer float, VAE float), and the DiT calibrated to INT8 Q/DQ;
# 2. `flux2 bench --model f32 --against X` for each: per-stage times (text encoder at 512
#    tokens, DiT step, VAE) side by side and the image PSNR of X against f32 (same seed);
# 3. the export sizes. Set THREADS (default 2) and RUNS (default 3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$ROOT/target/bench-lowbit}"
CKPT="${CKPT:?set CKPT to the medium pipeline checkpoint folder}"
RUNS="${RUNS:-3}"
THREADS="${THREADS:-2}"
FLUX2="$ROOT/target/release/flux2"
cd "$ROOT"
source scripts/setup.sh >/dev/null
mkdir -p "$WORK"
[ -f "$WORK/f32/manifest.json" ] || "$FLUX2" export --checkpoint "$CKPT" --out "$WORK/f32"
for P in int8 int4; do
  [ -f "$WORK/w-$P/manifest.json" ] || "$FLUX2" export --checkpoint "$CKPT" --out "$WORK/w-$P" --weights-precision "$P"
done
if [ -n "${QDQ:-}" ] && [ ! -f "$WORK/qdq-int8/manifest.json" ]; then
  "$FLUX2" calibrate --model "$WORK/f32" --precision int8 --components transformer --out "$WORK/qdq-int8" \
    --samples 16 --heldout 2 --latency-runs 0 --eval-images 0 --threads "$THREADS"
fi
echo "CPU: $("$FLUX2" doctor --cpu 2>/dev/null || true)"
du -sh "$WORK"/*/transformer.onnx.data "$WORK"/*/text_encoder.onnx.data 2>/dev/null || true
for X in w-int8 w-int4 ${QDQ:+qdq-int8}; do
  echo "== f32 vs $X =="
  "$FLUX2" bench --model "$WORK/f32" --against "$WORK/$X" --runs "$RUNS" --threads "$THREADS" \
    --json "$WORK/bench-$X.json"
done
