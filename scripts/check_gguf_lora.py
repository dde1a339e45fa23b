#!/usr/bin/env python3
"""Manual cross-check of `nudge export` against PEFT and llama.cpp's adapter semantics.

Not run by the Rust tests. For each tiny GGUF base in tests/data/tiny (llama: Q/K rows
permuted; qwen2: not) and each scale kind (alpha / r, rsLoRA alpha / sqrt(r)) it:

  1. writes a random PEFT adapter (numpy, PEFT's tensor names and config keys);
  2. runs `nudge convert` (the base as an HF dir), `nudge export --format gguf` and
     `nudge export --format merged`;
  3. reads the adapter GGUF with gguf-py's GGUFReader and checks what
     llama_adapter_lora_init checks: general.type, adapter.type, general.architecture equal
     to the base's, adapter.lora.alpha stored as FLOAT32, tensor names `<base>.lora_a/_b`,
     base.ne[0] == a.ne[0], base.ne[1] == b.ne[1], a.ne[1] == b.ne[0];
  4. applies the adapter the way llama.cpp does, in the base file's own row order:
     W_gguf + (alpha / lora_b.ne[0]) * B_file @ A_file, then undoes convert_hf_to_gguf.py's
     Q/K permutation (llama only) and loads the result into transformers;
  5. compares the logits of (4), of transformers + peft.PeftModel on the HF base, and of
     the merged directory loaded by transformers.

Usage, from the crate root after `cargo build`:
    python3 scripts/check_gguf_lora.py [--nudge target/debug/nudge]
"""

import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType, quants
from peft import PeftModel
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
PROJ = [("self_attn", "q_proj", "attn_q"), ("self_attn", "k_proj", "attn_k"), ("self_attn", "v_proj", "attn_v"),
        ("self_attn", "o_proj", "attn_output"), ("mlp", "gate_proj", "ffn_gate"), ("mlp", "up_proj", "ffn_up"),
        ("mlp", "down_proj", "ffn_down")]


def unpermute(w, n_head):
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute, on rows."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field_str(r, key):
    f = r.fields[key]
    return bytes(f.parts[f.data[0]]).decode()


def write_peft(dirname, cfg, r, alpha, rslora, seed):
    rng = np.random.default_rng(seed)
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
              "gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for block, proj, _ in PROJ:
            out, inp = shapes[proj]
            pre = f"base_model.model.model.layers.{layer}.{block}.{proj}"
            tensors[f"{pre}.lora_A.weight"] = (rng.standard_normal((r, inp)) * 0.2).astype(np.float32)
            tensors[f"{pre}.lora_B.weight"] = (rng.standard_normal((out, r)) * 0.2).astype(np.float32)
    os.makedirs(dirname, exist_ok=True)
    save_file(tensors, os.path.join(dirname, "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
              "target_modules": [p for _, p, _ in PROJ], "use_rslora": rslora, "bias": "none",
              "base_model_name_or_path": "tiny", "fan_in_fan_out": False, "inference_mode": True}
    with open(os.path.join(dirname, "adapter_config.json"), "w") as f:
        json.dump(config, f)


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def check(nudge, base, work, rslora):
    r, alpha = 4, 8.0
    run = lambda *a: subprocess.run([nudge, *a], check=True, capture_output=True)
    hf_base = os.path.join(work, "base")
    run("convert", "--model", base, "--out", hf_base)
    cfg = json.load(open(os.path.join(hf_base, "config.json")))
    adapter = os.path.join(work, "peft")
    write_peft(adapter, cfg, r, alpha, rslora, seed=3)
    lora_gguf = os.path.join(work, "adapter.gguf")
    run("export", "--model", base, "--adapter", adapter, "--format", "gguf", "--out", lora_gguf)
    merged = os.path.join(work, "merged")
    run("export", "--model", base, "--adapter", adapter, "--format", "merged", "--out", merged)

    # What llama_adapter_lora_init checks.
    br, lr = GGUFReader(base), GGUFReader(lora_gguf)
    arch = field_str(br, "general.architecture")
    assert field_str(lr, "general.type") == "adapter"
    assert field_str(lr, "adapter.type") == "lora"
    assert field_str(lr, "general.architecture") == arch
    fa = lr.fields["adapter.lora.alpha"]
    assert fa.types == [GGUFValueType.FLOAT32], fa.types
    file_alpha = float(fa.parts[fa.data[0]][0])
    base_t = {t.name: t for t in br.tensors}
    lora_t = {t.name: t for t in lr.tensors}
    assert len(lora_t) == 2 * 7 * cfg["num_hidden_layers"]
    for name, t in lora_t.items():
        assert name.endswith((".lora_a", ".lora_b")), name
    # Apply it as llama.cpp does, in the file's row order, then to HF order.
    state = {}
    for name, bt in base_t.items():
        w = np.asarray(quants.dequantize(bt.data, bt.tensor_type), dtype=np.float32)
        if name + ".lora_a" in lora_t:
            ta, tb = lora_t[name + ".lora_a"], lora_t[name + ".lora_b"]
            ne = lambda t: [int(x) for x in t.shape]  # ggml order
            assert ne(bt)[0] == ne(ta)[0] and ne(bt)[1] == ne(tb)[1] and ne(ta)[1] == ne(tb)[0], name
            a = np.asarray(ta.data, dtype=np.float32).reshape(ne(ta)[1], ne(ta)[0])  # [r, in]
            b = np.asarray(tb.data, dtype=np.float32).reshape(ne(tb)[1], ne(tb)[0])  # [out, r]
            w = w + (file_alpha / ne(tb)[0]) * (b.astype(np.float64) @ a.astype(np.float64)).astype(np.float32)
        if arch == "llama" and name.endswith("attn_q.weight"):
            w = unpermute(w, cfg["num_attention_heads"])
        elif arch == "llama" and name.endswith("attn_k.weight"):
            w = unpermute(w, cfg["num_key_value_heads"])
        state[name] = torch.from_numpy(np.ascontiguousarray(w))
    gg2hf = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    blk = {g: f"{b}.{p}" for b, p, g in PROJ}
    blk.update({"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"})
    hf_state = {}
    for name, w in state.items():
        if name in gg2hf:
            hf_state[gg2hf[name]] = w
        else:
            _, layer, module, param = name.split(".")
            hf_state[f"model.layers.{layer}.{blk[module]}.{param}"] = w

    ids = list(np.random.default_rng(0).integers(3, cfg["vocab_size"] - 1, 12))
    llama_cpp = AutoModelForCausalLM.from_pretrained(hf_base, torch_dtype=torch.float32)
    missing, unexpected = llama_cpp.load_state_dict(hf_state, strict=False)
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hf_base, torch_dtype=torch.float32),
                                           adapter)
    merged_model = AutoModelForCausalLM.from_pretrained(merged, torch_dtype=torch.float32)
    base_only = AutoModelForCausalLM.from_pretrained(hf_base, torch_dtype=torch.float32)
    l_peft, l_cpp, l_merged = logits(peft_model, ids), logits(llama_cpp, ids), logits(merged_model, ids)
    moved = np.abs(l_peft - logits(base_only, ids)).max()
    d_cpp, d_merged = np.abs(l_cpp - l_peft).max(), np.abs(l_merged - l_peft).max()
    scale = alpha / np.sqrt(r) if rslora else alpha / r
    print(f"{os.path.basename(base)} rslora={rslora}: file alpha {file_alpha:.6f} (llama.cpp scale "
          f"{file_alpha / r:.6f}, PEFT scale {scale:.6f}); adapter moves logits by {moved:.3f}; "
          f"llama.cpp-style vs PEFT {d_cpp:.2e}, merged vs PEFT {d_merged:.2e}")
    assert moved > 1e-2 and d_cpp < 1e-4 and d_merged < 1e-4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nudge", default=os.path.join(ROOT, "target", "debug", "nudge"))
    args = ap.parse_args()
    torch.manual_seed(0)
    for base in ["llama_q8_0.gguf", "qwen2_q8_0.gguf"]:
        for rslora in [False, True]:
            with tempfile.TemporaryDirectory() as work:
                check(args.nudge, os.path.join(ROOT, "tests", "data", "tiny", base), work, rslora)
    print("ok")


if __name__ == "__main__":
    main()
