//! One error type for the whole engine. Every variant names what is wrong (file, tensor,
//! field, row) so that an app can show it and a developer can find it; input never panics.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused a read, write, map or rename.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file's structure is broken: truncated, offsets outside the file, bad magic.
    #[error("{}: {what}", file.display())]
    Format { file: PathBuf, what: String },

    /// One tensor of a weights file is wrong: missing, bad dtype, bad shape, bad offsets.
    #[error("{}: tensor `{tensor}`: {what}", file.display())]
    Tensor {
        file: PathBuf,
        tensor: String,
        what: String,
    },

    /// A field of a configuration or metadata block is missing or has a bad value.
    #[error("{}: field `{field}`: {what}", file.display())]
    Field { file: PathBuf, field: String, what: String },

    /// The model's architecture is not one the engine implements.
    #[error("{}: unsupported architecture `{arch}` (supported: llama, mistral, qwen2)", file.display())]
    UnsupportedArchitecture { file: PathBuf, arch: String },

    /// A row of a data file (JSONL) cannot be used.
    #[error("{}: row {row}: {what}", file.display())]
    Row { file: PathBuf, row: usize, what: String },

    /// A token id does not exist in the model's vocabulary.
    #[error("token id {id} at position {position} is outside the vocabulary ({vocab_size} tokens)")]
    TokenOutOfVocabulary {
        id: u32,
        position: usize,
        vocab_size: usize,
    },

    /// A sequence is longer than the model's context window.
    #[error("sequence of {len} tokens is longer than the model's context of {max} tokens")]
    SequenceTooLong { len: usize, max: usize },

    /// Tokenizer construction or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Chat template parse or render failed (including the template's own `raise_exception`).
    #[error("chat template: {0}")]
    ChatTemplate(String),

    /// An argument or setting is out of its domain (named in the message).
    #[error("invalid argument: {0}")]
    Invalid(String),

    /// A record of an append-only file is damaged while intact records follow it, so it is
    /// not a torn tail that can be cut off: the file is left as it is.
    #[error("{}: record {record} at byte {offset}: {what}", file.display())]
    CorruptRecord {
        file: PathBuf,
        /// 0-based index of the record in the file.
        record: u64,
        offset: u64,
        what: String,
    },

    /// A file written in a format version this build does not read.
    #[error("{}: format version {found}; this build reads version {supported}", file.display())]
    UnsupportedVersion { file: PathBuf, found: u32, supported: u32 },

    /// A buffer the input asks for (activations of a long sequence, an adapter of a high
    /// rank on a large model, a KV cache) could not be allocated; nothing was changed.
    #[error("out of memory: cannot allocate {bytes} bytes for {what}")]
    OutOfMemory { what: &'static str, bytes: u128 },

    /// A long-running job stopped because its caller asked it to.
    #[error("cancelled")]
    Cancelled,

    /// One request of a batch (e.g. a prompt of [`crate::generate::generate_batch`], a
    /// sequence of [`crate::model::Model::extend_batch`]) cannot be used: `index` is its
    /// 0-based place in the batch, `source` what is wrong with it.
    #[error("request {index}: {source}")]
    Request {
        index: usize,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn format(file: impl AsRef<Path>, what: impl Into<String>) -> Self {
        Error::Format {
            file: file.as_ref().to_path_buf(),
            what: what.into(),
        }
    }
    pub fn tensor(file: impl AsRef<Path>, tensor: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Tensor {
            file: file.as_ref().to_path_buf(),
            tensor: tensor.into(),
            what: what.into(),
        }
    }
    pub fn field(file: impl AsRef<Path>, field: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Field {
            file: file.as_ref().to_path_buf(),
            field: field.into(),
            what: what.into(),
        }
    }
    pub fn row(file: impl AsRef<Path>, row: usize, what: impl Into<String>) -> Self {
        Error::Row {
            file: file.as_ref().to_path_buf(),
            row,
            what: what.into(),
        }
    }
    pub fn invalid(what: impl Into<String>) -> Self {
        Error::Invalid(what.into())
    }
    /// This error, as the error of request `index` of a batch.
    pub fn for_request(self, index: usize) -> Self {
        Error::Request {
            index,
            source: Box::new(self),
        }
    }
}
