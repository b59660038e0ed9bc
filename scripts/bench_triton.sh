#!/usr/bin/env bash
# Serving benchmark (issue 12): images/s and p50/p99 latency of the `flux2` Triton model at
# concurrency 1, 2, 4 with 1 and 2 instances, and the Triton path's overhead at concurrency 1
# against `flux2 bench` (same model, size, steps, threads). Model: the shipped shapes model as
# `flux2 demo` exports it (models/flux2-shapes: klein base architecture, true CFG),
# 256x256, 4 steps, 512-token prompts. A real tritonserver (nvidia-pytriton) on loopback.
#   ./scripts/bench_triton.sh [--requests N] [--rounds N] [--width W --height H] [--json out.json]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_serve.sh >/dev/null
cargo build --release -p flux2-cli --quiet
demo="${FLUX2_BENCH_DEMO:-target/bench-triton-demo}"
./target/release/flux2 demo --out "$demo" >/dev/null
"$FLUX2_PYTHON" scripts/bench_triton.py --flux2 target/release/flux2 --model "$(cd "$demo/onnx" && pwd)" \
  --server-env "$FLUX2_TRITON_ENV" "$@"
