//! GGUF v2/v3 files: a memory-mapped reader that validates the whole directory at open
//! (so tensor data slices are in bounds by construction) and a writer.
//!
//! Shapes are in ggml order: `shape[0]` (`ne[0]`) is the contiguous dimension, the
//! number of columns of a row-major matrix; a `[rows, cols]` HF matrix has ggml shape
//! `[cols, rows]`.

mod reader;
mod value;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::file_bytes::{self, WeightsLoad};
use crate::quant::{DType, dequantize_row};

pub use value::{GgufValue, dtype_from_ggml, ggml_type_id};
pub use writer::GgufWriter;

/// Metadata key that overrides the default data alignment of 32 bytes.
pub const KEY_ALIGNMENT: &str = "general.alignment";
/// Metadata key naming the model architecture (`llama`, `qwen2`, ...).
pub const KEY_ARCHITECTURE: &str = "general.architecture";

/// One tensor's directory entry, validated against the file at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dtype: DType,
    /// ggml order: `shape[0] = ne[0]` is the contiguous dimension (columns).
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    pub n_bytes: usize,
}

impl GgufTensorInfo {
    /// Elements of one row (`ne[0]`).
    pub fn cols(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Number of rows: the product of the dimensions after `ne[0]`.
    pub fn rows(&self) -> usize {
        self.shape.iter().skip(1).fold(1usize, |a, &d| a.saturating_mul(d))
    }

    pub fn n_elements(&self) -> usize {
        self.rows().saturating_mul(self.cols())
    }

    /// Bytes of one row in the tensor's format.
    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols()).unwrap_or(0)
    }
}

/// An open GGUF file: parsed metadata and tensor directory over a read-only mapping.
#[derive(Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub alignment: usize,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    index: HashMap<String, usize>,
    data_offset: usize,
    mmap: Arc<memmap2::Mmap>,
}

impl GgufFile {
    /// Maps and validates the file: header, metadata, every tensor's type, shape, size,
    /// alignment and place in the data section, and that no two tensors overlap.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, WeightsLoad::Map)
    }

    /// [`Self::open`], with the file mapped or read into memory.
    pub fn open_with(path: impl AsRef<Path>, how: WeightsLoad) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < reader::HEADER_BYTES as u64 {
            return Err(Error::format(
                path,
                format!(
                    "truncated header: the file has {len} bytes, a GGUF header needs {}",
                    reader::HEADER_BYTES
                ),
            ));
        }
        drop(file);
        let mmap = file_bytes::open(path, how)?;
        let parsed = reader::parse(path, &mmap)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version: parsed.version,
            alignment: parsed.alignment,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            index: parsed.index,
            data_offset: parsed.data_offset,
            mmap,
        })
    }

    /// The whole file's mapping, for weight views that outlive this struct.
    pub fn mmap(&self) -> &Arc<memmap2::Mmap> {
        &self.mmap
    }

    /// Absolute byte offset where the (aligned) data section starts.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// Like [`Self::tensor`], with a missing tensor as an error naming it.
    pub fn require_tensor(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor(name)
            .ok_or_else(|| Error::tensor(&self.path, name, "missing from the file"))
    }

    /// The raw bytes of a tensor, `n_bytes` long. Entries of this file are in bounds by
    /// validation at open; an entry made up by the caller that is not gets an empty slice.
    pub fn tensor_data(&self, t: &GgufTensorInfo) -> &[u8] {
        t.offset
            .checked_add(t.n_bytes)
            .and_then(|end| self.mmap.get(t.offset..end))
            .unwrap_or(&[])
    }

    /// Expands a whole tensor to f32, rows in file order: `[rows, cols]` row-major.
    pub fn dequantize(&self, t: &GgufTensorInfo) -> Result<Vec<f32>> {
        let (rows, cols) = (t.rows(), t.cols());
        let data = self.tensor_data(t);
        let row_bytes = t.row_bytes();
        if data.len() != t.n_bytes || row_bytes.checked_mul(rows) != Some(data.len()) {
            return Err(Error::tensor(
                &self.path,
                &t.name,
                "entry does not describe this file's data",
            ));
        }
        let mut out = vec![0f32; t.n_elements()];
        if cols > 0 {
            for (src, dst) in data.chunks_exact(row_bytes.max(1)).zip(out.chunks_exact_mut(cols)) {
                dequantize_row(t.dtype, src, dst)?;
            }
        }
        Ok(out)
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.get(key).ok_or_else(|| self.field(key, "missing"))
    }

    fn field(&self, key: &str, what: impl Into<String>) -> Error {
        Error::field(&self.path, key, what)
    }

    fn wrong_type(&self, key: &str, expected: &str, v: &GgufValue) -> Error {
        self.field(key, format!("expected {expected}, found {}", describe(v)))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    /// The architecture name (`general.architecture`), which prefixes the model's keys.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str(KEY_ARCHITECTURE)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong_type(key, "a bool", v))
    }

    /// Any integer type whose value fits in a u32.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_int(key, "an integer that fits u32")
    }

    /// Any integer type whose value fits in a u64.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_int(key, "an integer that fits u64")
    }

    /// Any integer type whose value fits in a usize.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.get_int(key, "an integer that fits usize")
    }

    /// Any integer type whose value fits in an i32.
    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.get_int(key, "an integer that fits i32")
    }

    fn get_int<T: TryFrom<i128>>(&self, key: &str, expected: &str) -> Result<T> {
        let v = self.require(key)?;
        v.as_i128()
            .and_then(|i| T::try_from(i).ok())
            .ok_or_else(|| self.wrong_type(key, expected, v))
    }

    /// F32, or F64 narrowed to f32.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f32().ok_or_else(|| self.wrong_type(key, "a float", v))
    }

    fn get_array(&self, key: &str) -> Result<&[GgufValue]> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.wrong_type(key, "an array", v))
    }

    fn get_array_of<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        f: impl Fn(&'a GgufValue) -> Option<T>,
    ) -> Result<Vec<T>> {
        self.get_array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                f(v).ok_or_else(|| self.field(key, format!("element {i}: expected {expected}, found {}", describe(v))))
            })
            .collect()
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array_of(key, "a string", GgufValue::as_str)
    }

    /// Elements of any integer type that fit in an i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.get_array_of(key, "an integer that fits i32", |v| {
            v.as_i128().and_then(|i| i32::try_from(i).ok())
        })
    }

    /// Elements of any integer type that fit in a u32.
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.get_array_of(key, "an integer that fits u32", |v| {
            v.as_i128().and_then(|i| u32::try_from(i).ok())
        })
    }

    /// F32 elements, or F64 narrowed to f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.get_array_of(key, "a float", GgufValue::as_f32)
    }
}

/// A value's type and (for scalars) the value itself, for error messages.
fn describe(v: &GgufValue) -> String {
    format!("{} {v}", v.type_name())
}
