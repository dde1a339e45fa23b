//! Training: micro-batch steps over packed preference pairs, the reference cache, the
//! optimizer loop.

pub mod step;

pub use step::{PairStep, pair_step};
