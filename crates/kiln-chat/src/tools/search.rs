//! The search tool: a small BM25 inverted index over passages of the corpus, and the text a search
//! call returns to the model (the top passages, each with its source).
//!
//! Own code rather than tantivy: the corpora here are thousands of documents, an index that fits in
//! memory and loads in milliseconds, and tantivy is a heavy build on the 2-core machine for a few
//! hundred lines of need. Passages are ~150-word windows of a document (long enough to hold a
//! fact with its context, short enough that three of them fit a tool output); the tokenizer
//! lowercases and splits on anything that is not alphanumeric; scoring is Okapi BM25 with
//! k1 = 1.2, b = 0.75. The index is one JSON file written atomically (temp file, then rename).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Words per passage.
pub const PASSAGE_WORDS: usize = 150;
/// A document's last window shorter than this joins the previous passage.
const MIN_TAIL_WORDS: usize = 50;
const K1: f64 = 1.2;
const B: f64 = 0.75;
/// File name of the index inside its folder.
pub const INDEX_FILE: &str = "search-index.json";

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a search index ({message}); build one with `kiln index build`")]
    Format { path: PathBuf, message: String },
}

/// One passage and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    /// Document url, else its id.
    pub source: String,
    pub text: String,
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit<'a> {
    pub passage: &'a Passage,
    pub score: f64,
}

/// The index: passages, their token counts, and for each term its postings (passage, term count).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SearchIndex {
    passages: Vec<Passage>,
    lengths: Vec<u32>,
    /// BTreeMap: the file is deterministic for the same corpus.
    postings: BTreeMap<String, Vec<(u32, u32)>>,
}

/// Lowercased alphanumeric runs.
pub fn tokenize(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
}

impl SearchIndex {
    /// Index documents given as `(source, text)`.
    pub fn build<'a>(docs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut index = SearchIndex::default();
        for (source, text) in docs {
            let words: Vec<&str> = text.split_whitespace().collect();
            let mut start = 0;
            while start < words.len() {
                let mut end = (start + PASSAGE_WORDS).min(words.len());
                if words.len() - end < MIN_TAIL_WORDS {
                    end = words.len();
                }
                index.add(source, words[start..end].join(" "));
                start = end;
            }
        }
        index
    }

    fn add(&mut self, source: &str, text: String) {
        let id = self.passages.len() as u32;
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut len = 0u32;
        for t in tokenize(&text) {
            *counts.entry(t).or_default() += 1;
            len += 1;
        }
        for (term, tf) in counts {
            self.postings.entry(term).or_default().push((id, tf));
        }
        self.lengths.push(len);
        self.passages.push(Passage {
            source: source.to_string(),
            text,
        });
    }

    pub fn len(&self) -> usize {
        self.passages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.passages.is_empty()
    }

    /// The `k` best passages for `query` by BM25, best first (ties: earlier passage first).
    pub fn search(&self, query: &str, k: usize) -> Vec<Hit<'_>> {
        let n = self.passages.len() as f64;
        if n == 0.0 {
            return Vec::new();
        }
        let avg = self.lengths.iter().map(|&l| l as f64).sum::<f64>() / n;
        let mut terms: Vec<String> = tokenize(query).collect();
        terms.sort();
        terms.dedup();
        let mut scores: HashMap<u32, f64> = HashMap::new();
        for term in &terms {
            let Some(list) = self.postings.get(term) else {
                continue;
            };
            let df = list.len() as f64;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for &(p, tf) in list {
                let tf = tf as f64;
                let len = self.lengths[p as usize] as f64;
                let s = idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / avg.max(1.0)));
                *scores.entry(p).or_default() += s;
            }
        }
        let mut ranked: Vec<(u32, f64)> = scores.into_iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked
            .into_iter()
            .take(k)
            .map(|(p, score)| Hit {
                passage: &self.passages[p as usize],
                score,
            })
            .collect()
    }

    /// What a search call returns to the model: numbered passages with their source, or a readable
    /// line when the query is empty or nothing matched.
    pub fn answer(&self, query: &str, k: usize) -> String {
        if tokenize(query).next().is_none() {
            return "empty query: give some words to search for\n".into();
        }
        let hits = self.search(query, k);
        if hits.is_empty() {
            // Echo the query (a model reads what it asked), not a runaway one in full.
            let shown: String = query.trim().chars().take(200).collect();
            return format!("no results for: {shown}\n");
        }
        let mut out = String::new();
        for (i, h) in hits.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!(
                "[{}] {}\n{}\n",
                i + 1,
                h.passage.source,
                h.passage.text
            ));
        }
        out
    }

    /// Write the index into folder `dir` (created), atomically: a reader sees the old index or the
    /// new one, never half a file.
    pub fn save(&self, dir: &Path) -> Result<(), SearchError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SearchError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(INDEX_FILE);
        let tmp = dir.join(format!(".{INDEX_FILE}.tmp{}", std::process::id()));
        let bytes = serde_json::to_vec(self).map_err(|e| SearchError::Format {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Read an index folder written by [`SearchIndex::save`].
    pub fn load(dir: &Path) -> Result<Self, SearchError> {
        let path = dir.join(INDEX_FILE);
        let bytes = std::fs::read(&path).map_err(|source| SearchError::Io {
            path: path.clone(),
            source,
        })?;
        let index: SearchIndex =
            serde_json::from_slice(&bytes).map_err(|e| SearchError::Format {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if index.lengths.len() != index.passages.len()
            || index
                .postings
                .values()
                .flatten()
                .any(|&(p, _)| p as usize >= index.passages.len())
        {
            return Err(SearchError::Format {
                path,
                message: "inconsistent passage tables".into(),
            });
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> SearchIndex {
        SearchIndex::build([
            ("https://a.example/otters", "Sea otters hold hands while they sleep so they do not drift apart. Otters eat urchins."),
            ("https://b.example/kiln", "A kiln is an oven for firing pottery. The kiln at Zorvath reaches 1300 degrees."),
            ("https://c.example/rust", "Rust is a systems programming language. Cargo builds Rust code."),
        ])
    }

    #[test]
    fn finds_the_passage_holding_the_fact_with_its_source() {
        let idx = corpus();
        let hits = idx.search("How hot is the Zorvath kiln?", 3);
        assert_eq!(hits[0].passage.source, "https://b.example/kiln");
        let text = idx.answer("zorvath KILN", 2);
        assert!(
            text.starts_with("[1] https://b.example/kiln\nA kiln is"),
            "{text}"
        );
        assert!(!text.contains("[2]"), "only passages that match: {text}");
    }

    #[test]
    fn rare_terms_outweigh_common_ones() {
        let idx = corpus();
        // "is" occurs in two passages, "otters" in one.
        assert_eq!(
            idx.search("is otters", 1)[0].passage.source,
            "https://a.example/otters"
        );
    }

    #[test]
    fn no_hits_and_empty_queries_are_readable() {
        let idx = corpus();
        assert_eq!(idx.answer("xylophone", 3), "no results for: xylophone\n");
        assert_eq!(
            idx.answer("  ?! ", 3),
            "empty query: give some words to search for\n"
        );
        assert_eq!(
            SearchIndex::default().answer("kiln", 3),
            "no results for: kiln\n"
        );
    }

    #[test]
    fn odd_queries_answer_without_panicking() {
        let idx = corpus();
        let long = "kiln ".repeat(20_000);
        for q in [
            "\0",
            "İstanbul ǅ ß",
            "🦦 otters 🦦",
            "\u{202e}kiln",
            long.as_str(),
            "a\nb\tc",
            "KILN kiln Kiln",
        ] {
            let text = idx.answer(q, 3);
            assert!(!text.is_empty());
            assert!(idx.search(q, 0).is_empty());
        }
        assert!(idx
            .answer("🦦 otters", 3)
            .starts_with("[1] https://a.example/otters"));
    }

    #[test]
    fn long_documents_split_into_passages_without_a_short_tail() {
        let words: Vec<String> = (0..(PASSAGE_WORDS * 2 + 10))
            .map(|i| format!("w{i}"))
            .collect();
        let doc = words.join(" ");
        let idx = SearchIndex::build([("doc", doc.as_str())]);
        assert_eq!(idx.len(), 2);
        assert_eq!(
            idx.search("w0", 1)[0].passage.text.split(' ').count(),
            PASSAGE_WORDS
        );
        let last = format!("w{}", PASSAGE_WORDS * 2 + 9);
        assert_eq!(
            idx.search(&last, 1)[0].passage.text.split(' ').count(),
            PASSAGE_WORDS + 10
        );
    }

    #[test]
    fn save_then_load_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let idx = corpus();
        idx.save(dir.path()).unwrap();
        let back = SearchIndex::load(dir.path()).unwrap();
        assert_eq!(back.answer("otters", 3), idx.answer("otters", 3));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(INDEX_FILE)],
            "no temp file left"
        );
        std::fs::write(dir.path().join(INDEX_FILE), b"{\"passages\": 3").unwrap();
        assert!(matches!(
            SearchIndex::load(dir.path()),
            Err(SearchError::Format { .. })
        ));
    }
}
