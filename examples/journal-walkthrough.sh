#!/usr/bin/env bash
# The journal workflow from the command line: fetch the model, record an app's thumbs-up /
# thumbs-down in a feedback journal, turn them into DPO pairs, train a LoRA adapter on the
# CPU, and show the effect (log-probs and a reply before and after), then export the
# adapter for llama.cpp. Work files go to a temporary folder (printed at the end).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
cargo build --release --quiet
nudge=./target/release/nudge
model="models/SmolLM2-135M-Instruct.Q4_1.gguf"
work="$(mktemp -d)"
journal="$work/feedback.journal"

$nudge info "$model"

# What the app collected: the user likes short, friendly answers that end with a question.
thumb() { $nudge journal add --journal "$journal" --chat --prompt "$1" --completion "$2" "$3" >/dev/null; }
thumb "Suggest a name for my new cat." "How about Miso? Short, warm and easy to call. Do you like it?" --up
thumb "Suggest a name for my new cat." "There are many possible names for cats, for example Whiskers, Shadow, Luna, Oliver, Bella, Charlie and many more depending on the cat." --down
thumb "What should I cook tonight?" "A quick vegetable stir-fry with rice. Want the recipe?" --up
thumb "What should I cook tonight?" "Cooking dinner depends on many factors such as available ingredients, dietary restrictions, time and personal taste." --down
thumb "Give me a tip for sleeping better." "Keep the same bedtime every night, even on weekends. Shall I suggest a wind-down routine?" --up
thumb "Give me a tip for sleeping better." "Sleep is a complex physiological process influenced by many factors." --down
thumb "How do I stay focused while studying?" "Work in 25-minute blocks with short breaks. Want me to set up a plan?" --up
thumb "How do I stay focused while studying?" "Focus is a cognitive function that can be affected by numerous variables." --down
thumb "Recommend a book for a long flight." "Try The Martian: funny, fast and gripping. Have you read it?" --up
thumb "Recommend a book for a long flight." "There are thousands of books that could be suitable for a flight." --down
$nudge journal stats --journal "$journal"
$nudge journal export --journal "$journal" --out "$work/pairs.jsonl" --format pairs --mark

echo "== log-probs before training"
$nudge score --model "$model" --data "$work/pairs.jsonl"
echo "== a reply before training"
$nudge generate --model "$model" --chat --prompt "What is a good hobby to start?" --max-new-tokens 48

$nudge train --model "$model" --data "$work/pairs.jsonl" --out "$work/adapter" \
    --loss sigmoid --beta 0.1 --lr 2e-4 --epochs 6 --batch-pairs 2 --seed 1 >/dev/null

echo "== log-probs after training (rewards: chosen up, rejected down)"
$nudge score --model "$model" --data "$work/pairs.jsonl" --adapter "$work/adapter"
echo "== the same prompt after training"
$nudge generate --model "$model" --adapter "$work/adapter" --chat --prompt "What is a good hobby to start?" --max-new-tokens 48

$nudge export --model "$model" --adapter "$work/adapter" --format gguf --out "$work/adapter.gguf"
echo "== adapter (PEFT) in $work/adapter, llama.cpp LoRA in $work/adapter.gguf, metrics in $work/adapter/metrics.jsonl"
