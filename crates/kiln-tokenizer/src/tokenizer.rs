//! [`Tokenizer`]: a ranked byte vocabulary + split pattern + special tokens; encode and decode.

use crate::bpe::Vocab;
use crate::pretokenize::{SplitPattern, Splitter};
use crate::TokenizerError;
use aho_corasick::{AhoCorasick, MatchKind};
use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::HashSet;

/// A byte-level BPE tokenizer (tiktoken semantics). `Send + Sync`; share it with `Arc`.
#[derive(Debug)]
pub struct Tokenizer {
    pub(crate) vocab: Vocab,
    pub(crate) pattern: SplitPattern,
    splitter: Splitter,
    /// (name, id), in id order.
    pub(crate) specials: Vec<(String, u32)>,
    special_ids: FxHashMap<String, u32>,
    /// Finds any special token's text (leftmost, longest).
    special_finder: Option<AhoCorasick>,
    pub(crate) n_ranks: usize,
}

impl Tokenizer {
    /// Builds a tokenizer from ranked tokens (`(bytes, id)`; ids are ranks), special tokens and a
    /// split pattern. Checks that tokens and ids are unique and that all 256 single bytes exist.
    pub fn from_ranks(
        mut ranks: Vec<(Vec<u8>, u32)>,
        specials: Vec<(String, u32)>,
        pattern: SplitPattern,
    ) -> Result<Tokenizer, TokenizerError> {
        let splitter = Splitter::new(&pattern)?;
        ranks.sort_by_key(|r| r.1);
        let mut seen_bytes = FxHashSet::default();
        let mut seen_ids = FxHashSet::default();
        for (bytes, id) in &ranks {
            if bytes.is_empty() {
                return Err(TokenizerError::Vocab(format!("token {id} is empty")));
            }
            if !seen_ids.insert(*id) {
                return Err(TokenizerError::Vocab(format!("rank {id} appears twice")));
            }
            if !seen_bytes.insert(bytes.as_slice()) {
                return Err(TokenizerError::Vocab(format!(
                    "token {:?} appears twice (second at rank {id})",
                    String::from_utf8_lossy(bytes)
                )));
            }
        }
        for b in 0..=255u8 {
            if !seen_bytes.contains(&[b][..]) {
                return Err(TokenizerError::Vocab(format!(
                    "byte 0x{b:02x} has no token; every single byte needs one"
                )));
            }
        }
        let mut special_ids = FxHashMap::default();
        for (name, id) in &specials {
            if name.is_empty() {
                return Err(TokenizerError::Vocab("empty special token".into()));
            }
            if seen_ids.contains(id) || special_ids.values().any(|v| v == id) {
                return Err(TokenizerError::Vocab(format!(
                    "special token {name:?} reuses id {id}"
                )));
            }
            if special_ids.insert(name.clone(), *id).is_some() {
                return Err(TokenizerError::Vocab(format!(
                    "special token {name:?} appears twice"
                )));
            }
        }
        let mut specials = specials;
        specials.sort_by_key(|s| s.1);
        let special_finder = if specials.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(specials.iter().map(|s| s.0.as_str()))
                    .map_err(|e| TokenizerError::Vocab(format!("special tokens: {e}")))?,
            )
        };
        let vocab = Vocab::new(&ranks, &specials);
        Ok(Tokenizer {
            vocab,
            pattern,
            splitter,
            special_ids,
            special_finder,
            n_ranks: ranks.len(),
            specials,
        })
    }

    /// Encodes text; special-token text is encoded as ordinary bytes.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_ordinary_into(text, &mut out);
        out
    }

    /// [`Tokenizer::encode_ordinary`], appending to `out`.
    pub fn encode_ordinary_into(&self, text: &str, out: &mut Vec<u32>) {
        self.splitter
            .for_each(text, |piece| self.vocab.encode_piece(piece.as_bytes(), out));
    }

    /// Encodes text; occurrences of the special tokens named in `allowed_special` become their ids,
    /// all other text (including other special tokens' text) is encoded as ordinary text.
    /// Names that are not special tokens of this vocabulary are ignored.
    pub fn encode(&self, text: &str, allowed_special: &HashSet<&str>) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let Some(finder) = self
            .special_finder
            .as_ref()
            .filter(|_| !allowed_special.is_empty())
        else {
            self.encode_ordinary_into(text, &mut out);
            return out;
        };
        let mut start = 0; // start of the not yet encoded text
        let mut search = 0; // where to look for the next special token
        while search < text.len() {
            let input = aho_corasick::Input::new(text).span(search..text.len());
            let Some(m) = finder.find(input) else { break };
            let name = &self.specials[m.pattern().as_usize()].0;
            if allowed_special.contains(name.as_str()) {
                self.encode_ordinary_into(&text[start..m.start()], &mut out);
                out.push(self.specials[m.pattern().as_usize()].1);
                start = m.end();
                search = m.end();
            } else {
                // Not allowed: look again one char further (a later, allowed token may overlap).
                search = m.start() + text[m.start()..].chars().next().map_or(1, char::len_utf8);
            }
        }
        self.encode_ordinary_into(&text[start..], &mut out);
        out
    }

    /// Encodes many texts in parallel (rayon), each with [`Tokenizer::encode_ordinary`].
    pub fn encode_batch_ordinary(&self, texts: &[&str]) -> Vec<Vec<u32>> {
        texts.par_iter().map(|t| self.encode_ordinary(t)).collect()
    }

    /// The exact bytes of the ids (special tokens as their text). Unknown ids are skipped.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if let Some(b) = self.vocab.bytes(id) {
                out.extend_from_slice(b);
            }
        }
        out
    }

    /// Decodes to text; invalid UTF-8 becomes U+FFFD (only here: [`Tokenizer::decode_bytes`] is lossless).
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }

    /// Id of a special token, e.g. `"<|bos|>"`.
    pub fn special_token_id(&self, name: &str) -> Option<u32> {
        self.special_ids.get(name).copied()
    }

    /// Special tokens (name, id) in id order.
    pub fn special_tokens(&self) -> &[(String, u32)] {
        &self.specials
    }

    /// Number of ids: one more than the largest id. For a trained tokenizer that is
    /// 256 byte tokens + merges + special tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab.n_ids()
    }

    /// Number of ordinary (ranked) tokens: 256 + merges.
    pub fn n_ranks(&self) -> usize {
        self.n_ranks
    }

    /// Bytes of one token (special tokens: their text); None for an unused id.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.vocab.bytes(id)
    }

    /// Whether `id` is a special token.
    pub fn is_special(&self, id: u32) -> bool {
        self.specials.iter().any(|s| s.1 == id)
    }

    /// The split pattern.
    pub fn pattern(&self) -> &SplitPattern {
        &self.pattern
    }

    /// The pieces the split pattern cuts `text` into (before merging).
    pub fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        self.splitter.pieces(text)
    }

    /// Ranked tokens (bytes, id) in id order.
    pub fn ranks(&self) -> Vec<(&[u8], u32)> {
        let mut out: Vec<(&[u8], u32)> = self
            .vocab
            .encoder
            .iter()
            .map(|(b, &id)| (&b[..], id))
            .collect();
        out.sort_by_key(|r| r.1);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes + merges of "ab", "abc", "aa", "aaaa" with the GPT-4 pattern.
    fn tiny() -> Tokenizer {
        let mut ranks: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], b as u32)).collect();
        for (k, t) in ["ab", "abc", "aa", "aaaa"].iter().enumerate() {
            ranks.push((t.as_bytes().to_vec(), 256 + k as u32));
        }
        Tokenizer::from_ranks(
            ranks,
            vec![("<|bos|>".into(), 260), ("<|user_start|>".into(), 261)],
            SplitPattern::Gpt4,
        )
        .unwrap()
    }

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Tokenizer>();
    }

    #[test]
    fn merges_follow_rank_order() {
        let t = tiny();
        assert_eq!(t.encode_ordinary("abc"), vec![257]);
        assert_eq!(t.encode_ordinary("abcab"), vec![257, 256]);
        assert_eq!(t.encode_ordinary("aaaaa"), vec![259, b'a' as u32]);
        let long = "a".repeat(1001);
        let ids = t.encode_ordinary(&long);
        assert_eq!(ids.len(), 251);
        assert_eq!(t.decode(&ids), long);
    }

    #[test]
    fn special_tokens_only_when_allowed() {
        let t = tiny();
        let text = "ab<|bos|>abc<|user_start|>";
        let plain = t.encode_ordinary(text);
        assert!(!plain.contains(&260) && !plain.contains(&261));
        assert_eq!(t.encode(text, &HashSet::new()), plain);
        let bos_only = t.encode(text, &HashSet::from(["<|bos|>"]));
        assert_eq!(&bos_only[..3], &[256, 260, 257]);
        assert!(!bos_only.contains(&261));
        let both = t.encode(text, &HashSet::from(["<|bos|>", "<|user_start|>"]));
        assert_eq!(both, vec![256, 260, 257, 261]);
        assert_eq!(t.decode(&both), text);
    }

    #[test]
    fn decode_bytes_is_lossless_and_decode_is_lossy() {
        let t = tiny();
        let ids = [0xE4, 0xB8]; // first two bytes of a three-byte char
        assert_eq!(t.decode_bytes(&ids), vec![0xE4, 0xB8]);
        assert_eq!(t.decode(&ids), "\u{FFFD}");
        assert_eq!(t.token_bytes(257), Some(&b"abc"[..]));
        assert_eq!(t.token_bytes(999), None);
        assert_eq!(t.special_token_id("<|bos|>"), Some(260));
        assert_eq!(t.vocab_size(), 262);
    }

    #[test]
    fn rejects_vocab_without_all_bytes_or_with_duplicates() {
        let ranks: Vec<(Vec<u8>, u32)> = (0..255u8).map(|b| (vec![b], b as u32)).collect();
        let err = Tokenizer::from_ranks(ranks, vec![], SplitPattern::Gpt2).unwrap_err();
        assert!(err.to_string().contains("0xff"), "{err}");
        let mut ranks: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], b as u32)).collect();
        ranks.push((b"a".to_vec(), 256));
        let err = Tokenizer::from_ranks(ranks, vec![], SplitPattern::Gpt2).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
