//! Training: micro-batch steps over packed preference pairs, the reference cache, the
//! optimizer loop.

pub mod checkpoint;
pub mod config;
pub mod ref_cache;
pub mod step;
pub mod trainer;

pub use checkpoint::Checkpoint;
pub use config::TrainConfig;
pub use ref_cache::RefCache;
pub use step::{KtoStep, PairStep, kto_step, pair_step};
pub use trainer::{Control, EvalMetrics, StepMetrics, TrainSummary, Trainer};
