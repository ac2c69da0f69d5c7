//! The error type of every training loop: what went wrong, naming the file, step or setting.

use std::path::Path;

use kiln_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Shard(#[from] kiln_data::ShardError),
    #[error(transparent)]
    Tokenizer(#[from] kiln_tokenizer::TokenizerError),
    #[error(transparent)]
    Fetch(#[from] kiln_data::fetch::FetchError),
    #[error(transparent)]
    Mix(#[from] kiln_chat::mix::MixError),
    #[error(transparent)]
    Eval(#[from] kiln_chat::evals::EvalError),
    #[error(transparent)]
    Load(#[from] kiln_chat::load::LoadError),
    #[error(transparent)]
    Session(#[from] kiln_chat::session::SessionError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("data: {0}")]
    Data(String),
    #[error("config: {0}")]
    Config(String),
    #[error(
        "{what} became {loss} at step {step}; stopped. The last good checkpoint is kept: {last_ckpt}"
    )]
    NonFinite {
        /// What went non-finite: "loss", or "the policy's entropy" (its logits) in RL rollouts.
        what: &'static str,
        step: u64,
        loss: f32,
        last_ckpt: String,
    },
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
