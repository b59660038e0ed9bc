#!/usr/bin/env bash
# The test command: installs the runtime dependencies (ONNX Runtime 1.31.1 + onnx into
# ./.venv), then runs every test of the workspace, then the serving tests (scripts/test_serve.sh:
# the Python package and a real Triton Inference Server, installed from PyPI into ./.venv).
# No PyTorch, no GPU, no network beyond crates.io and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh >/dev/null
echo "ONNX Runtime: $ORT_DYLIB_PATH"
# The run-only flux2 (a device build: runtime only, no graph building, export or calibration)
# must build and generate; cli/tests/run_only_cli.rs runs it from this copy.
cargo build --release -q -p flux2-cli --no-default-features
cp target/release/flux2 target/release/flux2-run
export FLUX2_RUN_ONLY_BIN="$PWD/target/release/flux2-run"
cargo test --workspace --release "$@"
# the Python package and a real Triton server (installs its own dependencies)
./scripts/test_serve.sh
