#!/usr/bin/env bash
# Installs what the serving tests and benchmark need (idempotent), on top of scripts/setup.sh:
# - ./.venv: the real Triton clients (tritonclient[http,grpc]), maturin, pillow, nvidia-pytriton
#   0.7.0 (a real tritonserver 2.51 with the Python backend; installed without its Python
#   dependencies, of which only the server binary is used); the `flux2` package built from
#   ./python goes to target/python-flux2 (PYTHONPATH);
# - ./.venv-triton: the Python environment of the server's Python backend: numpy<2 (the 2.51
#   backend stub predates numpy 2's ABI) and the same `flux2` wheel.
# Source it to get ORT_DYLIB_PATH, FLUX2_PYTHON, FLUX2_TRITON_ENV and PYTHONPATH.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh" >/dev/null
venv="$root/.venv"
server_env="$root/.venv-triton"
pip=("$venv/bin/pip" install -q --disable-pip-version-check)
if ! "$venv/bin/python" -c "import tritonclient.http, tritonclient.grpc, PIL, maturin" 2>/dev/null; then
  "${pip[@]}" -r "$root/scripts/requirements-serve.txt"
fi
if ! "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('nvidia-pytriton') == '0.7.0'" 2>/dev/null; then
  "${pip[@]}" --no-deps nvidia-pytriton==0.7.0
fi
if [ ! -x "$server_env/bin/python" ]; then
  "$(readlink -f "$venv/bin/python")" -m venv "$server_env"
fi
if ! "$server_env/bin/python" -c "import numpy; assert numpy.__version__ < '2'" 2>/dev/null; then
  "$server_env/bin/pip" install -q --disable-pip-version-check "numpy<2"
fi
# the flux2 package: one abi3 wheel (cargo rebuilds only what changed), installed for the
# clients in target/python-flux2 (on PYTHONPATH: each checkout tests its own build even where
# ./.venv is shared) and in the server's environment
wheels="$root/target/wheels"
rm -f "$wheels"/flux2-*.whl
(cd "$root" && PATH="$venv/bin:$PATH" "$venv/bin/maturin" build --release --quiet -m python/Cargo.toml -o "$wheels" -i "$venv/bin/python") >&2
wheel="$(ls "$wheels"/flux2-*.whl)"
rm -rf "$root/target/python-flux2"
"${pip[@]}" --no-deps --target "$root/target/python-flux2" "$wheel"
export PYTHONPATH="$root/target/python-flux2${PYTHONPATH:+:$PYTHONPATH}"
"$server_env/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel"
export FLUX2_TRITON_ENV="$server_env"
echo "flux2 package: $wheel"
echo "FLUX2_TRITON_ENV=$FLUX2_TRITON_ENV"
