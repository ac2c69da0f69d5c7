//! kiln-chat: the conversation format and loss masks ([`format`]), SFT data mixes ([`mix`]),
//! generated identity and arithmetic conversations ([`identity`], [`arith`]), evals ([`evals`]),
//! the model as evals see it ([`model`]), driving the engine for chat ([`engine`], [`session`]),
//! verifiable tasks for RL ([`tasks`]), the tool runtime and search tool ([`tools`]), and a
//! checkpoint with its tokenizer and chat template as a GGUF file for llama.cpp ([`gguf_export`]),
//! and perplexity of a text as llama.cpp's `llama-perplexity` computes it ([`perplexity`]). It
//! speaks token ids through the [`format::Codec`] trait (implemented for kiln's tokenizer in
//! [`codec`]); it owns no model math and reads no data folder of its own: callers pass paths in.

pub mod arith;
pub mod codec;
pub mod engine;
pub mod evals;
pub mod format;
pub mod gguf_export;
pub mod gguf_model;
pub mod identity;
pub mod load;
pub mod mix;
pub mod model;
pub mod perplexity;
pub mod session;
pub mod tasks;
pub mod tools;

pub use format::{
    render_for_completion, render_for_training, ChatTokens, Codec, Content, Conversation,
    FormatError, Message, Rendered, Role, Segment,
};

/// Test-only: the folder of a fetched source. kiln-chat takes data paths from its caller and does
/// not depend on kiln-data, so this mirrors kiln-data's layout (`$KILN_DATA_DIR`, else the
/// workspace's `data/`; then `raw/<name>` with its `.kiln-ok` marker). Missing data fails the
/// test with the fetch command (CI fetches first, `.ci/run`), never a silent pass.
#[cfg(test)]
pub(crate) fn fetched_source_for_test(name: &str) -> std::path::PathBuf {
    let data = std::env::var_os("KILN_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data"));
    let dir = data.join("raw").join(name);
    assert!(
        dir.join(".kiln-ok").is_file(),
        "{} is not fetched: run `kiln data fetch` first",
        dir.display()
    );
    dir
}
