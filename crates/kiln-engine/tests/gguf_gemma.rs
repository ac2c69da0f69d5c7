//! The GGUF `gemma3` forward pass on the fetched Gemma-3-270M (`kiln models fetch gemma-3-270m`;
//! fails saying so when it is missing): the configuration read from metadata (head size from
//! key_length, every 6th layer global, 512-position window, local RoPE base 10,000), a prompt
//! prefilled in one pass equals the same tokens one at a time, and the sliding window does what
//! it says — shrunk to 8 positions for the test, it leaves the first 8 positions' logits alone
//! and changes the later ones, through both paths. Greedy agreement with llama.cpp is
//! dev/gguf/vs-llama-cpp.sh's job (it needs llama.cpp built).

use std::sync::Arc;

use kiln_engine::gguf::GgufFile;
use kiln_engine::llama::{Arch, LlamaModel};

fn model() -> LlamaModel {
    let p = kiln_data::models::resolve_model("gemma-3-270m")
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("gemma-3-270m: run `kiln models fetch gemma-3-270m`");
    LlamaModel::new(Arc::new(GgufFile::open(&p).unwrap())).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
}

/// All positions' logits of `prompt`, one pass, and one token at a time.
fn both_ways(m: &LlamaModel, prompt: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut s = m.session(64);
    let all: Vec<usize> = (0..prompt.len()).collect();
    let batch = m
        .forward_batch(&mut [&mut s], &vec![0; prompt.len()], prompt, &all)
        .unwrap();
    let mut s = m.session(64);
    let mut one = Vec::new();
    for &t in prompt {
        one.extend_from_slice(m.forward(&mut s, t).unwrap());
    }
    (batch, one)
}

#[test]
fn gemma3_config_and_sliding_window() {
    let mut m = model();
    let c = &m.config;
    assert_eq!(c.arch, Arch::Gemma3);
    assert_eq!(
        (c.n_layer, c.d_model, c.n_head, c.n_kv_head),
        (18, 640, 4, 1)
    );
    assert_eq!((c.head_dim, c.vocab), (256, 262_144));
    assert_eq!(c.sliding_window, Some(512));
    let globals: Vec<usize> = (0..c.n_layer).filter(|&l| !c.local[l]).collect();
    assert_eq!(globals, vec![5, 11, 17]);
    assert_eq!((c.rope_base, c.rope_base_local), (1_000_000.0, 10_000.0));
    assert_eq!(c.attn_scale, 1.0 / 16.0);

    // <bos> "The capital of France is" and some more text-like ids.
    let mut prompt: Vec<u32> = vec![2, 818, 5279, 529, 7001, 563];
    prompt.extend((0..18).map(|i| 1000 + 97 * i));
    let v = c.vocab;
    let (full_batch, full_one) = both_ways(&m, &prompt);
    // One pass vs one at a time: the same but for f32 summation order (one token takes the
    // fused kernels, several the tiled ones; per product they agree to ~4e-7 of the range on
    // AVX2 and VNNI alike, measured on layer 3's matrices), which the 8-bit re-quantization
    // before every product grows over 18 layers: 0.2–0.9 of ~15–46 at most positions, and at
    // one peaked position (range 43.7) 4.55 on AVX2 against 0.91 on VNNI (2026-12-03). So:
    // within 12% of the range, and the same top token unless the top two are within twice the
    // difference (a near-tie). A broken mask or RoPE moves logits by the whole range.
    for i in 0..prompt.len() {
        let (a, b) = (
            &full_batch[i * v..(i + 1) * v],
            &full_one[i * v..(i + 1) * v],
        );
        let range = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = max_diff(a, b);
        assert!(
            d <= 0.12 * range,
            "position {i}: max diff {d} of range {range}"
        );
        let (ta, tb) = (argmax(a), argmax(b));
        assert!(
            ta == tb || (b[tb] - b[ta]).abs() <= 2.0 * d,
            "position {i}: top token {ta} vs {tb} (max diff {d})"
        );
    }
    // " the" follows "The capital of France is" (llama.cpp's greedy pick too).
    assert_eq!(argmax(&full_one[5 * v..6 * v]), 506);

    m.config.sliding_window = Some(8);
    let (win_batch, win_one) = both_ways(&m, &prompt);
    for i in 0..prompt.len() {
        let rows = i * v..(i + 1) * v;
        let d = max_diff(&win_one[rows.clone()], &full_one[rows.clone()]);
        if i < 8 {
            // Nothing falls out of an 8-position window yet: the same computation.
            assert_eq!(d, 0.0, "position {i} inside the window");
        } else {
            assert!(d > 0.1, "position {i}: the window changed nothing ({d})");
        }
        let range = win_one[rows.clone()]
            .iter()
            .fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            max_diff(&win_batch[rows.clone()], &win_one[rows]) <= 0.08 * range,
            "windowed position {i}: one pass vs one at a time"
        );
    }
}
