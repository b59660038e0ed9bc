#!/usr/bin/env bash
# Dynamic batching benchmark (issue 27): images/s of 8 concurrent same-shape requests with
# Triton's dynamic batcher on and off (one instance, every core), the executions per burst
# from the server's statistics. Model: the shipped shapes model as `flux2 demo` exports it
# (models/flux2-shapes) at its size (64x64); --steps 4 by default. A real tritonserver
# (nvidia-pytriton) on loopback.
#   ./scripts/bench_triton_batching.sh [--rounds N] [--concurrency C] [--steps N] [--json out.json]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_serve.sh >/dev/null
cargo build --release -p flux2-cli --quiet
demo="${FLUX2_BENCH_DEMO:-target/bench-triton-demo}"
./target/release/flux2 demo --out "$demo" >/dev/null
"$FLUX2_PYTHON" scripts/bench_triton_batching.py --flux2 target/release/flux2 --model "$(cd "$demo/onnx" && pwd)" \
  --server-env "$FLUX2_TRITON_ENV" "$@"
