#!/usr/bin/env bash
# The issue-25 speed figures in one sitting, on the medium klein-shaped checkpoint (DiT hidden
# 512, 2 + 4 blocks, released-width VAE, 28-layer text encoder, 256², 4 steps, 2 threads):
#   1. scripts/compare_diffusers.sh: diffusers 0.42.1 f32 warm in-process, flux2 f32 and the
#      default `flux2 calibrate --precision int8` folder (calibrated here), same-noise PSNR;
#   2. cold processes: COLD_INT8 (default 8) INT8 and COLD_F32 (default 3) f32 `flux2 generate`
#      runs, each a new process with the session cache warm and the prompt cache off, for
#      --residency stage and all; wall time per run (GNU time) and the per-stage JSON;
#   3. scripts/cache_speed.sh on the f32 export at 28 steps (step caching's wall clock).
# Run on a quiet machine (pause other jobs); FLUX2_REF_PYTHON names the reference Python.
# Results: WORK (default target/speed-figures)/summary.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${WORK:-$ROOT/target/speed-figures}"
COLD_INT8="${COLD_INT8:-8}"
COLD_F32="${COLD_F32:-3}"
CD="$ROOT/target/compare-diffusers"
FLUX2="$ROOT/target/release/flux2"
cd "$ROOT"
mkdir -p "$WORK"
if [ -z "${SKIP_COMPARE:-}" ]; then
  scripts/compare_diffusers.sh --vae-widths 128,256,512,512 --threads 2 --runs 3 "$@" 2>&1 | tee "$WORK/compare.log"
fi
source scripts/setup.sh >/dev/null
prompt="a red fox sitting in the snow, soft morning light"
cold() { # name dir residency
  local out="$WORK/cold-$1-$3-$4"
  /usr/bin/time -f "%e s wall, %M KB peak" -o "$out.time" "$FLUX2" generate --model "$2" --prompt "$prompt" \
    --width 256 --height 256 --steps 4 --seed 7 --prompt-cache off --residency "$3" \
    --out "$out.png" --json > "$out.json"
}
# the first run of each folder writes its session-cache entries; it is not counted
cold int8 "$CD/int8" stage warm; cold f32 "$CD/onnx" stage warm
for r in stage all; do
  for i in $(seq 1 "$COLD_INT8"); do cold int8 "$CD/int8" "$r" "$i"; done
  for i in $(seq 1 "$COLD_F32"); do cold f32 "$CD/onnx" "$r" "$i"; done
done
python3 - "$WORK" > "$WORK/summary.md" <<'PY'
import glob, json, re, statistics, sys
work = sys.argv[1]
print(open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(" \t:"))
flags = set(open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split())
print("flags:", " ".join(sorted(f for f in flags if re.match(r"(avx|amx|fma)", f))))
print("| cold process | residency | runs | wall s (min–median–max) | sessions s | text encoder s | denoise s | VAE decode s |")
print("|---|---|---|---|---|---|---|---|")
for p in ["int8", "f32"]:
    for r in ["stage", "all"]:
        walls, js = [], []
        for t in sorted(glob.glob(f"{work}/cold-{p}-{r}-[0-9]*.time")):
            walls.append(float(open(t).read().split()[0]))
            js.append(json.load(open(t[:-5] + ".json")))
        if not walls:
            continue
        def med(key):
            vals = [j["seconds"][key] for j in js if j["seconds"].get(key) is not None]
            return f"{statistics.median(vals):.2f}" if vals else "–"
        print(f"| {p} | {r} | {len(walls)} | {min(walls):.2f}–{statistics.median(walls):.2f}–{max(walls):.2f} "
              f"| {med('load')} | {med('text_encoder')} | {med('denoise')} | {med('vae_decode')} |")
PY
cat "$WORK/summary.md"
[ -n "${SKIP_CACHE:-}" ] || SETTINGS="${SETTINGS:-taylor:2 mag:0.1 mag:0.3 fbc:0.1}" scripts/cache_speed.sh "$CD/onnx" "$WORK/cache" | tee "$WORK/cache.md"
