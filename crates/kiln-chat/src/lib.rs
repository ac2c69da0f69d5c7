//! kiln-chat: the conversation format and loss masks ([`format`]), SFT data mixes ([`mix`]),
//! generated identity and arithmetic conversations ([`identity`], [`arith`]), evals ([`evals`]),
//! and driving the engine for chat ([`engine`], [`session`]). It speaks token ids through the
//! [`format::Codec`] trait (implemented for kiln's tokenizer in [`codec`]); it owns no model math.

pub mod arith;
pub mod codec;
pub mod engine;
pub mod evals;
pub mod format;
pub mod identity;
pub mod mix;
pub mod rng;
pub mod session;

pub use format::{
    render_for_completion, render_for_training, ChatTokens, Codec, Content, Conversation,
    FormatError, Message, Rendered, Role, Segment,
};
