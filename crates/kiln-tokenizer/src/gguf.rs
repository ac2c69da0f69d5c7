//! Tokenizers described by GGUF metadata (`tokenizer.ggml.*`), as llama.cpp runs them:
//! - `tokenizer.ggml.model = gpt2`: byte-level BPE whose vocabulary is GPT-2's byte→unicode
//!   strings and whose merges are ranked pairs, behind the pre-tokenizer named by
//!   `tokenizer.ggml.pre` (Llama 3, Qwen, SmolLM, GPT-2);
//! - `tokenizer.ggml.model = llama`: SentencePiece BPE (Llama 2, Gemma, Phi-3): spaces become `▁`,
//!   an optional space in front of the text, then adjacent pieces merge by the highest score of the
//!   token they form, and whatever did not become a token falls back to `<0xXX>` byte tokens.
//!
//! The caller (which owns the GGUF reader) passes the metadata in as a [`GgufVocab`]; this crate
//! does not know about model files.
//!
//! Special tokens, as llama.cpp's `tokenizer_st_partition`: the text is first cut at special
//! tokens, longest first — user-defined tokens always (Gemma's `\n\n` and tab runs are such),
//! control and unknown tokens only when the caller asks (`parse_special`: a chat template inserts
//! them, user text never does).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::TokenizerError;

/// `tokenizer.ggml.*` metadata, as read from the file.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`
    pub model: String,
    /// `tokenizer.ggml.pre` (absent → `default`)
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece: a merge forms the highest-scoring token first).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (absent: SentencePiece yes, BPE no, as llama.cpp)
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece; absent → yes, as llama.cpp)
    pub add_space_prefix: Option<bool>,
    /// `general.name`: llama.cpp strips the whitespace after Phi-3's special tokens by name.
    pub name: Option<String>,
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

const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

/// A token the text is cut at before the model runs (see the module doc).
struct Special {
    text: String,
    id: u32,
    /// Control and unknown tokens: matched only with `parse_special`.
    control: bool,
    /// Drop whitespace before / after it (llama.cpp sets these per model, not from the file).
    lstrip: bool,
    rstrip: bool,
}

/// A piece of the text after cutting at special tokens.
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// What turns a plain fragment into ids.
enum Model {
    /// Byte-level BPE.
    Bpe {
        /// (left, right) → (rank, merged id)
        merges: HashMap<(u32, u32), (u32, u32)>,
        chars: Box<[char; 256]>,
        splitters: Vec<fancy_regex::Regex>,
        ignore_merges: bool,
    },
    /// SentencePiece BPE by scores.
    Spm {
        scores: Vec<f32>,
        add_space_prefix: bool,
    },
}

/// A tokenizer from GGUF metadata.
pub struct GgufTokenizer {
    model: Model,
    tokens: Vec<String>,
    /// Each token's bytes (for decoding).
    token_bytes: Vec<Vec<u8>>,
    ids: HashMap<String, u32>,
    /// The token of each byte (BPE: its byte→unicode character; SPM: `<0xXX>`).
    byte_ids: [u32; 256],
    /// Longest first, as llama.cpp's partition order.
    specials: Vec<Special>,
    special_flag: Vec<bool>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    unk: Option<u32>,
    pub add_bos: bool,
}

/// C's `isspace`, which llama.cpp's lstrip/rstrip use.
fn c_isspace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

impl GgufTokenizer {
    pub fn new(v: &GgufVocab) -> Result<GgufTokenizer, TokenizerError> {
        let err = |m: String| TokenizerError::Vocab(m);
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
        let n = v.tokens.len();
        for (key, id) in [("bos", v.bos), ("eos", v.eos), ("unknown", v.unk)] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(err(format!(
                    "tokenizer.ggml.{key}_token_id {id} is past the vocab ({n} tokens)"
                )));
            }
        }
        // Later duplicates win, as in llama.cpp's token_to_id.
        let ids: HashMap<String, u32> = v
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let ty = |i: usize| v.token_types.get(i).copied().unwrap_or(TYPE_NORMAL);
        let spm = match v.model.as_str() {
            "gpt2" => false,
            "llama" => true,
            other => {
                return Err(err(format!(
                    "tokenizer.ggml.model `{other}` is not supported (supported: gpt2, llama)"
                )))
            }
        };
        let chars = byte_chars();
        let mut byte_ids = [NO_TOKEN; 256];
        let model = if spm {
            if v.scores.len() != n {
                return Err(err(format!(
                    "tokenizer.ggml.scores has {} entries for {n} tokens",
                    v.scores.len()
                )));
            }
            // llama.cpp's byte_to_token: `<0xXX>`, else the byte itself as a token.
            for (b, slot) in byte_ids.iter_mut().enumerate() {
                let id = ids
                    .get(&format!("<0x{b:02X}>"))
                    .or_else(|| ids.get(&(b as u8 as char).to_string()).filter(|_| b < 128));
                if let Some(&id) = id {
                    *slot = id;
                }
            }
            Model::Spm {
                scores: v.scores.clone(),
                add_space_prefix: v.add_space_prefix.unwrap_or(true),
            }
        } else {
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
            // Some vocabs (SmolLM2's) lack a few control bytes; llama.cpp drops such bytes when
            // encoding, and so does `bpe` (NO_TOKEN).
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
            Model::Bpe {
                merges,
                chars: Box::new(chars),
                splitters,
                ignore_merges: ignores_merges(pre),
            }
        };
        let mut char_byte = HashMap::new();
        for (b, c) in chars.iter().enumerate() {
            char_byte.insert(*c, b as u8);
        }
        // llama.cpp strips whitespace after Phi-3's special tokens (but not after `<unk>`, `<s>`,
        // `<|endoftext|>`): a rule by model name, not in the file.
        let name = v.name.as_deref().unwrap_or("").to_lowercase();
        let phi3 = name.contains("phi-3") || name.contains("phi3");
        let mut special_flag = vec![false; n];
        let mut specials = Vec::new();
        let mut token_bytes = Vec::with_capacity(n);
        for (i, t) in v.tokens.iter().enumerate() {
            let kind = ty(i);
            if matches!(kind, TYPE_UNKNOWN | TYPE_CONTROL | TYPE_USER_DEFINED) {
                special_flag[i] = kind != TYPE_UNKNOWN;
                if !t.is_empty() {
                    specials.push(Special {
                        text: t.clone(),
                        id: i as u32,
                        control: kind != TYPE_USER_DEFINED,
                        lstrip: false,
                        rstrip: phi3 && !matches!(t.as_str(), "<unk>" | "<s>" | "<|endoftext|>"),
                    });
                }
            }
            let bytes = match kind {
                TYPE_UNKNOWN | TYPE_CONTROL | TYPE_USER_DEFINED => t.as_bytes().to_vec(),
                TYPE_BYTE if spm => u8::from_str_radix(
                    t.strip_prefix("<0x")
                        .and_then(|s| s.strip_suffix('>'))
                        .unwrap_or(""),
                    16,
                )
                .map(|b| vec![b])
                .map_err(|_| err(format!("byte token #{i} `{t}` is not <0xXX>")))?,
                TYPE_NORMAL if spm => t.replace('▁', " ").into_bytes(),
                _ if spm => Vec::new(),
                // Byte-level BPE: the byte→unicode strings back to bytes.
                _ => t
                    .chars()
                    .map(|c| char_byte.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| t.as_bytes().to_vec()),
            };
            token_bytes.push(bytes);
        }
        if phi3 {
            if let Some(s) = specials.iter_mut().find(|s| s.text == "</s>") {
                s.rstrip = true;
            }
        }
        // Longest first (a stable sort: equal lengths keep id order).
        specials.sort_by_key(|s| std::cmp::Reverse(s.text.len()));
        Ok(GgufTokenizer {
            model,
            tokens: v.tokens.clone(),
            token_bytes,
            ids,
            byte_ids,
            specials,
            special_flag,
            bos: v.bos,
            eos: v.eos,
            unk: v.unk,
            add_bos: v.add_bos.unwrap_or(spm),
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

    /// Encode `text`; control tokens written in the text become their ids only when
    /// `parse_special` (user-defined ones always, as llama.cpp). No BOS is added (the caller
    /// decides, see [`GgufTokenizer::add_bos`]).
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        // SentencePiece puts a space in front of the text and of each piece after a special
        // token (llama.cpp's `is_prev_special`, true at the start).
        let mut prev_special = true;
        for f in self.partition(text, parse_special) {
            match f {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    match &self.model {
                        Model::Bpe { .. } => self.encode_ordinary(t, &mut out),
                        Model::Spm {
                            add_space_prefix, ..
                        } => {
                            let mut s = String::with_capacity(t.len() + 3);
                            if *add_space_prefix && prev_special {
                                s.push(' ');
                            }
                            s.push_str(t);
                            self.spm(&s.replace(' ', "▁"), &mut out);
                        }
                    }
                    prev_special = false;
                }
            }
        }
        out
    }

    /// Cut `text` at special tokens, longest token first over all pieces (llama.cpp's order:
    /// it differs from a left-to-right scan when two specials overlap).
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(text));
        for sp in &self.specials {
            if sp.control && !parse_special {
                continue;
            }
            let hit = frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(sp.text.as_str())));
            if !hit {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(mut t) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(i) = t.find(sp.text.as_str()) {
                    let mut left = &t[..i];
                    if sp.lstrip {
                        left = left.trim_end_matches(c_isspace);
                    }
                    if !left.is_empty() {
                        next.push(Fragment::Text(left));
                    }
                    next.push(Fragment::Token(sp.id));
                    t = &t[i + sp.text.len()..];
                    if sp.rstrip {
                        t = t.trim_start_matches(c_isspace);
                    }
                }
                if !t.is_empty() {
                    next.push(Fragment::Text(t));
                }
            }
            frags = next;
        }
        frags
    }

    /// SentencePiece BPE over `text` (spaces already `▁`): start from single characters and
    /// merge the adjacent pair whose joined text is the highest-scoring token (leftmost on ties)
    /// until no pair forms a token; characters left alone that are not tokens become byte
    /// tokens. A heap of candidate pairs, stale ones skipped when popped (pieces here are whole
    /// texts, not regex-split words, so a rescanned vector would be quadratic).
    fn spm(&self, text: &str, out: &mut Vec<u32>) {
        let Model::Spm { scores, .. } = &self.model else {
            unreachable!("spm on a BPE vocab")
        };
        struct Sym {
            start: usize,
            len: usize,
            prev: usize,
            next: usize,
        }
        const NONE: usize = usize::MAX;
        #[derive(PartialEq)]
        struct Pair {
            score: f32,
            left: usize,
            right: usize,
            len: usize,
        }
        impl Eq for Pair {}
        impl Ord for Pair {
            fn cmp(&self, o: &Self) -> Ordering {
                self.score
                    .total_cmp(&o.score)
                    .then_with(|| o.left.cmp(&self.left))
            }
        }
        impl PartialOrd for Pair {
            fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
                Some(self.cmp(o))
            }
        }
        let b = text.as_bytes();
        let mut syms = Vec::new();
        let mut off = 0;
        while off < b.len() {
            // llama.cpp's unicode_len_utf8: the length a lead byte announces.
            let len = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4][(b[off] >> 4) as usize];
            let len = len.min(b.len() - off);
            let i = syms.len();
            syms.push(Sym {
                start: off,
                len,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if off + len == b.len() { NONE } else { i + 1 },
            });
            off += len;
        }
        let mut heap = BinaryHeap::new();
        let try_pair = |syms: &[Sym], heap: &mut BinaryHeap<Pair>, l: usize, r: usize| {
            if l == NONE || r == NONE {
                return;
            }
            let (s, len) = (syms[l].start, syms[l].len + syms[r].len);
            if let Some(&id) = self.ids.get(&text[s..s + len]) {
                heap.push(Pair {
                    score: scores[id as usize],
                    left: l,
                    right: r,
                    len,
                });
            }
        };
        for i in 1..syms.len() {
            try_pair(&syms, &mut heap, i - 1, i);
        }
        while let Some(p) = heap.pop() {
            let (l, r) = (p.left, p.right);
            // Stale: one side was merged away or grew since the pair was queued.
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != p.len {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if syms[r].next != NONE {
                let nx = syms[r].next;
                syms[nx].prev = l;
            }
            try_pair(&syms, &mut heap, syms[l].prev, l);
            try_pair(&syms, &mut heap, l, syms[l].next);
        }
        let mut i = if syms.is_empty() { NONE } else { 0 };
        while i != NONE {
            let s = &syms[i];
            let piece = &text[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for &byte in piece.as_bytes() {
                        match self.byte_ids[byte as usize] {
                            NO_TOKEN => out.extend(self.unk),
                            id => out.push(id),
                        }
                    }
                }
            }
            i = s.next;
        }
    }

    fn encode_ordinary(&self, text: &str, out: &mut Vec<u32>) {
        let Model::Bpe { splitters, .. } = &self.model else {
            unreachable!("byte-level BPE on a SentencePiece vocab")
        };
        if text.is_empty() {
            return;
        }
        let mut pieces = vec![text];
        for re in splitters {
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
        let Model::Bpe {
            merges,
            chars,
            ignore_merges,
            ..
        } = &self.model
        else {
            unreachable!("byte-level BPE on a SentencePiece vocab")
        };
        if *ignore_merges {
            let text: String = bytes.iter().map(|&b| chars[b as usize]).collect();
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
                .filter_map(|(i, w)| merges.get(&(w[0], w[1])).map(|&(r, m)| (r, i, m)))
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

    /// A SentencePiece vocab: `▁`, letters, two merges of different scores, byte tokens.
    fn tiny_spm() -> GgufVocab {
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>", "\n\n"].map(String::from).to_vec();
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        tokens.extend(["▁", "a", "b", "ab", "▁a", "▁ab"].map(String::from));
        let mut types = vec![3, 3, 3, 4];
        types.extend([6; 256]);
        types.extend([1; 6]);
        // "▁a" outscores "ab", so "▁ab" forms via "▁a" + "b"; the scores decide, not the order.
        let mut scores = vec![0.0; tokens.len()];
        let n = tokens.len();
        scores[n - 3] = -5.0; // ab
        scores[n - 2] = -1.0; // ▁a
        scores[n - 1] = -2.0; // ▁ab
        GgufVocab {
            model: "llama".into(),
            tokens,
            scores,
            token_types: types,
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn sentencepiece_merges_by_score_with_byte_fallback() {
        let t = GgufTokenizer::new(&tiny_spm()).unwrap();
        assert!(t.add_bos, "SentencePiece adds BOS unless the file says no");
        let id = |s: &str| t.token_id(s).unwrap();
        // A space prefix, then "▁ab"; "c" is no token: its byte.
        assert_eq!(t.encode("ab", false), vec![id("▁ab")]);
        assert_eq!(t.encode("abc", false), vec![id("▁ab"), id("<0x63>")]);
        assert_eq!(t.decode(&t.encode("ab c", false)), " ab c");
        // The user-defined "\n\n" is cut out even without parse_special, and the text after it
        // gets its space prefix again; control tokens only with parse_special.
        assert_eq!(
            t.encode("a\n\nb", false),
            vec![id("▁a"), id("\n\n"), id("▁"), id("b")]
        );
        assert_eq!(t.encode("</s>", true), vec![2]);
        assert_ne!(t.encode("</s>", false), vec![2]);
        let mut v = tiny_spm();
        v.add_space_prefix = Some(false);
        let t = GgufTokenizer::new(&v).unwrap();
        assert_eq!(t.encode("ab", false), vec![id("ab")]);
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
        v.model = "bert".into();
        assert!(GgufTokenizer::new(&v)
            .err()
            .unwrap()
            .to_string()
            .contains("gpt2, llama"));
        let mut v = tiny_spm();
        v.scores.pop();
        assert!(GgufTokenizer::new(&v)
            .err()
            .unwrap()
            .to_string()
            .contains("scores"));
        let mut v = tiny_spm();
        v.eos = Some(1 << 20);
        assert!(GgufTokenizer::new(&v)
            .err()
            .unwrap()
            .to_string()
            .contains("eos"));
    }
}
