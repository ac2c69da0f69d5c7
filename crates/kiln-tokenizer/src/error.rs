//! The crate's error type: every variant names the file (and line) or value at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    RankFile {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("invalid vocabulary: {0}")]
    Vocab(String),
    #[error("unknown pretrained tokenizer {name:?} (known: r50k_base, p50k_base, cl100k_base, o200k_base, gpt2){hint}")]
    UnknownPretrained { name: String, hint: &'static str },
    #[error("{path}:{line}: invalid UTF-8 (byte offset {offset})")]
    InvalidUtf8 {
        path: PathBuf,
        line: usize,
        offset: usize,
    },
    #[error("{path}: binary file (NUL byte at offset {offset}); remove it from the input or pass --skip-binary")]
    Binary { path: PathBuf, offset: usize },
    #[error("empty corpus: {0}")]
    EmptyCorpus(String),
    #[error("vocab size {requested} is too small: it must be at least {min} (256 byte tokens + {specials} special tokens)")]
    VocabTooSmall {
        requested: usize,
        min: usize,
        specials: usize,
    },
    #[error("bad split pattern {pattern:?}: {message}")]
    BadPattern { pattern: String, message: String },
}

impl TokenizerError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> TokenizerError {
        TokenizerError::Io {
            path: path.into(),
            source,
        }
    }
}
