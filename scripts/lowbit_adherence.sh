#!/usr/bin/env bash
# Weight-only low-bit adherence on the shapes model (issue 26: "on the shapes model INT8 weights
# within 2 and INT4 within 5 points of f32 flux2 eval all-three adherence").
#
#   scripts/lowbit_adherence.sh [WORK_DIR]      (default target/lowbit-shapes, git-ignored)
#
# Exports MODEL (default models/flux2-shapes) as f32 and with --weights-precision int8 / int4
# (BLOCK, default 32), and runs `flux2 eval` on the same PROMPTS captions (default 192) from
# SEED (default 0) for each, one thread each; prints all three per export, the paired
# difference from f32 and how many pictures changed verdict. The MatMulNBits accuracy level is
# the runtime's default (4 on CPUs with INT8 dot products, else 0) unless FLUX2_NBITS_ACCURACY
# sets it; results go to eval-PRECISION-lLEVEL.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$ROOT/target/lowbit-shapes}"
MODEL="${MODEL:-$ROOT/models/flux2-shapes}"
PROMPTS="${PROMPTS:-192}"
SEED="${SEED:-0}"
BLOCK="${BLOCK:-32}"
FLUX2="$ROOT/target/release/flux2"
cd "$ROOT"
source scripts/setup.sh >/dev/null
if [ -z "${FLUX2_NBITS_ACCURACY:-}" ]; then
  grep -qw -e avx512_vnni -e avx_vnni -e amx_int8 /proc/cpuinfo && FLUX2_NBITS_ACCURACY=4 || FLUX2_NBITS_ACCURACY=0
fi
export FLUX2_NBITS_ACCURACY
echo "MatMulNBits accuracy level $FLUX2_NBITS_ACCURACY"
L="l$FLUX2_NBITS_ACCURACY"
cargo build --release -q -p flux2-cli
mkdir -p "$WORK"
for P in f32 int8 int4; do
  dir="$WORK/$P"
  if [ ! -f "$dir/manifest.json" ]; then
    extra=(); [ "$P" = f32 ] || extra=(--weights-precision "$P" --block-size "$BLOCK")
    "$FLUX2" export --checkpoint "$MODEL" --out "$dir" "${extra[@]}" > "$WORK/export-$P.log"
  fi
  ev="$WORK/eval-$P"; [ "$P" = f32 ] || ev="$ev-$L"
  [ -f "$ev/report.json" ] || "$FLUX2" eval --model "$dir" --prompts "$PROMPTS" --seed "$SEED" \
    --threads 1 --out "$ev" | grep "all three"
done
python3 - "$WORK" "$L" <<'PY'
import json, math, sys
work, level = sys.argv[1], sys.argv[2]
base = json.load(open(f"{work}/eval-f32/report.json"))["items"]
for p in ["f32", f"int8-{level}", f"int4-{level}"]:
    items = json.load(open(f"{work}/eval-{p}/report.json"))["items"]
    assert [(i["prompt"], i["seed"]) for i in items] == [(i["prompt"], i["seed"]) for i in base]
    n, k = len(items), sum(i["all"] for i in items)
    d = [int(i["all"]) - int(b["all"]) for i, b in zip(items, base)]
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    flips = sum(x != 0 for x in d)
    print(f"{p}: all three {100 * k / n:.1f} % ({k}/{n}); vs f32 {100 * m:+.1f} points "
          f"[{100 * (m - 1.96 * sd / math.sqrt(n)):+.1f}, {100 * (m + 1.96 * sd / math.sqrt(n)):+.1f}], {flips} verdicts changed")
PY
