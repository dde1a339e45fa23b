#!/usr/bin/env python3
"""Tiny random models and their PyTorch references, for tests/arch_refs.rs.

The shared golden set covers one Llama-architecture GGUF (Q4_1/Q8_0). This script makes
tiny seeded models for what it does not cover and writes, into tests/data/tiny/:

  tokenizer: a byte-level BPE (GPT-2 pre-tokenizer, 320 tokens) trained here on a few
    sentences by a small deterministic trainer, saved as tokenizer.json in every HF dir
    and rebuilt from `tokenizer.ggml.*` in every GGUF.
  HF safetensors directories (config.json written by transformers' save_pretrained):
    qwen2/          Qwen2ForCausalLM: q/k/v biases, untied lm_head, GQA, vocab_size above
                    the tokenizer's (padded embeddings), f32.
    llama3_rope/    LlamaForCausalLM with Llama 3.x rope scaling (`rope_parameters`,
                    rope_type llama3, original context 64 so every branch of the formula
                    applies to head_dim 16), rope_theta 500000, tied embeddings, f32.
    llama_linear/   LlamaForCausalLM with linear rope scaling written in the legacy
                    `rope_scaling` + `rope_theta` form, f32.
    mistral/        MistralForCausalLM, sliding_window 4096 (longer than every test
                    sequence), head_dim 24 != hidden/heads, untied, stored in bf16.
  GGUF files (gguf.GGUFWriter, llama.cpp's metadata keys, Q/K rows permuted as
  convert_hf_to_gguf.py permutes them for llama):
    llama_{q8_0,q4_0}.gguf    every matrix in that type, untied output.weight
    llama_{f16,bf16}.gguf     every matrix in that type, tied embeddings
    llama_{q4_k,q6_k}.gguf    hidden 256 (K-quants need rows of 256), tied; blocks made by
                              the small quantizers below (gguf.quants cannot quantize
                              K-quants, only dequantize them)
    llama_rope_freqs.gguf     Llama 3 scaling as llama.cpp stores it (rope_freqs.weight)
    llama_rope_linear.gguf    llama.rope.scaling.type = linear
    qwen2_q8_0.gguf           qwen2 architecture: no Q/K permutation, f32 biases,
                              untied, token list padded with [PAD<i>] to vocab_size
  refs.json: for every model its expected configuration, 3 (prompt ids, completion ids)
    cases with per-token completion log-probs, and full logits at 4 positions of the
    longest case; and the HF tokenizer's ids for a few texts.

Every reference is computed in float32 by transformers (attn_implementation="eager"):
HF directories are re-loaded from the written files; GGUF references come from reading
the written file back (gguf.GGUFReader), dequantizing every tensor with gguf.quants,
undoing the Q/K permutation, and loading those weights into the HF model.

Deterministic (fixed seeds, no hash-order dependence). Usage, from the crate root:
    python3 scripts/make_tiny_refs.py
"""

import json
import math
import os
import shutil
from collections import Counter

import numpy as np
import torch
import transformers
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFWriter, RopeScalingType, TokenType, quants
from safetensors import safe_open
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "tests", "data", "tiny")

transformers.utils.logging.disable_progress_bar()
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BOS_ID, EOS_ID = 1, 2
TOKENIZER_VOCAB = 320

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Paris is the capital and the largest city of France.",
    "She sells sea shells by the sea shore, and the shells she sells are sea shells.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "The model learns the preferences of the user on the device.",
    "The user prefers short answers; the model gives short answers.",
    "There are 12 months in a year, 7 days in a week and 24 hours in a day.",
    "In 1969 the first people walked on the moon.",
    "Hello there! How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n",
    "The theory of the thing is that there is nothing there.",
    "Cats and dogs are the most common pets in the world.",
    "Translate to French: the cat is on the table. Le chat est sur la table.",
]

TOKENIZER_TEXTS = [
    "The capital of France is Paris.",
    "Hello there!  How are you today?\n\nI am fine, thank you.",
    "In 2024, 365 days and 12 months; 3.14159 is pi.",
    "Crème brûlée, naïve café — 日本語 and emoji 🙂!",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "   leading spaces, trailing spaces   ",
]


def bytes_to_unicode():
    """GPT-2's map from bytes to printable characters (byte-level BPE's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def train_bpe():
    """A byte-level BPE with a deterministic merge order (ties broken by the pair's text).

    Returns (vocab: token -> id, merges: [(left, right)]).
    """
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words = Counter()
    for text in CORPUS:
        for w, _ in pre.pre_tokenize_str(text):
            words[tuple(w)] += 1
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for b in range(256):
        vocab[bytes_to_unicode()[b]] = len(vocab)
    merges = []
    words = dict(sorted(words.items()))
    while len(vocab) < TOKENIZER_VOCAB:
        pairs = Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += n
        if not pairs:
            raise SystemExit("corpus too small for the vocabulary size")
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merged = best[0] + best[1]
        merges.append(best)
        assert merged not in vocab, merged
        vocab[merged] = len(vocab)
        new_words = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + n
        words = new_words
    return vocab, merges


def build_tokenizer(vocab, merges):
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i
    assert tok.get_vocab_size() == TOKENIZER_VOCAB
    return tok


def tokenizer_config():
    return {
        "bos_token": SPECIALS[BOS_ID],
        "eos_token": SPECIALS[EOS_ID],
        "unk_token": None,
        "pad_token": SPECIALS[0],
        "add_bos_token": False,
        "model_max_length": 4096,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------

def random_weights(d, seed):
    """HF-named float32 weights with spreads that give peaked, position-dependent outputs.

    d: dict with vocab, hidden, inter, layers, heads, kv_heads, head_dim, tied, bias.
    """
    rng = np.random.default_rng(seed)
    h, hd = d["hidden"], d["head_dim"]
    q, kv = d["heads"] * hd, d["kv_heads"] * hd
    w = {}

    def normal(name, shape, std, mean=0.0):
        w[name] = (rng.standard_normal(shape) * std + mean).astype(np.float32)

    normal("model.embed_tokens.weight", (d["vocab"], h), 1.0)
    for layer in range(d["layers"]):
        p = f"model.layers.{layer}."
        normal(p + "input_layernorm.weight", (h,), 0.1, 1.0)
        normal(p + "post_attention_layernorm.weight", (h,), 0.1, 1.0)
        normal(p + "self_attn.q_proj.weight", (q, h), 2.0 / math.sqrt(h))
        normal(p + "self_attn.k_proj.weight", (kv, h), 2.0 / math.sqrt(h))
        normal(p + "self_attn.v_proj.weight", (kv, h), 1.0 / math.sqrt(h))
        normal(p + "self_attn.o_proj.weight", (h, q), 1.0 / math.sqrt(q))
        if d["bias"]:
            normal(p + "self_attn.q_proj.bias", (q,), 0.5)
            normal(p + "self_attn.k_proj.bias", (kv,), 0.5)
            normal(p + "self_attn.v_proj.bias", (kv,), 0.5)
        normal(p + "mlp.gate_proj.weight", (d["inter"], h), 1.0 / math.sqrt(h))
        normal(p + "mlp.up_proj.weight", (d["inter"], h), 1.0 / math.sqrt(h))
        normal(p + "mlp.down_proj.weight", (h, d["inter"]), 1.0 / math.sqrt(d["inter"]))
    normal("model.norm.weight", (h,), 0.1, 1.0)
    # Logit spread of a few units: a flat distribution would hide errors in log-probs.
    if d["tied"]:
        w["model.embed_tokens.weight"] *= np.float32(3.0 / math.sqrt(h))
    else:
        normal("lm_head.weight", (d["vocab"], h), 3.0 / math.sqrt(h))
    return w


def load_weights(model, weights):
    """Copies HF-named arrays into a model; every parameter must be given."""
    state = model.state_dict()
    for name, arr in weights.items():
        assert state[name].shape == arr.shape, (name, state[name].shape, arr.shape)
        with torch.no_grad():
            state[name].copy_(torch.from_numpy(np.array(arr)))
    given = set(weights)
    for name, _ in model.named_parameters():
        assert name in given, f"{name} was not set"
    if model.config.tie_word_embeddings:
        assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


# ---------------------------------------------------------------------------------------
# Reference values
# ---------------------------------------------------------------------------------------

def f32(x):
    """A float32 value as the shortest decimal that reads back to the same float32."""
    return float(str(np.float32(x)))


def make_cases(tok, vocab, seed):
    rng = np.random.default_rng(seed)
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids
    chat = [
        (enc("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"),
         enc("The capital of France is Paris.<|im_end|>")),
        # Long enough (75 tokens) to pass llama3_rope's original context of 64.
        ([int(x) for x in rng.integers(0, vocab, 45)], [int(x) for x in rng.integers(0, vocab, 30)]),
        ([BOS_ID], enc("Hello there! How are you today?")),
    ]
    return chat


LOGITS_CASE = 1
LOGITS_POSITIONS = [0, 1, 44, 74]


@torch.no_grad()
def all_logits(model, ids):
    return model(input_ids=torch.tensor([ids])).logits[0].float()


@torch.no_grad()
def reference(model, cases):
    model.eval()
    out = {"cases": []}
    for prompt, completion in cases:
        seq = prompt + completion
        logp = torch.log_softmax(all_logits(model, seq), dim=-1)
        tl = [logp[len(prompt) - 1 + i, c].item() for i, c in enumerate(completion)]
        out["cases"].append({
            "prompt_ids": prompt,
            "completion_ids": completion,
            "token_logps": [f32(x) for x in tl],
            "logp": float(np.sum(np.array(tl, dtype=np.float64))),
        })
    prompt, completion = cases[LOGITS_CASE]
    seq = prompt + completion
    assert LOGITS_POSITIONS[-1] == len(seq) - 1
    lg = all_logits(model, seq)
    out["logits"] = {
        "case": LOGITS_CASE,
        "positions": LOGITS_POSITIONS,
        "values": [[f32(x) for x in lg[p].tolist()] for p in LOGITS_POSITIONS],
    }
    # Sanity: the log-probs are far from uniform, so errors cannot hide in a flat softmax.
    spread = float(lg.std(dim=-1).mean())
    assert spread > 1.0, f"logit spread {spread} too small"
    return out


def rope_effect(model_cls, config_kwargs, weights, cases):
    """Largest logit change that the rope scaling causes on the long case (must be large)."""
    plain = dict(config_kwargs)
    plain["rope_parameters"] = {"rope_type": "default", "rope_theta": config_kwargs["rope_parameters"]["rope_theta"]}
    m = model_cls(make_config(model_cls, plain)).float().eval()
    load_weights(m, weights)
    a = all_logits(m, cases[LOGITS_CASE][0] + cases[LOGITS_CASE][1])
    m2 = model_cls(make_config(model_cls, config_kwargs)).float().eval()
    load_weights(m2, weights)
    b = all_logits(m2, cases[LOGITS_CASE][0] + cases[LOGITS_CASE][1])
    return float((a - b).abs().max())


CONFIG_CLASSES = {LlamaForCausalLM: LlamaConfig, MistralForCausalLM: MistralConfig, Qwen2ForCausalLM: Qwen2Config}


def make_config(model_cls, kwargs):
    cfg = CONFIG_CLASSES[model_cls](**kwargs)
    cfg._attn_implementation = "eager"
    return cfg


def hf_kwargs(d, rope_theta, rms_eps, max_pos, rope=None):
    rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    if rope is not None:
        rope_parameters = dict(rope, rope_theta=rope_theta)
    return dict(
        vocab_size=d["vocab"], hidden_size=d["hidden"], intermediate_size=d["inter"],
        num_hidden_layers=d["layers"], num_attention_heads=d["heads"],
        num_key_value_heads=d["kv_heads"], head_dim=d["head_dim"], hidden_act="silu",
        rms_norm_eps=rms_eps, max_position_embeddings=max_pos, tie_word_embeddings=d["tied"],
        rope_parameters=rope_parameters, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
    )


def expected_config(d, arch, rope_theta, rms_eps, max_pos, rope_scaling):
    return {
        "architecture": arch,
        "vocab_size": d["vocab"],
        "hidden_size": d["hidden"],
        "intermediate_size": d["inter"],
        "num_hidden_layers": d["layers"],
        "num_attention_heads": d["heads"],
        "num_key_value_heads": d["kv_heads"],
        "head_dim": d["head_dim"],
        "rms_norm_eps": rms_eps,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": max_pos,
        "tie_word_embeddings": d["tied"],
        "attention_bias": d["bias"],
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }


# ---------------------------------------------------------------------------------------
# HF directories
# ---------------------------------------------------------------------------------------

def write_hf_dir(name, model_cls, kwargs, weights, tok, dtype=torch.float32, edit_config=None):
    """Saves the model, re-loads it from disk in float32 and returns the loaded model."""
    path = os.path.join(OUT, name)
    shutil.rmtree(path, ignore_errors=True)
    m = model_cls(make_config(model_cls, kwargs)).float()
    load_weights(m, weights)
    m.to(dtype).save_pretrained(path)
    # Not read by the engine; the directory keeps only what the tests use.
    gen = os.path.join(path, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    if edit_config is not None:
        cfg_path = os.path.join(path, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        edit_config(cfg)
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(), f, indent=2)
        f.write("\n")
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        names = set(f.keys())
        want = {"float32": "F32", "bfloat16": "BF16"}[str(dtype).removeprefix("torch.")]
        for n in names:
            assert str(f.get_slice(n).get_dtype()) == want, (n, f.get_slice(n).get_dtype())
    assert names == set(weights), sorted(names ^ set(weights))
    loaded = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
    return loaded.eval()


# ---------------------------------------------------------------------------------------
# K-quant block writers (layouts of ggml's block_q4_K and block_q6_K)
# ---------------------------------------------------------------------------------------

def f16_round(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def quantize_q4_k(x):
    """[rows, cols] f32 → uint8 [rows, cols / 256 * 144].

    Block: d (f16), dmin (f16), 12 bytes of 6-bit sub-block scales and mins, 128 bytes of
    4-bit values; element i of sub-block j is d*sc[j]*q - dmin*m[j].
    """
    rows, cols = x.shape
    b = x.reshape(-1, 8, 32).astype(np.float32)  # [blocks, sub-blocks, 32]
    lo = np.minimum(b.min(axis=2), 0.0)
    hi = np.maximum(b.max(axis=2), 0.0)
    scale = (hi - lo) / 15.0
    mins = -lo
    d = f16_round(scale.max(axis=1) / 63.0)
    dmin = f16_round(mins.max(axis=1) / 63.0)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.round(np.divide(scale, d32, out=np.zeros_like(scale), where=d32 > 0)), 0, 63).astype(np.uint8)
    m = np.clip(np.round(np.divide(mins, dmin32, out=np.zeros_like(mins), where=dmin32 > 0)), 0, 63).astype(np.uint8)
    step = (d32 * sc)[:, :, None]
    off = (dmin32 * m)[:, :, None]
    q = np.clip(np.round(np.divide(b + off, step, out=np.zeros_like(b), where=step > 0)), 0, 15).astype(np.uint8)
    packed = np.zeros((b.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 0xF) | ((m[:, 4:8] & 0xF) << 4)
    qc = q.reshape(-1, 4, 2, 32)  # chunks of 64: low nibbles sub-block 2c, high 2c+1
    qs = (qc[:, :, 0, :] | (qc[:, :, 1, :] << 4)).reshape(-1, 128)
    blocks = np.concatenate(
        [d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, qs], axis=1)
    # Expansion by the layout's definition, to cross-check gguf.quants' reading of it.
    expect = (d32[:, :, None] * sc[:, :, None].astype(np.float32)) * q.astype(np.float32) \
        - (dmin32[:, :, None] * m[:, :, None].astype(np.float32))
    return blocks.reshape(rows, -1), expect.reshape(rows, cols)


def quantize_q6_k(x):
    """[rows, cols] f32 → uint8 [rows, cols / 256 * 210].

    Block: ql (128 bytes, low 4 bits), qh (64 bytes, high 2 bits), 16 int8 sub-block
    scales, d (f16); element = d*scale[j]*(q - 32), q in 0..63.
    """
    rows, cols = x.shape
    b = x.reshape(-1, 16, 16).astype(np.float32)
    amax = np.abs(b).max(axis=2)
    s = amax / 31.0
    d = f16_round(s.max(axis=1) / 127.0)
    d32 = d.astype(np.float32)[:, None]
    sc = np.clip(np.round(np.divide(s, d32, out=np.zeros_like(s), where=d32 > 0)), -128, 127).astype(np.int8)
    step = (d32 * sc.astype(np.float32))[:, :, None]
    q = np.clip(np.round(np.divide(b, step, out=np.zeros_like(b), where=step != 0)), -32, 31).astype(np.int16) + 32
    q = q.astype(np.uint8).reshape(-1, 2, 4, 32)  # [blocks, half, quarter k, l]
    ql = ((q[:, :, 0:2, :] & 0xF) | ((q[:, :, 2:4, :] & 0xF) << 4)).reshape(-1, 128)
    qh = ((q[:, :, 0, :] >> 4) | ((q[:, :, 1, :] >> 4) << 2) | ((q[:, :, 2, :] >> 4) << 4)
          | ((q[:, :, 3, :] >> 4) << 6)).reshape(-1, 64)
    blocks = np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)
    expect = (d32 * sc.astype(np.float32))[:, :, None] * (q.reshape(-1, 16, 16).astype(np.float32) - 32.0)
    return blocks.reshape(rows, -1), expect.reshape(rows, cols)


def quantize(x, qtype):
    """(array for GGUFWriter.add_tensor, raw_dtype) for a [rows, cols] f32 matrix."""
    if qtype == T.F32:
        return x.astype(np.float32), None
    if qtype == T.F16:
        return x.astype(np.float16), None
    if qtype in (T.Q4_K, T.Q6_K):
        blocks, expect = (quantize_q4_k if qtype == T.Q4_K else quantize_q6_k)(x)
        got = quants.dequantize(blocks, qtype)
        assert np.allclose(got, expect, rtol=1e-6, atol=1e-7), f"{qtype.name} layout mismatch"
        # Sanity of the quantizer itself: values land near the input.
        err = np.abs(got - x).max() / np.abs(x).max()
        assert err < (0.08 if qtype == T.Q4_K else 0.03), f"{qtype.name} error {err}"
        return blocks, qtype
    return quants.quantize(x, qtype), qtype


# ---------------------------------------------------------------------------------------
# GGUF files
# ---------------------------------------------------------------------------------------

GGUF_LAYER = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
GGUF_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}


def gguf_name(hf):
    if hf in GGUF_GLOBAL:
        return GGUF_GLOBAL[hf]
    parts = hf.split(".")
    layer, module, param = parts[2], ".".join(parts[3:-1]), parts[-1]
    return f"blk.{layer}.{GGUF_LAYER[module]}.{param}"


def hf_name(gg):
    inv = {v: k for k, v in GGUF_GLOBAL.items()}
    if gg in inv:
        return inv[gg]
    _, layer, module, param = gg.split(".")
    inv_layer = {v: k for k, v in GGUF_LAYER.items()}
    return f"model.layers.{layer}.{inv_layer[module]}.{param}"


def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute (rotary halves → interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(head_dim, theta, factor, low, high, old_ctx):
    """rope_freqs.weight as convert_hf_to_gguf.py computes it for Llama 3.x scaling."""
    base = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in base:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(name, arch, d, weights, vocab, merges, qtype, rope_theta, rms_eps, ctx,
               rope_freqs=None, rope_linear=None):
    """Writes tests/data/tiny/<name>.gguf; every matrix in qtype, vectors in f32."""
    path = os.path.join(OUT, name + ".gguf")
    w = GGUFWriter(path, arch)
    w.add_name(name)
    w.add_block_count(d["layers"])
    w.add_context_length(ctx)
    w.add_embedding_length(d["hidden"])
    w.add_feed_forward_length(d["inter"])
    w.add_head_count(d["heads"])
    w.add_head_count_kv(d["kv_heads"])
    w.add_rope_dimension_count(d["head_dim"])
    w.add_rope_freq_base(rope_theta)
    w.add_layer_norm_rms_eps(rms_eps)
    w.add_vocab_size(d["vocab"])
    if rope_linear is not None:
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope_linear)
    tokens = [None] * d["vocab"]
    types = [TokenType.UNUSED] * d["vocab"]
    for t, i in vocab.items():
        tokens[i] = t
        types[i] = TokenType.CONTROL if t in SPECIALS else TokenType.NORMAL
    for i in range(d["vocab"]):
        if tokens[i] is None:  # convert_hf_to_gguf.py pads the same way
            tokens[i] = f"[PAD{i}]"
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_add_bos_token(False)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)
    for hf, arr in weights.items():
        if arch == "llama" and hf.endswith("q_proj.weight"):
            arr = permute(arr, d["heads"])
        elif arch == "llama" and hf.endswith("k_proj.weight"):
            arr = permute(arr, d["kv_heads"])
        if arr.ndim == 1:
            w.add_tensor(gguf_name(hf), arr.astype(np.float32))
        else:
            data, raw = quantize(arr, qtype)
            w.add_tensor(gguf_name(hf), data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def read_gguf_weights(path, arch, d):
    """The file's tensors dequantized by gguf.quants, in HF names and row order."""
    r = GGUFReader(path)
    out, types = {}, {}
    for t in r.tensors:
        if t.name == "rope_freqs.weight":
            continue
        arr = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        hf = hf_name(t.name)
        if arch == "llama" and hf.endswith("q_proj.weight"):
            arr = unpermute(arr, d["heads"])
        elif arch == "llama" and hf.endswith("k_proj.weight"):
            arr = unpermute(arr, d["kv_heads"])
        if hf.endswith(".weight") and arr.ndim == 2:
            types[hf] = t.tensor_type.name
        out[hf] = np.ascontiguousarray(arr.reshape(-1) if arr.ndim == 1 else arr)
    return out, types


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------

def dims(vocab, hidden, inter, layers, heads, kv_heads, head_dim=None, tied=True, bias=False):
    return dict(vocab=vocab, hidden=hidden, inter=inter, layers=layers, heads=heads, kv_heads=kv_heads,
                head_dim=head_dim or hidden // heads, tied=tied, bias=bias)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    vocab, merges = train_bpe()
    tok = build_tokenizer(vocab, merges)
    texts = []
    for s in TOKENIZER_TEXTS:
        ids = tok.encode(s, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == s, s
        texts.append({"text": s, "ids": ids})

    refs = {"tokenizer_vocab_size": TOKENIZER_VOCAB, "tokenizer_texts": texts, "models": []}

    def add(name, path, fmt, config, model, cases, **extra):
        entry = {"name": name, "path": path, "format": fmt, "config": config}
        entry.update(extra)
        entry.update(reference(model, cases))
        refs["models"].append(entry)

    # -- qwen2 (HF) ------------------------------------------------------------------------
    qd = dims(336, 64, 96, 2, 4, 2, tied=False, bias=True)
    qw = random_weights(qd, seed=101)
    kw = hf_kwargs(qd, 1000000.0, 1e-6, 4096)
    m = write_hf_dir("qwen2", Qwen2ForCausalLM, kw, qw, tok)
    cases = make_cases(tok, qd["vocab"], seed=1)
    add("qwen2", "qwen2", "safetensors",
        expected_config(qd, "Qwen2", 1000000.0, 1e-6, 4096, {"type": "none"}), m, cases)

    # -- llama3 rope (HF) -------------------------------------------------------------------
    ld = dims(320, 64, 96, 2, 4, 2, tied=True)
    lw = random_weights(ld, seed=202)
    l3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
    kw = hf_kwargs(ld, 500000.0, 1e-5, 512, rope=l3)
    m = write_hf_dir("llama3_rope", LlamaForCausalLM, kw, lw, tok)
    cases = make_cases(tok, ld["vocab"], seed=2)
    add("llama3_rope", "llama3_rope", "safetensors",
        expected_config(ld, "Llama", 500000.0, 1e-5, 512,
                        {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64}),
        m, cases, rope_scaling_effect=rope_effect(LlamaForCausalLM, kw, lw, cases))

    # -- llama linear rope, legacy config keys (HF) -----------------------------------------
    sd = dims(320, 32, 64, 1, 2, 1, tied=True)
    sw = random_weights(sd, seed=303)
    kw = hf_kwargs(sd, 10000.0, 1e-5, 512, rope={"rope_type": "linear", "factor": 4.0})

    def legacy(cfg):
        cfg.pop("rope_parameters")
        cfg["rope_theta"] = 10000.0
        cfg["rope_scaling"] = {"type": "linear", "factor": 4.0}

    m = write_hf_dir("llama_linear", LlamaForCausalLM, kw, sw, tok, edit_config=legacy)
    rp = m.config.rope_parameters
    assert rp["rope_type"] == "linear" and rp["factor"] == 4.0 and rp["rope_theta"] == 10000.0, rp
    cases = make_cases(tok, sd["vocab"], seed=3)
    add("llama_linear", "llama_linear", "safetensors",
        expected_config(sd, "Llama", 10000.0, 1e-5, 512, {"type": "linear", "factor": 4.0}),
        m, cases, rope_scaling_effect=rope_effect(LlamaForCausalLM, kw, sw, cases))

    # -- mistral, bf16 weights (HF) ---------------------------------------------------------
    md = dims(320, 64, 96, 2, 4, 2, head_dim=24, tied=False)
    mw = random_weights(md, seed=404)
    mw = {k: torch.from_numpy(v).to(torch.bfloat16).float().numpy() for k, v in mw.items()}
    kw = hf_kwargs(md, 10000.0, 1e-5, 32768)
    kw["sliding_window"] = 4096
    m = write_hf_dir("mistral", MistralForCausalLM, kw, mw, tok, dtype=torch.bfloat16)
    assert m.config.sliding_window == 4096
    cases = make_cases(tok, md["vocab"], seed=4)
    add("mistral", "mistral", "safetensors",
        expected_config(md, "Llama", 10000.0, 1e-5, 4096, {"type": "none"}), m, cases)

    # -- llama GGUFs, one matrix type each --------------------------------------------------
    small = {"untied": dims(320, 64, 96, 2, 4, 2, tied=False), "tied": dims(320, 64, 96, 2, 4, 2, tied=True)}
    k_dims = dims(320, 256, 256, 1, 4, 2, tied=True)
    variants = [
        ("llama_q8_0", T.Q8_0, small["untied"], 505),
        ("llama_q4_0", T.Q4_0, small["untied"], 505),
        ("llama_f16", T.F16, small["tied"], 506),
        ("llama_bf16", T.BF16, small["tied"], 506),
        ("llama_q4_k", T.Q4_K, k_dims, 507),
        ("llama_q6_k", T.Q6_K, k_dims, 507),
    ]
    for i, (name, qtype, d, seed) in enumerate(variants):
        path = write_gguf(name, "llama", d, random_weights(d, seed), vocab, merges, qtype, 10000.0, 1e-5, 256)
        deq, types = read_gguf_weights(path, "llama", d)
        assert set(types.values()) == {qtype.name}, types
        model = LlamaForCausalLM(make_config(LlamaForCausalLM, hf_kwargs(d, 10000.0, 1e-5, 256))).float()
        load_weights(model, deq)
        add(name, name + ".gguf", "gguf", expected_config(d, "Llama", 10000.0, 1e-5, 256, {"type": "none"}),
            model, make_cases(tok, d["vocab"], seed=10 + i), matrix_type=qtype.name)

    # -- llama GGUFs with rope scaling ------------------------------------------------------
    rd = dims(320, 32, 64, 1, 2, 1, tied=True)
    rw = random_weights(rd, seed=606)
    factors = llama3_rope_factors(rd["head_dim"], 500000.0, 8.0, 1.0, 4.0, 64)
    path = write_gguf("llama_rope_freqs", "llama", rd, rw, vocab, merges, T.Q8_0, 500000.0, 1e-5, 256,
                      rope_freqs=factors)
    deq, _ = read_gguf_weights(path, "llama", rd)
    kw = hf_kwargs(rd, 500000.0, 1e-5, 256, rope=l3)
    model = LlamaForCausalLM(make_config(LlamaForCausalLM, kw)).float()
    load_weights(model, deq)
    cases = make_cases(tok, rd["vocab"], seed=20)
    add("llama_rope_freqs", "llama_rope_freqs.gguf", "gguf",
        expected_config(rd, "Llama", 500000.0, 1e-5, 256, {"type": "factors", "factors": [f32(x) for x in factors]}),
        model, cases, matrix_type="Q8_0", rope_scaling_effect=rope_effect(LlamaForCausalLM, kw, deq, cases))

    path = write_gguf("llama_rope_linear", "llama", rd, rw, vocab, merges, T.Q8_0, 10000.0, 1e-5, 256,
                      rope_linear=4.0)
    deq, _ = read_gguf_weights(path, "llama", rd)
    kw = hf_kwargs(rd, 10000.0, 1e-5, 256, rope={"rope_type": "linear", "factor": 4.0})
    model = LlamaForCausalLM(make_config(LlamaForCausalLM, kw)).float()
    load_weights(model, deq)
    cases = make_cases(tok, rd["vocab"], seed=21)
    add("llama_rope_linear", "llama_rope_linear.gguf", "gguf",
        expected_config(rd, "Llama", 10000.0, 1e-5, 256, {"type": "linear", "factor": 4.0}),
        model, cases, matrix_type="Q8_0", rope_scaling_effect=rope_effect(LlamaForCausalLM, kw, deq, cases))

    # -- qwen2 GGUF -------------------------------------------------------------------------
    path = write_gguf("qwen2_q8_0", "qwen2", qd, qw, vocab, merges, T.Q8_0, 1000000.0, 1e-6, 4096)
    deq, types = read_gguf_weights(path, "qwen2", qd)
    assert set(types.values()) == {"Q8_0"}, types
    model = Qwen2ForCausalLM(make_config(Qwen2ForCausalLM, hf_kwargs(qd, 1000000.0, 1e-6, 4096))).float()
    load_weights(model, deq)
    add("qwen2_q8_0", "qwen2_q8_0.gguf", "gguf",
        expected_config(qd, "Qwen2", 1000000.0, 1e-6, 4096, {"type": "none"}),
        model, make_cases(tok, qd["vocab"], seed=22), matrix_type="Q8_0")

    for e in refs["models"]:
        if "rope_scaling_effect" in e:
            assert e["rope_scaling_effect"] > 0.1, (e["name"], e["rope_scaling_effect"])
    with open(os.path.join(OUT, "refs.json"), "w") as f:
        json.dump(refs, f, separators=(",", ":"))
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(OUT) for fn in fns)
    print(f"wrote {len(refs['models'])} models to {OUT} ({total / 1e6:.2f} MB)")
    for e in refs["models"]:
        print(f"  {e['name']:<18} rope effect {e.get('rope_scaling_effect', '-')}")


if __name__ == "__main__":
    main()
