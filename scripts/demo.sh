#!/usr/bin/env bash
# The main job: exports the shipped model (models/flux2-shapes, a small FLUX.2 [klein]-
# architecture checkpoint trained in train/) to ONNX and draws a caption of its vocabulary.
#   scripts/demo.sh --prompt "a yellow triangle on a purple background" --seed 3
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh >/dev/null
cargo run --release -q -p flux2-cli -- demo "$@"
