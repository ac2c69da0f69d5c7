//! kiln-tokenizer: byte-level BPE — training, encode/decode, split patterns, special tokens,
//! tiktoken rank files — and the token shards its encoder writes ([`shards`]); a kiln vocabulary
//! as llama.cpp's GGUF `gpt2` vocabulary ([`gguf_export`]).
//!
//! ```
//! use kiln_tokenizer::Tokenizer;
//! let tok = Tokenizer::from_pretrained("cl100k_base").unwrap();
//! let ids = tok.encode_ordinary("hello world");
//! assert_eq!(ids, vec![15339, 1917]);
//! assert_eq!(tok.decode(&ids), "hello world");
//! ```

mod bpe;
pub mod corpus;
mod error;
pub mod gguf;
pub mod gguf_export;
mod pretokenize;
mod pretrained;
mod rankfile;
pub mod shards;
mod tokenizer;
mod train;
mod unicode;

pub use error::TokenizerError;
pub use gguf::{GgufTokenizer, GgufVocab};
pub use gguf_export::{gguf_bpe_vocab, GgufBpeVocab};
pub use pretokenize::{SplitPattern, GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN};
pub use pretrained::PRETRAINED;
pub use rankfile::{parse_rank_file, read_rank_file, CONFIG_FILE, RANK_FILE};
pub use tokenizer::Tokenizer;
pub use train::{
    count_texts, train_from_counts, train_from_files, train_from_iter, train_from_texts,
    PieceCounter, TrainConfig,
};

/// The chat format's special tokens (DESIGN.md), appended after the merges by training.
pub const CHAT_SPECIAL_TOKENS: &[&str] = &[
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
    "<|search_start|>",
    "<|search_end|>",
];
