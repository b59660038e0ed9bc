#!/usr/bin/env bash
# Step caching's value on the shapes model (issue 25): for each policy and setting, the share of
# full DiT evaluations against `flux2 eval` all-three adherence, on the same captions and noise
# as the uncached run.
#
#   scripts/cache_curves.sh [WORK_DIR]     (default target/cache-curves, git-ignored)
#
# 1. `flux2 export` of MODEL (default models/flux2-shapes: true CFG, 24 steps, guidance 2), with
#    the DiT parts step caching runs on, and `flux2 calibrate-cache` (MagCache ratios, TeaCache
#    coefficients);
# 2. `flux2 eval --cache POLICY` for `off` and every setting of SETTINGS, PROMPTS captions
#    (default 192) from SEED (default 0), one thread each, JOBS (default 1) at a time;
# 3. scripts/cache_curves.py: table.md (full evaluations, adherence with its 95 % Wilson interval,
#    the paired difference from uncached with its 95 % interval, seconds) and curves.png when
#    matplotlib is there (e.g. FLUX2_REF_PYTHON=.venv-ref/bin/python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$ROOT/target/cache-curves}"
MODEL="${MODEL:-$ROOT/models/flux2-shapes}"
PROMPTS="${PROMPTS:-192}"
SEED="${SEED:-0}"
JOBS="${JOBS:-1}"
SETTINGS="${SETTINGS:-fbc:0.05 fbc:0.1 fbc:0.2 mag:0.06 mag:0.12 mag:0.24 taylor:2 taylor:3 taylor:4 tea:0.05 tea:0.1 tea:0.2}"
FLUX2="$ROOT/target/release/flux2"
cd "$ROOT"
source scripts/setup.sh >/dev/null
cargo build --release -q -p flux2-cli
mkdir -p "$WORK"
if [ ! -f "$WORK/onnx/cache_calibration.json" ]; then
  rm -rf "$WORK/onnx"
  "$FLUX2" export --checkpoint "$MODEL" --out "$WORK/onnx"
  "$FLUX2" calibrate-cache --model "$WORK/onnx"
fi
one() {
  local policy="$1" out="$WORK/eval-${1//[:,]/_}"
  [ -f "$out/report.json" ] && return 0
  "$FLUX2" eval --model "$WORK/onnx" --prompts "$PROMPTS" --seed "$SEED" --cache "$policy" --threads 1 \
    --out "$out.tmp" > "$out.log" 2>&1 && rm -rf "$out" && mv "$out.tmp" "$out"
  grep -h "DiT evaluations\|all three" "$out.log" | sed "s/^/$policy: /" || true
}
export -f one
export WORK PROMPTS SEED FLUX2
printf '%s\n' off $SETTINGS | xargs -P "$JOBS" -I{} bash -c 'one "$@"' _ {}
PY="${FLUX2_REF_PYTHON:-python3}"
"$PY" scripts/cache_curves.py "$WORK"
