#!/usr/bin/env bash
# Peak memory per stage of a real-size klein-4B with INT4 weights (issue 26: "klein-4B with INT4
# weights generates 256², 1 step, at ≤ 5 GB peak RSS; report the time of each stage").
#
# Writes a sparse real-size checkpoint (released names, shapes and types; data reads as zeros, so
# the image is meaningless but every kernel runs at full size), exports it with INT4 weight-only
# linears, and generates 256×256 in 1 step with `flux2 generate --json`, twice: the second run
# finds the prompt in the prompt-embedding cache and skips the text encoder. The synthetic
# checkpoint has no tokenizer; the Qwen3 fixture tokenizer stands in (prompts are padded to 512
# tokens either way, so the encoder's cost is the same).
#
#   scripts/bench_memory.sh [WORK_DIR]       # default /tmp/flux2-bench-memory
#   FLUX2=target/release/flux2 EXTRA="--prompt-cache off" scripts/bench_memory.sh
#
# Prints the JSON summaries (peak_rss_bytes per stage, seconds per stage) and, on stderr, each
# session's creation time and peak RSS.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/flux2-bench-memory}"
flux2="${FLUX2:-$root/target/release/flux2}"
source "$root/scripts/setup.sh" >/dev/null
mkdir -p "$work"
if [ ! -f "$work/klein-4b-sparse/model_index.json" ]; then
  "$flux2" synth-checkpoint --variant klein-4b --out "$work/klein-4b-sparse"
fi
if [ ! -f "$work/klein-4b-int4/manifest.json" ]; then
  "$flux2" export --checkpoint "$work/klein-4b-sparse" --out "$work/klein-4b-int4" \
    --weights-precision int4
  cp -r "$root/tests/fixtures/text/qwen3/tokenizer" "$work/klein-4b-int4/tokenizer"
fi
ls -la "$work/klein-4b-int4"
# Run 1 starts cold (no session cache, no prompt cache: every graph is optimised and pre-packed
# from its source, and the session cache written); run 2 finds the prompt in the prompt cache
# and the graphs in the session cache; run 3 (--prompt-cache off) runs the text encoder again,
# from the session cache.
rm -rf "$work/klein-4b-int4/.flux2-session-cache" "$work/klein-4b-int4/.flux2-prompt-cache"
for run in 1 2 3; do
  extra="${EXTRA:-}"
  [ "$run" = 3 ] && extra="$extra --prompt-cache off"
  echo "== generate, run $run ($(date -u +%T))"
  # (/usr/bin/time's max RSS only covers the last stage: flux2 resets the peak per stage)
  # shellcheck disable=SC2086
  RUST_LOG="${RUST_LOG:-flux2_runtime=info}" /usr/bin/time -f "wall %e s" \
    "$flux2" generate --model "$work/klein-4b-int4" --prompt "a red fox in the snow" \
    --width 256 --height 256 --steps 1 --json --out "$work/out.png" $extra
done
