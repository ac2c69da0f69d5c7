//! Split patterns (the regex that cuts text into pieces before BPE) and their fast, hand-written
//! matchers. `Gpt2`, `Gpt4` (cl100k) and `O200k` are matched by code that reproduces the regex's
//! leftmost-first backtracking semantics exactly (checked against fancy-regex by property tests in
//! this file and on the corpora in tests/parity.rs); a `Custom` pattern runs on fancy-regex.
//!
//! Why hand-written: in tiktoken the regex is most of the encode time; a scanner over a two-level
//! Unicode class table does the same split several times faster, with no allocation.

use crate::unicode::{classes, Classes, LETTER, LOWER, NUMBER, SPACE, UPPER};
use crate::TokenizerError;

/// GPT-2 / r50k_base / p50k_base pattern, as tiktoken writes it.
pub const GPT2_PATTERN: &str =
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s";
/// GPT-4 / cl100k_base pattern, as tiktoken writes it.
pub const GPT4_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";
/// o200k_base pattern, as tiktoken writes it.
pub const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"\p{N}{1,3}",
    "|",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    "|",
    r"\s*[\r\n]+",
    "|",
    r"\s+(?!\S)",
    "|",
    r"\s+"
);

/// The regex that splits text into pieces before byte-pair merging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitPattern {
    /// GPT-2 (r50k_base, p50k_base).
    Gpt2,
    /// GPT-4 (cl100k_base).
    Gpt4,
    /// GPT-4o (o200k_base).
    O200k,
    /// Any fancy-regex pattern.
    Custom(String),
}

impl SplitPattern {
    /// The regex source text.
    pub fn regex(&self) -> &str {
        match self {
            SplitPattern::Gpt2 => GPT2_PATTERN,
            SplitPattern::Gpt4 => GPT4_PATTERN,
            SplitPattern::O200k => O200K_PATTERN,
            SplitPattern::Custom(s) => s,
        }
    }

    /// Short name: `gpt2`, `gpt4`, `o200k` or `custom`.
    pub fn name(&self) -> &str {
        match self {
            SplitPattern::Gpt2 => "gpt2",
            SplitPattern::Gpt4 => "gpt4",
            SplitPattern::O200k => "o200k",
            SplitPattern::Custom(_) => "custom",
        }
    }

    /// `gpt2`, `gpt4` (or `cl100k`), `o200k`, or else the text is taken as a regex.
    pub fn parse(text: &str) -> SplitPattern {
        match text {
            "gpt2" | "r50k" | "p50k" => SplitPattern::Gpt2,
            "gpt4" | "cl100k" => SplitPattern::Gpt4,
            "o200k" | "gpt4o" => SplitPattern::O200k,
            _ => SplitPattern::from_regex(text),
        }
    }

    /// A regex; the three known pattern texts map to their named (fast) variants.
    pub fn from_regex(regex: &str) -> SplitPattern {
        match regex {
            GPT2_PATTERN => SplitPattern::Gpt2,
            GPT4_PATTERN => SplitPattern::Gpt4,
            O200K_PATTERN => SplitPattern::O200k,
            other => SplitPattern::Custom(other.to_string()),
        }
    }
}

/// A compiled [`SplitPattern`].
#[derive(Debug)]
pub(crate) enum Splitter {
    Gpt2,
    Gpt4,
    O200k,
    Regex(Box<fancy_regex::Regex>),
}

/// Runs one scanner over the whole text (monomorphised per pattern so `step` inlines).
#[inline(always)]
fn drive<'a, 's>(
    text: &'a str,
    scan: &Scan<'s>,
    step: impl Fn(&Scan<'s>, usize) -> usize,
    mut f: impl FnMut(&'a str),
) {
    let mut i = 0;
    while i < text.len() {
        let e = step(scan, i);
        debug_assert!(e > i && text.is_char_boundary(e));
        // SAFETY: the scanners only stop on char boundaries of a valid &str.
        f(unsafe { text.get_unchecked(i..e) });
        i = e;
    }
}

impl Splitter {
    pub fn new(pattern: &SplitPattern) -> Result<Splitter, TokenizerError> {
        classes();
        Ok(match pattern {
            SplitPattern::Gpt2 => Splitter::Gpt2,
            SplitPattern::Gpt4 => Splitter::Gpt4,
            SplitPattern::O200k => Splitter::O200k,
            SplitPattern::Custom(re) => Splitter::Regex(Box::new(compile_regex(re)?)),
        })
    }

    /// Calls `f` on every piece of `text`, in order.
    #[inline]
    pub fn for_each<'a>(&self, text: &'a str, mut f: impl FnMut(&'a str)) {
        let s = text.as_bytes();
        let scan = Scan { s, t: classes() };
        match self {
            Splitter::Gpt2 => drive(text, &scan, |s, i| s.gpt2(i), f),
            Splitter::Gpt4 => drive(text, &scan, |s, i| s.gpt4(i), f),
            Splitter::O200k => drive(text, &scan, |s, i| s.o200k(i), f),
            Splitter::Regex(re) => {
                for m in re.find_iter(text) {
                    match m {
                        Ok(m) => f(m.as_str()),
                        Err(err) => {
                            // Backtrack limit on a pathological input: log it and stop.
                            tracing::warn!("split regex failed ({err}); rest of the text skipped");
                            break;
                        }
                    }
                }
            }
        }
    }

    /// The pieces of `text` as a vector (tests, training).
    pub fn pieces<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        self.for_each(text, |p| out.push(p));
        out
    }
}

pub(crate) fn compile_regex(re: &str) -> Result<fancy_regex::Regex, TokenizerError> {
    fancy_regex::RegexBuilder::new(re)
        .backtrack_limit(10_000_000)
        .build()
        .map_err(|e| TokenizerError::BadPattern {
            pattern: re.to_string(),
            message: e.to_string(),
        })
}

const OTHER_MASK: u8 = LETTER | NUMBER | SPACE;

struct Scan<'a> {
    s: &'a [u8],
    t: &'static Classes,
}

impl Scan<'_> {
    /// (code point, byte length) at `i` (< len).
    #[inline(always)]
    fn ch(&self, i: usize) -> (u32, usize) {
        let s = self.s;
        let b0 = s[i] as u32;
        if b0 < 0x80 {
            (b0, 1)
        } else if b0 < 0xE0 {
            (((b0 & 0x1F) << 6) | (s[i + 1] as u32 & 0x3F), 2)
        } else if b0 < 0xF0 {
            (
                ((b0 & 0x0F) << 12) | ((s[i + 1] as u32 & 0x3F) << 6) | (s[i + 2] as u32 & 0x3F),
                3,
            )
        } else {
            (
                ((b0 & 0x07) << 18)
                    | ((s[i + 1] as u32 & 0x3F) << 12)
                    | ((s[i + 2] as u32 & 0x3F) << 6)
                    | (s[i + 3] as u32 & 0x3F),
                4,
            )
        }
    }

    /// (code point, class bits, byte length) at `i`, or None at the end.
    #[inline(always)]
    fn at(&self, i: usize) -> Option<(u32, u8, usize)> {
        if i >= self.s.len() {
            return None;
        }
        let (c, l) = self.ch(i);
        Some((c, self.t.of(c), l))
    }

    /// End of the run of chars with any of `bits` starting at `i`.
    #[inline(always)]
    fn run(&self, mut i: usize, bits: u8) -> usize {
        while let Some((_, b, l)) = self.at(i) {
            if b & bits == 0 {
                break;
            }
            i += l;
        }
        i
    }

    /// End of the run of "other" chars (`[^\s\p{L}\p{N}]`) starting at `i`.
    #[inline(always)]
    fn run_other(&self, mut i: usize) -> usize {
        while let Some((_, b, l)) = self.at(i) {
            if b & OTHER_MASK != 0 {
                break;
            }
            i += l;
        }
        i
    }

    /// End of a run of the given ASCII bytes.
    #[inline(always)]
    fn run_bytes(&self, mut i: usize, set: &[u8]) -> usize {
        while i < self.s.len() && set.contains(&self.s[i]) {
            i += 1;
        }
        i
    }

    /// Whitespace run from `i`: (end, start of its last char, end of its last `\r`/`\n` if any).
    #[inline(always)]
    fn space_run(&self, mut i: usize) -> (usize, usize, Option<usize>) {
        let mut last = i;
        let mut nl = None;
        while let Some((c, b, l)) = self.at(i) {
            if b & SPACE == 0 {
                break;
            }
            if c == '\r' as u32 || c == '\n' as u32 {
                nl = Some(i + 1);
            }
            last = i;
            i += l;
        }
        (i, last, nl)
    }

    /// After an apostrophe at `j`: `[sdmt]|ll|ve|re`, case-sensitive or not.
    #[inline(always)]
    fn contraction(&self, j: usize, fold: bool) -> Option<usize> {
        let (c, _, l) = self.at(j)?;
        let lower = |c: u32| -> u32 {
            if fold && (b'A' as u32..=b'Z' as u32).contains(&c) {
                c + 32
            } else if fold && c == 0x17F {
                // U+017F LATIN SMALL LETTER LONG S case-folds to 's'.
                's' as u32
            } else {
                c
            }
        };
        let c = lower(c);
        if c == 's' as u32 || c == 'd' as u32 || c == 'm' as u32 || c == 't' as u32 {
            return Some(j + l);
        }
        let (c2, _, l2) = self.at(j + l)?;
        let c2 = lower(c2);
        let ok = (c == 'l' as u32 && c2 == 'l' as u32)
            || (c == 'v' as u32 && c2 == 'e' as u32)
            || (c == 'r' as u32 && c2 == 'e' as u32);
        ok.then_some(j + l + l2)
    }

    /// o200k's suffix `(?i:'s|'t|'re|'ve|'m|'ll|'d)?` at `e`.
    #[inline(always)]
    fn o200k_suffix(&self, e: usize) -> usize {
        if self.s.get(e) == Some(&b'\'') {
            self.contraction(e + 1, true).unwrap_or(e)
        } else {
            e
        }
    }

    fn gpt2(&self, i: usize) -> usize {
        let (c, b, l) = self.at(i).expect("in bounds");
        if c == '\'' as u32 {
            if let Some(e) = self.contraction(i + 1, false) {
                return e;
            }
        }
        // ` ?\p{L}++ | ` ?\p{N}++ | ` ?[^\s\p{L}\p{N}]++`
        let (start, bits) = if c == ' ' as u32 {
            match self.at(i + 1) {
                Some((_, nb, _)) if nb & SPACE == 0 => (i + 1, nb),
                _ => (i, b),
            }
        } else {
            (i, b)
        };
        if bits & LETTER != 0 {
            return self.run(start, LETTER);
        }
        if bits & NUMBER != 0 {
            return self.run(start, NUMBER);
        }
        if bits & SPACE == 0 {
            return self.run_other(start);
        }
        // `\s++$ | \s+(?!\S) | \s`
        let (j, last, _) = self.space_run(i);
        if j == self.s.len() {
            j
        } else if last > i {
            last
        } else {
            i + l
        }
    }

    fn gpt4(&self, i: usize) -> usize {
        let (c, b, l) = self.at(i).expect("in bounds");
        if c == '\'' as u32 {
            if let Some(e) = self.contraction(i + 1, true) {
                return e;
            }
        }
        // `[^\r\n\p{L}\p{N}]?+\p{L}++`
        if b & LETTER != 0 {
            return self.run(i, LETTER);
        }
        let is_nl = c == '\r' as u32 || c == '\n' as u32;
        if !is_nl && b & NUMBER == 0 {
            if let Some((_, nb, _)) = self.at(i + l) {
                if nb & LETTER != 0 {
                    return self.run(i + l, LETTER);
                }
            }
        }
        // `\p{N}{1,3}+`
        if b & NUMBER != 0 {
            let mut e = i + l;
            for _ in 0..2 {
                match self.at(e) {
                    Some((_, nb, nl)) if nb & NUMBER != 0 => e += nl,
                    _ => break,
                }
            }
            return e;
        }
        // ` ?[^\s\p{L}\p{N}]++[\r\n]*+`
        let other_start = if c == ' ' as u32 {
            match self.at(i + 1) {
                Some((_, nb, _)) if nb & OTHER_MASK == 0 => Some(i + 1),
                _ => None,
            }
        } else if b & OTHER_MASK == 0 {
            Some(i)
        } else {
            None
        };
        if let Some(s0) = other_start {
            let e = self.run_other(s0);
            return self.run_bytes(e, b"\r\n");
        }
        // `\s++$ | \s*[\r\n] | \s+(?!\S) | \s`
        let (j, last, nl) = self.space_run(i);
        if j == self.s.len() {
            j
        } else if let Some(e) = nl {
            e
        } else if last > i {
            last
        } else {
            i + l
        }
    }

    /// `P? U* L+` at `i` for both choices of the optional prefix (leftmost-first backtracking).
    #[inline(always)]
    fn o200k_alt1(&self, i: usize, prefix: Option<usize>) -> Option<usize> {
        for s in prefix.into_iter().chain(std::iter::once(i)) {
            let mut pos = s;
            let mut last_lower = None;
            while let Some((_, b, l)) = self.at(pos) {
                if b & UPPER == 0 {
                    break;
                }
                if b & LOWER != 0 {
                    last_lower = Some(pos + l);
                }
                pos += l;
            }
            match self.at(pos) {
                Some((_, b, _)) if b & LOWER != 0 => return Some(self.run(pos, LOWER)),
                _ => {}
            }
            if let Some(e) = last_lower {
                return Some(e);
            }
        }
        None
    }

    /// `P? U+ L*` at `i`.
    #[inline(always)]
    fn o200k_alt2(&self, i: usize, prefix: Option<usize>) -> Option<usize> {
        for s in prefix.into_iter().chain(std::iter::once(i)) {
            let e = self.run(s, UPPER);
            if e > s {
                return Some(self.run(e, LOWER));
            }
        }
        None
    }

    fn o200k(&self, i: usize) -> usize {
        let (c, b, l) = self.at(i).expect("in bounds");
        let is_nl = c == '\r' as u32 || c == '\n' as u32;
        let prefix = (!is_nl && b & (LETTER | NUMBER) == 0).then_some(i + l);
        if b & (UPPER | LOWER) != 0 || prefix.is_some() {
            if let Some(e) = self.o200k_alt1(i, prefix) {
                return self.o200k_suffix(e);
            }
            if let Some(e) = self.o200k_alt2(i, prefix) {
                return self.o200k_suffix(e);
            }
        }
        // `\p{N}{1,3}`
        if b & NUMBER != 0 {
            let mut e = i + l;
            for _ in 0..2 {
                match self.at(e) {
                    Some((_, nb, nl)) if nb & NUMBER != 0 => e += nl,
                    _ => break,
                }
            }
            return e;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
        let other_start = if c == ' ' as u32 {
            match self.at(i + 1) {
                Some((_, nb, _)) if nb & OTHER_MASK == 0 => Some(i + 1),
                _ => None,
            }
        } else if b & OTHER_MASK == 0 {
            Some(i)
        } else {
            None
        };
        if let Some(s0) = other_start {
            let e = self.run_other(s0);
            return self.run_bytes(e, b"\r\n/");
        }
        // `\s*[\r\n]+ | \s+(?!\S) | \s+`
        let (j, last, nl) = self.space_run(i);
        if let Some(e) = nl {
            e
        } else if j == self.s.len() {
            j
        } else if last > i {
            last
        } else {
            j
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn regex_pieces<'a>(re: &fancy_regex::Regex, text: &'a str) -> Vec<&'a str> {
        re.find_iter(text).map(|m| m.unwrap().as_str()).collect()
    }

    fn compiled(pattern: &SplitPattern) -> &'static fancy_regex::Regex {
        use std::sync::OnceLock;
        static RES: OnceLock<Vec<fancy_regex::Regex>> = OnceLock::new();
        let res = RES.get_or_init(|| {
            [GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN]
                .iter()
                .map(|p| compile_regex(p).unwrap())
                .collect()
        });
        match pattern {
            SplitPattern::Gpt2 => &res[0],
            SplitPattern::Gpt4 => &res[1],
            _ => &res[2],
        }
    }

    fn check(pattern: SplitPattern, text: &str) {
        let fast = Splitter::new(&pattern).unwrap();
        let re = compiled(&pattern);
        assert_eq!(
            fast.pieces(text),
            regex_pieces(re, text),
            "{} on {text:?}",
            pattern.name()
        );
    }

    const TRICKY: &[&str] = &[
        "Hello, world! It's 12345 o'clock.\n\n  indented\ttab  \r\n",
        "I'LL SAY IT'S FINE, we've they're 'twas ſ 'ſ 'S 'Ll",
        "中文字符和日本語のテキスト 한국어 ÀÉÎ ǅungla ʰmodifier",
        "emoji 👍🏽🎉 family 👨‍👩‍👧 flags 🇫🇷",
        "e\u{301}te\u{301} \u{301}\u{302}x a\u{0308}\u{0308}B",
        "fn main() { let x = vec![1, 2, 3]; // comment\n    println!(\"{x:?}\"); }\n",
        "   \n\n\n   \t\t  ",
        "trailing spaces   ",
        "1234567890 3.14159 1,000,000 ¾ ½ ⅔ ١٢٣",
        "path/to/file.txt //\n/ a/\n\r/x",
        "  \u{3000}\u{a0}word\u{2028}line\u{85}x",
        "MixedCASEWordsAndCamelCase XMLHttpRequest iPhone",
        "'s's'S'x'",
        "",
    ];

    #[test]
    fn fast_splitters_match_the_regex_on_tricky_text() {
        for text in TRICKY {
            for p in [SplitPattern::Gpt2, SplitPattern::Gpt4, SplitPattern::O200k] {
                check(p, text);
            }
        }
    }

    #[test]
    fn pattern_names_round_trip() {
        for p in [SplitPattern::Gpt2, SplitPattern::Gpt4, SplitPattern::O200k] {
            assert_eq!(SplitPattern::parse(p.name()), p);
            assert_eq!(SplitPattern::from_regex(p.regex()), p);
        }
        assert_eq!(
            SplitPattern::parse(r"\w+"),
            SplitPattern::Custom(r"\w+".into())
        );
    }

    #[test]
    fn bad_custom_pattern_is_an_error() {
        let err = Splitter::new(&SplitPattern::Custom("(unclosed".into())).unwrap_err();
        assert!(err.to_string().contains("(unclosed"), "{err}");
    }

    /// Characters chosen to hit every class boundary the three patterns care about.
    fn tricky_char() -> impl Strategy<Value = char> {
        prop::sample::select(vec![
            'a',
            'z',
            'A',
            'Z',
            's',
            'S',
            't',
            'l',
            'L',
            'v',
            'e',
            'E',
            'r',
            'd',
            'm',
            'M',
            '\'',
            ' ',
            ' ',
            ' ',
            '\t',
            '\n',
            '\r',
            '\u{b}',
            '\u{c}',
            '\u{85}',
            '\u{a0}',
            '\u{3000}',
            '0',
            '7',
            '9',
            '½',
            '٣',
            'Ⅻ',
            '.',
            ',',
            '!',
            '/',
            '-',
            '_',
            '"',
            '$',
            '{',
            '}',
            'é',
            'É',
            'ǅ',
            'ʰ',
            'ſ',
            'ß',
            '中',
            'ア',
            '한',
            '\u{301}',
            '\u{308}',
            '\u{903}',
            '\u{20dd}',
            '👍',
            '\u{1f3fd}',
            '\u{200d}',
            '\u{fe0f}',
            'Ω',
            'ω',
            'ﬁ',
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn fast_splitters_match_the_regex(chars in prop::collection::vec(tricky_char(), 0..40)) {
            let text: String = chars.into_iter().collect();
            for p in [SplitPattern::Gpt2, SplitPattern::Gpt4, SplitPattern::O200k] {
                check(p, &text);
            }
        }

        #[test]
        fn fast_splitters_match_the_regex_on_any_text(text in "\\PC{0,60}") {
            for p in [SplitPattern::Gpt2, SplitPattern::Gpt4, SplitPattern::O200k] {
                check(p, &text);
            }
        }
    }
}
