//! Tokenizers described by GGUF metadata (`tokenizer.ggml.*`), as llama.cpp runs them. For now
//! `tokenizer.ggml.model = gpt2`: byte-level BPE whose vocabulary is GPT-2's byte→unicode strings
//! and whose merges are ranked pairs, behind the pre-tokenizer named by `tokenizer.ggml.pre`.
//! The caller (which owns the GGUF reader) passes the metadata in as a [`GgufVocab`]; this crate
//! does not know about model files.
//!
//! Special tokens (types control and user-defined) are matched in the text only when the caller
//! asks (`parse_special`, as llama.cpp's tokenizer flag): a chat template inserts them, user text
//! never does.

use std::collections::HashMap;

use crate::TokenizerError;

/// `tokenizer.ggml.*` metadata, as read from the file.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`
    pub model: String,
    /// `tokenizer.ggml.pre` (absent → `default`)
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`
    pub add_bos: Option<bool>,
}

/// The regexes each `tokenizer.ggml.pre` applies, in order (llama.cpp's `llama-vocab.cpp`): each
/// regex splits every piece the previous one produced, keeping the text between matches too.
fn pre_regexes(pre: &str) -> Option<&'static [&'static str]> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    Some(match pre {
        "default" | "gpt-2" | "gpt2" => &[GPT2],
        // Digits one by one, then GPT-2's split.
        "smollm" | "starcoder" | "refact" => &[r"\p{N}", GPT2],
        // Llama 3: digits in groups of up to three; case-insensitive contractions spelled out.
        "llama-bpe" | "llama3" | "llama-v3" => &[concat!(
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+",
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        )],
        // Qwen2: as Llama 3 with single digits.
        "qwen2" => &[concat!(
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+",
            r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        )],
        _ => return None,
    })
}

/// Pre-tokenizers after which llama.cpp emits a piece that is a whole token as is, without
/// merging (`ignore_merges`).
fn ignores_merges(pre: &str) -> bool {
    matches!(pre, "llama-bpe" | "llama3" | "llama-v3")
}

const SUPPORTED_PRE: &str = "default, gpt-2, smollm, starcoder, refact, llama-bpe, qwen2";

/// GPT-2's map from bytes to printable characters (`bytes_to_unicode`).
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        out[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("small code point")
        };
    }
    out
}

const NO_TOKEN: u32 = u32::MAX;

/// A byte-level BPE tokenizer from GGUF metadata.
pub struct GgufTokenizer {
    tokens: Vec<String>,
    /// Each token's bytes (for decoding).
    token_bytes: Vec<Vec<u8>>,
    ids: HashMap<String, u32>,
    /// (left, right) → (rank, merged id)
    merges: HashMap<(u32, u32), (u32, u32)>,
    byte_ids: [u32; 256],
    chars: [char; 256],
    splitters: Vec<fancy_regex::Regex>,
    ignore_merges: bool,
    /// Control and user-defined tokens, longest first (matched greedily when parsing specials).
    specials: Vec<(String, u32)>,
    special_flag: Vec<bool>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
}

impl GgufTokenizer {
    pub fn new(v: &GgufVocab) -> Result<GgufTokenizer, TokenizerError> {
        let err = |m: String| TokenizerError::Vocab(m);
        if v.model != "gpt2" {
            return Err(err(format!(
                "tokenizer.ggml.model `{}` is not supported yet (supported: gpt2)",
                v.model
            )));
        }
        let pre = v.pre.as_deref().unwrap_or("default");
        let regexes = pre_regexes(pre).ok_or_else(|| {
            err(format!(
                "tokenizer.ggml.pre `{pre}` is not supported (supported: {SUPPORTED_PRE})"
            ))
        })?;
        let splitters = regexes
            .iter()
            .map(|r| fancy_regex::Regex::new(r).map_err(|e| err(format!("{r}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if v.tokens.is_empty() || v.tokens.len() > u32::MAX as usize {
            return Err(err(format!(
                "tokenizer.ggml.tokens has {} entries",
                v.tokens.len()
            )));
        }
        if !v.token_types.is_empty() && v.token_types.len() != v.tokens.len() {
            return Err(err(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                v.token_types.len(),
                v.tokens.len()
            )));
        }
        let chars = byte_chars();
        let mut char_byte = HashMap::new();
        for (b, c) in chars.iter().enumerate() {
            char_byte.insert(*c, b as u8);
        }
        let ids: HashMap<String, u32> = v
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let ty = |i: usize| v.token_types.get(i).copied().unwrap_or(1);
        let mut special_flag = vec![false; v.tokens.len()];
        let mut specials = Vec::new();
        let mut token_bytes = Vec::with_capacity(v.tokens.len());
        for (i, t) in v.tokens.iter().enumerate() {
            if matches!(ty(i), 3 | 4) {
                special_flag[i] = true;
                if !t.is_empty() {
                    specials.push((t.clone(), i as u32));
                }
            }
            // Control/user-defined tokens are literal text; the rest are byte→unicode strings.
            let bytes = if ty(i) == 3 || ty(i) == 4 {
                t.as_bytes().to_vec()
            } else {
                t.chars()
                    .map(|c| char_byte.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| t.as_bytes().to_vec())
            };
            token_bytes.push(bytes);
        }
        specials.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        // Some vocabs (SmolLM2's) lack a few control bytes; llama.cpp drops such bytes when
        // encoding, and so does `bpe` (NO_TOKEN).
        let mut byte_ids = [NO_TOKEN; 256];
        for (b, c) in chars.iter().enumerate() {
            if let Some(&id) = ids.get(&c.to_string()) {
                byte_ids[b] = id;
            }
        }
        let mut merges = HashMap::with_capacity(v.merges.len());
        for (rank, m) in v.merges.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| err(format!("merge #{rank} `{m}` is not two tokens")))?;
            let (Some(&ia), Some(&ib), Some(&im)) =
                (ids.get(a), ids.get(b), ids.get(&format!("{a}{b}")))
            else {
                return Err(err(format!(
                    "merge #{rank} `{m}` names a token not in the vocab"
                )));
            };
            merges.entry((ia, ib)).or_insert((rank as u32, im));
        }
        Ok(GgufTokenizer {
            tokens: v.tokens.clone(),
            token_bytes,
            ids,
            merges,
            byte_ids,
            chars,
            splitters,
            ignore_merges: ignores_merges(pre),
            specials,
            special_flag,
            bos: v.bos,
            eos: v.eos,
            add_bos: v.add_bos.unwrap_or(false),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a token given by its text (`<|im_end|>`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special_flag.get(id as usize).copied().unwrap_or(false)
    }

    /// Encode `text`; control/user-defined tokens written in the text become their ids only when
    /// `parse_special`. No BOS is added (the caller decides, see [`GgufTokenizer::add_bos`]).
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if !parse_special || self.specials.is_empty() {
            self.encode_ordinary(text, &mut out);
            return out;
        }
        let mut rest = text;
        let mut plain_start = 0;
        let mut i = 0;
        while i < rest.len() {
            if let Some((s, id)) = self
                .specials
                .iter()
                .find(|(s, _)| rest[i..].starts_with(s.as_str()))
            {
                self.encode_ordinary(&rest[plain_start..i], &mut out);
                out.push(*id);
                rest = &rest[i + s.len()..];
                i = 0;
                plain_start = 0;
                continue;
            }
            i += rest[i..].chars().next().map_or(1, char::len_utf8);
        }
        self.encode_ordinary(&rest[plain_start..], &mut out);
        out
    }

    fn encode_ordinary(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut pieces = vec![text];
        for re in &self.splitters {
            let mut next = Vec::new();
            for p in pieces {
                let mut last = 0;
                for m in re.find_iter(p).flatten() {
                    if m.start() > last {
                        next.push(&p[last..m.start()]);
                    }
                    next.push(m.as_str());
                    last = m.end();
                }
                if last < p.len() {
                    next.push(&p[last..]);
                }
            }
            pieces = next;
        }
        for p in pieces {
            self.bpe(p.as_bytes(), out);
        }
    }

    /// Merge the piece's bytes by rank: the lowest-ranked adjacent pair first, leftmost on ties.
    /// A flat rescanned vector: pieces are short (tiktoken makes the same choice).
    fn bpe(&self, bytes: &[u8], out: &mut Vec<u32>) {
        if self.ignore_merges {
            let text: String = bytes.iter().map(|&b| self.chars[b as usize]).collect();
            if let Some(&id) = self.ids.get(&text) {
                out.push(id);
                return;
            }
        }
        let mut syms: Vec<u32> = bytes.iter().map(|&b| self.byte_ids[b as usize]).collect();
        loop {
            let best = syms
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.merges.get(&(w[0], w[1])).map(|&(r, m)| (r, i, m)))
                .min();
            let Some((_, i, m)) = best else { break };
            syms[i] = m;
            syms.remove(i + 1);
        }
        out.extend(syms.into_iter().filter(|&t| t != NO_TOKEN));
    }

    /// The bytes of `ids` (special tokens as their text).
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            if let Some(b) = self.token_bytes.get(id as usize) {
                out.extend(b);
            }
        }
        out
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GgufVocab {
        let chars = byte_chars();
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into()];
        tokens.extend(chars.iter().map(|c| c.to_string()));
        tokens.extend(["he".into(), "ll".into(), "hell".into(), "Ġw".into()]);
        let mut types = vec![1; tokens.len()];
        types[0] = 3;
        GgufVocab {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens,
            token_types: types,
            merges: vec!["h e".into(), "l l".into(), "he ll".into(), "Ġ w".into()],
            eos: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn merges_by_rank_and_round_trips() {
        let t = GgufTokenizer::new(&tiny()).unwrap();
        let ids = t.encode("hello world12", false);
        assert_eq!(t.decode(&ids), "hello world12");
        assert_eq!(ids[0], t.token_id("hell").unwrap());
        assert_eq!(ids[2], t.token_id("Ġw").unwrap());
        // Specials only when asked.
        let s = t.encode("hi<|endoftext|>", true);
        assert_eq!(*s.last().unwrap(), 0);
        assert!(!t.encode("hi<|endoftext|>", false).contains(&0));
    }

    #[test]
    fn bad_vocab_is_an_error() {
        let mut v = tiny();
        v.pre = Some("nope".into());
        assert!(GgufTokenizer::new(&v)
            .err()
            .unwrap()
            .to_string()
            .contains("smollm"));
        let mut v = tiny();
        v.merges.push("x zz".into());
        assert!(GgufTokenizer::new(&v).is_err());
        let mut v = tiny();
        v.model = "llama".into();
        assert!(GgufTokenizer::new(&v).is_err());
    }
}
