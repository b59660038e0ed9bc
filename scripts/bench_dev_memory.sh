#!/usr/bin/env bash
# FLUX.2 [dev] from Q4 GGUF files on a 24 GB machine (issue 26: "FLUX.2 [dev] from a Q4 GGUF DiT
# and a Q4 GGUF Mistral-3 encoder generates 256², 1 step, on a 2-core 24 GB machine at ≤ 20 GB
# peak RSS; report the time of each stage").
#
# 1. `flux2 synth-checkpoint --variant dev --gguf TYPE`: the real-size [dev] folder (configs,
#    VAE) with the DiT and the Mistral-Small-3.2 encoder as GGUF files in TYPE (default Q4_K:
#    18.1 GB DiT, 13.3 GB encoder, like the Q4_K_M files people share), sparse (the data reads
#    as zeros, so the image is meaningless but every kernel runs at full size).
# 2. `flux2 export --transformer FILE --text-encoder FILE --weights-precision int4 --block-size
#    128 --quantize-all --lowbit-op matmulnbits`: INT4 block 128 everywhere (17 GB DiT; the
#    GGUF blocks are re-quantised from their exact values), written as ONNX Runtime's
#    MatMulNBits so that no session needs a second copy of the weights.
# 3. `flux2 generate` 256×256, 1 step, --json (peak RSS and seconds per stage), cold: each
#    graph whose weights would not fit twice in the available memory runs mapped
#    (runtime/src/mapped.rs). The Mistral fixture tokenizer stands in for the real one
#    (prompts are padded to 512 tokens either way).
#
#   scripts/bench_dev_memory.sh [WORK_DIR]      # default /tmp/flux2-dev-memory; ~60 GB of disk
#   TYPE=Q4_0 BLOCK=32 scripts/bench_dev_memory.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/flux2-dev-memory}"
flux2="${FLUX2:-$root/target/release/flux2}"
type="${TYPE:-Q4_K}"
block="${BLOCK:-128}"
source "$root/scripts/setup.sh" >/dev/null
mkdir -p "$work"
grep -E "model name|MemTotal" /proc/cpuinfo /proc/meminfo | sort -u | head -2
nproc
if [ ! -f "$work/ckpt/gguf/transformer-$type.gguf" ]; then
  rm -rf "$work/ckpt"
  "$flux2" synth-checkpoint --variant dev --out "$work/ckpt" --gguf "$type"
fi
model="$work/dev-int4-b$block"
if [ ! -f "$model/manifest.json" ]; then
  echo "== export ($(date -u +%T))"
  /usr/bin/time -f "export: wall %e s, peak RSS %M kB" "$flux2" export --checkpoint "$work/ckpt" \
    --transformer "$work/ckpt/gguf/transformer-$type.gguf" \
    --text-encoder "$work/ckpt/gguf/text_encoder-$type.gguf" \
    --weights-precision int4 --block-size "$block" --quantize-all --lowbit-op matmulnbits --out "$model"
  cp -r "$root/tests/fixtures/text/mistral/tokenizer" "$model/tokenizer"
fi
ls -la "$model"
rm -rf "$model/.flux2-session-cache" "$model/.flux2-prompt-cache"
echo "== generate ($(date -u +%T))"
# (/usr/bin/time's max RSS covers only the last stage: flux2 resets the peak per stage)
RUST_LOG="${RUST_LOG:-flux2_runtime=info}" /usr/bin/time -f "generate: wall %e s" \
  "$flux2" generate --model "$model" --prompt "a red fox in the snow" \
  --width 256 --height 256 --steps 1 --json --out "$work/out.png" ${EXTRA:-}
