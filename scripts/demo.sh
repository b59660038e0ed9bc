#!/usr/bin/env bash
# The main job on a built-in default: builds a small FLUX.2-architecture model with
# deterministic random weights, exports it to ONNX and generates an image with it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh >/dev/null
cargo run --release -q -p flux2-cli -- demo "$@"
