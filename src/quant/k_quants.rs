//! ggml's K-quant super-blocks of 256 elements. Layouts follow ggml's `block_q4_K` and
//! `block_q6_K`; products are evaluated in ggml's order, each rounded to f32 (no fused
//! multiply-add), so the expansion is bit-identical to ggml's reference dequantizers.

use half::f16;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes: 8 scales and 8 mins
/// of 6 bits each. Sub-blocks 0..4 keep their low 6 bits in bytes 0..4 (scales) and
/// 4..8 (mins); sub-blocks 4..8 take 4 low bits from bytes 8..12 and their top 2 bits
/// from the spare top bits of bytes 0..8.
#[inline]
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K (144 bytes): `{ d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }`.
/// Eight sub-blocks of 32; each 64-element chunk uses 32 bytes of `qs`, low nibbles
/// for its first sub-block and high nibbles for its second; y = d*sc * q - dmin*m.
pub(super) fn q4_k(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let scales = &block[4..16];
    let qs = &block[16..144];
    for (chunk, (q, y)) in qs.chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
        let (sc_lo, m_lo) = scale_min_k4(2 * chunk, scales);
        let (sc_hi, m_hi) = scale_min_k4(2 * chunk + 1, scales);
        let (d_lo, min_lo) = (d * sc_lo as f32, dmin * m_lo as f32);
        let (d_hi, min_hi) = (d * sc_hi as f32, dmin * m_hi as f32);
        let (y_lo, y_hi) = y.split_at_mut(32);
        for l in 0..32 {
            y_lo[l] = d_lo * (q[l] & 0x0f) as f32 - min_lo;
            y_hi[l] = d_hi * (q[l] >> 4) as f32 - min_hi;
        }
    }
}

/// Q6_K (210 bytes): `{ ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }`.
/// Each 128-element half uses 64 bytes of `ql` (4 low bits), 32 of `qh` (2 high bits
/// for four elements 32 apart) and 8 scales of 16 elements; y = d*sc * (q - 32).
pub(super) fn q6_k(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 208);
    for half in 0..2 {
        let ql = &block[64 * half..64 * half + 64];
        let qh = &block[128 + 32 * half..128 + 32 * half + 32];
        let sc = &block[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut out[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let h = qh[l];
            let q1 = ((ql[l] & 0x0f) | ((h & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((h >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
