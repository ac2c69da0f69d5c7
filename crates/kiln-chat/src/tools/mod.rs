//! The model's tools as kiln-chat owns them: [`runtime`] (generation that pauses for a tool call
//! and resumes with its output), [`search`] (BM25 over the corpus) and [`lessons`] (SFT
//! conversations that teach tool use and honesty, and the held-out problems that test them). The
//! code tool is its own crate (kiln-sandbox) so that its WebAssembly runtime stays out of the
//! rest; callers plug it in through [`runtime::ToolRunner`].

pub mod lessons;
pub mod runtime;
pub mod search;
