#!/usr/bin/env bash
# The test command: installs the runtime dependencies (ONNX Runtime 1.31.1 + onnx into
# ./.venv), then runs every test of the workspace. No PyTorch, no GPU, no network beyond
# crates.io and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh >/dev/null
echo "ONNX Runtime: $ORT_DYLIB_PATH"
cargo test --workspace --release "$@"
