//! A kiln tokenizer as llama.cpp's byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`):
//! tokens spelled in GPT-2's byte→unicode alphabet, merges derived from the ranks, token types
//! (special tokens are control tokens), and the llama.cpp pre-tokenizer name for kiln's split
//! pattern. Plain data: the GGUF writer lives in kiln-engine and the caller puts the two together.
//!
//! Merges from ranks: kiln encodes as tiktoken does (merge the adjacent pair whose concatenation has
//! the lowest rank); llama.cpp merges the adjacent pair listed first in `tokenizer.ggml.merges`.
//! Listing, for each token in rank order, every split of it into two tokens (ordered by the
//! parts' ranks) makes the two agree — the conversion Hugging Face uses for tiktoken vocabularies
//! (a test below runs a merges-list BPE against kiln's encoder).
//!
//! Pre-tokenizers (llama.cpp's llama-vocab.cpp): kiln `gpt4` (cl100k) → `llama-bpe`, whose regex
//! is cl100k's without `\s++$`: the two split differently only where a whitespace run that holds
//! a line break and ends in other whitespace closes the text (`"x\n "`: kiln `"\n "`, llama.cpp
//! `"\n"`, `" "`), tested below; `o200k` → `gpt-4o` (the same regex); `gpt2` → `gpt-2`, whose regex
//! lacks `\s++$` and the final `\s` alternative. A custom pattern has no llama.cpp name.

use std::collections::HashMap;

use crate::pretokenize::SplitPattern;
use crate::{Tokenizer, TokenizerError};

/// llama.cpp's token types (`llama_token_type` in llama.h / gguf-py's `TokenType`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
pub const TOKEN_TYPE_CONTROL: i32 = 3;
pub const TOKEN_TYPE_UNUSED: i32 = 5;

/// The `tokenizer.ggml.*` values of a byte-level BPE vocabulary.
#[derive(Debug, Clone)]
pub struct GgufBpeVocab {
    /// `tokenizer.ggml.tokens`: one per id, `0..n_vocab`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"` in priority order.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.pre`.
    pub pre: &'static str,
}

/// GPT-2's byte→unicode map: printable bytes stand for themselves, the others (controls, space,
/// 0x7f–0xa0, 0xad) become U+0100 onwards in byte order.
pub fn byte_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("U+0100.. are chars");
            next += 1;
            c
        };
    }
    map
}

/// The llama.cpp pre-tokenizer for `pattern` (see the module doc for how exact each is).
pub fn llama_cpp_pre(pattern: &SplitPattern) -> Result<&'static str, TokenizerError> {
    match pattern {
        SplitPattern::Gpt4 => Ok("llama-bpe"),
        SplitPattern::O200k => Ok("gpt-4o"),
        SplitPattern::Gpt2 => Ok("gpt-2"),
        SplitPattern::Custom(re) => Err(TokenizerError::Vocab(format!(
            "split pattern {re:?} has no llama.cpp pre-tokenizer (exportable: gpt4 → llama-bpe, o200k → gpt-4o, gpt2 → gpt-2)"
        ))),
    }
}

/// `tok` as a llama.cpp vocabulary of `n_vocab` ids (the model's vocabulary may be larger than
/// the tokenizer's: the extra ids become unused `[PAD<id>]` tokens, as do gaps in the ids).
pub fn gguf_bpe_vocab(tok: &Tokenizer, n_vocab: usize) -> Result<GgufBpeVocab, TokenizerError> {
    if n_vocab < tok.vocab_size() {
        return Err(TokenizerError::Vocab(format!(
            "the model's vocabulary ({n_vocab}) is smaller than the tokenizer's ({})",
            tok.vocab_size()
        )));
    }
    let pre = llama_cpp_pre(tok.pattern())?;
    let alphabet = byte_to_unicode();
    let spell = |b: &[u8]| -> String { b.iter().map(|&x| alphabet[x as usize]).collect() };
    let mut tokens = Vec::with_capacity(n_vocab);
    let mut token_types = Vec::with_capacity(n_vocab);
    for id in 0..n_vocab as u32 {
        match tok.token_bytes(id) {
            Some(b) if tok.is_special(id) => {
                tokens.push(String::from_utf8_lossy(b).into_owned());
                token_types.push(TOKEN_TYPE_CONTROL);
            }
            Some(b) => {
                tokens.push(spell(b));
                token_types.push(TOKEN_TYPE_NORMAL);
            }
            None => {
                tokens.push(format!("[PAD{id}]"));
                token_types.push(TOKEN_TYPE_UNUSED);
            }
        }
    }
    // A special token spelled like an ordinary one would make llama.cpp's text→id map ambiguous.
    let mut seen = HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if let Some(first) = seen.insert(t.as_str(), id) {
            return Err(TokenizerError::Vocab(format!(
                "ids {first} and {id} are both spelled {t:?} in the GGUF vocabulary"
            )));
        }
    }
    Ok(GgufBpeVocab {
        tokens,
        token_types,
        merges: merges(tok, &spell),
        pre,
    })
}

/// Every split of every ranked token into two ranked tokens: in the token's rank order, and
/// within a token by the parts' ranks.
fn merges(tok: &Tokenizer, spell: &dyn Fn(&[u8]) -> String) -> Vec<String> {
    let ranks = tok.ranks();
    let rank_of: HashMap<&[u8], u32> = ranks.iter().map(|&(b, r)| (b, r)).collect();
    let mut out = Vec::new();
    let mut local = Vec::new();
    for &(bytes, _) in &ranks {
        local.clear();
        for cut in 1..bytes.len() {
            let (l, r) = bytes.split_at(cut);
            if let (Some(&rl), Some(&rr)) = (rank_of.get(l), rank_of.get(r)) {
                local.push((rl, rr, l, r));
            }
        }
        local.sort_unstable_by_key(|m| (m.0, m.1));
        out.extend(
            local
                .iter()
                .map(|&(_, _, l, r)| format!("{} {}", spell(l), spell(r))),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{train_from_texts, TrainConfig, CHAT_SPECIAL_TOKENS};

    fn corpus() -> Vec<String> {
        let base = "The cat sat on the mat. It's 2026; the cats' mats are 12,345 wide!\n\
                    Don't panic:   spaces\tand\ttabs, ÜBER straße, 東京 and emoji 🙂🙂.\n\n";
        (0..40)
            .map(|i| format!("{base} line {i} {}", "ab".repeat(i % 7)))
            .collect()
    }

    fn trained() -> Tokenizer {
        let cfg = TrainConfig {
            vocab_size: 600,
            special_tokens: CHAT_SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        train_from_texts(&corpus(), &cfg).unwrap()
    }

    #[test]
    fn byte_alphabet_is_gpt2_s() {
        let m = byte_to_unicode();
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
        assert_eq!(m[b'a' as usize], 'a');
        assert_eq!(m[0], 'Ā');
        assert_eq!(m[0xad], 'Ń');
        let distinct: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn vocab_has_control_specials_padding_and_the_pre_tokenizer() {
        let tok = trained();
        let v = gguf_bpe_vocab(&tok, tok.vocab_size() + 3).unwrap();
        assert_eq!(v.pre, "llama-bpe");
        assert_eq!(v.tokens.len(), tok.vocab_size() + 3);
        let bos = tok.special_token_id("<|bos|>").unwrap() as usize;
        assert_eq!(v.tokens[bos], "<|bos|>");
        assert_eq!(v.token_types[bos], TOKEN_TYPE_CONTROL);
        assert_eq!(
            v.tokens[tok.vocab_size()],
            format!("[PAD{}]", tok.vocab_size())
        );
        assert_eq!(v.token_types[tok.vocab_size() + 2], TOKEN_TYPE_UNUSED);
        let space_the = tok.encode_ordinary(" the");
        assert_eq!(space_the.len(), 1);
        assert_eq!(v.tokens[space_the[0] as usize], "Ġthe");
        assert!(gguf_bpe_vocab(&tok, 10).is_err());
    }

    /// llama.cpp's BPE (llm_tokenizer_bpe_session): per piece, a whole-piece token if the piece
    /// is one (`ignore_merges`, set for llama-bpe), else start from single bytes and repeatedly
    /// merge the adjacent pair with the lowest merge index, leftmost first.
    fn merges_bpe(v: &GgufBpeVocab, piece: &[u8]) -> Vec<u32> {
        let alphabet = byte_to_unicode();
        let id_of: HashMap<&str, u32> = v
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        let rank: HashMap<(&str, &str), usize> = v
            .merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (l, r) = m.split_once(' ').unwrap();
                (l, r, i)
            })
            .fold(HashMap::new(), |mut h, (l, r, i)| {
                h.entry((l, r)).or_insert(i);
                h
            });
        let whole: String = piece.iter().map(|&b| alphabet[b as usize]).collect();
        if let Some(&id) = id_of.get(whole.as_str()) {
            return vec![id];
        }
        let mut parts: Vec<String> = piece
            .iter()
            .map(|&b| alphabet[b as usize].to_string())
            .collect();
        loop {
            let best = (0..parts.len().saturating_sub(1))
                .filter_map(|i| {
                    rank.get(&(parts[i].as_str(), parts[i + 1].as_str()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let right = parts.remove(i + 1);
            parts[i].push_str(&right);
        }
        parts.iter().map(|p| id_of[p.as_str()]).collect()
    }

    #[test]
    fn merges_list_bpe_encodes_as_kiln_does() {
        let tok = trained();
        let v = gguf_bpe_vocab(&tok, tok.vocab_size()).unwrap();
        let mut texts = corpus();
        texts.push("unseen words: mattress, catastrophe, 9876543, ßü 東京タワー".into());
        for text in &texts {
            let want = tok.encode_ordinary(text);
            let got: Vec<u32> = tok
                .split(text)
                .iter()
                .flat_map(|p| merges_bpe(&v, p.as_bytes()))
                .collect();
            assert_eq!(got, want, "{text:?}");
        }
    }

    /// llama.cpp's LLAMA3 (`llama-bpe`) pre-tokenizer regex, as its tokenizer.json writes it.
    const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    #[test]
    fn gpt4_and_llama_bpe_split_alike_except_a_closing_newline_then_space() {
        let kiln = Tokenizer::from_ranks(
            (0..=255u8).map(|b| (vec![b], b as u32)).collect(),
            vec![],
            SplitPattern::Gpt4,
        )
        .unwrap();
        let llama = Tokenizer::from_ranks(
            (0..=255u8).map(|b| (vec![b], b as u32)).collect(),
            vec![],
            SplitPattern::Custom(LLAMA3_REGEX.into()),
        )
        .unwrap();
        // The one difference, in both directions of "closes the text".
        assert_eq!(kiln.split("x\n "), vec!["x", "\n "]);
        assert_eq!(llama.split("x\n "), vec!["x", "\n", " "]);
        assert_eq!(kiln.split("x\n y"), llama.split("x\n y"));
        // Random strings over an alphabet that exercises every alternative: equal wherever the
        // text does not end in whitespace that holds a line break and ends in another space.
        let alphabet: Vec<char> = "aZé東1 2\n\r\t'sdl.,!-🙂 ".chars().collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let (mut same, mut differ) = (0, 0);
        for _ in 0..20_000 {
            let mut s = String::new();
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for _ in 0..(state >> 60) + 1 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push(alphabet[(state >> 33) as usize % alphabet.len()]);
            }
            let (k, l) = (kiln.split(&s), llama.split(&s));
            if k == l {
                same += 1;
                continue;
            }
            // The only allowed difference: kiln's last piece is whitespace holding a line break
            // and ending in other whitespace; llama.cpp cuts it after the last line break.
            differ += 1;
            let last = *k.last().unwrap();
            let nl = last
                .rfind(['\n', '\r'])
                .unwrap_or_else(|| panic!("{s:?}: {k:?} vs {l:?}"));
            assert!(
                last.chars().all(char::is_whitespace),
                "{s:?}: {k:?} vs {l:?}"
            );
            let mut want = k[..k.len() - 1].to_vec();
            want.extend([&last[..=nl], &last[nl + 1..]]);
            assert_eq!(l, want, "{s:?}");
        }
        assert!(same > 10_000 && differ > 100, "{same} {differ}");
    }
}
