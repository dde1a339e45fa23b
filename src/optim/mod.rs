//! AdamW, global-norm gradient clipping and learning-rate schedules, matching
//! `torch.optim.AdamW`, `torch.nn.utils.clip_grad_norm_` and transformers' schedules.

mod adamw;
mod clip;
mod schedule;

pub use adamw::{AdamW, AdamWConfig, AdamWState};
pub use clip::{clip_grad_norm, grad_norm};
pub use schedule::Schedule;
