//! The byte-pair merge core: a vocabulary of byte strings ranked by id, and the tiktoken merge rule
//! (repeatedly merge the adjacent pair whose concatenation has the lowest rank, leftmost first).
//!
//! Unlike tiktoken, which hashes the concatenated byte slice for every candidate pair, merges are
//! looked up in an id-pair table `(left id, right id) → merged id`, built once from the vocabulary
//! by splitting every token at every point. That is the same rule (parts are always tokens, so
//! "concatenation is a token" ⇔ "the pair is in the table") with an 8-byte integer hash instead of a
//! slice hash. Short pieces use a flat rescanned array on the stack (cache locality beats a heap when
//! n is small, as tiktoken found); pieces of `HEAP_FROM` bytes or more use a heap and linked list so
//! a megabyte of one repeated character stays O(n log n).

use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Rank of "no merge".
const NONE: u32 = u32::MAX;
/// Pieces at least this long use the heap merge.
const HEAP_FROM: usize = 128;

#[derive(Debug)]
pub(crate) struct Vocab {
    /// Ordinary token bytes → id (= rank).
    pub encoder: FxHashMap<Box<[u8]>, u32>,
    /// Id of each single byte.
    pub byte_ids: [u32; 256],
    /// (left << 32 | right) → merged id.
    pairs: FxHashMap<u64, u32>,
    /// All token bytes (ordinary and special) back to back; `spans[id]` = (start, len).
    arena: Vec<u8>,
    spans: Vec<(u32, u32)>,
}

const MISSING: (u32, u32) = (u32::MAX, 0);

impl Vocab {
    /// `ranks[i]` = (bytes, id). Callers have checked uniqueness and that all 256 bytes exist.
    pub fn new(ranks: &[(Vec<u8>, u32)], specials: &[(String, u32)]) -> Vocab {
        let mut encoder: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
        encoder.reserve(ranks.len());
        let mut byte_ids = [NONE; 256];
        let max_id = ranks
            .iter()
            .map(|r| r.1)
            .chain(specials.iter().map(|s| s.1))
            .max()
            .unwrap_or(0);
        let mut spans = vec![MISSING; max_id as usize + 1];
        let mut arena = Vec::new();
        for (bytes, id) in ranks {
            if bytes.len() == 1 {
                byte_ids[bytes[0] as usize] = *id;
            }
            encoder.insert(bytes.clone().into_boxed_slice(), *id);
            spans[*id as usize] = (arena.len() as u32, bytes.len() as u32);
            arena.extend_from_slice(bytes);
        }
        for (name, id) in specials {
            spans[*id as usize] = (arena.len() as u32, name.len() as u32);
            arena.extend_from_slice(name.as_bytes());
        }
        let mut pairs = FxHashMap::default();
        pairs.reserve(ranks.len() * 2);
        for (bytes, id) in ranks {
            for k in 1..bytes.len() {
                if let Some(&a) = encoder.get(&bytes[..k]) {
                    if let Some(&b) = encoder.get(&bytes[k..]) {
                        pairs.insert(key(a, b), *id);
                    }
                }
            }
        }
        Vocab {
            encoder,
            byte_ids,
            pairs,
            arena,
            spans,
        }
    }

    /// Number of ids (largest id + 1).
    pub fn n_ids(&self) -> usize {
        self.spans.len()
    }

    #[inline]
    pub fn bytes(&self, id: u32) -> Option<&[u8]> {
        let &(start, len) = self.spans.get(id as usize)?;
        if start == u32::MAX {
            return None;
        }
        Some(&self.arena[start as usize..(start + len) as usize])
    }

    #[inline(always)]
    fn pair(&self, a: u32, b: u32) -> u32 {
        *self.pairs.get(&key(a, b)).unwrap_or(&NONE)
    }

    /// Appends the ids of one piece.
    #[inline]
    pub fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if piece.len() == 1 {
            out.push(self.byte_ids[piece[0] as usize]);
        } else if let Some(&id) = self.encoder.get(piece) {
            out.push(id);
        } else if piece.len() < HEAP_FROM {
            self.merge_small(piece, out);
        } else {
            self.merge_heap(piece, out);
        }
    }

    fn merge_small(&self, piece: &[u8], out: &mut Vec<u32>) {
        let mut ids = [0u32; HEAP_FROM];
        let mut ranks = [NONE; HEAP_FROM];
        let mut n = piece.len();
        for (k, &b) in piece.iter().enumerate() {
            ids[k] = self.byte_ids[b as usize];
        }
        for k in 0..n - 1 {
            ranks[k] = self.pair(ids[k], ids[k + 1]);
        }
        loop {
            let mut best = NONE;
            let mut at = 0;
            for (k, &r) in ranks[..n - 1].iter().enumerate() {
                if r < best {
                    best = r;
                    at = k;
                }
            }
            if best == NONE {
                break;
            }
            ids[at] = best;
            ids.copy_within(at + 2..n, at + 1);
            if at + 2 < n - 1 {
                ranks.copy_within(at + 2..n - 1, at + 1);
            }
            n -= 1;
            if at + 1 < n {
                ranks[at] = self.pair(ids[at], ids[at + 1]);
            } else {
                ranks[at] = NONE;
            }
            if at > 0 {
                ranks[at - 1] = self.pair(ids[at - 1], ids[at]);
            }
        }
        out.extend_from_slice(&ids[..n]);
    }

    fn merge_heap(&self, piece: &[u8], out: &mut Vec<u32>) {
        let n = piece.len();
        let mut ids: Vec<u32> = piece.iter().map(|&b| self.byte_ids[b as usize]).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|k| k.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::with_capacity(n);
        for k in 0..n - 1 {
            let r = self.pair(ids[k], ids[k + 1]);
            if r != NONE {
                heap.push(Reverse((r, k)));
            }
        }
        while let Some(Reverse((r, k))) = heap.pop() {
            if !alive[k] || next[k] >= n {
                continue;
            }
            let nk = next[k];
            if self.pair(ids[k], ids[nk]) != r {
                continue; // stale
            }
            ids[k] = r;
            alive[nk] = false;
            next[k] = next[nk];
            if next[k] < n {
                prev[next[k]] = k;
                let r2 = self.pair(ids[k], ids[next[k]]);
                if r2 != NONE {
                    heap.push(Reverse((r2, k)));
                }
            }
            let p = prev[k];
            if p < n {
                let r2 = self.pair(ids[p], ids[k]);
                if r2 != NONE {
                    heap.push(Reverse((r2, p)));
                }
            }
        }
        let mut k = 0;
        while k < n {
            out.push(ids[k]);
            k = next[k];
        }
    }
}

#[inline(always)]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}
