//! kiln-chat: the conversation format and loss masks ([`format`]), SFT data mixes ([`mix`]),
//! generated identity and arithmetic conversations ([`identity`], [`arith`]), and evals ([`evals`]).
//! It speaks token ids through the [`format::Codec`] trait and reaches models through
//! [`evals::ChatModel`]; it owns no model math.

pub mod arith;
pub mod evals;
pub mod format;
pub mod identity;
pub mod mix;
pub mod rng;

pub use format::{
    render_for_completion, render_for_training, ChatTokens, Codec, Content, Conversation,
    FormatError, Message, Rendered, Role, Segment,
};
