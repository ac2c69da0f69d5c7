//! OpenAI's published vocabularies (r50k_base, p50k_base, cl100k_base, o200k_base; `gpt2` is
//! r50k_base). The rank data come from the `tiktoken-rs` crate, which embeds the rank files in its
//! library (feature `pretrained`, on by default); its public API only exposes a built encoder, so
//! the ranks are read back through `decode_bytes` of each id.

use crate::pretokenize::SplitPattern;
use crate::{Tokenizer, TokenizerError};

/// Names accepted by [`Tokenizer::from_pretrained`].
pub const PRETRAINED: &[&str] = &[
    "r50k_base",
    "p50k_base",
    "cl100k_base",
    "o200k_base",
    "gpt2",
];

impl Tokenizer {
    /// One of [`PRETRAINED`], with tiktoken's special tokens.
    pub fn from_pretrained(name: &str) -> Result<Tokenizer, TokenizerError> {
        imp::load(name)
    }
}

#[cfg(feature = "pretrained")]
mod imp {
    use super::*;

    pub fn load(name: &str) -> Result<Tokenizer, TokenizerError> {
        let eot = "<|endoftext|>".to_string();
        let (bpe, pattern, specials) = match name {
            "r50k_base" | "gpt2" => (
                tiktoken_rs::r50k_base(),
                SplitPattern::Gpt2,
                vec![(eot, 50256)],
            ),
            "p50k_base" => (
                tiktoken_rs::p50k_base(),
                SplitPattern::Gpt2,
                vec![(eot, 50256)],
            ),
            "cl100k_base" => (
                tiktoken_rs::cl100k_base(),
                SplitPattern::Gpt4,
                vec![
                    (eot, 100257),
                    ("<|fim_prefix|>".into(), 100258),
                    ("<|fim_middle|>".into(), 100259),
                    ("<|fim_suffix|>".into(), 100260),
                    ("<|endofprompt|>".into(), 100276),
                ],
            ),
            "o200k_base" => (
                tiktoken_rs::o200k_base(),
                SplitPattern::O200k,
                vec![(eot, 199999), ("<|endofprompt|>".into(), 200018)],
            ),
            _ => {
                return Err(TokenizerError::UnknownPretrained {
                    name: name.into(),
                    hint: "",
                })
            }
        };
        let bpe = bpe.map_err(|e| TokenizerError::Vocab(format!("{name}: {e}")))?;
        // Ranks are 0..n except where a special token sits among them (p50k's <|endoftext|>).
        let mut ranks = Vec::new();
        for id in 0u32.. {
            if specials.iter().any(|s| s.1 == id) {
                continue;
            }
            match bpe.decode_bytes(&[id]) {
                Ok(bytes) => ranks.push((bytes, id)),
                Err(_) => break,
            }
        }
        Tokenizer::from_ranks(ranks, specials, pattern)
    }
}

#[cfg(not(feature = "pretrained"))]
mod imp {
    use super::*;

    pub fn load(name: &str) -> Result<Tokenizer, TokenizerError> {
        Err(TokenizerError::UnknownPretrained {
            name: name.into(),
            hint: "; this build has no pretrained vocabularies (feature `pretrained` is off)",
        })
    }
}
