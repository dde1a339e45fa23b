//! Weight element formats: plain floats and ggml's block-quantized formats.
//!
//! A weight matrix is stored row-major `[rows, cols]`; quantized formats pack each row
//! as `cols / block_len` blocks. The kernels never expand a whole matrix: they call
//! [`dequantize_row`] on the few rows of the tile they are about to use.

use crate::error::{Error, Result};

pub use float_type::FloatType;

/// The element formats a weight tensor may have, in memory-mapped form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q4_K,
    Q6_K,
}

impl DType {
    /// Elements per block (1 for plain floats).
    pub const fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => 32,
            DType::Q4_K | DType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q4_K => 144,
            DType::Q6_K => 210,
        }
    }

    /// Bytes of one row of `cols` elements, or `None` when `cols` is not a whole number
    /// of blocks or the size overflows.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_len()) {
            return None;
        }
        (cols / self.block_len()).checked_mul(self.block_bytes())
    }

    /// Bytes of a `[rows, cols]` tensor, with the same `None` cases as [`Self::row_bytes`].
    pub fn tensor_bytes(self, rows: usize, cols: usize) -> Option<usize> {
        self.row_bytes(cols)?.checked_mul(rows)
    }

    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q4_K => "Q4_K",
            DType::Q6_K => "Q6_K",
        }
    }

    pub const fn is_quantized(self) -> bool {
        !matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Expands one row: `src` holds exactly `dst.len()` elements in format `dtype`.
///
/// Callers have validated the tensor's byte size at open time, so a length mismatch
/// here is a bug in the engine, reported as an error rather than a panic.
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    match dtype.row_bytes(dst.len()) {
        Some(n) if n == src.len() => {}
        _ => {
            return Err(Error::invalid(format!(
                "dequantize_row: {} bytes do not hold {} {dtype} elements",
                src.len(),
                dst.len()
            )));
        }
    }
    dequantize_row_unchecked(dtype, src, dst);
    Ok(())
}

/// [`dequantize_row`] without the length check, for kernels whose tiles are proven
/// in bounds at open time. Lengths that disagree expand only the common prefix.
pub fn dequantize_row_unchecked(dtype: DType, src: &[u8], dst: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        DType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::bf16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        _ => blocks::dequantize_blocks(dtype, src, dst),
    }
}

mod blocks;
mod float_type;
mod k_quants;
