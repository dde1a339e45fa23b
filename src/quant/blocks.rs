//! ggml block formats. Layouts follow ggml's `block_q*` structs (little-endian):
//! the arithmetic is written without fused multiply-add so the expansion is
//! bit-identical to ggml's reference dequantizers.

use super::DType;
use half::f16;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q8_0: `{ d: f16, qs: [i8; 32] }`, y = d * q.
fn q8_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, &q) in out.iter_mut().zip(&block[2..34]) {
        *o = d * (q as i8) as f32;
    }
}

/// Q4_0: `{ d: f16, qs: [u8; 16] }`, low nibbles are elements 0..16, high 16..32,
/// y = d * (q - 8).
fn q4_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let (lo, hi) = out.split_at_mut(16);
    for j in 0..16 {
        let q = block[2 + j];
        lo[j] = d * ((q & 0x0f) as i32 - 8) as f32;
        hi[j] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// Q4_1: `{ d: f16, m: f16, qs: [u8; 16] }`, y = d * q + m.
fn q4_1(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let (lo, hi) = out.split_at_mut(16);
    for j in 0..16 {
        let q = block[4 + j];
        lo[j] = d * (q & 0x0f) as f32 + m;
        hi[j] = d * (q >> 4) as f32 + m;
    }
}

pub(super) fn dequantize_blocks(dtype: DType, src: &[u8], dst: &mut [f32]) {
    let f: fn(&[u8], &mut [f32]) = match dtype {
        DType::Q8_0 => q8_0,
        DType::Q4_0 => q4_0,
        DType::Q4_1 => q4_1,
        DType::Q4_K => super::k_quants::q4_k,
        DType::Q6_K => super::k_quants::q6_k,
        DType::F32 | DType::F16 | DType::BF16 => {
            return super::dequantize_row_unchecked(dtype, src, dst);
        }
    };
    for (block, out) in src
        .chunks_exact(dtype.block_bytes())
        .zip(dst.chunks_exact_mut(dtype.block_len()))
    {
        f(block, out);
    }
}
