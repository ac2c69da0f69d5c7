//! The GGUF `qwen2` and `qwen3` forward passes against a numpy reference, with no Qwen weights:
//! tests/fixtures/qwen holds tiny random-weight models of both architectures (F16, 2 layers,
//! width 64, 4 query and 2 KV heads; qwen2 with Q/K/V biases and an untied output, qwen3 with
//! QK-norm, heads of 32 from `key_length` and a tied output) and every position's logits of a
//! 16-token sequence from dev/gguf/tiny-model.py's float64 forward of the same files
//! (dev/gguf/qwen-fixtures.sh writes all four). F16 weights go through kiln's f32 path (no 8-bit
//! activations), so the only differences are f32 rounding: the test asks for 1e-4 of the
//! logits' range at every position, prefilled in one pass and one token at a time.
//! llama.cpp runs the same files in crates/kiln/tests/gguf_qwen.rs (when it is built).

use std::path::PathBuf;
use std::sync::Arc;

use kiln_engine::gguf::GgufFile;
use kiln_engine::llama::{Arch, LlamaModel};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen")
        .join(name)
}

fn load(arch: &str) -> LlamaModel {
    let file = GgufFile::open(&fixture(&format!("{arch}-tiny.gguf"))).unwrap();
    LlamaModel::new(Arc::new(file)).unwrap()
}

struct Reference {
    ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn reference(arch: &str) -> Reference {
    let text = std::fs::read_to_string(fixture(&format!("{arch}-tiny.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["arch"], arch);
    let ids = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect();
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    Reference { ids, logits }
}

/// Every position's logits must be within `1e-4 · max |reference logit|` of the reference.
fn assert_matches(what: &str, got: &[f32], want: &[Vec<f32>]) {
    let vocab = want[0].len();
    assert_eq!(got.len(), want.len() * vocab, "{what}: logits count");
    let mut worst = 0f32;
    for (pos, (g, w)) in got.chunks_exact(vocab).zip(want).enumerate() {
        let range = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(diff / range);
        assert!(
            diff <= 1e-4 * range,
            "{what}, position {pos}: max diff {diff} over a range of {range}"
        );
    }
    eprintln!("{what}: worst max diff / range {worst:.2e}");
}

fn check(arch: &str) -> LlamaModel {
    let m = load(arch);
    let r = reference(arch);
    let n = r.ids.len();
    let mut s = m.session(n);
    let all: Vec<usize> = (0..n).collect();
    let one_pass = m.forward_batch(&mut [&mut s], &vec![0; n], &r.ids, &all);
    assert_matches(&format!("{arch} one pass"), &one_pass.unwrap(), &r.logits);
    let mut s = m.session(n);
    let mut stepped = Vec::new();
    for &t in &r.ids {
        stepped.extend_from_slice(m.forward(&mut s, t).unwrap());
    }
    assert_matches(&format!("{arch} token by token"), &stepped, &r.logits);
    m
}

#[test]
fn qwen2_matches_the_numpy_reference() {
    let m = check("qwen2");
    let c = &m.config;
    assert_eq!(c.arch, Arch::Qwen2);
    assert_eq!((c.n_layer, c.d_model, c.n_head, c.n_kv_head), (2, 64, 4, 2));
    // No key_length: heads are width / heads.
    assert_eq!((c.head_dim, c.rope_dims, c.vocab), (16, 16, 267));
    assert_eq!((c.rope_base, c.eps), (1e6, 1e-6));
}

#[test]
fn qwen3_matches_the_numpy_reference() {
    let m = check("qwen3");
    let c = &m.config;
    assert_eq!(c.arch, Arch::Qwen3);
    // Heads of key_length 32: 4 of them are twice the width.
    assert_eq!((c.d_model, c.n_head, c.head_dim), (64, 4, 32));
    assert_eq!(c.attn_scale, 1.0 / 32f32.sqrt());
}

/// The file's bytes with the value of `general.architecture` (5 bytes, as "qwen2") replaced.
fn with_arch(bytes: &[u8], arch: &[u8; 5]) -> Vec<u8> {
    let key = b"general.architecture";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap();
    // key, then the value type (u32) and the string's length (u64).
    let value = at + key.len() + 4 + 8;
    assert_eq!(&bytes[value..value + 5], b"qwen2");
    let mut b = bytes.to_vec();
    b[value..value + 5].copy_from_slice(arch);
    b
}

#[test]
fn an_unknown_architecture_lists_the_supported_ones() {
    let bytes = std::fs::read(fixture("qwen2-tiny.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    std::fs::write(&path, with_arch(&bytes, b"mamba")).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let err = LlamaModel::new(Arc::new(file)).err().unwrap().to_string();
    assert!(
        err.contains("`mamba` is not supported")
            && ["llama", "qwen2", "qwen3", "gemma3"]
                .iter()
                .all(|a| err.contains(a)),
        "{err}"
    );
}

#[test]
fn qwen3_without_its_qk_norm_is_refused() {
    // The qwen2 file read as qwen3 (its keys are qwen2.*, so rename those too): it has no
    // attn_q_norm, which qwen3 requires.
    let bytes = std::fs::read(fixture("qwen2-tiny.gguf")).unwrap();
    let renamed: Vec<u8> = {
        let mut b = with_arch(&bytes, b"qwen3");
        let mut i = 0;
        while let Some(p) = b[i..].windows(6).position(|w| w == b"qwen2.") {
            b[i + p + 4] = b'3';
            i += p + 6;
        }
        b
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen3.gguf");
    std::fs::write(&path, renamed).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let err = LlamaModel::new(Arc::new(file)).err().unwrap().to_string();
    assert!(
        err.contains("blk.0.attn_q_norm.weight") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn a_block_count_beyond_the_tensor_table_is_refused() {
    // Found by tests/gguf_fuzz.rs: a corrupt count sized per-layer buffers (gigabytes) before
    // the first missing tensor was noticed.
    let mut bytes = std::fs::read(fixture("qwen2-tiny.gguf")).unwrap();
    let key = b"qwen2.block_count";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // The value type (u32 = 4), then the value.
    assert_eq!(bytes[at..at + 4], 4u32.to_le_bytes());
    bytes[at + 4..at + 8].copy_from_slice(&(1u32 << 23).to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layers.gguf");
    std::fs::write(&path, bytes).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let err = LlamaModel::new(Arc::new(file)).err().unwrap().to_string();
    assert!(
        err.contains("qwen2.block_count") && err.contains("8388608 layers"),
        "{err}"
    );
}
