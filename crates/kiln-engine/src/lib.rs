//! kiln-engine: model configs, parameters, explicit forward/backward, optimizers, KV-cache decode,
//! checkpoints; backends `cpu` and `cuda` (feature `cuda`). Speaks token ids only.
//!
//! Layout: [`backend`] (the kernel trait) ← [`cpu`] (its reference implementation) and `cuda`;
//! `config` + `params` (one `(name, shape)` table → one contiguous buffer per role) → `model`
//! (forward/backward written once against the trait) → `optim` (AdamW, Muon) and `trainer` (one
//! training step) → [`generate`] (KV cache, sampling) and [`checkpoint`] (safetensors + JSON,
//! atomic). Public: the trait and backends (examples and benches drive kernels directly), the
//! items re-exported here, and the modules other crates name.

pub mod backend;
pub mod batch;
pub mod checkpoint;
mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
pub mod generate;
pub mod gguf;
#[cfg(target_os = "linux")]
pub mod hugemem;
pub mod llama;
mod model;
mod optim;
mod params;
mod rng;
pub mod safetensors;
mod trainer;

pub use backend::Backend;
pub use batch::BatchDecoder;
pub use checkpoint::{load_checkpoint, resolve_checkpoint, save_checkpoint, Checkpoint};
pub use config::{Arch, ModelConfig};
pub use cpu::CpuBackend;
pub use error::EngineError;
pub use generate::{sample_token, softmax_entropy, BatchedDecoder, Generator, SamplingParams};
pub use model::Model;
pub use optim::{OptimKind, OptimizerConfig};
pub use rng::Rng;
pub use trainer::{StepStats, Trainer};
