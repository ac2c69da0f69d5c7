//! The model's tools as kiln-chat owns them: [`search`] (BM25 over the corpus). The code tool is
//! its own crate (kiln-sandbox) so that its WebAssembly runtime stays out of the rest.

pub mod search;
