//! Compute kernels, each forward next to its backward.

pub mod matmul;
