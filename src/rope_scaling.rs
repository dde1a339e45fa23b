//! How a model stretches its rotary position embedding past its training context. A
//! model setting that the rope kernel ([`crate::kernels::rope::inv_freq`]) reads; it lives
//! on the ground floor so that the kernels need nothing from the model.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (transformers' "linear").
    Linear {
        factor: f32,
    },
    /// Llama 3.x frequency-dependent scaling (transformers' "llama3").
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// Per-frequency divisors, as llama.cpp stores Llama 3 scaling (`rope_freqs.weight`).
    Factors(Vec<f32>),
}
