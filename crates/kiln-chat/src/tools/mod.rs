//! The model's tools as kiln-chat owns them: [`runtime`] (generation that pauses for a tool call
//! and resumes with its output), [`search`] (BM25 over the corpus), [`toolbox`] (the sandboxed
//! code tool of kiln-sandbox and a search index behind [`runtime::ToolRunner`]) and [`lessons`]
//! (SFT conversations that teach tool use and honesty, and the held-out problems that test them)
//! with their [`evals`].

pub mod evals;
pub mod lessons;
pub mod runtime;
pub mod search;
pub mod toolbox;
