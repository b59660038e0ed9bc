#!/usr/bin/env bash
# Serving tests (issue 12): the `flux2` Python package against the CLI, and `flux2 triton`
# repositories in a real Triton server (nvidia-pytriton's tritonserver, loopback, free ports)
# driven by the real tritonclient over HTTP and gRPC. Installs what it needs (setup_serve.sh)
# and builds the CLI. Run by scripts/test.sh; alone: ./scripts/test_serve.sh [-k NAME].
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_serve.sh >/dev/null
cargo build --release -p flux2-cli --quiet
cd "$(mktemp -d)"  # nothing may depend on the working directory (e.g. finding ./.venv)
trap 'rm -rf "$PWD"' EXIT
timeout 1500 "$FLUX2_PYTHON" "$OLDPWD/tests/serve/test_serve.py" --flux2 "$OLDPWD/target/release/flux2" \
  --server-env "$FLUX2_TRITON_ENV" "$@"
