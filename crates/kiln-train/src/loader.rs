//! Token data for pretraining: documents (BOS first) concatenated into one stream, split into a
//! training and a validation part by whole documents, and cut into windows of `t + 1` tokens.
//! Training windows are visited in a seeded random order per epoch (a permutation derived from
//! `seed` and the epoch number), so the data position is two integers and resuming is exact.

use kiln_engine::Rng;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// Where the training loader is: epoch and index into that epoch's window permutation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPos {
    pub epoch: u64,
    pub cursor: u64,
}

/// Train/validation token streams.
#[derive(Debug)]
pub struct TokenData {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl TokenData {
    /// Split documents: the last `val_frac` of them (at least one when there are two or more)
    /// form the validation stream. Ids are checked against `vocab`.
    pub fn from_documents(
        docs: &[Vec<u32>],
        val_frac: f32,
        vocab: usize,
    ) -> Result<TokenData, TrainError> {
        check_ids(docs, vocab, "document")?;
        let n_val = if docs.len() >= 2 {
            ((docs.len() as f32 * val_frac).ceil() as usize).clamp(1, docs.len() - 1)
        } else {
            0
        };
        let split = docs.len() - n_val;
        let cat = |ds: &[Vec<u32>]| ds.iter().flatten().copied().collect::<Vec<u32>>();
        Ok(TokenData {
            train: cat(&docs[..split]),
            val: cat(&docs[split..]),
        })
    }

    /// Training and validation documents the caller split (every `train` document trains).
    pub fn from_split(
        train: &[Vec<u32>],
        val: &[Vec<u32>],
        vocab: usize,
    ) -> Result<TokenData, TrainError> {
        check_ids(train, vocab, "training document")?;
        check_ids(val, vocab, "validation document")?;
        Ok(TokenData {
            train: train.concat(),
            val: val.concat(),
        })
    }
}

fn check_ids(docs: &[Vec<u32>], vocab: usize, what: &str) -> Result<(), TrainError> {
    for (d, doc) in docs.iter().enumerate() {
        if let Some((i, &id)) = doc.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            return Err(TrainError::Data(format!(
                "{what} {d}, token {i}: id {id} is out of range for vocab size {vocab} (tokenizer and model disagree?)"
            )));
        }
    }
    Ok(())
}

/// Random-order windows over the training stream.
pub struct Loader {
    stream: Vec<u32>,
    t: usize,
    seed: u64,
    pub pos: DataPos,
    perm: Vec<u32>,
}

impl Loader {
    pub fn new(stream: Vec<u32>, t: usize, seed: u64) -> Result<Loader, TrainError> {
        let windows = stream.len().saturating_sub(1) / t;
        if windows == 0 {
            return Err(TrainError::Data(format!(
                "training split has {} tokens, need at least {} for one window of the context",
                stream.len(),
                t + 1
            )));
        }
        let mut l = Loader {
            stream,
            t,
            seed,
            pos: DataPos::default(),
            perm: Vec::new(),
        };
        l.make_perm();
        Ok(l)
    }

    fn make_perm(&mut self) {
        let n = self.stream.len().saturating_sub(1) / self.t;
        self.perm = (0..n as u32).collect();
        Rng::new(self.seed ^ self.pos.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .shuffle(&mut self.perm);
    }

    /// Jump to a saved position.
    pub fn set_pos(&mut self, pos: DataPos) {
        let epoch_changed = pos.epoch != self.pos.epoch;
        self.pos = pos;
        if epoch_changed {
            self.make_perm();
        }
    }

    /// Fill `x`, `y` (`b * t` each) with the next `b` windows.
    pub fn next_batch(&mut self, x: &mut [u32], y: &mut [u32]) {
        let t = self.t;
        for (xr, yr) in x.chunks_mut(t).zip(y.chunks_mut(t)) {
            if self.pos.cursor as usize >= self.perm.len() {
                self.pos = DataPos {
                    epoch: self.pos.epoch + 1,
                    cursor: 0,
                };
                self.make_perm();
            }
            let w = self.perm[self.pos.cursor as usize] as usize;
            self.pos.cursor += 1;
            let s = &self.stream[w * t..w * t + t + 1];
            xr.copy_from_slice(&s[..t]);
            yr.copy_from_slice(&s[1..]);
        }
    }
}

/// Sequential validation batches: up to `max_batches` full `(b, t)` batches from the start.
pub fn val_batches(
    val: &[u32],
    b: usize,
    t: usize,
    max_batches: usize,
) -> Vec<(Vec<u32>, Vec<u32>)> {
    let windows = val.len().saturating_sub(1) / t;
    let n = (windows / b).min(max_batches);
    (0..n)
        .map(|i| {
            let mut x = Vec::with_capacity(b * t);
            let mut y = Vec::with_capacity(b * t);
            for r in 0..b {
                let w = i * b + r;
                x.extend_from_slice(&val[w * t..w * t + t]);
                y.extend_from_slice(&val[w * t + 1..w * t + t + 1]);
            }
            (x, y)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn deterministic_windows_and_resume() {
        let stream: Vec<u32> = (0..1000).collect();
        let mut a = Loader::new(stream.clone(), 10, 3).unwrap();
        let (mut x, mut y) = (vec![0; 40], vec![0; 40]);
        for _ in 0..30 {
            a.next_batch(&mut x, &mut y);
        }
        assert_eq!(a.pos.epoch, 1, "99 windows per epoch, 120 drawn");
        assert!(x.iter().zip(&y).all(|(a, b)| a + 1 == *b));
        let saved = a.pos;
        a.next_batch(&mut x, &mut y);
        let mut b = Loader::new(stream, 10, 3).unwrap();
        b.set_pos(saved);
        let (mut x2, mut y2) = (vec![0; 40], vec![0; 40]);
        b.next_batch(&mut x2, &mut y2);
        assert_eq!((x, y), (x2, y2));
    }
    #[test]
    fn split_and_bad_ids() {
        let docs = vec![vec![0, 1, 2], vec![0, 3], vec![0, 4, 4, 4]];
        let d = TokenData::from_documents(&docs, 0.1, 10).unwrap();
        assert_eq!(d.val, vec![0, 4, 4, 4]);
        assert_eq!(d.train, vec![0, 1, 2, 0, 3]);
        let err = TokenData::from_documents(&docs, 0.1, 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("document 2") && err.contains("id 4"), "{err}");
        assert!(Loader::new(vec![1, 2, 3], 8, 0).is_err());
        let d = TokenData::from_split(&docs[..2], &docs[2..], 10).unwrap();
        assert_eq!((d.train, d.val), (vec![0, 1, 2, 0, 3], vec![0, 4, 4, 4]));
        let err = TokenData::from_split(&docs[..1], &docs[1..], 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("validation document 1"), "{err}");
    }
}
