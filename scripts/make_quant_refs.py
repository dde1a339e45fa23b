#!/usr/bin/env python3
"""Reference blocks for nudge's ggml dequantizers (tests/quant_formats.rs).

For each format, writes into tests/data/quant/:
  <name>.blocks   the raw tensor bytes ([rows, cols] row-major, ggml blocks)
  <name>.f32      the expected expansion, f32 little-endian
and manifest.json listing them with the format name, rows and cols.

Q4_0, Q4_1, Q8_0, F16 and BF16 come from quantizing a seeded random matrix with the
PyPI `gguf` package (gguf.quants). It cannot quantize K-quants, so Q4_K and Q6_K blocks
are random valid bytes (finite f16 super-block scales). Every expansion is computed by
gguf.quants.dequantize, whose numpy arithmetic follows ggml's reference dequantizers
(f16 widened to f32, one rounding per product, no fused multiply-add).

Usage: python3 scripts/make_quant_refs.py   (pip install gguf numpy)
"""

import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

SEED = 20240607
ROWS, COLS = 4, 512
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "quant")


def random_matrix(rng):
    # Rows of different magnitudes and one all-zero block, so scales of every size
    # (and the d = 0 case) occur.
    x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    x *= np.float32(10.0) ** rng.uniform(-3, 1, size=(ROWS, 1)).astype(np.float32)
    x[1, 32:64] = 0.0
    x[2, 0:32] = np.abs(x[2, 0:32])  # one block without negatives (min > 0 for Q4_1)
    return x


def f16_specials():
    # Signed zeros, smallest and largest subnormals, largest finite, infinities and a
    # quiet NaN (signalling NaNs are quietened differently by different converters).
    return np.array([0x0000, 0x8000, 0x0001, 0x83FF, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0x0400],
                    dtype=np.uint16)


def bf16_specials():
    return np.array([0x0000, 0x8000, 0x0001, 0x807F, 0x7F7F, 0xFF7F, 0x7F80, 0xFF80, 0x7FC0, 0x0080],
                    dtype=np.uint16)


def random_k_blocks(rng, n_blocks, qtype):
    """Random valid K-quant super-blocks with finite, varied f16 scales."""
    block_bytes = {T.Q4_K: 144, T.Q6_K: 210}[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    scale = (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-4, -1, n_blocks)).astype(np.float16)
    if qtype == T.Q4_K:
        dmin = (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-4, -1, n_blocks)).astype(np.float16)
        raw[:, 0:2] = scale.view(np.uint8).reshape(n_blocks, 2)
        raw[:, 2:4] = dmin.view(np.uint8).reshape(n_blocks, 2)
        raw[0, 0:4] = 0  # d = dmin = 0
    else:
        raw[:, 208:210] = scale.view(np.uint8).reshape(n_blocks, 2)
        raw[0, 192:208] = np.array([-128, 127] * 8, dtype=np.int8).view(np.uint8)  # extreme scales
    return raw


def main():
    rng = np.random.default_rng(SEED)
    os.makedirs(OUT, exist_ok=True)
    cases = []

    def emit(name, qtype, raw, rows, cols):
        raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, -1)
        expected = quants.dequantize(raw, qtype).astype(np.float32)
        assert expected.shape == (rows, cols), (name, expected.shape)
        raw.tofile(os.path.join(OUT, f"{name}.blocks"))
        expected.astype("<f4").tofile(os.path.join(OUT, f"{name}.f32"))
        cases.append({"name": name, "dtype": qtype.name, "rows": rows, "cols": cols,
                      "blocks": f"{name}.blocks", "expected": f"{name}.f32"})

    x = random_matrix(rng)
    for qtype in (T.Q4_0, T.Q4_1, T.Q8_0):
        emit(qtype.name.lower(), qtype, quants.quantize(x, qtype), ROWS, COLS)

    f16 = x.astype(np.float16).view(np.uint16).copy()
    f16.reshape(-1)[: len(f16_specials())] = f16_specials()
    emit("f16", T.F16, f16.view(np.uint8), ROWS, COLS)

    bf16 = quants.quantize(x, T.BF16).view(np.uint16).copy()
    bf16.reshape(-1)[: len(bf16_specials())] = bf16_specials()
    emit("bf16", T.BF16, bf16.view(np.uint8), ROWS, COLS)

    emit("f32", T.F32, x.astype("<f4").view(np.uint8), ROWS, COLS)

    for qtype in (T.Q4_K, T.Q6_K):
        n_blocks = ROWS * COLS // 256
        emit(qtype.name.lower(), qtype, random_k_blocks(rng, n_blocks, qtype), ROWS, COLS)

    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"generator": "scripts/make_quant_refs.py", "seed": SEED, "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
