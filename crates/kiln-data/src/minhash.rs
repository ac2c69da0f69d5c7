//! MinHash near-duplicate detection as FineWeb runs it: word 5-gram shingles of the normalised
//! text, 112 hash functions in 14 bands of 8, documents sharing any band are duplicate candidates,
//! union-find turns candidate pairs into clusters, and one document per cluster (the first in
//! input order) is kept.
//!
//! The four distributed steps (signatures → buckets → clusters → filter) exchange small binary
//! files, little-endian, each with a magic tag so a wrong file is an error that names itself:
//! - `sigs` (per input unit): `KMHS` | docs u64 | bands u64 | then band-major `(band_hash u64)`
//!   per doc, preceded by the doc keys (`u64`, `unit << 32 | row`).
//! - `pairs` (per band): `KMHP` | n u64 | n × (kept key u64, other key u64).
//! - `remove`: `KMHR` | n u64 | n × (removed key u64, kept key u64), sorted by removed key.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// `[minhash]` table (datatrove's FineWeb configuration).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MinhashConfig {
    pub enabled: bool,
    pub n_grams: usize,
    pub num_buckets: usize,
    pub hashes_per_bucket: usize,
    pub seed: u64,
}

impl Default for MinhashConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            n_grams: 5,
            num_buckets: 14,
            hashes_per_bucket: 8,
            seed: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MinhashError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a kiln minhash `{expected}` file (bad magic or truncated)")]
    Format {
        path: PathBuf,
        expected: &'static str,
    },
}

const P: u64 = (1 << 61) - 1; // Mersenne prime 2^61 − 1

fn mod_p(x: u128) -> u64 {
    let lo = (x as u64) & P;
    let hi = (x >> 61) as u64;
    let s = lo + (hi & P) + ((x >> 122) as u64);
    let s = (s & P) + (s >> 61);
    if s >= P {
        s - P
    } else {
        s
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64-bit hash of bytes (FNV-1a, then a splitmix finaliser for avalanche).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut s = h;
    splitmix(&mut s)
}

/// Computes signatures and band hashes.
#[derive(Debug, Clone)]
pub struct Minhasher {
    n_grams: usize,
    bands: usize,
    rows: usize,
    params: Vec<(u64, u64)>,
}

impl Minhasher {
    pub fn new(c: &MinhashConfig) -> Self {
        let mut state = c.seed;
        let params = (0..c.num_buckets * c.hashes_per_bucket)
            .map(|_| {
                let a = splitmix(&mut state) % (P - 1) + 1;
                let b = splitmix(&mut state) % P;
                (a, b)
            })
            .collect();
        Self {
            n_grams: c.n_grams.max(1),
            bands: c.num_buckets,
            rows: c.hashes_per_bucket,
            params,
        }
    }

    pub fn bands(&self) -> usize {
        self.bands
    }

    /// Hashes of the word n-gram shingles of the normalised text (lower-case, punctuation as
    /// spaces). A text shorter than n words is one shingle.
    pub fn shingles(&self, text: &str) -> Vec<u64> {
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        if words.is_empty() {
            return vec![];
        }
        let n = self.n_grams.min(words.len());
        let mut out: Vec<u64> = words
            .windows(n)
            .map(|w| {
                let mut h: u64 = 0;
                for word in w {
                    h = h.rotate_left(21) ^ hash_bytes(word.as_bytes());
                }
                h
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// One hash per band (bands × rows minima folded together), `None` for a text without words.
    pub fn band_hashes(&self, text: &str) -> Option<Vec<u64>> {
        let shingles = self.shingles(text);
        if shingles.is_empty() {
            return None;
        }
        let mut mins = vec![u64::MAX; self.params.len()];
        for &s in &shingles {
            let s = s % P;
            for (m, &(a, b)) in mins.iter_mut().zip(&self.params) {
                let v = mod_p(a as u128 * s as u128 + b as u128);
                if v < *m {
                    *m = v;
                }
            }
        }
        Some(
            mins.chunks(self.rows)
                .map(|band| {
                    let mut bytes = Vec::with_capacity(band.len() * 8);
                    for v in band {
                        bytes.extend_from_slice(&v.to_le_bytes());
                    }
                    hash_bytes(&bytes)
                })
                .collect(),
        )
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MinhashError + '_ {
    move |source| MinhashError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_u64s(
    path: &Path,
    magic: &'static [u8; 4],
    name: &'static str,
) -> Result<Vec<u64>, MinhashError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(path))?;
    if bytes.len() < 4 || &bytes[..4] != magic || (bytes.len() - 4) % 8 != 0 {
        return Err(MinhashError::Format {
            path: path.to_path_buf(),
            expected: name,
        });
    }
    Ok(bytes[4..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

fn write_u64s(path: &Path, magic: &[u8; 4], values: &[u64]) -> Result<(), MinhashError> {
    let mut bytes = Vec::with_capacity(4 + values.len() * 8);
    bytes.extend_from_slice(magic);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    crate::write_atomic(path, &bytes).map_err(io(path))
}

/// Signatures of one unit: doc keys and, per band, one hash per doc.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Signatures {
    pub keys: Vec<u64>,
    /// `bands[b][i]` is doc `keys[i]`'s hash in band `b`.
    pub bands: Vec<Vec<u64>>,
}

impl Signatures {
    pub fn write(&self, path: &Path) -> Result<(), MinhashError> {
        let mut v = vec![self.keys.len() as u64, self.bands.len() as u64];
        v.extend_from_slice(&self.keys);
        for b in &self.bands {
            v.extend_from_slice(b);
        }
        write_u64s(path, b"KMHS", &v)
    }

    pub fn read(path: &Path) -> Result<Self, MinhashError> {
        let v = read_u64s(path, b"KMHS", "sigs")?;
        let bad = || MinhashError::Format {
            path: path.to_path_buf(),
            expected: "sigs",
        };
        let (&n, &bands) = (v.first().ok_or_else(bad)?, v.get(1).ok_or_else(bad)?);
        let (n, bands) = (n as usize, bands as usize);
        if v.len() != 2 + n + n * bands {
            return Err(bad());
        }
        let keys = v[2..2 + n].to_vec();
        let bands = (0..bands)
            .map(|b| v[2 + n + b * n..2 + n + (b + 1) * n].to_vec())
            .collect();
        Ok(Self { keys, bands })
    }
}

/// Bucket step for one band: candidate pairs (first key in its bucket, other key).
pub fn band_pairs(entries: &mut [(u64, u64)]) -> Vec<(u64, u64)> {
    entries.sort_unstable();
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let mut j = i + 1;
        while j < entries.len() && entries[j].0 == entries[i].0 {
            pairs.push((entries[i].1, entries[j].1));
            j += 1;
        }
        i = j;
    }
    pairs
}

pub fn write_pairs(path: &Path, pairs: &[(u64, u64)]) -> Result<(), MinhashError> {
    let flat: Vec<u64> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    write_u64s(path, b"KMHP", &flat)
}

pub fn read_pairs(path: &Path) -> Result<Vec<(u64, u64)>, MinhashError> {
    Ok(read_u64s(path, b"KMHP", "pairs")?
        .chunks_exact(2)
        .map(|c| (c[0], c[1]))
        .collect())
}

/// Cluster step: union-find over all pairs; every key but the smallest of its cluster is
/// removed. Returns (removed, kept) sorted by removed key.
pub fn clusters(pairs: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut keys: Vec<u64> = Vec::new();
    let mut parent: Vec<usize> = Vec::new();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut id = |k: u64, keys: &mut Vec<u64>, parent: &mut Vec<usize>| {
        *index.entry(k).or_insert_with(|| {
            keys.push(k);
            parent.push(parent.len());
            parent.len() - 1
        })
    };
    for (a, b) in pairs {
        let ia = id(a, &mut keys, &mut parent);
        let ib = id(b, &mut keys, &mut parent);
        let (ra, rb) = (find(&mut parent, ia), find(&mut parent, ib));
        if ra != rb {
            // The root is always the smaller key, so the root is the one kept.
            if keys[ra] < keys[rb] {
                parent[rb] = ra;
            } else {
                parent[ra] = rb;
            }
        }
    }
    let mut removed: Vec<(u64, u64)> = (0..keys.len())
        .filter_map(|i| {
            let r = find(&mut parent, i);
            (r != i).then(|| (keys[i], keys[r]))
        })
        .collect();
    removed.sort_unstable();
    removed
}

pub fn write_remove(path: &Path, removed: &[(u64, u64)]) -> Result<(), MinhashError> {
    let flat: Vec<u64> = removed.iter().flat_map(|&(a, b)| [a, b]).collect();
    write_u64s(path, b"KMHR", &flat)
}

pub fn read_remove(path: &Path) -> Result<Vec<(u64, u64)>, MinhashError> {
    Ok(read_u64s(path, b"KMHR", "remove")?
        .chunks_exact(2)
        .map(|c| (c[0], c[1]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(seed: usize, words: usize) -> String {
        (0..words)
            .map(|i| format!("w{}", (i * 7919 + seed * 104_729) % 100_003))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn near_duplicates_share_a_band_distinct_docs_do_not() {
        let m = Minhasher::new(&MinhashConfig::default());
        let a = doc(1, 400);
        // Change 2% of the words: Jaccard of 5-gram sets stays high (~0.8).
        let mut words: Vec<String> = a.split(' ').map(String::from).collect();
        for i in (0..400).step_by(50) {
            words[i] = "changed".into();
        }
        let a2 = words.join(" ");
        let b = doc(2, 400);
        let (ha, ha2, hb) = (
            m.band_hashes(&a).unwrap(),
            m.band_hashes(&a2).unwrap(),
            m.band_hashes(&b).unwrap(),
        );
        assert_eq!(ha.len(), 14);
        assert!(ha.iter().zip(&ha2).any(|(x, y)| x == y));
        assert!(ha.iter().zip(&hb).all(|(x, y)| x != y));
        // Case and punctuation do not matter.
        assert_eq!(
            m.band_hashes("Hello, World! foo bar baz"),
            m.band_hashes("hello world foo bar baz")
        );
        assert_eq!(m.band_hashes(" .,; "), None);
    }

    #[test]
    fn union_find_keeps_smallest_key_per_cluster() {
        let removed = clusters([(5, 9), (9, 2), (7, 8), (3, 3)]);
        assert_eq!(removed, vec![(5, 2), (8, 7), (9, 2)]);
        let mut entries = vec![(10, 4), (11, 1), (10, 2), (10, 9)];
        assert_eq!(band_pairs(&mut entries), vec![(2, 4), (2, 9)]);
    }

    #[test]
    fn files_round_trip_and_reject_wrong_kind() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signatures {
            keys: vec![1, 2, 3],
            bands: vec![vec![10, 20, 30], vec![11, 21, 31]],
        };
        let p = dir.path().join("s.bin");
        s.write(&p).unwrap();
        assert_eq!(Signatures::read(&p).unwrap(), s);
        let q = dir.path().join("p.bin");
        write_pairs(&q, &[(1, 2)]).unwrap();
        assert_eq!(read_pairs(&q).unwrap(), vec![(1, 2)]);
        let err = Signatures::read(&q).unwrap_err().to_string();
        assert!(err.contains("p.bin") && err.contains("sigs"), "{err}");
    }
}
