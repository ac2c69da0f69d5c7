//! Byte-level BPE training.
//!
//! 1. Count pieces: the split pattern cuts the text into pieces (words); chunks of the corpus are
//!    counted in parallel (rayon) into hash maps that are then merged. Only distinct pieces and
//!    their counts are kept, so memory follows the vocabulary of the corpus, not its size.
//! 2. Count adjacent byte pairs over the distinct pieces (in parallel), remembering which pieces
//!    hold each pair, and put the pairs in a max-heap by count.
//! 3. Merge: pop the most frequent pair (ties: smallest ids), give it the next id, rewrite only the
//!    pieces that hold it and update the pair counts of the neighbours of each occurrence in place
//!    (no full recount). Heap entries are checked lazily: a popped entry whose count has since
//!    dropped is pushed back with the current count.
//! 4. Special tokens get the ids after the merges.
//!
//! A merge whose bytes already exist as a token (possible when two different pairs spell the same
//! string) is skipped, so the result is a valid tiktoken rank file (unique byte strings).

use crate::corpus::Corpus;
use crate::pretokenize::{SplitPattern, Splitter};
use crate::{Tokenizer, TokenizerError, CHAT_SPECIAL_TOKENS};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;

/// Training settings.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Final number of ids: 256 bytes + merges + special tokens.
    pub vocab_size: usize,
    /// How text is cut into pieces before merging.
    pub pattern: SplitPattern,
    /// Appended after the merges, in this order.
    pub special_tokens: Vec<String>,
    /// Skip binary files inside the inputs instead of failing.
    pub skip_binary: bool,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            vocab_size: 32_768,
            pattern: SplitPattern::Gpt4,
            special_tokens: CHAT_SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect(),
            skip_binary: false,
            progress: false,
        }
    }
}

impl TrainConfig {
    /// Checks the settings before any input is read (the vocabulary must hold the 256 bytes and
    /// the special tokens).
    pub fn check(&self) -> Result<(), TokenizerError> {
        self.n_merges().map(|_| ())
    }

    fn n_merges(&self) -> Result<usize, TokenizerError> {
        let min = 256 + self.special_tokens.len();
        if self.vocab_size < min {
            return Err(TokenizerError::VocabTooSmall {
                requested: self.vocab_size,
                min,
                specials: self.special_tokens.len(),
            });
        }
        Ok(self.vocab_size - min)
    }
}

/// Piece counts, as built by [`PieceCounter`].
type Counts = FxHashMap<String, u64>;

/// Counts pieces of texts fed in batches (parallel within a batch).
pub struct PieceCounter {
    splitter: Splitter,
    counts: Counts,
    bytes: u64,
}

/// Below this a text is counted as one chunk.
const CHUNK: usize = 1 << 20;

impl PieceCounter {
    pub fn new(pattern: &SplitPattern) -> Result<PieceCounter, TokenizerError> {
        Ok(PieceCounter {
            splitter: Splitter::new(pattern)?,
            counts: Counts::default(),
            bytes: 0,
        })
    }

    /// Counts the pieces of a batch of texts in parallel.
    pub fn add_batch<S: AsRef<str> + Sync>(&mut self, texts: &[S]) {
        let mut chunks: Vec<&str> = Vec::new();
        for t in texts {
            split_chunks(t.as_ref(), &mut chunks);
        }
        self.bytes += chunks.iter().map(|c| c.len() as u64).sum::<u64>();
        let splitter = &self.splitter;
        let batch = chunks
            .par_iter()
            .fold(FxHashMap::<&str, u64>::default, |mut map, chunk| {
                splitter.for_each(chunk, |piece| *map.entry(piece).or_default() += 1);
                map
            })
            .map(|map| {
                map.into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<Counts>()
            })
            .reduce(Counts::default, merge_counts);
        self.counts = merge_counts(std::mem::take(&mut self.counts), batch);
    }

    /// Bytes counted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

fn merge_counts(mut a: Counts, mut b: Counts) -> Counts {
    if a.len() < b.len() {
        std::mem::swap(&mut a, &mut b);
    }
    for (k, v) in b {
        *a.entry(k).or_default() += v;
    }
    a
}

/// Cuts `text` into chunks of about [`CHUNK`] bytes, only after a `\n` that is followed by a
/// non-whitespace char: no piece of the built-in patterns spans such a point.
fn split_chunks<'a>(text: &'a str, out: &mut Vec<&'a str>) {
    let bytes = text.as_bytes();
    let mut start = 0;
    while text.len() - start > CHUNK {
        let mut cut = start + CHUNK;
        loop {
            match bytes[cut..].iter().position(|&b| b == b'\n') {
                Some(k) => {
                    cut += k + 1;
                    if cut < bytes.len() && !bytes[cut].is_ascii_whitespace() && bytes[cut] < 0x80 {
                        break;
                    }
                }
                None => {
                    cut = bytes.len();
                    break;
                }
            }
        }
        out.push(&text[start..cut]);
        start = cut;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
}

/// Trains on files and folders (see [`crate::corpus`] for what is read and what is an error):
/// [`Corpus::read`], [`count_texts`], [`train_from_counts`] — the steps `kiln tok train` takes,
/// with its held-out slice between the first two.
pub fn train_from_files(paths: &[PathBuf], cfg: &TrainConfig) -> Result<Tokenizer, TokenizerError> {
    cfg.check()?;
    let corpus = Corpus::read(paths, cfg.skip_binary, cfg.progress)?;
    let texts: Vec<&str> = corpus.texts.iter().map(String::as_str).collect();
    train_from_counts(count_texts(&texts, cfg)?, cfg)
}

/// Counts the pieces of `texts` with `cfg.pattern`, in batches of about 32 MB (each counted in
/// parallel), with a byte progress bar on stderr when `cfg.progress`.
pub fn count_texts(texts: &[&str], cfg: &TrainConfig) -> Result<PieceCounter, TokenizerError> {
    let mut counter = PieceCounter::new(&cfg.pattern)?;
    let total: usize = texts.iter().map(|t| t.len()).sum();
    let bar = progress_bar(cfg.progress, total as u64, "counting", true);
    let mut start = 0;
    while start < texts.len() {
        let (mut end, mut size) = (start, 0);
        while end < texts.len() && (end == start || size < 32 << 20) {
            size += texts[end].len();
            end += 1;
        }
        counter.add_batch(&texts[start..end]);
        bar.inc(size as u64);
        start = end;
    }
    bar.finish_and_clear();
    Ok(counter)
}

/// Trains on texts from an iterator (consumed in batches of about 64 MB).
pub fn train_from_iter<I, S>(texts: I, cfg: &TrainConfig) -> Result<Tokenizer, TokenizerError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str> + Sync,
{
    cfg.n_merges()?;
    let mut counter = PieceCounter::new(&cfg.pattern)?;
    let mut batch = Vec::new();
    let mut size = 0;
    for t in texts {
        size += t.as_ref().len();
        batch.push(t);
        if size >= 64 << 20 {
            counter.add_batch(&batch);
            batch.clear();
            size = 0;
        }
    }
    counter.add_batch(&batch);
    if counter.counts.is_empty() {
        return Err(TokenizerError::EmptyCorpus("no text given".into()));
    }
    train_from_counts(counter, cfg)
}

/// Trains on in-memory texts.
pub fn train_from_texts<S: AsRef<str> + Sync>(
    texts: &[S],
    cfg: &TrainConfig,
) -> Result<Tokenizer, TokenizerError> {
    train_from_iter(texts.iter().map(|s| s.as_ref()), cfg)
}

/// A progress bar on stderr labelled `what` (counting bytes, else items), or a hidden one.
pub(crate) fn progress_bar(show: bool, len: u64, what: &str, bytes: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let template = if bytes {
        "{msg:>9} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})"
    } else {
        "{msg:>9} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})"
    };
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

#[inline(always)]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

/// Steps 2–4 on counted pieces.
pub fn train_from_counts(
    counter: PieceCounter,
    cfg: &TrainConfig,
) -> Result<Tokenizer, TokenizerError> {
    let n_merges = cfg.n_merges()?;
    let started = std::time::Instant::now();
    let mut words: Vec<Vec<u32>> = Vec::with_capacity(counter.counts.len());
    let mut freq: Vec<i64> = Vec::with_capacity(counter.counts.len());
    for (piece, count) in counter.counts {
        if piece.len() >= 2 {
            words.push(piece.bytes().map(u32::from).collect());
            freq.push(count as i64);
        }
    }
    tracing::info!(
        "{} distinct pieces from {} bytes",
        words.len(),
        counter.bytes
    );

    // Pair counts and where each pair occurs, in parallel over the words.
    type Where = FxHashMap<u64, Vec<u32>>;
    let (mut counts, mut places) = words
        .par_iter()
        .enumerate()
        .fold(
            || (FxHashMap::<u64, i64>::default(), Where::default()),
            |(mut counts, mut places), (w, word)| {
                for pair in word.windows(2) {
                    let k = key(pair[0], pair[1]);
                    *counts.entry(k).or_default() += freq[w];
                    let list = places.entry(k).or_default();
                    if list.last() != Some(&(w as u32)) {
                        list.push(w as u32);
                    }
                }
                (counts, places)
            },
        )
        .reduce(
            || (FxHashMap::default(), Where::default()),
            |(mut c1, mut p1), (mut c2, mut p2)| {
                if c1.len() < c2.len() {
                    std::mem::swap(&mut c1, &mut c2);
                    std::mem::swap(&mut p1, &mut p2);
                }
                for (k, v) in c2 {
                    *c1.entry(k).or_default() += v;
                }
                for (k, mut v) in p2 {
                    p1.entry(k).or_default().append(&mut v);
                }
                (c1, p1)
            },
        );
    let mut heap: BinaryHeap<(i64, Reverse<u64>)> =
        counts.iter().map(|(&k, &c)| (c, Reverse(k))).collect();

    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut known: FxHashSet<Vec<u8>> = tokens.iter().cloned().collect();
    let bar = progress_bar(cfg.progress, n_merges as u64, "merging", false);
    let mut delta: Vec<(u64, i64)> = Vec::new();
    while tokens.len() < 256 + n_merges {
        let Some((count, Reverse(k))) = heap.pop() else {
            break;
        };
        let current = counts.get(&k).copied().unwrap_or(0);
        if current != count {
            if current > 0 {
                heap.push((current, Reverse(k)));
            }
            continue;
        }
        if count <= 0 {
            break;
        }
        let (a, b) = ((k >> 32) as u32, k as u32);
        let mut bytes = tokens[a as usize].clone();
        bytes.extend_from_slice(&tokens[b as usize]);
        counts.remove(&k);
        let mut where_list = places.remove(&k).unwrap_or_default();
        if !known.insert(bytes.clone()) {
            continue; // same bytes as an earlier token: skip this pair for good
        }
        let c = tokens.len() as u32;
        tokens.push(bytes);
        where_list.sort_unstable();
        where_list.dedup();
        delta.clear();
        for &w in &where_list {
            let word = &mut words[w as usize];
            let n = freq[w as usize];
            let mut i = 0;
            let mut touched = false;
            while i + 1 < word.len() {
                if word[i] == a && word[i + 1] == b {
                    if i > 0 {
                        delta.push((key(word[i - 1], a), -n));
                        delta.push((key(word[i - 1], c), n));
                    }
                    if i + 2 < word.len() {
                        delta.push((key(b, word[i + 2]), -n));
                        delta.push((key(c, word[i + 2]), n));
                    }
                    word[i] = c;
                    word.remove(i + 1);
                    touched = true;
                }
                i += 1;
            }
            if touched {
                // Record where the new pairs live.
                for pair in word.windows(2) {
                    if pair[0] == c || pair[1] == c {
                        let list = places.entry(key(pair[0], pair[1])).or_default();
                        if list.last() != Some(&w) {
                            list.push(w);
                        }
                    }
                }
            }
        }
        let mut new_pairs: FxHashSet<u64> = FxHashSet::default();
        for &(pk, d) in &delta {
            let entry = counts.entry(pk).or_default();
            *entry += d;
            let (x, y) = ((pk >> 32) as u32, pk as u32);
            if x == c || y == c {
                new_pairs.insert(pk);
            }
        }
        for pk in new_pairs {
            let cnt = counts[&pk];
            if cnt > 0 {
                heap.push((cnt, Reverse(pk)));
            }
        }
        if tokens.len() & 63 == 0 {
            bar.set_position((tokens.len() - 256) as u64);
        }
    }
    bar.finish_and_clear();
    let merges = tokens.len() - 256;
    if merges < n_merges {
        tracing::warn!(
            "corpus too small for vocab size {}: stopped after {merges} merges (no pair left)",
            cfg.vocab_size
        );
    }
    tracing::info!("{merges} merges in {:.1}s", started.elapsed().as_secs_f64());
    let n_ranks = tokens.len() as u32;
    let ranks: Vec<(Vec<u8>, u32)> = tokens.into_iter().zip(0u32..).collect();
    let specials = cfg.special_tokens.iter().cloned().zip(n_ranks..).collect();
    Tokenizer::from_ranks(ranks, specials, cfg.pattern.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn cfg(vocab_size: usize) -> TrainConfig {
        TrainConfig {
            vocab_size,
            special_tokens: vec!["<|bos|>".into()],
            ..TrainConfig::default()
        }
    }

    /// Reference trainer: full recount after every merge (slow, obviously right).
    fn naive(text: &str, n_merges: usize) -> Vec<Vec<u8>> {
        let splitter = Splitter::new(&SplitPattern::Gpt4).unwrap();
        let mut words: Vec<Vec<Vec<u8>>> = splitter
            .pieces(text)
            .iter()
            .map(|p| p.bytes().map(|b| vec![b]).collect())
            .collect();
        let mut out = Vec::new();
        let mut ids: FxHashMap<Vec<u8>, u32> = (0..=255u8).map(|b| (vec![b], b as u32)).collect();
        for _ in 0..n_merges {
            let mut counts: FxHashMap<(u32, u32), i64> = FxHashMap::default();
            for w in &words {
                for p in w.windows(2) {
                    *counts.entry((ids[&p[0]], ids[&p[1]])).or_default() += 1;
                }
            }
            let Some((&(a, b), _)) = counts
                .iter()
                .max_by_key(|(&(a, b), &c)| (c, Reverse(a), Reverse(b)))
            else {
                break;
            };
            let rev: FxHashMap<u32, Vec<u8>> = ids.iter().map(|(k, v)| (*v, k.clone())).collect();
            let (ta, tb) = (rev[&a].clone(), rev[&b].clone());
            let merged = [ta.clone(), tb.clone()].concat();
            if ids.contains_key(&merged) {
                break;
            }
            ids.insert(merged.clone(), ids.len() as u32);
            out.push(merged.clone());
            for w in &mut words {
                let mut i = 0;
                while i + 1 < w.len() {
                    if w[i] == ta && w[i + 1] == tb {
                        w[i] = merged.clone();
                        w.remove(i + 1);
                    }
                    i += 1;
                }
            }
        }
        out
    }

    const TEXT: &str = "the cat sat on the mat. the hat is on the cat! aaaa aaaaa bbb ab ab abab \
        hello hello world world world, 1234 12345 the the the";

    #[test]
    fn incremental_counts_match_a_full_recount() {
        let tok = train_from_texts(&[TEXT], &cfg(256 + 40 + 1)).unwrap();
        let expected = naive(TEXT, 40);
        let got: Vec<Vec<u8>> = (256..256 + expected.len() as u32)
            .map(|id| tok.token_bytes(id).unwrap().to_vec())
            .collect();
        assert_eq!(got, expected);
        assert_eq!(
            tok.special_token_id("<|bos|>"),
            Some(256 + expected.len() as u32)
        );
    }

    #[test]
    fn trained_tokenizer_round_trips_and_compresses() {
        let text = TEXT.repeat(20);
        let tok = train_from_texts(&[&text], &cfg(300)).unwrap();
        let ids = tok.encode_ordinary(&text);
        assert_eq!(tok.decode(&ids), text);
        assert!(
            ids.len() * 3 < text.len(),
            "{} ids for {} bytes",
            ids.len(),
            text.len()
        );
        let with_bos = tok.encode("<|bos|>the cat", &HashSet::from(["<|bos|>"]));
        assert_eq!(with_bos[0], tok.special_token_id("<|bos|>").unwrap());
    }

    #[test]
    fn bad_settings_are_errors() {
        let err = train_from_texts(&[TEXT], &cfg(200))
            .unwrap_err()
            .to_string();
        assert!(err.contains("200") && err.contains("257"), "{err}");
        let err = train_from_texts(&[""], &cfg(300)).unwrap_err().to_string();
        assert!(err.contains("empty corpus"), "{err}");
    }

    #[test]
    fn chunking_keeps_pieces_whole() {
        let line = "Some words here,  and   spaces\n\n  indented line\n";
        let text = line.repeat(CHUNK / line.len() * 3);
        let mut chunks = Vec::new();
        split_chunks(&text, &mut chunks);
        assert!(chunks.len() >= 3);
        assert_eq!(chunks.concat(), text);
        let s = Splitter::new(&SplitPattern::Gpt4).unwrap();
        let joined: Vec<&str> = chunks.iter().flat_map(|c| s.pieces(c)).collect();
        assert_eq!(joined, s.pieces(&text));
    }
}
