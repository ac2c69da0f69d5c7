//! kiln-train: training loops (pretrain, SFT, RL, reward model, RLHF), loaders, schedules, evaluation, metrics and plots.

pub mod bench;
pub mod checkpoint;
pub mod device;
mod error;
pub mod honesty;
pub mod loader;
mod metrics;
pub mod plot;
pub mod pretrain;
pub mod rl;
pub mod rlhf;

pub mod rm;
mod schedule;
pub mod sft;
pub mod speedrun;

pub use error::TrainError;
