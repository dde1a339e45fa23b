#!/usr/bin/env bash
# The headline figures of BENCHMARKS.md, nudge beside llama.cpp in one run on this machine:
# decoding (one row, 1 and N threads), forward scoring of 512 tokens, for the Q4_1 model and
# an F32 copy of it (llama-quantize --allow-requantize: the same values, dequantized), and
# DPO training on the benchmark set. Prints a Markdown table; ratios are nudge / llama.cpp.
#   scripts/bench-peers.sh [THREADS]      (default: all cores)
#   NUDGE_ISA=avx2 scripts/bench-peers.sh  both engines as on a CPU without AVX-512: nudge
#                                          on its AVX2 kernels, llama.cpp built for AVX2
# Takes about 5 minutes on 2 cores. Run it on a quiet machine: other work skews both sides.
# Shared machines drift within minutes: each figure alternates the two engines twice and
# keeps each one's better run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
threads="${1:-$(nproc)}"
scripts/fetch-model.sh >/dev/null
q4="models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ "${NUDGE_ISA:-}" = "avx2" ]; then
  bin="$(scripts/build-llama-cpp.sh --avx2)"
else
  bin="$(scripts/build-llama-cpp.sh)"
fi
f32="target/peers/models/SmolLM2-135M-Instruct.F32.gguf"
if [ ! -f "$f32" ]; then
  mkdir -p "$(dirname "$f32")"
  "$bin/llama-quantize" --allow-requantize "$q4" "$f32" F32 >/dev/null 2>&1
fi
cargo build --release --quiet --bin nudge
nudge="target/release/nudge"
json() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
# llama-bench's mean tokens/s of one test (pp512 or tgN) as JSON lines.
llama() {
  "$bin/llama-bench" -m "$1" -t "$2" -r 3 -o jsonl "${@:3}" 2>/dev/null |
    python3 -c "import json,sys; print([json.loads(l)['avg_ts'] for l in sys.stdin if l.strip()][-1])"
}
row() { python3 -c "print(f'| $1 | {float($2):.1f} | {float($3):.1f} | {float($2)/float($3):.2f}x |')"; }
best() { python3 -c "import sys; print(max(map(float, sys.argv[1:])))" "$@"; }
peak="$("$nudge" bench score -m "$q4" -t "$threads" --seq-len 16 --reps 1 --json | json peak_gflops)"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; kernels $("$nudge" info "$q4" --json | json kernels); FMA peak estimate ${peak%.*} GFLOP/s on $threads threads"
echo
echo "| figure (tokens/s) | nudge | llama.cpp | ratio |"
echo "|---|---|---|---|"
for model in "$q4" "$f32"; do
  name="$(basename "$model" .gguf | sed 's/.*\.//')"
  for t in 1 "$threads"; do
    n1="$("$nudge" bench generate -m "$model" -t "$t" -n 64 --batch 1 --reps 3 --json | json tokens_per_s)"
    l1="$(llama "$model" "$t" -p 0 -n 64)"
    n2="$("$nudge" bench generate -m "$model" -t "$t" -n 64 --batch 1 --reps 3 --json | json tokens_per_s)"
    l2="$(llama "$model" "$t" -p 0 -n 64)"
    row "decode $name, $t thread(s)" "$(best "$n1" "$n2")" "$(best "$l1" "$l2")"
    [ "$t" = "$threads" ] && break
  done
  n1="$("$nudge" bench score -m "$model" -t "$threads" --seq-len 512 --reps 3 --json | json tokens_per_s)"
  l1="$(llama "$model" "$threads" -p 512 -n 0)"
  n2="$("$nudge" bench score -m "$model" -t "$threads" --seq-len 512 --reps 3 --json | json tokens_per_s)"
  l2="$(llama "$model" "$threads" -p 512 -n 0)"
  row "forward 512 tokens $name, $threads threads" "$(best "$n1" "$n2")" "$(best "$l1" "$l2")"
done
echo
b="$("$nudge" bench generate -m "$q4" -t "$threads" -n 64 --batch 16 --reps 3 --json)"
echo "batched decode Q4_1, 16 rows: $(echo "$b" | json batch_tokens_per_s | cut -c1-6) tokens/s, $(echo "$b" | json batch_speedup | cut -c1-4)x one row"
t="$("$nudge" bench train -m "$q4" -t "$threads" --json)"
echo "DPO training Q4_1 (prefs-64): $(echo "$t" | json pair_tokens_per_s | cut -c1-6) pair-tokens/s, $(echo "$t" | json peak_fraction | cut -c1-5) of the FMA peak, peak RSS $(echo "$t" | json peak_rss_mb | cut -c1-5) MB"
