//! The float types an export writes (f32, f16, bf16), and their encoding.

use crate::error::{Error, Result};

/// Element type of an exported file (safetensors, GGUF adapter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
    BF16,
}

impl std::str::FromStr for FloatType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(FloatType::F32),
            "f16" | "float16" => Ok(FloatType::F16),
            "bf16" | "bfloat16" => Ok(FloatType::BF16),
            _ => Err(Error::invalid(format!("dtype `{s}` is not one of f32, f16, bf16"))),
        }
    }
}

impl FloatType {
    pub(crate) fn safetensors(self) -> safetensors::Dtype {
        match self {
            FloatType::F32 => safetensors::Dtype::F32,
            FloatType::F16 => safetensors::Dtype::F16,
            FloatType::BF16 => safetensors::Dtype::BF16,
        }
    }
    pub(crate) fn torch_name(self) -> &'static str {
        match self {
            FloatType::F32 => "float32",
            FloatType::F16 => "float16",
            FloatType::BF16 => "bfloat16",
        }
    }
    pub(crate) fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::BF16 => 2,
        }
    }
    /// Encodes f32 values (round to nearest even for the 16-bit types).
    pub fn encode(self, v: &[f32], out: &mut Vec<u8>) {
        match self {
            FloatType::F32 => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            FloatType::F16 => v
                .iter()
                .for_each(|x| out.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes())),
            FloatType::BF16 => v
                .iter()
                .for_each(|x| out.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes())),
        }
    }
}
