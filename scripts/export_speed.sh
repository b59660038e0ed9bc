#!/usr/bin/env bash
# Copy-mode export speed against the disk's raw sequential write speed, measured on the same
# disk in the same run.
#
#   scripts/export_speed.sh [WORK_DIR]      (default: target/export-speed)
#
# 1. writes a real-size sparse checkpoint (`flux2 synth-checkpoint`, released names/shapes,
#    bf16, data left as a hole: no disk space, no download);
# 2. dd if=/dev/zero ... conv=fsync of as many bytes as the export will write (the floor);
# 3. `flux2 export --weights copy --dtype f32` of one component (the export fsyncs its data
#    before it reports success, so both timings include getting the bytes onto the disk);
# 4. repeats 2-3 ROUNDS times (default 2) alternating, ends with one more dd, and prints every
#    speed, the medians and their ratio, the export's peak RSS and the CPU. Alternating
#    matters on a shared disk, whose speed can change by 2-3x from one minute to the next.
# Env: VARIANT (klein-4b | klein-9b | dev, default klein-4b), COMPONENT (default transformer),
# FLUX2 (binary, default target/release/flux2), KEEP=1 keeps the files.
# Needs free space for the export twice over (klein-4B transformer: 15.5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=${VARIANT:-klein-4b}
COMPONENT=${COMPONENT:-transformer}
BIN=${FLUX2:-target/release/flux2}
WORK=${1:-target/export-speed}
ROUNDS=${ROUNDS:-2}
[ -x "$BIN" ] || cargo build --release -p flux2-cli
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK/ckpt-$VARIANT" "$WORK/out" "$WORK/dd.bin"; }
trap cleanup EXIT
rm -rf "$WORK/out" "$WORK/dd.bin"
[ -d "$WORK/ckpt-$VARIANT" ] || "$BIN" synth-checkpoint --variant "$VARIANT" --out "$WORK/ckpt-$VARIANT" >/dev/null
# bytes the export writes: bf16 -> f32 doubles the component's data
SRC=$(du -b --apparent-size -c "$WORK/ckpt-$VARIANT/$COMPONENT"/*.safetensors | tail -1 | cut -f1)
BYTES=$((SRC * 2))
MB=$((BYTES / 1048576))

now() { date +%s.%N; }
dd_speed() {
    local t0 t1
    sync
    t0=$(now)
    dd if=/dev/zero of="$WORK/dd.bin" bs=16M count=$((MB / 16)) conv=fsync status=none
    t1=$(now)
    rm -f "$WORK/dd.bin"
    echo "$(( MB / 16 * 16 * 1048576 )) $t0 $t1" | awk '{printf "%.3f", $1 / ($3 - $2) / 1e9}'
}

echo "CPU: $("$BIN" doctor --cpu)"
echo "disk: $(df -h "$WORK" | awk 'NR==2 {print $1" ("$2", "$4" free)"}'), $WORK"
echo "export: $VARIANT $COMPONENT, $(awk -v b="$SRC" 'BEGIN{printf "%.2f", b/1e9}') GB bf16 -> $(awk -v b="$BYTES" 'BEGIN{printf "%.2f", b/1e9}') GB f32"
export_speed() {
    local t0 t1 wrote
    rm -rf "$WORK/out"
    sync
    t0=$(now)
    /usr/bin/time -f "%M" -o "$WORK/rss" "$BIN" export --checkpoint "$WORK/ckpt-$VARIANT" \
        --components "$COMPONENT" --out "$WORK/out" --weights copy --dtype f32 >/dev/null
    t1=$(now)
    wrote=$(du -b --apparent-size -c "$WORK/out"/*.onnx.data | tail -1 | cut -f1)
    rm -rf "$WORK/out"
    echo "$wrote $t0 $t1" | awk '{printf "%.3f", $1 / ($3 - $2) / 1e9}'
}

# alternate the two so both see the same background load; the last word is the median
DDS=(); EXPS=()
for r in $(seq 1 "$ROUNDS"); do
    DDS+=("$(dd_speed)")
    echo "round $r: dd conv=fsync ${DDS[-1]} GB/s"
    EXPS+=("$(export_speed)")
    echo "round $r: export (copy, fdatasync at end) ${EXPS[-1]} GB/s, peak RSS $(($(cat "$WORK/rss") / 1024)) MiB"
done
DDS+=("$(dd_speed)")
echo "final: dd conv=fsync ${DDS[-1]} GB/s"
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
MD=$(median "${DDS[@]}"); ME=$(median "${EXPS[@]}")
awk -v e="$ME" -v d="$MD" 'BEGIN{printf "median: export %.3f GB/s, dd %.3f GB/s, ratio %.2f\n", e, d, e / d}'
