#!/usr/bin/env bash
# The main job end to end on a fresh machine: `nudge demo` fetches the model when it is
# missing, lets a simulated user's thumbs (through the feedback journal) train a LoRA
# adapter with DPO, and compares base and adapted model on held-out prompts. Arguments go
# to `nudge demo` (e.g. --taste question, --unpaired, --losses sigmoid,ipo,kto).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release --quiet
exec ./target/release/nudge demo "$@"
