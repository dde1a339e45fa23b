//! Random weights in every stored format, from a small deterministic generator: the
//! inputs of `nudge bench matmul` and of the kernel tests (whose self-test digests depend on
//! these exact values).

use crate::quant::DType;
use half::{bf16, f16};

/// Every stored weight format the kernels take.
pub const DTYPES: [DType; 8] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q4_K,
    DType::Q6_K,
];

/// splitmix64: a small deterministic generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.f32()).collect()
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    pub fn f16_bytes(&mut self, scale: f32) -> [u8; 2] {
        f16::from_f32(scale * (0.25 + self.f32().abs())).to_le_bytes()
    }
}

/// Random stored bytes of a `[rows, cols]` weight in `dtype`: whole valid blocks with
/// finite scales.
pub fn random_weight(rng: &mut Rng, dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
    let n = rows * cols;
    match dtype {
        DType::F32 => (0..n).flat_map(|_| rng.f32().to_le_bytes()).collect(),
        DType::F16 => (0..n).flat_map(|_| f16::from_f32(rng.f32()).to_le_bytes()).collect(),
        DType::BF16 => (0..n).flat_map(|_| bf16::from_f32(rng.f32()).to_le_bytes()).collect(),
        _ => {
            let blocks = n / dtype.block_len();
            let mut out = Vec::with_capacity(blocks * dtype.block_bytes());
            for _ in 0..blocks {
                let mut block: Vec<u8> = (0..dtype.block_bytes()).map(|_| rng.byte()).collect();
                let scale = 1.0 / 16.0;
                match dtype {
                    DType::Q8_0 => block[0..2].copy_from_slice(&rng.f16_bytes(scale / 8.0)),
                    DType::Q4_0 => block[0..2].copy_from_slice(&rng.f16_bytes(scale)),
                    DType::Q4_1 | DType::Q4_K => {
                        block[0..2].copy_from_slice(&rng.f16_bytes(scale));
                        let m = f16::from_f32(-rng.f32().abs() * 0.5).to_le_bytes();
                        block[2..4].copy_from_slice(&m);
                    }
                    DType::Q6_K => block[208..210].copy_from_slice(&rng.f16_bytes(scale / 8.0)),
                    _ => unreachable!(),
                }
                out.extend_from_slice(&block);
            }
            out
        }
    }
}
