//! Training checkpoints: everything a run needs to continue bit-identically (adapter,
//! AdamW moments, step, RNG, position in the data, configuration, cached reference
//! log-probs), as serde + bincode behind a versioned, checksummed header, written
//! atomically (temporary file, fsync, rename).
//!
//! File layout: `MAGIC` (8 bytes) · format version (u32 LE) · payload length (u64 LE) ·
//! SHA-256 of the payload (32 bytes) · payload (bincode of [`Checkpoint`]).

use super::config::TrainConfig;
use super::ref_cache::RefCache;
use crate::adapter::LoraConfig;
use crate::error::{Error, Result};
use crate::optim::AdamWState;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"NUDGECKP";
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8 + 32;

/// The shape of the base model a checkpoint was trained on (checked at resume).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseShape {
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
}

impl BaseShape {
    pub fn of(c: &crate::model::config::Config) -> Self {
        BaseShape {
            architecture: c.architecture.gguf_name().to_string(),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub base: BaseShape,
    pub base_model_name: String,
    /// Stored as JSON text: the loss and schedule enums are internally tagged, which a
    /// non-self-describing format like bincode cannot decode.
    #[serde(with = "as_json")]
    pub config: TrainConfig,
    pub lora: LoraConfig,
    /// Adapter tensors in [`crate::adapter::Adapter::params`] order.
    pub adapter: Vec<Vec<f32>>,
    pub optimizer: AdamWState,
    pub rng: Rng,
    pub step: usize,
    pub epoch: usize,
    /// This epoch's example order and the position in it.
    pub order: Vec<usize>,
    pub position: usize,
    /// SHA-256 over the training examples' token ids, so a resume with other data fails.
    pub data_fingerprint: [u8; 32],
    pub refs: RefCache,
}

mod as_json {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::Error as _};

    pub fn serialize<S: Serializer>(v: &super::TrainConfig, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serde_json::to_string(v).map_err(S::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<super::TrainConfig, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(D::Error::custom)
    }
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Decodes a payload with bincode's allocation limit at most 32 times its size: bincode
/// allocates a string or byte vector at the length it reads before reading its bytes, so
/// without a limit a crafted length asks for exabytes. The limit is a const generic, hence
/// the tiers; a genuine payload claims about its own size.
fn decode_bounded(payload: &[u8]) -> std::result::Result<(Checkpoint, usize), bincode::error::DecodeError> {
    macro_rules! tiers {
        ($($limit:expr),*) => {
            $(
                if payload.len() <= $limit / 4 {
                    return bincode::serde::decode_from_slice(payload, config().with_limit::<{ $limit }>());
                }
            )*
        };
    }
    tiers!(1 << 20, 1 << 23, 1 << 26, 1 << 29, 1 << 32, 1 << 35, 1 << 38, 1 << 41);
    Err(bincode::error::DecodeError::LimitExceeded)
}

impl Checkpoint {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let payload = bincode::serde::encode_to_vec(self, config())
            .map_err(|e| Error::invalid(format!("encoding checkpoint: {e}")))?;
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&payload));
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Parses a checkpoint; `file` names it in errors. Every byte is checked before use:
    /// a truncated, bit-flipped or foreign file is an error, never a partial load.
    pub fn from_bytes(bytes: &[u8], file: &Path) -> Result<Self> {
        let bad = |what: String| Error::format(file, what);
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(bad("not a nudge training checkpoint (bad magic or too short)".into()));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "checkpoint format version {version}; this build reads version {FORMAT_VERSION}"
            )));
        }
        let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let payload = &bytes[HEADER..];
        if payload.len() as u64 != len {
            return Err(bad(format!(
                "payload of {} bytes, header says {len} (truncated?)",
                payload.len()
            )));
        }
        if Sha256::digest(payload)[..] != bytes[20..52] {
            return Err(bad("checksum mismatch: the checkpoint is corrupt".into()));
        }
        let (c, used) = decode_bounded(payload).map_err(|e| bad(format!("undecodable payload: {e}")))?;
        if used != payload.len() {
            return Err(bad("trailing bytes after the checkpoint payload".into()));
        }
        Ok(c)
    }

    /// Writes atomically: a temporary file in the same folder, fsync, rename, fsync the folder.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &self.to_bytes()?)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }
}

/// SHA-256 over a training set's token ids (pairs and unpaired, in order).
pub fn data_fingerprint(set: &crate::data::PreferenceSet) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut ids = |v: &[u32]| {
        h.update((v.len() as u64).to_le_bytes());
        for x in v {
            h.update(x.to_le_bytes());
        }
    };
    for p in &set.pairs {
        ids(&p.prompt);
        ids(&p.chosen);
        ids(&p.rejected);
    }
    for u in &set.unpaired {
        ids(&u.prompt);
        ids(&u.completion);
        ids(&[u.label as u32]);
    }
    h.finalize().into()
}
