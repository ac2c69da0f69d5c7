//! The model's tools as kiln-chat owns them: [`runtime`] (generation that pauses for a tool call
//! and resumes with its output) and [`search`] (BM25 over the corpus). The code tool is its own
//! crate (kiln-sandbox) so that its WebAssembly runtime stays out of the rest; callers plug it in
//! through [`runtime::ToolRunner`].

pub mod runtime;
pub mod search;
