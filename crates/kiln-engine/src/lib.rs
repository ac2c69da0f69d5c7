//! kiln-engine: model configs, parameters, explicit forward/backward, optimizers, KV-cache decode,
//! checkpoints; backends `cpu` (here) and `cuda` (later, `cuda/`). Speaks token ids only.
//!
//! Layout: [`backend`] (the kernel trait) ← [`cpu`] (its reference implementation);
//! [`config`] + [`params`] (one `(name, shape)` table → one contiguous buffer per role) →
//! [`model`] (forward/backward written once against the trait) → [`optim`] (AdamW, Muon) →
//! [`generate`] (KV cache, sampling) and [`checkpoint`] (safetensors + JSON, atomic).

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod model;
pub mod optim;
pub mod params;
pub mod rng;
pub mod safetensors;
pub mod trainer;

pub use backend::Backend;
pub use checkpoint::{load_checkpoint, resolve_checkpoint, save_checkpoint, Checkpoint};
pub use config::{Arch, ModelConfig};
pub use cpu::CpuBackend;
pub use error::EngineError;
pub use generate::{sample_token, Generator, SamplingParams};
pub use model::Model;
pub use optim::{OptimKind, OptimizerConfig};
pub use rng::Rng;
pub use trainer::{StepStats, Trainer};
