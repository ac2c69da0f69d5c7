//! URL filter (FineWeb's first stage after reading): blocked domains and URLs, banned words
//! (whole tokens of the URL), banned subwords (substrings of the normalised URL), and soft-banned
//! words (at least two needed), as datatrove's `URLFilter` does. kiln ships a small list
//! (`blocklists/`); users add their own files, one entry per line, `#` comments.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

const SHIPPED_DOMAINS: &str = include_str!("../blocklists/domains.txt");
const SHIPPED_WORDS: &str = include_str!("../blocklists/banned_words.txt");
const SHIPPED_SUBWORDS: &str = include_str!("../blocklists/banned_subwords.txt");
const SHIPPED_SOFT: &str = include_str!("../blocklists/soft_banned_words.txt");

/// `[url_filter]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UrlFilterConfig {
    pub enabled: bool,
    /// Use the lists kiln ships (crates/kiln-data/blocklists).
    pub use_shipped_lists: bool,
    /// Extra files, one domain per line (a domain blocks its subdomains too).
    pub domain_files: Vec<PathBuf>,
    /// Extra files, one full URL per line.
    pub url_files: Vec<PathBuf>,
    pub banned_words: Vec<String>,
    pub banned_subwords: Vec<String>,
    pub soft_banned_words: Vec<String>,
    /// Soft-banned words needed to drop a URL (datatrove: 2).
    pub soft_word_threshold: usize,
}

impl Default for UrlFilterConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            use_shipped_lists: true,
            domain_files: vec![],
            url_files: vec![],
            banned_words: vec![],
            banned_subwords: vec![],
            soft_banned_words: vec![],
            soft_word_threshold: 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct ListError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A compiled URL filter.
#[derive(Debug, Clone, Default)]
pub struct UrlFilter {
    domains: HashSet<String>,
    urls: HashSet<String>,
    words: HashSet<String>,
    subwords: Vec<String>,
    soft: HashSet<String>,
    soft_threshold: usize,
}

fn lines(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_lowercase())
        .filter(|l| !l.is_empty())
}

fn read_list(path: &Path) -> Result<String, ListError> {
    std::fs::read_to_string(path).map_err(|source| ListError {
        path: path.to_path_buf(),
        source,
    })
}

/// The host of a URL, lower-cased, without port, user info or a leading `www.`.
pub fn host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = hostport.rsplit('@').next().unwrap_or("");
    let host = hostport.split(':').next().unwrap_or("").to_lowercase();
    host.strip_prefix("www.")
        .map(str::to_string)
        .unwrap_or(host)
}

impl UrlFilter {
    pub fn new(config: &UrlFilterConfig) -> Result<Self, ListError> {
        let mut f = UrlFilter {
            soft_threshold: config.soft_word_threshold.max(1),
            ..Default::default()
        };
        if config.use_shipped_lists {
            f.domains.extend(lines(SHIPPED_DOMAINS));
            f.words.extend(lines(SHIPPED_WORDS));
            f.subwords.extend(lines(SHIPPED_SUBWORDS));
            f.soft.extend(lines(SHIPPED_SOFT));
        }
        for p in &config.domain_files {
            f.domains.extend(lines(&read_list(p)?));
        }
        for p in &config.url_files {
            f.urls.extend(lines(&read_list(p)?));
        }
        f.words
            .extend(config.banned_words.iter().map(|w| w.to_lowercase()));
        f.subwords
            .extend(config.banned_subwords.iter().map(|w| w.to_lowercase()));
        f.soft
            .extend(config.soft_banned_words.iter().map(|w| w.to_lowercase()));
        Ok(f)
    }

    /// `None` to keep, or the reason to drop.
    pub fn check(&self, url: &str) -> Option<&'static str> {
        if url.is_empty() {
            return None;
        }
        let lower = url.to_lowercase();
        if self.urls.contains(&lower) {
            return Some("blocked_url");
        }
        let h = host(&lower);
        // The domain and each parent domain (a.b.example.com → b.example.com → example.com).
        let mut d = h.as_str();
        loop {
            if self.domains.contains(d) {
                return Some("blocked_domain");
            }
            match d.split_once('.') {
                Some((_, parent)) if parent.contains('.') => d = parent,
                _ => break,
            }
        }
        let mut soft = 0;
        for word in lower.split(|c: char| !c.is_alphanumeric()) {
            if word.is_empty() {
                continue;
            }
            if self.words.contains(word) {
                return Some("banned_word");
            }
            if self.soft.contains(word) {
                soft += 1;
            }
        }
        if soft >= self.soft_threshold {
            return Some("soft_banned_words");
        }
        let normalized: String = lower.chars().filter(|c| c.is_alphanumeric()).collect();
        if self
            .subwords
            .iter()
            .any(|s| normalized.contains(s.as_str()))
        {
            return Some("banned_subword");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_fires() {
        let dir = tempfile::tempdir().unwrap();
        let domains = dir.path().join("d.txt");
        std::fs::write(&domains, "# comment\nbad.example\n").unwrap();
        let urls = dir.path().join("u.txt");
        std::fs::write(&urls, "http://ok.example/exact-page\n").unwrap();
        let f = UrlFilter::new(&UrlFilterConfig {
            domain_files: vec![domains],
            url_files: vec![urls],
            banned_words: vec!["forbidden".into()],
            banned_subwords: vec!["evilstring".into()],
            soft_banned_words: vec!["dating".into(), "hot".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(f.check("https://www.python.org/doc/"), None);
        assert_eq!(
            f.check("http://sub.bad.example/page"),
            Some("blocked_domain")
        );
        assert_eq!(f.check("http://notbad.example/page"), None);
        assert_eq!(f.check("http://ok.example/exact-page"), Some("blocked_url"));
        assert_eq!(
            f.check("http://ok.example/a/forbidden/b"),
            Some("banned_word")
        );
        assert_eq!(f.check("http://ok.example/forbiddenfruit"), None);
        assert_eq!(
            f.check("http://ok.example/x-evil-string-y"),
            Some("banned_subword")
        );
        assert_eq!(f.check("http://ok.example/hot"), None);
        assert_eq!(
            f.check("http://ok.example/hot-dating"),
            Some("soft_banned_words")
        );
    }

    #[test]
    fn shipped_list_is_loaded() {
        let f = UrlFilter::new(&UrlFilterConfig::default()).unwrap();
        assert_eq!(f.check("http://www.pornhub.com/x"), Some("blocked_domain"));
        assert_eq!(
            f.check("http://example.com/free-porn-videos"),
            Some("banned_word")
        );
        assert_eq!(f.check("http://www.iana.org/domains/example"), None);
    }

    #[test]
    fn host_parsing() {
        assert_eq!(host("HTTP://user@WWW.Example.com:8080/x?y"), "example.com");
        assert_eq!(host("example.org"), "example.org");
    }
}
