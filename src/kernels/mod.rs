//! Compute kernels, each forward next to its backward.

pub mod simd;

pub mod attention;
pub mod attention_cached;
pub mod logprob;
pub mod lora;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
