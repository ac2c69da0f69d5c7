//! [`EngineError`]: the engine's one error type; each variant names what was wrong and where.

/// Errors of the engine; each names what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("token id {id} at position {pos} is out of range for vocab size {vocab}")]
    TokenOutOfRange { id: u32, pos: usize, vocab: usize },
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("model needs about {need_mb} MiB (params, grads, optimizer state, activations) but only {avail_mb} MiB are available; reduce batch/context/width")]
    OutOfMemory { need_mb: u64, avail_mb: u64 },
    #[error("{path}: {msg}")]
    Checkpoint { path: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("backend: {0}")]
    Backend(String),
}

impl EngineError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.display().to_string(),
            source,
        }
    }
    pub(crate) fn ckpt(path: &std::path::Path, msg: impl Into<String>) -> Self {
        EngineError::Checkpoint {
            path: path.display().to_string(),
            msg: msg.into(),
        }
    }
}
