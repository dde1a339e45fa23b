//! Writing GGUF v3 files (little-endian), e.g. llama.cpp LoRA adapters.

use std::io::{self, Write};
use std::path::Path;

use super::KEY_ALIGNMENT;
use super::reader::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, align_up};
use super::value::{GgufValue, ggml_type_id, type_id};
use crate::error::{Error, Result};
use crate::quant::DType;

const VERSION: u32 = 3;

struct PendingTensor {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then writes them as one GGUF v3 file.
///
/// Tensors are laid out in insertion order, each padded to the alignment
/// (`general.alignment` when set, else 32).
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata value, replacing an earlier value of the same key.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<GgufValue>) -> &mut Self {
        let (key, value) = (key.into(), value.into());
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor; `shape` is in ggml order (`shape[0]` contiguous) and `data` must be
    /// exactly the tensor's size in `dtype`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: &[usize],
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let name = name.into();
        let bad = |what: String| Error::invalid(format!("GGUF writer: tensor `{name}`: {what}"));
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad("added twice".into()));
        }
        if shape.is_empty() || shape.len() > MAX_DIMS {
            return Err(bad(format!("{} dimensions (1 to {MAX_DIMS} are allowed)", shape.len())));
        }
        let rows = shape[1..].iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let expected = rows.and_then(|rows| dtype.tensor_bytes(rows, shape[0]));
        if expected != Some(data.len()) {
            return Err(bad(format!(
                "{} bytes do not hold a {dtype} tensor of ggml shape {shape:?}",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name,
            dtype,
            shape: shape.to_vec(),
            data,
        });
        Ok(self)
    }

    /// Adds an F32 tensor from its values (ggml shape, `shape[0]` contiguous).
    pub fn add_f32_tensor(&mut self, name: impl Into<String>, shape: &[usize], values: &[f32]) -> Result<&mut Self> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, DType::F32, shape, data)
    }

    fn alignment(&self) -> Result<usize> {
        match self.metadata.iter().find(|(k, _)| k == KEY_ALIGNMENT) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, GgufValue::U32(a))) if a.is_power_of_two() => Ok(*a as usize),
            Some((_, v)) => Err(Error::invalid(format!(
                "GGUF writer: `{KEY_ALIGNMENT}` must be a u32 power of two, got {} {v}",
                v.type_name()
            ))),
        }
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out)
            .map_err(|e| Error::invalid(format!("GGUF writer: {e}")))?;
        Ok(out)
    }

    /// Writes the file atomically ([`crate::fsutil`]): readers see either the old file or
    /// the complete new one.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        self.validate()?;
        crate::fsutil::write_atomic_with(path.as_ref(), |mut w| self.write_to(&mut w))
    }

    fn validate(&self) -> Result<()> {
        self.alignment()?;
        for (key, value) in &self.metadata {
            check_value(value).map_err(|what| Error::invalid(format!("GGUF writer: key `{key}`: {what}")))?;
        }
        Ok(())
    }

    /// Serializes to any sink; validation errors surface as `InvalidInput`.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        self.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let alignment = self.alignment().unwrap_or(DEFAULT_ALIGNMENT);
        let mut w = Counting { inner: w, pos: 0 };
        let w = &mut w;

        w.put(MAGIC)?;
        w.put(&VERSION.to_le_bytes())?;
        w.put(&(self.tensors.len() as u64).to_le_bytes())?;
        w.put(&(self.metadata.len() as u64).to_le_bytes())?;
        let mut buf = Vec::new();
        for (key, value) in &self.metadata {
            buf.clear();
            encode_str(&mut buf, key);
            buf.extend_from_slice(&value.type_id().to_le_bytes());
            encode_value(&mut buf, value);
            w.put(&buf)?;
        }

        let mut offset = 0usize;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            buf.clear();
            encode_str(&mut buf, &t.name);
            buf.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in &t.shape {
                buf.extend_from_slice(&(d as u64).to_le_bytes());
            }
            buf.extend_from_slice(&ggml_type_id(t.dtype).to_le_bytes());
            buf.extend_from_slice(&(offset as u64).to_le_bytes());
            w.put(&buf)?;
            offsets.push(offset);
            offset = align_up(offset + t.data.len(), alignment).ok_or_else(too_big)?;
        }

        let zeros = vec![0u8; alignment];
        let data_start = align_up(w.pos, alignment).ok_or_else(too_big)?;
        w.put(&zeros[..data_start - w.pos])?;
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            let at = data_start + off;
            w.put(&zeros[..at - w.pos])?;
            w.put(&t.data)?;
        }
        // Pad the last tensor too, as ggml does, so the file length is aligned.
        let end = align_up(w.pos, alignment).ok_or_else(too_big)?;
        if !self.tensors.is_empty() {
            w.put(&zeros[..end - w.pos])?;
        }
        w.inner.flush()
    }
}

/// A sink that knows how many bytes it has written, for padding to the alignment.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    pos: usize,
}

impl<W: Write> Counting<'_, W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.pos += b.len();
        self.inner.write_all(b)
    }
}

fn too_big() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "file size overflows")
}

/// Arrays must be homogeneous: the format stores one element type per array.
fn check_value(v: &GgufValue) -> std::result::Result<(), String> {
    if let GgufValue::Array(items) = v {
        if let Some(first) = items.first() {
            let ty = first.type_id();
            if let Some((i, other)) = items.iter().enumerate().find(|(_, x)| x.type_id() != ty) {
                return Err(format!(
                    "array mixes {} and {} (element {i})",
                    first.type_name(),
                    other.type_name()
                ));
            }
        }
        items.iter().try_for_each(check_value)?;
    }
    Ok(())
}

fn encode_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn encode_value(buf: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => buf.push(*x),
        GgufValue::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => buf.push(u8::from(*x)),
        GgufValue::String(s) => encode_str(buf, s),
        GgufValue::Array(items) => {
            // An empty array's element type is not recoverable from its value; u8 is as
            // good as any, readers see an empty array either way.
            let ty = items.first().map_or(type_id::U8, GgufValue::type_id);
            buf.extend_from_slice(&ty.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                encode_value(buf, item);
            }
        }
    }
}
