#!/usr/bin/env bash
# Long fuzzing run of the input readers (tests/tests/fuzz_inputs.rs: safetensors headers,
# sharded indexes, manifests, --prompt-embeds/--noise tensor files, reference images, GGUF).
#
#   scripts/fuzz_long.sh [CASES_PER_READER]     (default 20000)
#
# Prints the cases run, the time and cases per second; exits non-zero on the first failing
# case (proptest prints the shrunk input).
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${1:-20000}
cargo test --release -p flux2-tests --test fuzz_inputs --no-run >/dev/null 2>&1 || \
    cargo test --release -p flux2-tests --test fuzz_inputs --no-run
READERS=$(cargo test --release -q -p flux2-tests --test fuzz_inputs -- --list 2>/dev/null | grep ': test$' | grep -vc allocation_counter)
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
T0=$(date +%s.%N)
FUZZ_CASES=$CASES cargo test --release -q -p flux2-tests --test fuzz_inputs -- --test-threads "$(nproc)"
T1=$(date +%s.%N)
awk -v n="$((CASES * READERS))" -v r="$READERS" -v a="$T0" -v b="$T1" \
    'BEGIN { printf "fuzzed %d cases (%d readers) in %.1f s: %.0f cases/s\n", n, r, b - a, n / (b - a) }'
