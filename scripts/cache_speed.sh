#!/usr/bin/env bash
# Step caching's wall-clock value on a many-step medium checkpoint (issue 25: "the wall-clock
# speed-up follows the saved evaluations, ≥ 1.5× at a setting that skips half").
#
#   scripts/cache_speed.sh ONNX_DIR [WORK_DIR]    (WORK_DIR default target/cache-speed)
#
# ONNX_DIR is a float export with the DiT parts (plain `flux2 export`), e.g. the medium
# klein-shaped pipeline of scripts/compare_diffusers.sh (target/compare-diffusers/onnx; DiT
# hidden 512, 2 double + 4 single blocks, released-width VAE). Runs `flux2 calibrate-cache`
# once (STEPS steps at 256², 2 prompts), then `flux2 bench --steps STEPS` (default 28, true CFG as the model has it) for `off`
# and each of SETTINGS at 256², THREADS threads (default 2), RUNS timed runs (default 2) after one
# warm-up, and tabulates, per setting: the share of full DiT evaluations, the denoise stage's
# median and its speed-up over uncached, and the end-to-end speed-up. Pause other jobs first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ONNX="${1:?give a float export folder with the DiT parts}"
WORK="${2:-$ROOT/target/cache-speed}"
STEPS="${STEPS:-28}"
RUNS="${RUNS:-2}"
THREADS="${THREADS:-2}"
SETTINGS="${SETTINGS:-taylor:2 fbc:0.1 mag:0.1 tea:0.2}"
FLUX2="$ROOT/target/release/flux2"
cd "$ROOT"
source scripts/setup.sh >/dev/null
mkdir -p "$WORK"
[ -f "$ONNX/cache_calibration.json" ] || "$FLUX2" calibrate-cache --model "$ONNX" --steps "$STEPS" --size 256x256 --prompts 2
for c in off $SETTINGS; do
  "$FLUX2" bench --model "$ONNX" --steps "$STEPS" --cache "$c" --runs "$RUNS" --warmup 1 --threads "$THREADS" \
    --width 256 --height 256 --json "$WORK/bench-${c//[:,]/_}.json" > "$WORK/bench-${c//[:,]/_}.log"
  echo "$c done"
done
python3 - "$WORK" off $SETTINGS <<'PY'
import json, sys
work, names = sys.argv[1], sys.argv[2:]
rows = {n: json.load(open(f"{work}/bench-{n.replace(':', '_').replace(',', '_')}.json")) for n in names}
base = rows["off"]
print(base["cpu_summary"])
print(f"{base['width']}x{base['height']}, {base['steps']} steps, {base['threads']} threads, medians of {base['runs']} runs")
print("| cache | full DiT evaluations | denoise s | denoise speed-up | end to end s | end-to-end speed-up |")
print("|---|---|---|---|---|---|")
for n, r in rows.items():
    c = r["dit_evaluations"]
    total = c["full"] + c["first_block_only"] + c["skipped"]
    d, e = r["stages"]["denoise"]["stats"]["median"], r["stages"]["end_to_end"]["stats"]["median"]
    d0, e0 = base["stages"]["denoise"]["stats"]["median"], base["stages"]["end_to_end"]["stats"]["median"]
    print(f"| `{n}` | {c['full']}/{total} ({100 * c['full'] / total:.0f} %; {c['first_block_only']} first block only, {c['skipped']} skipped) "
          f"| {d:.2f} | {d0 / d:.2f}x | {e:.2f} | {e0 / e:.2f}x |")
PY
