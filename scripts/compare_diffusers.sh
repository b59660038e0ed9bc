#!/usr/bin/env bash
# Times flux2 (ONNX Runtime) against diffusers 0.42.1 (PyTorch) on the CPU, on the same medium
# random FLUX.2 [klein]-architecture checkpoint; see scripts/compare_diffusers.py for what is
# built and measured. Options are passed through (e.g. --runs 5 --vae-widths 128,256,512,512).
#
# Needs the reference Python stack (torch, diffusers, transformers). On a fresh machine:
#   python3 -m venv .venv-ref && .venv-ref/bin/pip install -r tests/fixtures/requirements.txt
#   FLUX2_REF_PYTHON=.venv-ref/bin/python scripts/compare_diffusers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh >/dev/null
cargo build --release -q -p flux2-cli
py="${FLUX2_REF_PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv-ref/bin/python ]; then py=.venv-ref/bin/python
  elif [ -x .pyref/bin/python ]; then py=.pyref/bin/python
  else py=python3; fi
fi
if ! "$py" -c "import torch, diffusers, transformers" 2>/dev/null; then
  echo "compare_diffusers: $py lacks torch/diffusers/transformers; see the header of this script" >&2
  exit 1
fi
exec "$py" scripts/compare_diffusers.py --flux2 target/release/flux2 "$@"
