#!/usr/bin/env bash
# The main job end to end on a fresh machine: fetch the model, show it, and score the
# shipped preference examples with it (chosen/rejected log-probs per row).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
model="models/SmolLM2-135M-Instruct.Q4_1.gguf"
cargo build --release --quiet
./target/release/nudge info "$model"
./target/release/nudge score --model "$model" --data examples/data/prefs.jsonl
