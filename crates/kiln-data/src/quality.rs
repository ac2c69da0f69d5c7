//! Text quality filters in FineWeb's order, with datatrove's published defaults: Gopher
//! repetition, Gopher quality, C4 (line-level removal plus document rules; FineWeb turns off the
//! terminal-punctuation line rule) and FineWeb's own three filters.
//!
//! Each filter returns `Ok(())` to keep or `Err(reason)` with datatrove's reason names, so the
//! rejects log and stats read the same as a datatrove run. Word splitting approximates NLTK's
//! English word tokenizer (words, numbers and each punctuation run are tokens), which is what
//! datatrove's ratios are computed over.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A small multiply-rotate hasher (FxHash's recipe). The std SipHash made n-gram counting
/// 70% of the pipeline's time; these tables hold text fragments, not attacker-chosen keys
/// that could matter for DoS (a document's cost is bounded by its length either way).
#[derive(Default, Clone, Copy)]
pub struct Fx(u64);

impl Fx {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut v = [0u8; 8];
            v[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(v));
        }
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type FxBuild = BuildHasherDefault<Fx>;

/// Words, numbers and punctuation runs, roughly as NLTK's `word_tokenize` yields them.
pub fn split_words(text: &str) -> Vec<&str> {
    let mut words = Vec::with_capacity(text.len() / 5);
    let b = text.as_bytes();
    let mut i = 0;
    let n = text.len();
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    while i < n {
        let c = text[i..].chars().next().expect("in bounds");
        let cl = c.len_utf8();
        if c.is_whitespace() {
            i += cl;
            continue;
        }
        let start = i;
        if is_word(c) {
            i += cl;
            while i < n {
                let c2 = text[i..].chars().next().expect("in bounds");
                // Joiners inside a word: it's, state-of-the-art, 3.14, 1,000.
                let joiner = matches!(c2, '\'' | '’' | '-' | '.' | ',')
                    && text[i + c2.len_utf8()..]
                        .chars()
                        .next()
                        .is_some_and(|c3| is_word(c3) && (c2 != ',' || c3.is_ascii_digit()))
                    && (c2 != ',' || b[i - 1].is_ascii_digit());
                if is_word(c2) || joiner {
                    i += c2.len_utf8();
                } else {
                    break;
                }
            }
        } else {
            // A run of the same punctuation character ("...", "--") is one token.
            i += cl;
            while i < n && text[i..].starts_with(c) {
                i += cl;
            }
        }
        words.push(&text[start..i]);
    }
    words
}

fn find_duplicates<'a>(items: impl Iterator<Item = &'a str>) -> (usize, usize) {
    let mut seen: HashSet<&str, FxBuild> = HashSet::default();
    let (mut dup_elements, mut dup_chars) = (0, 0);
    for item in items {
        if !seen.insert(item) {
            dup_elements += 1;
            dup_chars += item.len();
        }
    }
    (dup_elements, dup_chars)
}

/// `[gopher_repetition]`: datatrove `GopherRepetitionFilter` defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GopherRepetitionConfig {
    pub enabled: bool,
    pub dup_line_frac: f64,
    pub dup_para_frac: f64,
    pub dup_line_char_frac: f64,
    pub dup_para_char_frac: f64,
    /// (n, max fraction of characters in the most frequent n-gram)
    pub top_n_grams: Vec<(usize, f64)>,
    /// (n, max fraction of characters in duplicated n-grams)
    pub dup_n_grams: Vec<(usize, f64)>,
}

impl Default for GopherRepetitionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dup_line_frac: 0.3,
            dup_para_frac: 0.3,
            dup_line_char_frac: 0.2,
            dup_para_char_frac: 0.2,
            top_n_grams: vec![(2, 0.2), (3, 0.18), (4, 0.16)],
            dup_n_grams: vec![
                (5, 0.15),
                (6, 0.14),
                (7, 0.13),
                (8, 0.12),
                (9, 0.11),
                (10, 0.10),
            ],
        }
    }
}

pub fn gopher_repetition(text: &str, c: &GopherRepetitionConfig) -> Result<(), &'static str> {
    let total = text.len().max(1) as f64;
    let paragraphs: Vec<&str> = split_regex_like(text.trim(), 2);
    let (dup, chars) = find_duplicates(paragraphs.iter().copied());
    if dup as f64 / paragraphs.len().max(1) as f64 > c.dup_para_frac {
        return Err("dup_para_frac");
    }
    if chars as f64 / total > c.dup_para_char_frac {
        return Err("dup_para_char_frac");
    }
    let lines: Vec<&str> = split_regex_like(text, 1);
    let (dup, chars) = find_duplicates(lines.iter().copied());
    if dup as f64 / lines.len().max(1) as f64 > c.dup_line_frac {
        return Err("dup_line_frac");
    }
    if chars as f64 / total > c.dup_line_char_frac {
        return Err("dup_line_char_frac");
    }
    let words = split_words(text);
    // Words as ids, n-grams as 64-bit hashes of ids: equal n-grams hash equal, and distinct
    // ones collide with negligible probability.
    let mut intern: HashMap<&str, u64, FxBuild> = HashMap::default();
    let ids: Vec<u64> = words
        .iter()
        .map(|w| {
            let next = intern.len() as u64;
            *intern.entry(w).or_insert(next)
        })
        .collect();
    let gram_hash = |i: usize, n: usize| -> u64 {
        let mut h = Fx(n as u64);
        for &id in &ids[i..i + n] {
            h.add(id);
        }
        h.0
    };
    let gram_len = |i: usize, n: usize| words[i..i + n].iter().map(|w| w.len()).sum::<usize>();
    for &(n, frac) in &c.top_n_grams {
        if words.len() < n {
            continue;
        }
        let mut counts: HashMap<u64, u32, FxBuild> = HashMap::default();
        for i in 0..=words.len() - n {
            *counts.entry(gram_hash(i, n)).or_insert(0) += 1;
        }
        // The most frequent n-gram (first seen wins ties, as Counter.most_common does).
        let mut best: Option<(usize, u32)> = None;
        for i in 0..=words.len() - n {
            let count = counts[&gram_hash(i, n)];
            if best.is_none_or(|(_, c)| count > c) {
                best = Some((i, count));
            }
        }
        if let Some((i, count)) = best {
            let len = gram_len(i, n) + n - 1;
            if (len * count as usize) as f64 / total > frac {
                return Err(match n {
                    2 => "top_2_gram",
                    3 => "top_3_gram",
                    4 => "top_4_gram",
                    _ => "top_n_gram",
                });
            }
        }
    }
    for &(n, frac) in &c.dup_n_grams {
        if words.len() < n {
            continue;
        }
        let mut seen: HashSet<u64, FxBuild> = HashSet::default();
        let mut repeated = 0usize;
        let mut i = 0;
        while i + n <= words.len() {
            let h = gram_hash(i, n);
            if seen.contains(&h) {
                repeated += gram_len(i, n);
                i += n;
            } else {
                seen.insert(h);
                i += 1;
            }
        }
        if repeated as f64 / total > frac {
            return Err(match n {
                5 => "duplicated_5_n_grams",
                6 => "duplicated_6_n_grams",
                7 => "duplicated_7_n_grams",
                8 => "duplicated_8_n_grams",
                9 => "duplicated_9_n_grams",
                10 => "duplicated_10_n_grams",
                _ => "duplicated_n_grams",
            });
        }
    }
    Ok(())
}

/// Split on runs of at least `min` newlines (`\n{2,}` for paragraphs, `\n+` for lines).
fn split_regex_like(text: &str, min: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            let run_start = i;
            while i < b.len() && b[i] == b'\n' {
                i += 1;
            }
            if i - run_start >= min {
                out.push(&text[start..run_start]);
                start = i;
            }
        } else {
            i += 1;
        }
    }
    out.push(&text[start..]);
    out
}

/// `[gopher_quality]`: datatrove `GopherQualityFilter` defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GopherQualityConfig {
    pub enabled: bool,
    pub min_doc_words: usize,
    pub max_doc_words: usize,
    pub min_avg_word_length: f64,
    pub max_avg_word_length: f64,
    pub max_symbol_word_ratio: f64,
    pub max_bullet_lines_ratio: f64,
    pub max_ellipsis_lines_ratio: f64,
    pub max_non_alpha_words_ratio: f64,
    pub min_stop_words: usize,
    pub stop_words: Vec<String>,
}

impl Default for GopherQualityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_doc_words: 50,
            max_doc_words: 100_000,
            min_avg_word_length: 3.0,
            max_avg_word_length: 10.0,
            max_symbol_word_ratio: 0.1,
            max_bullet_lines_ratio: 0.9,
            max_ellipsis_lines_ratio: 0.3,
            max_non_alpha_words_ratio: 0.8,
            min_stop_words: 2,
            stop_words: ["the", "be", "to", "of", "and", "that", "have", "with"]
                .map(String::from)
                .to_vec(),
        }
    }
}

pub fn gopher_quality(text: &str, c: &GopherQualityConfig) -> Result<(), &'static str> {
    let words = split_words(text);
    let n_words = words.len().max(1) as f64;
    let non_symbol: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| w.chars().any(|ch| ch.is_alphanumeric()))
        .collect();
    if non_symbol.len() < c.min_doc_words {
        return Err("gopher_short_doc");
    }
    if non_symbol.len() > c.max_doc_words {
        return Err("gopher_long_doc");
    }
    let avg = non_symbol.iter().map(|w| w.chars().count()).sum::<usize>() as f64
        / non_symbol.len().max(1) as f64;
    if avg < c.min_avg_word_length {
        return Err("gopher_below_avg_threshold");
    }
    if avg > c.max_avg_word_length {
        return Err("gopher_above_avg_threshold");
    }
    if text.matches('#').count() as f64 / n_words > c.max_symbol_word_ratio {
        return Err("gopher_too_many_hashes");
    }
    if (text.matches("...").count() + text.matches('…').count()) as f64 / n_words
        > c.max_symbol_word_ratio
    {
        return Err("gopher_too_many_ellipsis");
    }
    let lines: Vec<&str> = text.lines().collect();
    let n_lines = lines.len().max(1) as f64;
    let bullets = lines
        .iter()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with('•') || t.starts_with('-')
        })
        .count();
    if bullets as f64 / n_lines > c.max_bullet_lines_ratio {
        return Err("gopher_too_many_bullets");
    }
    let ellipsis = lines
        .iter()
        .filter(|l| {
            let t = l.trim_end();
            t.ends_with("...") || t.ends_with('…')
        })
        .count();
    if ellipsis as f64 / n_lines > c.max_ellipsis_lines_ratio {
        return Err("gopher_too_many_end_ellipsis");
    }
    let alpha = words
        .iter()
        .filter(|w| w.chars().any(char::is_alphabetic))
        .count();
    if (alpha as f64 / n_words) < c.max_non_alpha_words_ratio {
        return Err("gopher_below_alpha_threshold");
    }
    let stop = words
        .iter()
        .filter(|w| c.stop_words.iter().any(|s| s == *w))
        .count();
    if stop < c.min_stop_words {
        return Err("gopher_enough_stop_words");
    }
    Ok(())
}

/// `[c4]`: datatrove `C4QualityFilter` defaults, with FineWeb's `filter_no_terminal_punct = false`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct C4Config {
    pub enabled: bool,
    pub filter_no_terminal_punct: bool,
    pub min_num_sentences: usize,
    pub min_words_per_line: usize,
    pub max_word_length: usize,
    pub remove_citations: bool,
    pub filter_lorem_ipsum: bool,
    pub filter_javascript: bool,
    pub filter_curly_bracket: bool,
    pub filter_policy: bool,
    pub policy_substrings: Vec<String>,
}

impl Default for C4Config {
    fn default() -> Self {
        Self {
            enabled: true,
            filter_no_terminal_punct: false,
            min_num_sentences: 5,
            min_words_per_line: 3,
            max_word_length: 1000,
            remove_citations: true,
            filter_lorem_ipsum: true,
            filter_javascript: true,
            filter_curly_bracket: true,
            filter_policy: true,
            policy_substrings: [
                "terms of use",
                "privacy policy",
                "cookie policy",
                "uses cookies",
                "use of cookies",
                "use cookies",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// `[edit]`, `[citation needed]`, `[12]`, `[]`.
fn remove_citations(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.contains('[') {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find(']');
        let inner = close.map(|c| &after[..c]);
        match inner {
            Some(i)
                if i.bytes().all(|b| b.is_ascii_digit())
                    || i == "edit"
                    || i == "citation needed" =>
            {
                rest = &after[i.len() + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Sentences in a line, as NLTK's punkt would roughly count them: terminal punctuation followed
/// by whitespace or the end, at least one per non-empty line.
fn count_sentences(line: &str) -> usize {
    let b = line.as_bytes();
    let mut n = 0;
    for i in 0..b.len() {
        if matches!(b[i], b'.' | b'!' | b'?')
            && (i + 1 == b.len() || b[i + 1] == b' ')
            && (i == 0 || !matches!(b[i - 1], b'.' | b'!' | b'?'))
        {
            n += 1;
        }
    }
    let trailing = line.trim_end().ends_with(['.', '!', '?']);
    if !trailing && !line.trim().is_empty() {
        n += 1;
    }
    n.max(1)
}

/// C4: drops lines (too-long word, too few words, "javascript", policy text), strips
/// citations, and drops the document for lorem ipsum, a curly bracket or too few sentences.
/// Returns the cleaned text.
pub fn c4(text: &str, c: &C4Config) -> Result<String, &'static str> {
    let mut kept: Vec<String> = Vec::new();
    let mut sentences = 0;
    for line in text.lines() {
        let line = line.trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.iter().any(|w| w.chars().count() > c.max_word_length) {
            continue;
        }
        let line = if c.remove_citations {
            remove_citations(line)
        } else {
            std::borrow::Cow::Borrowed(line)
        };
        if c.filter_no_terminal_punct
            && (!line.ends_with(['.', '?', '!', '"', '\'']) || line.ends_with("..."))
        {
            continue;
        }
        if words.len() < c.min_words_per_line {
            continue;
        }
        let lower = line.to_lowercase();
        if c.filter_lorem_ipsum && lower.contains("lorem ipsum") {
            return Err("lorem_ipsum");
        }
        if c.filter_javascript && lower.contains("javascript") {
            continue;
        }
        if c.filter_curly_bracket && line.contains('{') {
            return Err("curly_bracket");
        }
        if c.filter_policy
            && c.policy_substrings
                .iter()
                .any(|p| lower.contains(p.as_str()))
        {
            continue;
        }
        sentences += count_sentences(&line);
        kept.push(line.into_owned());
    }
    if sentences < c.min_num_sentences {
        return Err("too_few_sentences");
    }
    Ok(kept.join("\n").trim().to_string())
}

/// `[fineweb]`: datatrove `FineWebQualityFilter` defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FineWebConfig {
    pub enabled: bool,
    pub line_punct_thr: f64,
    pub line_punct_exclude_zero: bool,
    pub short_line_thr: f64,
    pub short_line_length: usize,
    pub char_duplicates_ratio: f64,
    pub new_line_ratio: f64,
}

impl Default for FineWebConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            line_punct_thr: 0.12,
            line_punct_exclude_zero: false,
            short_line_thr: 0.67,
            short_line_length: 30,
            char_duplicates_ratio: 0.01,
            new_line_ratio: 0.3,
        }
    }
}

pub fn fineweb(text: &str, c: &FineWebConfig) -> Result<(), &'static str> {
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return Err("empty");
    }
    let n = lines.len() as f64;
    let punct = lines
        .iter()
        .filter(|l| l.ends_with(['.', '\'', '"', '!', '?']))
        .count() as f64
        / n;
    if punct <= c.line_punct_thr && !(punct == 0.0 && c.line_punct_exclude_zero) {
        return Err("line_punct_ratio");
    }
    let short = lines
        .iter()
        .filter(|l| l.chars().count() <= c.short_line_length)
        .count() as f64
        / n;
    if short >= c.short_line_thr {
        return Err("short_line_ratio");
    }
    let (_, dup_chars) = find_duplicates(lines.iter().copied());
    let non_newline = (text.len() - text.matches('\n').count()).max(1);
    if dup_chars as f64 / non_newline as f64 >= c.char_duplicates_ratio {
        return Err("char_dup_ratio");
    }
    let words = split_words(text).len().max(1);
    if text.matches('\n').count() as f64 / words as f64 > c.new_line_ratio {
        return Err("list_ratio");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A clean English paragraph of the kind every filter keeps.
    pub(crate) fn good_text() -> String {
        [
            "The history of the river town is long and full of small surprises for the visitor.",
            "Boats have carried grain and timber to the harbour since the early middle ages, and the old quay still stands.",
            "Many of the houses that line the water were built by merchants who traded with the northern ports.",
            "Today the town is known for its market, which is held every Saturday in the square beside the church.",
            "Visitors who stay for a few days can walk along the towpath to the next village and return by ferry.",
            "The local museum explains how the river shaped the lives of the people who have lived here for centuries.",
        ]
        .join("\n")
    }

    #[test]
    fn words_split_like_nltk() {
        assert_eq!(
            split_words("Hello, world... It's 3.14 and state-of-the-art!"),
            [
                "Hello",
                ",",
                "world",
                "...",
                "It's",
                "3.14",
                "and",
                "state-of-the-art",
                "!"
            ]
        );
    }

    #[test]
    fn good_text_passes_everything() {
        let t = good_text();
        assert_eq!(gopher_repetition(&t, &Default::default()), Ok(()));
        assert_eq!(gopher_quality(&t, &Default::default()), Ok(()));
        assert_eq!(c4(&t, &Default::default()).as_deref(), Ok(t.as_str()));
        assert_eq!(fineweb(&t, &Default::default()), Ok(()));
    }

    #[test]
    fn gopher_repetition_rules() {
        let c = GopherRepetitionConfig::default();
        let t = good_text();
        let dup_lines = format!("{t}\n{t}");
        assert_eq!(gopher_repetition(&dup_lines, &c), Err("dup_line_frac"));
        let dup_paras = format!("{t}\n\n{t}\n\nanother paragraph here");
        assert_eq!(gopher_repetition(&dup_paras, &c), Err("dup_para_frac"));
        let spam = format!("{t} {}", "buy now ".repeat(60));
        assert_eq!(gopher_repetition(&spam, &c), Err("top_2_gram"));
        // One long line repeating 5-gram runs, with no top-2-gram dominating.
        let words: Vec<String> = (0..40).map(|i| format!("w{i}x")).collect();
        let block = words.join(" ");
        let rep = format!("{block} {block} {block}");
        assert!(
            gopher_repetition(&rep, &c)
                .unwrap_err()
                .starts_with("duplicated_"),
            "{:?}",
            gopher_repetition(&rep, &c)
        );
    }

    #[test]
    fn gopher_quality_rules() {
        let c = GopherQualityConfig::default();
        let t = good_text();
        assert_eq!(
            gopher_quality("too short text", &c),
            Err("gopher_short_doc")
        );
        let long_words = "internationalisation ".repeat(60);
        assert_eq!(
            gopher_quality(&long_words, &c),
            Err("gopher_above_avg_threshold")
        );
        let short_words = "a b c d e f g h i j ".repeat(10);
        assert_eq!(
            gopher_quality(&short_words, &c),
            Err("gopher_below_avg_threshold")
        );
        assert_eq!(
            gopher_quality(&format!("{t} {}", "#tag ".repeat(20)), &c),
            Err("gopher_too_many_hashes")
        );
        assert_eq!(
            gopher_quality(&format!("{t} {}", "wait... ".repeat(20)), &c),
            Err("gopher_too_many_ellipsis")
        );
        let bullets: String = t.lines().map(|l| format!("- {l}\n")).collect();
        assert_eq!(gopher_quality(&bullets, &c), Err("gopher_too_many_bullets"));
        let ellipses: String = t
            .lines()
            .map(|l| format!("{l} and so on...\n"))
            .collect::<String>();
        assert_eq!(
            gopher_quality(&ellipses, &c),
            Err("gopher_too_many_end_ellipsis")
        );
        let end_ell = format!("{t}\n{}", "more to come…\n".repeat(5));
        assert_eq!(
            gopher_quality(
                &end_ell,
                &GopherQualityConfig {
                    max_symbol_word_ratio: 1.0,
                    ..c.clone()
                }
            ),
            Err("gopher_too_many_end_ellipsis")
        );
        let numbers = format!("{t} {}", "1234 5678 9012 ".repeat(40));
        assert_eq!(
            gopher_quality(&numbers, &c),
            Err("gopher_below_alpha_threshold")
        );
        let no_stop = "lorem dolor amet consectetur adipiscing elit sed eiusmod tempor ".repeat(8);
        assert_eq!(
            gopher_quality(&no_stop, &c),
            Err("gopher_enough_stop_words")
        );
    }

    #[test]
    fn c4_rules() {
        let c = C4Config::default();
        let t = good_text();
        let with_junk = format!("{t}\nEnable JavaScript to view this site properly today.\nRead our privacy policy for more.\nok then\nCited fact here[12] and more [edit].");
        let out = c4(&with_junk, &c).unwrap();
        assert!(
            !out.to_lowercase().contains("javascript")
                && !out.contains("privacy")
                && !out.contains("ok then")
        );
        assert!(out.ends_with("Cited fact here and more ."), "{out}");
        assert_eq!(
            c4(&format!("{t}\nLorem ipsum dolor sit amet."), &c),
            Err("lorem_ipsum")
        );
        assert_eq!(
            c4(&format!("{t}\nfunction f() {{ return 1; }}"), &c),
            Err("curly_bracket")
        );
        assert_eq!(
            c4("One sentence only here.\nAnd another one here.", &c),
            Err("too_few_sentences")
        );
        let long_word = format!("{t}\nword {} here", "x".repeat(1001));
        assert_eq!(c4(&long_word, &c).unwrap(), t);
    }

    #[test]
    fn fineweb_rules() {
        let c = FineWebConfig::default();
        let t = good_text();
        let no_punct: String = t
            .lines()
            .map(|l| format!("{}\n", l.trim_end_matches('.')))
            .collect();
        assert_eq!(fineweb(&no_punct, &c), Err("line_punct_ratio"));
        let short = format!(
            "{t}\n{}",
            "Short line.\n".repeat(0)
                + &(0..20).map(|i| format!("Item {i}.\n")).collect::<String>()
        );
        assert_eq!(fineweb(&short, &c), Err("short_line_ratio"));
        let dup = format!("{t}\n{}", t.lines().next().unwrap());
        assert_eq!(fineweb(&dup, &c), Err("char_dup_ratio"));
        let list: String = (0..30)
            .map(|i| format!("Extraordinarilylongsingleword{i:03}here.\n"))
            .collect();
        assert_eq!(fineweb(&list, &c), Err("list_ratio"));
        assert_eq!(fineweb("   \n ", &c), Err("empty"));
    }
}
