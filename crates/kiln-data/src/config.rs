//! The pipeline's TOML configuration: one table per stage, every field optional, FineWeb's
//! published values (datatrove defaults) when absent. `kiln data process --print-config` writes
//! the full effective file, a starting point for edits.

use crate::extract::ExtractConfig;
use crate::lang::LanguageConfig;
use crate::minhash::MinhashConfig;
use crate::pii::PiiConfig;
use crate::quality::{C4Config, FineWebConfig, GopherQualityConfig, GopherRepetitionConfig};
use crate::url_filter::UrlFilterConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[input]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    /// HTML files of a folder are grouped into units of this many files.
    pub html_files_per_unit: usize,
    /// Only HTTP 2xx responses are documents.
    pub require_2xx: bool,
    /// Share of U+FFFD replacement characters above which a page is `undecodable`.
    pub max_replacement_ratio: f64,
    /// JSONL/parquet field names.
    pub text_field: String,
    pub url_field: String,
    pub id_field: String,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            html_files_per_unit: 200,
            require_2xx: true,
            max_replacement_ratio: 0.01,
            text_field: "text".into(),
            url_field: "url".into(),
            id_field: "id".into(),
        }
    }
}

/// The whole pipeline configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub input: InputConfig,
    pub url_filter: UrlFilterConfig,
    pub extract: ExtractConfig,
    pub language: LanguageConfig,
    pub gopher_repetition: GopherRepetitionConfig,
    pub gopher_quality: GopherQualityConfig,
    pub c4: C4Config,
    pub fineweb: FineWebConfig,
    pub minhash: MinhashConfig,
    pub pii: PiiConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl PipelineConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_partial_files_fill_in() {
        let c = PipelineConfig::default();
        let back: PipelineConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back.to_toml(), c.to_toml());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[language]\nlanguages = [\"en\", \"de\"]\nmin_score = 0.5\n",
        )
        .unwrap();
        let c = PipelineConfig::load(&p).unwrap();
        assert_eq!(c.language.languages, ["en", "de"]);
        assert_eq!(c.gopher_quality.min_doc_words, 50);
        assert_eq!(c.minhash.num_buckets * c.minhash.hashes_per_bucket, 112);
        std::fs::write(&p, "[language]\nmin_scor = 0.5\n").unwrap();
        let err = PipelineConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("min_scor"), "{err}");
    }
}
