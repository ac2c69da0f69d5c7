//! On-disk format: `tokenizer.tiktoken` (tiktoken's rank file: one `base64(token) rank` per line)
//! plus `tokenizer.json` (split pattern, special tokens, rank count) beside it. Saves are atomic
//! (temp file + rename); loads check every line and name the file and line of any fault.

use crate::pretokenize::SplitPattern;
use crate::{Tokenizer, TokenizerError};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const RANK_FILE: &str = "tokenizer.tiktoken";
pub const CONFIG_FILE: &str = "tokenizer.json";
const FORMAT: &str = "kiln-tokenizer/1";

#[derive(Serialize, Deserialize)]
struct Config {
    format: String,
    /// `gpt2`, `gpt4`, `o200k` or `custom`.
    pattern_name: String,
    /// The regex (what tiktoken calls `pat_str`).
    pattern: String,
    /// Lines in the rank file; catches a file truncated at a line boundary.
    n_ranks: usize,
    special_tokens: BTreeMap<String, u32>,
}

/// Parses a tiktoken rank file's text. `path` is only used in error messages.
pub fn parse_rank_file(path: &Path, text: &[u8]) -> Result<Vec<(Vec<u8>, u32)>, TokenizerError> {
    let engine = base64::engine::general_purpose::STANDARD;
    let err = |line: usize, message: String| TokenizerError::RankFile {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut ranks = Vec::new();
    let mut seen_ranks = rustc_hash::FxHashMap::default();
    let mut seen_tokens = rustc_hash::FxHashMap::default();
    if !text.is_empty() && !text.ends_with(b"\n") {
        let last = text.split(|&b| b == b'\n').count();
        return Err(err(
            last,
            "last line has no newline: the file is truncated".into(),
        ));
    }
    for (k, line) in text.split(|&b| b == b'\n').enumerate() {
        let n = k + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let line = std::str::from_utf8(line).map_err(|_| err(n, "not UTF-8 text".into()))?;
        let mut parts = line.split(' ');
        let (Some(token), Some(rank), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err(
                n,
                format!("expected `<base64 token> <rank>`, found {line:?}"),
            ));
        };
        let bytes = engine
            .decode(token)
            .map_err(|e| err(n, format!("bad base64 token {token:?}: {e}")))?;
        let rank: u32 = rank
            .parse()
            .map_err(|_| err(n, format!("bad rank {rank:?} (expected a number)")))?;
        if let Some(first) = seen_ranks.insert(rank, n) {
            return Err(err(n, format!("rank {rank} already used on line {first}")));
        }
        if let Some(first) = seen_tokens.insert(bytes.clone(), n) {
            return Err(err(
                n,
                format!("token {token} already listed on line {first}"),
            ));
        }
        ranks.push((bytes, rank));
    }
    Ok(ranks)
}

/// Reads a tiktoken rank file.
pub fn read_rank_file(path: &Path) -> Result<Vec<(Vec<u8>, u32)>, TokenizerError> {
    let text = std::fs::read(path).map_err(|e| TokenizerError::io(path, e))?;
    parse_rank_file(path, &text)
}

/// Writes `bytes` to `path` atomically (kiln-data's helper: temp file beside it, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TokenizerError> {
    kiln_data::write_atomic(path, bytes).map_err(|e| TokenizerError::io(path, e))
}

impl Tokenizer {
    /// Loads `dir/tokenizer.tiktoken` + `dir/tokenizer.json`.
    pub fn load(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let config_path = dir.join(CONFIG_FILE);
        let rank_path = dir.join(RANK_FILE);
        let config_text =
            std::fs::read(&config_path).map_err(|e| TokenizerError::io(&config_path, e))?;
        let config: Config =
            serde_json::from_slice(&config_text).map_err(|e| TokenizerError::Config {
                path: config_path.clone(),
                message: e.to_string(),
            })?;
        if config.format != FORMAT {
            return Err(TokenizerError::Config {
                path: config_path,
                message: format!("format {:?}, expected {FORMAT:?}", config.format),
            });
        }
        let ranks = read_rank_file(&rank_path)?;
        if ranks.len() != config.n_ranks {
            return Err(TokenizerError::RankFile {
                path: rank_path,
                line: ranks.len() + 1,
                message: format!(
                    "truncated: {} ranks, but {} says {}",
                    ranks.len(),
                    config_path.display(),
                    config.n_ranks
                ),
            });
        }
        let pattern = SplitPattern::from_regex(&config.pattern);
        let specials = config.special_tokens.into_iter().collect();
        Tokenizer::from_ranks(ranks, specials, pattern).map_err(|e| match e {
            TokenizerError::Vocab(message) => TokenizerError::Config {
                path: rank_path,
                message,
            },
            other => other,
        })
    }

    /// Saves to `dir` as `tokenizer.tiktoken` + `tokenizer.json`. A new `dir` is written as a
    /// temp folder beside it and renamed into place; into an existing `dir` each file is written to
    /// a temp file and renamed, the JSON last. Either way no half-written file is ever visible.
    pub fn save(&self, dir: &Path) -> Result<(), TokenizerError> {
        let engine = base64::engine::general_purpose::STANDARD;
        let ranks = self.ranks();
        let mut text = String::with_capacity(ranks.len() * 12);
        for (bytes, id) in &ranks {
            text.push_str(&engine.encode(bytes));
            text.push(' ');
            text.push_str(&id.to_string());
            text.push('\n');
        }
        let config = Config {
            format: FORMAT.into(),
            pattern_name: self.pattern.name().into(),
            pattern: self.pattern.regex().into(),
            n_ranks: ranks.len(),
            special_tokens: self.specials.iter().cloned().collect(),
        };
        let json = serde_json::to_string_pretty(&config).expect("config serializes") + "\n";
        if dir.is_dir() {
            write_atomic(&dir.join(RANK_FILE), text.as_bytes())?;
            return write_atomic(&dir.join(CONFIG_FILE), json.as_bytes());
        }
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| TokenizerError::io(parent, e))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{name}.tmp{}", std::process::id()));
        let result = (|| {
            std::fs::create_dir_all(&tmp).map_err(|e| TokenizerError::io(&tmp, e))?;
            write_atomic(&tmp.join(RANK_FILE), text.as_bytes())?;
            write_atomic(&tmp.join(CONFIG_FILE), json.as_bytes())?;
            std::fs::rename(&tmp, dir).map_err(|e| TokenizerError::io(dir, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// A tokenizer name (`cl100k_base`, …) or a directory saved by [`Tokenizer::save`].
    pub fn load_named(name_or_dir: &str) -> Result<Tokenizer, TokenizerError> {
        let path = PathBuf::from(name_or_dir);
        if path.is_dir() {
            return Tokenizer::load(&path);
        }
        Tokenizer::from_pretrained(name_or_dir).map_err(|e| match e {
            TokenizerError::UnknownPretrained { name, .. } => TokenizerError::UnknownPretrained {
                name,
                hint: " and no such tokenizer directory",
            },
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Tokenizer {
        let mut ranks: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], b as u32)).collect();
        ranks.push((b"he".to_vec(), 256));
        ranks.push((b"hello".to_vec(), 257));
        Tokenizer::from_ranks(ranks, vec![("<|bos|>".into(), 258)], SplitPattern::Gpt4).unwrap()
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let t = tiny();
        t.save(dir.path()).unwrap();
        let u = Tokenizer::load(dir.path()).unwrap();
        // A new folder is created whole.
        let fresh = dir.path().join("a/b/new");
        t.save(&fresh).unwrap();
        assert!(Tokenizer::load(&fresh).is_ok());
        assert_eq!(u.vocab_size(), 259);
        assert_eq!(u.pattern(), &SplitPattern::Gpt4);
        assert_eq!(
            u.encode_ordinary("hello hex"),
            t.encode_ordinary("hello hex")
        );
        assert_eq!(u.special_token_id("<|bos|>"), Some(258));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn corrupt_rank_file_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        tiny().save(dir.path()).unwrap();
        let path = dir.path().join(RANK_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[9] = "!!notbase64 9";
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let err = Tokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.tiktoken:10:"), "{err}");
        lines[9] = "CQ== nine";
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let err = Tokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(":10: bad rank"), "{err}");
    }

    #[test]
    fn truncated_rank_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        tiny().save(dir.path()).unwrap();
        let path = dir.path().join(RANK_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        // Cut at a line boundary: every line parses, the count does not match.
        let cut: String = text.lines().take(200).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, cut).unwrap();
        let err = Tokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("truncated: 200 ranks"), "{err}");
        // Cut inside a line: no newline at the end.
        std::fs::write(&path, &text[..text.len() - 3]).unwrap();
        let err = Tokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.tiktoken:258:"), "{err}");
    }
}
