//! Parsing and validation of a GGUF file's header, metadata and tensor directory.
//!
//! Every count and offset comes from an untrusted file, so every length is checked
//! against the bytes that remain before anything is allocated, and all arithmetic on
//! file values is checked.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::value::{GgufValue, dtype_from_ggml, type_id};
use super::{GgufTensorInfo, KEY_ALIGNMENT};
use crate::error::{Error, Result};

pub(super) const MAGIC: &[u8; 4] = b"GGUF";
pub(super) const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's `GGML_MAX_DIMS`.
pub(super) const MAX_DIMS: usize = 4;
/// magic + version + tensor count + metadata count.
pub(super) const HEADER_BYTES: usize = 4 + 4 + 8 + 8;
/// Arrays of arrays are legal GGUF; a bound keeps a hostile file from exhausting the stack.
const MAX_ARRAY_NESTING: usize = 8;
/// Smallest encodings: a metadata pair (empty key, type, one byte) and a tensor info
/// (empty name, n_dims, no dims, type, offset).
const MIN_KV_BYTES: usize = 8 + 4 + 1;
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;

pub(super) struct Parsed {
    pub version: u32,
    pub alignment: usize,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    pub index: HashMap<String, usize>,
    pub data_offset: usize,
}

/// Little-endian reads that fail with a message instead of reading past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

type Short<T> = std::result::Result<T, String>;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &str) -> Short<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end.and_then(|e| self.bytes.get(self.pos..e)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(format!(
                "truncated: {what} at byte {} needs {n} bytes, the file has {} left",
                self.pos,
                self.remaining()
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Short<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Short<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Short<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Short<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Short<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length (string bytes or array elements) that must fit in what remains of the
    /// file at `min_each` bytes per unit.
    fn length(&mut self, min_each: usize, what: &str) -> Short<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let need = usize::try_from(n).ok().and_then(|n| n.checked_mul(min_each));
        match need {
            Some(need) if need <= self.remaining() => Ok(n as usize),
            _ => Err(format!(
                "{what} {n} at byte {at} runs past the end of the file ({} bytes left)",
                self.remaining()
            )),
        }
    }

    fn string_bytes(&mut self, what: &str) -> Short<&'a [u8]> {
        let n = self.length(1, &format!("{what} length"))?;
        self.take(n, what)
    }

    /// Names (keys, tensor names) must be exact, so invalid UTF-8 is an error.
    fn name(&mut self, what: &str) -> Short<String> {
        let at = self.pos;
        let b = self.string_bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} at byte {at} is not valid UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Short<GgufValue> {
        Ok(match ty {
            type_id::U8 => GgufValue::U8(self.u8("u8 value")?),
            type_id::I8 => GgufValue::I8(self.u8("i8 value")? as i8),
            type_id::U16 => GgufValue::U16(self.u16("u16 value")?),
            type_id::I16 => GgufValue::I16(self.u16("i16 value")? as i16),
            type_id::U32 => GgufValue::U32(self.u32("u32 value")?),
            type_id::I32 => GgufValue::I32(self.u32("i32 value")? as i32),
            type_id::U64 => GgufValue::U64(self.u64("u64 value")?),
            type_id::I64 => GgufValue::I64(self.u64("i64 value")? as i64),
            type_id::F32 => GgufValue::F32(f32::from_bits(self.u32("f32 value")?)),
            type_id::F64 => GgufValue::F64(f64::from_bits(self.u64("f64 value")?)),
            type_id::BOOL => match self.u8("bool value")? {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => {
                    return Err(format!("bool byte {b} at byte {} is neither 0 nor 1", self.pos - 1));
                }
            },
            // Values are free text (chat templates, token strings); a stray invalid byte
            // should not make the whole model unreadable.
            type_id::STRING => GgufValue::String(String::from_utf8_lossy(self.string_bytes("string")?).into_owned()),
            type_id::ARRAY => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(format!("arrays nested deeper than {MAX_ARRAY_NESTING} levels"));
                }
                let elem = self.u32("array element type")?;
                let min_each = min_value_bytes(elem).ok_or_else(|| format!("unknown array element type {elem}"))?;
                let n = self.length(min_each, "array length")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            other => return Err(format!("unknown value type {other}")),
        })
    }
}

/// Fewest bytes a value of type `ty` occupies, `None` for unknown types.
fn min_value_bytes(ty: u32) -> Option<usize> {
    Some(match ty {
        type_id::U8 | type_id::I8 | type_id::BOOL => 1,
        type_id::U16 | type_id::I16 => 2,
        type_id::U32 | type_id::I32 | type_id::F32 => 4,
        type_id::U64 | type_id::I64 | type_id::F64 | type_id::STRING => 8,
        type_id::ARRAY => 4 + 8,
        _ => return None,
    })
}

pub(super) fn parse(file: &Path, bytes: &[u8]) -> Result<Parsed> {
    let format = |what: String| Error::format(file, what);
    let mut c = Cursor { bytes, pos: 0 };

    if bytes.len() < HEADER_BYTES {
        return Err(format(format!(
            "truncated header: the file has {} bytes, a GGUF header needs {HEADER_BYTES}",
            bytes.len()
        )));
    }
    let magic = c.array::<4>("magic").map_err(format)?;
    if &magic != MAGIC {
        return Err(format(format!("bad magic {magic:02x?}, expected \"GGUF\"")));
    }
    let version = c.u32("version").map_err(format)?;
    if !(2..=3).contains(&version) {
        return Err(format(format!(
            "unsupported GGUF version {version} (versions 2 and 3 are read; a big-endian file also shows as a huge version)"
        )));
    }
    let n_tensors = c.length(MIN_TENSOR_INFO_BYTES, "tensor count").map_err(format)?;
    let n_kv = c.length(MIN_KV_BYTES, "metadata count").map_err(format)?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.name(&format!("metadata key #{i}")).map_err(format)?;
        let field = |what: String| Error::field(file, &key, what);
        let ty = c.u32("value type").map_err(field)?;
        let value = c.value(ty, 0).map_err(field)?;
        if metadata.contains_key(&key) {
            return Err(Error::field(file, key, "duplicate metadata key"));
        }
        metadata.insert(key, value);
    }

    let alignment = alignment(file, &metadata)?;

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut index = HashMap::with_capacity(n_tensors);
    let mut relative = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.name(&format!("tensor info #{i} name")).map_err(format)?;
        let (info, offset) = tensor_info(&mut c, name.clone()).map_err(|what| Error::tensor(file, &name, what))?;
        if index.insert(name.clone(), i).is_some() {
            return Err(Error::tensor(file, name, "duplicate tensor name"));
        }
        tensors.push(info);
        relative.push(offset);
    }

    let data_offset = align_up(c.pos, alignment)
        .ok_or_else(|| format(format!("data section offset overflows after byte {}", c.pos)))?;
    if data_offset > bytes.len() && !tensors.is_empty() {
        return Err(format(format!(
            "data section starts at byte {data_offset}, past the end of the file ({} bytes)",
            bytes.len()
        )));
    }
    let data_len = bytes.len().saturating_sub(data_offset);

    for (t, &off) in tensors.iter_mut().zip(&relative) {
        let place = |what: String| Error::tensor(file, &t.name, what);
        if !off.is_multiple_of(alignment as u64) {
            return Err(place(format!(
                "data offset {off} is not a multiple of the alignment {alignment}"
            )));
        }
        let end = usize::try_from(off).ok().and_then(|o| o.checked_add(t.n_bytes));
        match end {
            Some(end) if end <= data_len => t.offset = data_offset + off as usize,
            _ => {
                return Err(place(format!(
                    "data at offset {off} ({} bytes) lies outside the data section of {data_len} bytes",
                    t.n_bytes
                )));
            }
        }
    }
    check_overlaps(file, &tensors)?;

    Ok(Parsed {
        version,
        alignment,
        metadata,
        tensors,
        index,
        data_offset,
    })
}

fn alignment(file: &Path, metadata: &BTreeMap<String, GgufValue>) -> Result<usize> {
    let Some(v) = metadata.get(KEY_ALIGNMENT) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let a = v.as_i128().and_then(|a| u32::try_from(a).ok()).ok_or_else(|| {
        Error::field(
            file,
            KEY_ALIGNMENT,
            format!("expected a u32, found {} {v}", v.type_name()),
        )
    })?;
    if !a.is_power_of_two() {
        return Err(Error::field(
            file,
            KEY_ALIGNMENT,
            format!("alignment {a} is not a nonzero power of two"),
        ));
    }
    Ok(a as usize)
}

/// Reads one tensor's directory entry after its name; returns the offset relative to
/// the data section, which the caller checks once the section's start is known.
fn tensor_info(c: &mut Cursor<'_>, name: String) -> Short<(GgufTensorInfo, u64)> {
    let n_dims = c.u32("n_dims")? as usize;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(format!("{n_dims} dimensions (1 to {MAX_DIMS} are allowed)"));
    }
    let mut shape = Vec::with_capacity(n_dims);
    for d in 0..n_dims {
        let ne = c.u64("dimension")?;
        // ggml stores dimensions as int64.
        let ne = usize::try_from(ne)
            .ok()
            .filter(|_| ne <= i64::MAX as u64)
            .ok_or_else(|| format!("dimension ne[{d}] = {ne} is out of range"))?;
        shape.push(ne);
    }
    let type_id = c.u32("ggml type")?;
    let dtype = dtype_from_ggml(type_id).ok_or_else(|| format!("unsupported ggml type {type_id}"))?;
    let offset = c.u64("data offset")?;

    let cols = shape[0];
    if !cols.is_multiple_of(dtype.block_len()) {
        return Err(format!(
            "ne[0] = {cols} is not a multiple of the {dtype} block length {}",
            dtype.block_len()
        ));
    }
    let rows = shape[1..]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} has too many elements"))?;
    let n_bytes = dtype
        .tensor_bytes(rows, cols)
        .ok_or_else(|| format!("byte size of shape {shape:?} in {dtype} overflows"))?;
    Ok((
        GgufTensorInfo {
            name,
            dtype,
            shape,
            offset: 0,
            n_bytes,
        },
        offset,
    ))
}

fn check_overlaps(file: &Path, tensors: &[GgufTensorInfo]) -> Result<()> {
    let mut order: Vec<&GgufTensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    // The tensor reaching furthest so far: with sorted starts, any later start before
    // its end is an overlap.
    let mut furthest: Option<&GgufTensorInfo> = None;
    for t in order {
        if let Some(prev) = furthest {
            let prev_end = prev.offset + prev.n_bytes;
            if t.offset < prev_end {
                return Err(Error::tensor(
                    file,
                    &t.name,
                    format!(
                        "data at byte {} overlaps tensor `{}` (bytes {}..{prev_end})",
                        t.offset, prev.name, prev.offset
                    ),
                ));
            }
        }
        if furthest.is_none_or(|p| t.offset + t.n_bytes > p.offset + p.n_bytes) {
            furthest = Some(t);
        }
    }
    Ok(())
}

pub(super) fn align_up(x: usize, alignment: usize) -> Option<usize> {
    Some(x.checked_add(alignment - 1)? / alignment * alignment)
}
