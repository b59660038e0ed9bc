#!/usr/bin/env bash
# The test command: installs the runtime dependencies (ONNX Runtime 1.31.1 + onnx into
# ./.venv), then runs every test of the workspace, then the serving tests (scripts/test_serve.sh:
# the Python package and a real Triton Inference Server, installed from PyPI into ./.venv).
# No PyTorch, no GPU, no network beyond crates.io and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh >/dev/null
echo "ONNX Runtime: $ORT_DYLIB_PATH"
cargo test --workspace --release "$@"
# the Python package and a real Triton server (installs its own dependencies)
./scripts/test_serve.sh
