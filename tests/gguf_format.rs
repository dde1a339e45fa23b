//! GGUF reader and writer: round trips, every kind of broken file (each must give its
//! own typed error naming the file and the key or tensor), and the real model's
//! internal consistency.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nudge::Error;
use nudge::gguf::{GgufFile, GgufValue, GgufWriter, ggml_type_id};
use nudge::quant::DType;

fn tmp_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gguf_format");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write_bytes(name: &str, bytes: &[u8]) -> PathBuf {
    let path = tmp_path(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn model_path() -> PathBuf {
    std::env::var_os("NUDGE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// Deterministic bytes for tensor data.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Valid f16 bytes (small finite values), so dequantizing the sample never sees NaN.
fn f16_bytes(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| half::f16::from_f32(i as f32 / 8.0 - 2.0).to_le_bytes())
        .collect()
}

/// A Q8_0 block: f16 scale then 32 signed quants.
fn q8_0_blocks(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|b| {
            let mut block = half::f16::from_f32(0.5 + b as f32).to_le_bytes().to_vec();
            block.extend(pattern(32, b as u8));
            block
        })
        .collect()
}

const TENSORS: [&str; 5] = [
    "token_embd.weight",
    "blk.0.attn_q.weight",
    "blk.0.ffn_down.weight",
    "blk.0.attn_k.weight",
    "output_norm.weight",
];

/// A small valid file with metadata of every type and tensors of several formats.
fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", "llama")
        .set("general.name", "tiny test model")
        .set("llama.block_count", 1u32)
        .set("llama.rope.freq_base", 10000.0f32)
        .set("llama.use_parallel_residual", true)
        .set("test.u8", GgufValue::U8(200))
        .set("test.i8", GgufValue::I8(-100))
        .set("test.u16", GgufValue::U16(60000))
        .set("test.i16", GgufValue::I16(-30000))
        .set("test.i32", GgufValue::I32(-7))
        .set("test.u64", GgufValue::U64(1 << 40))
        .set("test.i64", GgufValue::I64(-(1 << 40)))
        .set("test.f64", GgufValue::F64(0.1))
        .set(
            "tokenizer.ggml.tokens",
            GgufValue::Array(["<s>", "a", "b c", "é"].map(GgufValue::from).to_vec()),
        )
        .set(
            "tokenizer.ggml.token_type",
            GgufValue::Array(vec![
                GgufValue::I32(3),
                GgufValue::I32(1),
                GgufValue::I32(1),
                GgufValue::I32(6),
            ]),
        )
        .set(
            "test.nested",
            GgufValue::Array(vec![
                GgufValue::Array(vec![GgufValue::U16(1), GgufValue::U16(2)]),
                GgufValue::Array(vec![]),
            ]),
        );
    w.add_tensor(TENSORS[0], DType::F32, &[8, 4], pattern(128, 1)).unwrap();
    w.add_tensor(TENSORS[1], DType::Q8_0, &[64, 2], q8_0_blocks(4)).unwrap();
    w.add_tensor(TENSORS[2], DType::F16, &[32, 3], f16_bytes(96)).unwrap();
    w.add_tensor(TENSORS[3], DType::Q4_K, &[256, 1], vec![0; 144]).unwrap();
    w.add_f32_tensor(TENSORS[4], &[8], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
        .unwrap();
    w
}

fn sample_bytes() -> Vec<u8> {
    sample_writer().to_bytes().unwrap()
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "{:?} must occur exactly once",
        String::from_utf8_lossy(needle)
    );
    hits[0]
}

/// Byte position just after a metadata key (where its value type starts).
fn after_key(bytes: &[u8], key: &str) -> usize {
    find(bytes, key.as_bytes()) + key.len()
}

/// Byte positions of one tensor's directory fields.
struct InfoAt {
    n_dims: usize,
    dims: usize,
    ggml_type: usize,
    offset: usize,
}

fn tensor_info_at(bytes: &[u8], name: &str) -> InfoAt {
    let n_dims_at = after_key(bytes, name);
    let n_dims = u32::from_le_bytes(bytes[n_dims_at..n_dims_at + 4].try_into().unwrap()) as usize;
    let ggml_type = n_dims_at + 4 + 8 * n_dims;
    InfoAt {
        n_dims: n_dims_at,
        dims: n_dims_at + 4,
        ggml_type,
        offset: ggml_type + 4,
    }
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn open_err(name: &str, bytes: &[u8]) -> (PathBuf, Error) {
    let path = write_bytes(name, bytes);
    match GgufFile::open(&path) {
        Ok(_) => panic!("{name}: a broken file opened"),
        Err(e) => (path, e),
    }
}

/// The error is `Format` for this file and its message mentions `needle`.
fn assert_format(name: &str, bytes: &[u8], needle: &str) {
    let (path, e) = open_err(name, bytes);
    let msg = e.to_string();
    match &e {
        Error::Format { file, what } => {
            assert_eq!(file, &path, "{name}");
            assert!(what.contains(needle), "{name}: `{msg}` lacks `{needle}`");
        }
        other => panic!("{name}: expected Error::Format, got {other:?}"),
    }
    assert!(
        msg.contains(&path.display().to_string()),
        "{name}: `{msg}` does not name the file"
    );
}

fn assert_field(name: &str, bytes: &[u8], key: &str, needle: &str) {
    let (path, e) = open_err(name, bytes);
    let msg = e.to_string();
    match &e {
        Error::Field { file, field, what } => {
            assert_eq!(file, &path, "{name}");
            assert_eq!(field, key, "{name}: {msg}");
            assert!(what.contains(needle), "{name}: `{msg}` lacks `{needle}`");
        }
        other => panic!("{name}: expected Error::Field, got {other:?}"),
    }
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains(key),
        "{name}: {msg}"
    );
}

fn assert_tensor(name: &str, bytes: &[u8], tensor_name: &str, needle: &str) {
    let (path, e) = open_err(name, bytes);
    let msg = e.to_string();
    match &e {
        Error::Tensor { file, tensor, what } => {
            assert_eq!(file, &path, "{name}");
            assert_eq!(tensor, tensor_name, "{name}: {msg}");
            assert!(what.contains(needle), "{name}: `{msg}` lacks `{needle}`");
        }
        other => panic!("{name}: expected Error::Tensor, got {other:?}"),
    }
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains(tensor_name),
        "{name}: {msg}"
    );
}

#[test]
fn writer_output_reads_back_identically() {
    let w = sample_writer();
    let path = tmp_path("round_trip.gguf");
    w.write(&path).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        w.to_bytes().unwrap(),
        "write and to_bytes agree"
    );

    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.data_offset() % 32, 0);
    assert_eq!(g.metadata.len(), 16);
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.get_str("general.name").unwrap(), "tiny test model");
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 1);
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
    assert!(g.get_bool("llama.use_parallel_residual").unwrap());
    assert_eq!(g.get_u32("test.u8").unwrap(), 200);
    assert_eq!(g.get_i32("test.i8").unwrap(), -100);
    assert_eq!(g.get_u32("test.u16").unwrap(), 60000);
    assert_eq!(g.get_i32("test.i16").unwrap(), -30000);
    assert_eq!(g.get_u64("test.u64").unwrap(), 1 << 40);
    assert_eq!(g.get("test.i64"), Some(&GgufValue::I64(-(1 << 40))));
    assert_eq!(g.get_f32("test.f64").unwrap(), 0.1f64 as f32);
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["<s>", "a", "b c", "é"]
    );
    assert_eq!(g.get_i32_array("tokenizer.ggml.token_type").unwrap(), [3, 1, 1, 6]);
    assert_eq!(
        g.get("test.nested"),
        Some(&GgufValue::Array(vec![
            GgufValue::Array(vec![GgufValue::U16(1), GgufValue::U16(2)]),
            GgufValue::Array(vec![]),
        ]))
    );

    let names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, TENSORS);
    let expect: [(DType, &[usize], Vec<u8>); 5] = [
        (DType::F32, &[8, 4], pattern(128, 1)),
        (DType::Q8_0, &[64, 2], q8_0_blocks(4)),
        (DType::F16, &[32, 3], f16_bytes(96)),
        (DType::Q4_K, &[256, 1], vec![0; 144]),
        (
            DType::F32,
            &[8],
            [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    ];
    for (t, (dtype, shape, data)) in g.tensors.iter().zip(&expect) {
        assert_eq!(t.dtype, *dtype, "{}", t.name);
        assert_eq!(&t.shape, shape, "{}", t.name);
        assert_eq!(t.offset % 32, 0, "{}", t.name);
        assert_eq!(t.n_bytes, data.len(), "{}", t.name);
        assert_eq!(g.tensor_data(t), &data[..], "{}", t.name);
        assert_eq!(g.tensor(&t.name), Some(t));
    }
    assert_eq!(
        g.dequantize(g.tensor(TENSORS[4]).unwrap()).unwrap(),
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    );
    let q = g.dequantize(g.tensor(TENSORS[1]).unwrap()).unwrap();
    assert_eq!(q.len(), 128);
    assert_eq!(q[1], 0.5 * 31.0, "block 0 scale 0.5, quant 31");
    assert!(g.tensor("missing.weight").is_none());
    assert!(
        matches!(g.require_tensor("missing.weight"), Err(Error::Tensor { tensor, .. }) if tensor == "missing.weight")
    );
}

#[test]
fn writer_honours_custom_alignment_and_is_atomic() {
    let mut w = sample_writer();
    w.set("general.alignment", 64u32);
    // A folder of its own: other tests write (and briefly hold temporary files) in parallel.
    let dir = tmp_path("atomic");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("aligned64.gguf");
    std::fs::write(&path, b"old contents").unwrap();
    w.write(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset() % 64, 0);
    for t in &g.tensors {
        assert_eq!(t.offset % 64, 0, "{}", t.name);
    }
    // No temporary file is left beside the target.
    let dir = path.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Refusals happen before anything is written.
    w.set("general.alignment", 48u32);
    assert!(matches!(w.write(&path), Err(Error::Invalid(m)) if m.contains("general.alignment")));
    assert_eq!(GgufFile::open(&path).unwrap().alignment, 64, "the old file is intact");
}

#[test]
fn writer_rejects_inconsistent_tensors_and_values() {
    let mut w = GgufWriter::new();
    w.add_tensor("a.weight", DType::F32, &[4], vec![0; 16]).unwrap();
    let dup = w.add_tensor("a.weight", DType::F32, &[4], vec![0; 16]);
    assert!(matches!(dup, Err(Error::Invalid(m)) if m.contains("a.weight") && m.contains("twice")));
    let size = w.add_tensor("b.weight", DType::Q8_0, &[32, 2], vec![0; 34]);
    assert!(matches!(size, Err(Error::Invalid(m)) if m.contains("b.weight")));
    let partial = w.add_tensor("c.weight", DType::Q4_0, &[16], vec![0; 9]);
    assert!(matches!(partial, Err(Error::Invalid(m)) if m.contains("c.weight")));
    let dims = w.add_tensor("d.weight", DType::F32, &[1, 1, 1, 1, 1], vec![0; 4]);
    assert!(matches!(dims, Err(Error::Invalid(m)) if m.contains("d.weight")));
    w.set("mixed", GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)]));
    assert!(matches!(w.to_bytes(), Err(Error::Invalid(m)) if m.contains("mixed")));
}

#[test]
fn version_2_files_are_read() {
    let mut b = sample_bytes();
    put_u32(&mut b, 4, 2);
    let path = write_bytes("v2.gguf", &b);
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version, 2);
    assert_eq!(g.tensors.len(), TENSORS.len());
}

#[test]
fn broken_headers_are_format_errors() {
    let good = sample_bytes();
    assert_format("empty.gguf", &[], "truncated header");
    assert_format("truncated_header.gguf", &good[..20], "truncated header");

    let mut b = good.clone();
    b[0..4].copy_from_slice(b"GGML");
    assert_format("bad_magic.gguf", &b, "magic");

    for v in [0u32, 1, 4, 0x0300_0000] {
        let mut b = good.clone();
        put_u32(&mut b, 4, v);
        assert_format(&format!("version_{v}.gguf"), &b, &format!("version {v}"));
    }

    let mut b = good.clone();
    put_u64(&mut b, 8, 1 << 58);
    assert_format("huge_tensor_count.gguf", &b, "tensor count");
    let mut b = good.clone();
    put_u64(&mut b, 16, u64::MAX);
    assert_format("huge_kv_count.gguf", &b, "metadata count");

    // A key whose length runs past the end: the first key's length field is at byte 24.
    let mut b = good.clone();
    put_u64(&mut b, 24, good.len() as u64);
    assert_format("key_length_past_end.gguf", &b, "metadata key #0");
}

#[test]
fn broken_metadata_values_are_field_errors_naming_the_key() {
    let good = sample_bytes();

    // String value: type u32, then its u64 length.
    let at = after_key(&good, "general.name") + 4;
    assert_eq!(get_u64(&good, at), "tiny test model".len() as u64);
    let mut b = good.clone();
    put_u64(&mut b, at, (good.len() - at) as u64);
    assert_field("string_past_end.gguf", &b, "general.name", "past the end");
    let mut b = good.clone();
    put_u64(&mut b, at, u64::MAX);
    assert_field("string_len_max.gguf", &b, "general.name", "past the end");

    // Array: type u32, element type u32, u64 count.
    let at = after_key(&good, "tokenizer.ggml.tokens") + 8;
    assert_eq!(get_u64(&good, at), 4);
    for (i, n) in [1u64 << 40, u64::MAX, (good.len() / 8) as u64].into_iter().enumerate() {
        let mut b = good.clone();
        put_u64(&mut b, at, n);
        assert_field(
            &format!("huge_array_{i}.gguf"),
            &b,
            "tokenizer.ggml.tokens",
            "array length",
        );
    }

    let mut b = good.clone();
    put_u32(&mut b, after_key(&good, "test.u16"), 13);
    assert_field("unknown_value_type.gguf", &b, "test.u16", "unknown value type 13");

    let mut b = good.clone();
    put_u32(&mut b, after_key(&good, "tokenizer.ggml.tokens") + 4, 77);
    assert_field(
        "unknown_array_type.gguf",
        &b,
        "tokenizer.ggml.tokens",
        "element type 77",
    );

    let mut b = good.clone();
    b[after_key(&good, "llama.use_parallel_residual") + 4] = 2;
    assert_field("bad_bool.gguf", &b, "llama.use_parallel_residual", "bool");

    // Rename one key onto another of the same length.
    let mut b = good.clone();
    let at = find(&good, b"test.u8");
    b[at..at + 7].copy_from_slice(b"test.i8");
    assert_field("duplicate_key.gguf", &b, "test.i8", "duplicate");

    // Truncated inside a value: in a scalar, and where an array no longer fits.
    let cut = after_key(&good, "test.u64") + 4 + 3;
    assert_field(
        "truncated_scalar.gguf",
        &good[..cut],
        "test.u64",
        "truncated: u64 value",
    );
    let cut = after_key(&good, "tokenizer.ggml.tokens") + 20;
    assert_field(
        "truncated_array.gguf",
        &good[..cut],
        "tokenizer.ggml.tokens",
        "past the end",
    );

    for (i, a) in [0u32, 3, 48].into_iter().enumerate() {
        let mut w = sample_writer();
        w.set("general.alignment", 32u32);
        let mut b = w.to_bytes().unwrap();
        let at = after_key(&b, "general.alignment") + 4;
        put_u32(&mut b, at, a);
        assert_field(
            &format!("bad_alignment_{i}.gguf"),
            &b,
            "general.alignment",
            "power of two",
        );
    }
    let mut w = sample_writer();
    w.set("general.alignment", 32u32);
    let mut b = w.to_bytes().unwrap();
    let at = after_key(&b, "general.alignment");
    put_u32(&mut b, at, 8);
    assert_field("alignment_as_string.gguf", &b, "general.alignment", "past the end");
}

#[test]
fn broken_tensor_infos_are_tensor_errors_naming_the_tensor() {
    let good = sample_bytes();
    let [embd, q, down, k, norm] = TENSORS;
    let info = |name| tensor_info_at(&good, name);
    let offset_of = |name| get_u64(&good, info(name).offset);

    // Data offset far outside the data section (but aligned).
    let mut b = good.clone();
    put_u64(&mut b, info(down).offset, 1 << 20);
    assert_tensor("offset_outside.gguf", &b, down, "outside the data section");
    let mut b = good.clone();
    put_u64(&mut b, info(down).offset, u64::MAX - 31);
    assert_tensor("offset_overflow.gguf", &b, down, "outside the data section");

    // Two tensors at the same place.
    let mut b = good.clone();
    put_u64(&mut b, info(down).offset, offset_of(q));
    let (_, e) = open_err("overlap.gguf", &b);
    match &e {
        Error::Tensor { tensor, what, .. } => {
            assert!(tensor == q || tensor == down, "{e}");
            assert!(what.contains("overlaps"), "{e}");
            let other = if tensor == q { down } else { q };
            assert!(what.contains(other), "{e}: does not name the other tensor");
        }
        other => panic!("expected Error::Tensor, got {other:?}"),
    }

    // Declared shape bigger than the bytes the format gives it: grows into the next tensor.
    let mut b = good.clone();
    put_u64(&mut b, info(embd).dims + 8, 16);
    assert_tensor("shape_overlaps_next.gguf", &b, q, "overlaps tensor `token_embd.weight`");
    // ... or past the end of the data.
    let mut b = good.clone();
    put_u64(&mut b, info(norm).dims, 1 << 30);
    assert_tensor("shape_past_end.gguf", &b, norm, "outside the data section");
    // Type changed to one with a bigger byte size for the same shape (F16 -> F32).
    let mut b = good.clone();
    put_u32(&mut b, info(down).ggml_type, ggml_type_id(DType::F32));
    assert_tensor(
        "dtype_size_mismatch.gguf",
        &b,
        k,
        "overlaps tensor `blk.0.ffn_down.weight`",
    );
    // A row that is not a whole number of blocks.
    let mut b = good.clone();
    put_u64(&mut b, info(q).dims, 48);
    assert_tensor(
        "partial_block.gguf",
        &b,
        q,
        "not a multiple of the Q8_0 block length 32",
    );
    // Element count overflows.
    let mut b = good.clone();
    put_u64(&mut b, info(embd).dims + 8, i64::MAX as u64);
    put_u64(&mut b, info(embd).dims, 1 << 40);
    assert_tensor("size_overflow.gguf", &b, embd, "overflows");
    let mut b = good.clone();
    put_u64(&mut b, info(norm).dims, u64::MAX);
    assert_tensor("negative_dim.gguf", &b, norm, "out of range");

    for ty in [6u32, 13, 99] {
        let mut b = good.clone();
        put_u32(&mut b, info(k).ggml_type, ty);
        assert_tensor(
            &format!("ggml_type_{ty}.gguf"),
            &b,
            k,
            &format!("unsupported ggml type {ty}"),
        );
    }

    let mut b = good.clone();
    put_u64(&mut b, info(k).offset, offset_of(k) + 4);
    assert_tensor("misaligned.gguf", &b, k, "not a multiple of the alignment 32");

    for n in [0u32, 5] {
        let mut b = good.clone();
        put_u32(&mut b, info(norm).n_dims, n);
        assert_tensor(&format!("n_dims_{n}.gguf"), &b, norm, "dimensions");
    }

    // Rename one tensor onto another of the same length.
    let mut w = GgufWriter::new();
    w.add_f32_tensor("a.weight", &[4], &[1.0; 4]).unwrap();
    w.add_f32_tensor("b.weight", &[4], &[2.0; 4]).unwrap();
    let mut b = w.to_bytes().unwrap();
    let at = find(&b, b"b.weight");
    b[at] = b'a';
    assert_tensor("duplicate_tensor.gguf", &b, "a.weight", "duplicate tensor name");

    // File cut inside the last tensor's data.
    let g = GgufFile::open(write_bytes("good.gguf", &good)).unwrap();
    let last = g.tensor(norm).unwrap();
    assert_tensor(
        "truncated_data.gguf",
        &good[..last.offset + 4],
        norm,
        "outside the data section",
    );
    // Cut inside the directory.
    let (_, e) = open_err("truncated_directory.gguf", &good[..info(down).ggml_type]);
    assert!(
        matches!(&e, Error::Tensor { tensor, what, .. } if tensor == down && what.contains("truncated")),
        "{e}"
    );
}

/// Damage anywhere in the header and directory must give an error or a valid file, and
/// any prefix that cuts tensor data must be refused; never a panic.
#[test]
fn arbitrary_damage_never_panics() {
    let good = sample_bytes();
    let g = GgufFile::open(write_bytes("fuzz_base.gguf", &good)).unwrap();
    let data_end = g.tensors.iter().map(|t| t.offset + t.n_bytes).max().unwrap();
    let path = tmp_path("fuzz.gguf");
    let mut opened = 0;
    std::fs::write(&path, &good).unwrap();
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut put_byte = |at: usize, v: u8| {
        file.seek(SeekFrom::Start(at as u64)).unwrap();
        file.write_all(&[v]).unwrap();
    };
    for (at, &orig) in good.iter().enumerate().take(g.data_offset()) {
        for v in [0x00, 0xff, 0x80, orig ^ 0x01] {
            put_byte(at, v);
            if let Ok(f) = GgufFile::open(&path) {
                opened += 1;
                for t in &f.tensors {
                    assert_eq!(f.tensor_data(t).len(), t.n_bytes);
                    let _ = f.dequantize(t);
                }
            }
        }
        put_byte(at, orig);
    }
    // Some damage is benign (metadata values, padding), most is not.
    assert!(opened > 0 && opened < 4 * g.data_offset(), "opened {opened}");
    for len in (0..data_end).step_by(7) {
        std::fs::write(&path, &good[..len]).unwrap();
        assert!(GgufFile::open(&path).is_err(), "prefix of {len} bytes opened");
    }
}

#[test]
fn typed_getters_name_the_key() {
    let path = write_bytes("getters.gguf", &sample_bytes());
    let g = GgufFile::open(&path).unwrap();
    let field_of = |r: Result<(), Error>| match r {
        Err(Error::Field { file, field, what }) => {
            assert_eq!(file, path);
            (field, what)
        }
        other => panic!("expected Error::Field, got {other:?}"),
    };
    let (f, what) = field_of(g.get_u32("nope").map(drop));
    assert_eq!((f.as_str(), what.as_str()), ("nope", "missing"));
    let (f, what) = field_of(g.get_u32("general.name").map(drop));
    assert_eq!(f, "general.name");
    assert!(what.contains("string"), "{what}");
    let (f, what) = field_of(g.get_u32("test.i8").map(drop));
    assert_eq!(f, "test.i8");
    assert!(what.contains("-100"), "{what}");
    let (f, _) = field_of(g.get_u32("test.u64").map(drop));
    assert_eq!(f, "test.u64");
    let (f, _) = field_of(g.get_str("llama.block_count").map(drop));
    assert_eq!(f, "llama.block_count");
    let (f, _) = field_of(g.get_f32("llama.block_count").map(drop));
    assert_eq!(f, "llama.block_count");
    let (f, _) = field_of(g.get_bool("general.name").map(drop));
    assert_eq!(f, "general.name");
    let (f, what) = field_of(g.get_str_array("tokenizer.ggml.token_type").map(drop));
    assert_eq!(f, "tokenizer.ggml.token_type");
    assert!(what.contains("element 0"), "{what}");
    let (f, _) = field_of(g.get_i32_array("general.name").map(drop));
    assert_eq!(f, "general.name");
    assert_eq!(g.get_u32_array("tokenizer.ggml.token_type").unwrap(), [3, 1, 1, 6]);
    assert_eq!(g.get_usize("test.u64").unwrap(), 1 << 40);
}

#[test]
fn real_model_is_consistent() {
    let path = model_path();
    let g = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e} (set NUDGE_MODEL)"));
    assert!((2..=3).contains(&g.version));
    assert!(g.alignment.is_power_of_two());
    assert_eq!(g.data_offset() % g.alignment, 0);
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    assert_eq!(g.mmap().len(), len);

    let arch = g.architecture().unwrap().to_owned();
    assert!(!arch.is_empty());
    assert!(!g.tensors.is_empty());
    for t in &g.tensors {
        assert_eq!(t.offset % g.alignment, 0, "{}", t.name);
        assert!(t.offset >= g.data_offset(), "{}", t.name);
        let bytes = t.dtype.tensor_bytes(t.rows(), t.cols()).unwrap();
        assert_eq!(t.n_bytes, bytes, "{}", t.name);
        assert_eq!(g.tensor_data(t).len(), bytes, "{}", t.name);
        assert_eq!(g.tensor(&t.name), Some(t));
    }

    let block_count = g.get_usize(&format!("{arch}.block_count")).unwrap();
    let attn_q = g
        .tensors
        .iter()
        .filter(|t| {
            let rest = t.name.strip_prefix("blk.").and_then(|r| r.split_once('.'));
            matches!(rest, Some((n, "attn_q.weight")) if n.parse::<usize>().is_ok())
        })
        .count();
    assert_eq!(attn_q, block_count);
    for i in 0..block_count {
        assert!(g.tensor(&format!("blk.{i}.attn_q.weight")).is_some(), "layer {i}");
    }

    let n_embd = g.get_usize(&format!("{arch}.embedding_length")).unwrap();
    let embd = g.require_tensor("token_embd.weight").unwrap();
    assert_eq!(embd.cols(), n_embd);
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(embd.rows(), tokens.len());
    if g.get(&format!("{arch}.vocab_size")).is_some() {
        assert_eq!(g.get_usize(&format!("{arch}.vocab_size")).unwrap(), tokens.len());
    }
    let eps = g.get_f32(&format!("{arch}.attention.layer_norm_rms_epsilon")).unwrap();
    assert!(eps > 0.0 && eps < 1e-2);
}

/// The writer reproduces the real model: same metadata, same tensors, same bytes.
#[test]
fn real_model_rewrites_losslessly() {
    let g = GgufFile::open(model_path()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.set(k.clone(), v.clone());
    }
    for t in &g.tensors {
        w.add_tensor(t.name.clone(), t.dtype, &t.shape, g.tensor_data(t).to_vec())
            .unwrap();
    }
    let path = tmp_path("rewritten_model.gguf");
    w.write(&path).unwrap();
    let r = GgufFile::open(&path).unwrap();
    assert_eq!(r.metadata, g.metadata);
    assert_eq!(r.tensors.len(), g.tensors.len());
    for (a, b) in g.tensors.iter().zip(&r.tensors) {
        assert_eq!((&a.name, a.dtype, &a.shape), (&b.name, b.dtype, &b.shape));
        assert!(g.tensor_data(a) == r.tensor_data(b), "{}", a.name);
    }
    drop(r);
    std::fs::remove_file(&path).unwrap();
}
