#!/usr/bin/env bash
# Rewrites the committed seeds of the fuzz targets (fuzz/seeds/TARGET), the ones made by
# running nudge on the tiny model of fuzz/fixtures/tiny_llama (journals, checkpoints,
# adapters) and the hand-made ones of fixtures/make_seeds.py. Needs `cargo build --release`
# first. Only for a change of format: the seeds are committed, fuzzing does not run this.
#
#   fuzz/make_seeds.sh [OUT]   (OUT: default fuzz/seeds)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-$root/fuzz/seeds}")"
nudge="$root/target/release/nudge"
model="$root/fuzz/fixtures/tiny_llama"
pairs="$root/fuzz/fixtures/train_pairs.jsonl"
thumbs="$root/fuzz/fixtures/train_thumbs.jsonl"
[[ -x "$nudge" ]] || { echo "make_seeds.sh: build $nudge first (cargo build --release)" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"/{journal,checkpoint,peft_adapter,gguf_lora,gguf_file,gguf_model,jsonl}

# Journals: thumbs, a pair, a training mark and ingested chat events; a torn tail; compacted.
j="$work/events.journal"
"$nudge" journal add --journal "$j" -p "Say hi." --completion "Hi!" --up --id a1 --timestamp-ms 1000 >/dev/null
"$nudge" journal add --journal "$j" -p "Say hi." --completion "No." --down --strength 2 --id a2 \
    --timestamp-ms 1001 >/dev/null
"$nudge" journal add-pair --journal "$j" -p "Name a color." --chosen "Blue." --rejected "Dog." --id p1 \
    --timestamp-ms 1002 >/dev/null
"$nudge" journal mark --journal "$j" --up-to 2 --unconsumed 1 >/dev/null
"$nudge" journal ingest --journal "$j" --durability batch >/dev/null <<'EOF'
{"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}], "label": true, "id": "c1", "timestamp_ms": 5}
{"prompt": [{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "yo"}], "rejected": [{"role": "assistant", "content": "greetings to you"}], "strength": 0.5, "timestamp_ms": 6}
{"prompt": "Say hi.", "completion": "Hi!", "label": true, "id": "a1", "timestamp_ms": 7}
EOF
cp "$j" "$out/journal/events.journal"
{ cat "$j"; printf '\x20\x00\x00\x00\xde\xad'; } >"$out/journal/torn_tail.journal"
cp "$j" "$work/compacted.journal"
"$nudge" journal compact --journal "$work/compacted.journal" >/dev/null
cp "$work/compacted.journal" "$out/journal/compacted.journal"
# The header alone (sequence base 0), as a new journal holds it.
python3 -c '
import struct, sys, zlib
h = b"NUDGEJNL" + struct.pack("<IIQI", 1, 0, 0, 0)
sys.stdout.buffer.write(h + struct.pack("<I", zlib.crc32(h)))' >"$out/journal/empty.journal"

# Training runs with checkpoints (the checkpoint target resumes them on the same data),
# their adapters as PEFT folders and as llama.cpp GGUF files.
train() {
    local name=$1 data=$2
    shift 2
    "$nudge" train --model "$model" --data "$data" --out "$work/$name" --checkpoint-every 1 "$@" >/dev/null 2>&1
    cp "$work/$name/checkpoint.bin" "$out/checkpoint/$name.ckpt"
    # The payload after the 52-byte header: the target puts it behind a valid header.
    tail -c +53 "$work/$name/checkpoint.bin" >"$out/checkpoint/$name.payload"
    { cat "$work/$name/adapter_config.json"; printf '\0'; cat "$work/$name/adapter_model.safetensors"; } \
        >"$out/peft_adapter/$name.peft"
}
train dpo "$pairs" --max-steps 2 --lora-r 2 --batch-pairs 2
train simpo "$pairs" --loss simpo_beta2_gamma0.5 --epochs 2 --lora-r 4 --targets k_proj,v_proj,o_proj \
    --schedule cosine --warmup-steps 1 --eval-fraction 0.34 --batch-pairs 1
# Rank 3, not 1: training a rank-1 adapter panics (FUZZING.md, finding 2).
train kto "$thumbs" --loss kto --max-steps 1 --lora-r 3 --targets q_proj,down_proj --rslora --init gaussian \
    --lora-dropout 0.1
"$nudge" export --model "$model" --adapter "$work/dpo" --format gguf --out "$out/gguf_lora/lora_dpo_f32.gguf" 2>/dev/null
"$nudge" export --model "$model" --adapter "$work/kto" --format gguf --dtype f16 \
    --out "$out/gguf_lora/lora_kto_f16.gguf" 2>/dev/null
"$nudge" export --model "$model" --adapter "$work/simpo" --format gguf --dtype bf16 \
    --out "$out/gguf_lora/lora_simpo_bf16.gguf" 2>/dev/null
cp "$out/gguf_lora/lora_kto_f16.gguf" "$out/gguf_file/"

cp "$pairs" "$out/jsonl/pairs.jsonl"
cp "$thumbs" "$out/jsonl/thumbs.jsonl"
cp "$root/tests/data/chat_rules.jsonl" "$out/jsonl/"
# Every row format at once: text pair, chat pair with a weight, a thumb, token ids.
cat >"$out/jsonl/mixed.jsonl" <<'EOF'
{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}
{"prompt": [{"role": "user", "content": "Name a color."}], "chosen": [{"role": "assistant", "content": "Blue."}], "rejected": [{"role": "assistant", "content": "Dog."}], "weight": 2.0}
{"prompt": "2+2?", "completion": "4", "label": true}
{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 2], "rejected_ids": [9, 2], "margin": 0.5}
EOF
cp "$root/tests/data/tiny/llama_rope_freqs.gguf" "$out/gguf_model/"
# The start of the real model (header and first metadata), when it was fetched.
real="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
[[ -f "$real" ]] && head -c 8192 "$real" >"$out/gguf_file/smollm2_prefix_8k.gguf"

SEEDS="$out" python3 "$root/fuzz/fixtures/make_seeds.py"
echo "make_seeds.sh: seeds in $out"
