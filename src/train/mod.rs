//! Training: micro-batch steps over packed preference pairs, the reference cache, the
//! optimizer loop.

pub mod step;

pub mod trainer;

pub use step::{KtoStep, PairStep, kto_step, pair_step};
pub use trainer::{Control, StepMetrics, TrainConfig, TrainSummary, Trainer};
