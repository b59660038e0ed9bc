#!/usr/bin/env bash
# Installs what flux2-deploy needs at run time into ./.venv (idempotent):
# ONNX Runtime 1.31.1 (the shared library ort loads) and onnx (graph checker used by tests).
# Prints the exports to use; source it to get them in your shell: `source scripts/setup.sh`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import onnxruntime, onnx, numpy" 2>/dev/null; then
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/scripts/requirements.txt"
fi
lib="$("$venv/bin/python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1.31.1"))')"
if [ ! -f "$lib" ]; then
  echo "setup: ONNX Runtime library not found at $lib" >&2
  exit 1
fi
export ORT_DYLIB_PATH="$lib"
export FLUX2_PYTHON="$venv/bin/python"
echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
