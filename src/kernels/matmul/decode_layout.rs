//! A weight's blocks regrouped for decoding ([`DecodeLayout`]).
//!
//! The decoding kernels run sixteen weight rows at once, one row per vector lane, so that
//! every output keeps the exact order of its sum. Read from the stored rows, each block of
//! sixteen rows has to be gathered lane by lane (its scales with a gather, its quants with
//! sixteen loads and a permutation network), and that gathering, not the arithmetic, set
//! the pace of a decoding step. Regrouped once, a block of sixteen rows is a few whole
//! vectors: its headers, then each 32-bit word of its quants, row by row.

use super::WeightRef;
use crate::quant::DType;

/// Rows per group: one per lane of a 512-bit vector of f32.
pub const GROUP_ROWS: usize = 16;

/// One cache line; the regrouped bytes start on one.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A weight `[rows, cols]` regrouped by 16 logical rows (`RowOrder` applied): group `g`
/// holds rows `16g..16g + 16` (past the last row: zeros), block after block. A quantized
/// block (32 columns) is 64 bytes of headers (row `r`'s first 32-bit word at `4r`: its f16
/// scale, and for Q4_1 its f16 minimum above it) and then its quants' 32-bit words `c`,
/// each as 64 bytes (row `r`'s word at `64c + 4r`): four words for Q4_0 / Q4_1, eight for
/// Q8_0. A float block (16 columns, F32 / F16 / BF16 as stored) holds column `t` of the 16
/// rows at `t * 16 + r` elements: the transpose the kernels would otherwise make.
pub struct DecodeLayout {
    pub(super) dtype: DType,
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// What it was made from: the stored bytes' address and length, and the row order.
    source: (usize, usize, super::RowOrder),
    lines: Vec<Line>,
}

impl std::fmt::Debug for DecodeLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeLayout")
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("bytes", &self.bytes().len())
            .finish()
    }
}

impl DecodeLayout {
    /// Bytes of one regrouped block of 16 rows, for the formats that have the layout.
    pub(super) fn block_bytes(dtype: DType) -> Option<usize> {
        match dtype {
            DType::Q4_0 | DType::Q4_1 => Some(64 + 4 * 64),
            DType::Q8_0 => Some(64 + 8 * 64),
            DType::F32 => Some(16 * 16 * 4),
            DType::F16 | DType::BF16 => Some(16 * 16 * 2),
            _ => None,
        }
    }

    /// Columns of one block of `dtype` in the layout.
    pub(super) fn block_cols(dtype: DType) -> usize {
        if dtype.block_len() == 1 { 16 } else { 32 }
    }

    /// Whether this CPU's decoding kernels read `w`'s format regrouped (so that making
    /// the copy is worth its memory).
    pub fn helps(w: &WeightRef) -> bool {
        Self::block_bytes(w.dtype).is_some() && super::packed_kernels(crate::isa::Isa::best()).is_some()
    }

    /// `w` regrouped, or `None` for a format without the layout, float rows that are not
    /// whole blocks of 16, or no memory for it.
    pub fn new(w: &WeightRef) -> Option<DecodeLayout> {
        let bb = Self::block_bytes(w.dtype)?;
        w.validate().ok()?;
        let cols = Self::block_cols(w.dtype);
        if !w.cols.is_multiple_of(cols) {
            return None;
        }
        // A stored block of `cols` columns of one row, and where its bytes go among the
        // 16 rows' (row `r` of its group).
        let stored_bb = w.dtype.block_bytes() * cols / w.dtype.block_len();
        let scatter: Scatter = if w.dtype.block_len() == 1 {
            let size = w.dtype.block_bytes();
            &move |src, dst, r| {
                for (t, v) in src.chunks_exact(size).enumerate() {
                    dst[(t * 16 + r) * size..][..size].copy_from_slice(v);
                }
            }
        } else {
            let quants_at = if w.dtype == DType::Q4_1 { 4 } else { 2 };
            &move |src, dst, r| {
                dst[4 * r..4 * r + quants_at].copy_from_slice(&src[..quants_at]);
                for (c, word) in src[quants_at..].chunks_exact(4).enumerate() {
                    dst[64 + 64 * c + 4 * r..][..4].copy_from_slice(word);
                }
            }
        };
        let blocks = w.cols / cols;
        let mut lines = zeroed_lines(w.rows.div_ceil(GROUP_ROWS) * blocks * bb / 64)?;
        let out: &mut [u8] = {
            let len = lines.len() * 64;
            // SAFETY: `Line` is 64 plain bytes; the slice covers exactly the vector's lines.
            unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), len) }
        };
        let row_bytes = blocks * stored_bb;
        for row in 0..w.rows {
            let (g, r) = (row / GROUP_ROWS, row % GROUP_ROWS);
            let stored = &w.data[w.physical_row(row) * row_bytes..][..row_bytes];
            for (b, src) in stored.chunks_exact(stored_bb).enumerate() {
                scatter(src, &mut out[(g * blocks + b) * bb..][..bb], r);
            }
        }
        Some(DecodeLayout {
            dtype: w.dtype,
            rows: w.rows,
            cols: w.cols,
            source: (w.data.as_ptr() as usize, w.data.len(), w.order),
            lines,
        })
    }

    /// The regrouped bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.lines.len() * 64) }
    }

    /// Bytes of one group of 16 rows.
    pub(super) fn group_bytes(&self) -> usize {
        self.cols / Self::block_cols(self.dtype) * Self::block_bytes(self.dtype).unwrap_or(0)
    }

    /// The blocks of rows `j..j + rows` over reduction steps `p0..p1`, each with the part
    /// of a panel of `nr` columns (`dst[(p - p0) * nr + r]`, as `Kernel::dequant_packed`
    /// fills) from its first step and its group's first lane, for a unit's expansion:
    /// `expand(block, out)`. False, with nothing visited, when `j` does not start a group,
    /// the steps are not whole blocks, or the extents do not fit.
    // (The copy's panels are expanded by the x86 units only.)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn panel_blocks(
        &self,
        (j, rows): (usize, usize),
        (p0, p1): (usize, usize),
        nr: usize,
        dst: &mut [f32],
        mut expand: impl FnMut(&[u8], &mut [f32]),
    ) -> bool {
        let Some(bb) = Self::block_bytes(self.dtype) else {
            return false;
        };
        let cols = Self::block_cols(self.dtype);
        let groups = rows.div_ceil(GROUP_ROWS);
        if !j.is_multiple_of(GROUP_ROWS)
            || !p0.is_multiple_of(cols)
            || !p1.is_multiple_of(cols)
            || p1 > self.cols
            || p0 >= p1
            || j + rows > self.rows
            || nr < GROUP_ROWS * groups
            || dst.len() < (p1 - p0) * nr
        {
            return false;
        }
        let (bytes, group_bytes) = (self.bytes(), self.group_bytes());
        for g in 0..groups {
            let group = &bytes[(j / GROUP_ROWS + g) * group_bytes..][..group_bytes];
            for p in (p0..p1).step_by(cols) {
                expand(
                    &group[p / cols * bb..][..bb],
                    &mut dst[(p - p0) * nr + GROUP_ROWS * g..],
                );
            }
        }
        true
    }

    /// Whether this is `w` regrouped: made from the same bytes, format, shape and row
    /// order (another weight's copy is ignored, not read).
    pub(super) fn fits(&self, w: &WeightRef) -> bool {
        (self.dtype, self.rows, self.cols) == (w.dtype, w.rows, w.cols)
            && self.source == (w.data.as_ptr() as usize, w.data.len(), w.order)
    }
}

/// Writes a stored block (`src`) of row `r` of its group into the regrouped block `dst`.
type Scatter<'a> = &'a dyn Fn(&[u8], &mut [u8], usize);

/// `n` zeroed lines, or `None` when the memory is not there (decoding then reads the
/// stored rows: slower, not fatal).
fn zeroed_lines(n: usize) -> Option<Vec<Line>> {
    let mut lines = Vec::new();
    lines.try_reserve_exact(n).ok()?;
    lines.resize(n, Line([0; 64]));
    Some(lines)
}
