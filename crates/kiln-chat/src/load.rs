//! Loading a trained model to talk to: a checkpoint (or a run folder's latest) on the cpu, with the
//! tokenizer its run recorded, checked to belong together. `kiln chat`, `kiln sample`, the evals and
//! later the server all load models this way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_engine::{load_checkpoint, resolve_checkpoint, Backend, CpuBackend, EngineError, Model};
use kiln_tokenizer::{Tokenizer, TokenizerError};

use crate::format::ChatTokens;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("loading tokenizer {name:?}: {source}")]
    Tokenizer {
        name: String,
        #[source]
        source: TokenizerError,
    },
    #[error("{0}")]
    Mismatch(String),
}

/// A checkpoint on a backend (the cpu unless loaded with [`load_model_on`]) with its tokenizer.
pub struct LoadedModel<B: Backend = CpuBackend> {
    pub model: Model<B>,
    pub tok: Tokenizer,
    /// The checkpoint folder it came from.
    pub dir: PathBuf,
}

/// Loads `ckpt` (a checkpoint, or a run folder with `ckpt/latest`) and `tokenizer`, or the
/// tokenizer the run recorded when `None`.
pub fn load_model(
    ckpt: &Path,
    tokenizer: Option<&str>,
    threads: usize,
) -> Result<LoadedModel, LoadError> {
    load_model_on(Arc::new(CpuBackend::new(threads)), ckpt, tokenizer)
}

/// [`load_model`] onto `backend` (the speedrun's probing and evals run where it trained).
pub fn load_model_on<B: Backend>(
    backend: Arc<B>,
    ckpt: &Path,
    tokenizer: Option<&str>,
) -> Result<LoadedModel<B>, LoadError> {
    let dir = resolve_checkpoint(ckpt)?;
    let ck = load_checkpoint(&dir)?;
    let name = match (tokenizer, ck.train["config"]["tokenizer"].as_str()) {
        (Some(t), _) | (None, Some(t)) => t.to_string(),
        _ => {
            return Err(LoadError::Mismatch(format!(
                "{}: the run recorded no tokenizer; pass --tokenizer",
                dir.display()
            )))
        }
    };
    let tok = Tokenizer::load_named(&name).map_err(|source| LoadError::Tokenizer {
        name: name.clone(),
        source,
    })?;
    if tok.vocab_size() > ck.config.vocab_size {
        return Err(LoadError::Mismatch(format!(
            "tokenizer {name:?} has {} tokens but the model's vocabulary is {}: they do not belong together",
            tok.vocab_size(),
            ck.config.vocab_size
        )));
    }
    let model = ck.into_model(backend)?;
    Ok(LoadedModel { model, tok, dir })
}

/// The chat tokens of `tok`, or an error that says what to do (`what` names the model or run).
pub fn chat_tokens(tok: &Tokenizer, what: &str) -> Result<ChatTokens, LoadError> {
    ChatTokens::from_codec(tok).map_err(|e| {
        LoadError::Mismatch(format!("{what}: this tokenizer cannot render conversations ({e}); train one with `kiln tok train`, which adds the chat tokens"))
    })
}
