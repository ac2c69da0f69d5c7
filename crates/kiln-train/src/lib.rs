//! kiln-train: training loops (pretrain, SFT, later RL/RLHF), loaders, schedules, evaluation, metrics and plots.

pub mod bench;
pub mod device;
pub mod loader;
pub mod metrics;
pub mod plot;
pub mod pretrain;
pub mod schedule;
pub mod sft;
