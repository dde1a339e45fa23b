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
pub use step::{KlLogps, KtoBatchStep, KtoStep, PairStep, StepCtx, kto_batch_step, kto_step, pair_step};
pub use trainer::{Control, EvalMetrics, StepMetrics, TrainSummary, Trainer};
