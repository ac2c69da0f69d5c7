//! The GGUF `llama` forward pass on the fetched SmolLM2-135M (`kiln models fetch smollm2-135m`;
//! fails saying so when it is missing): a prompt prefilled in one pass equals the same tokens
//! one at a time, and the batched decoder ([`LlamaBatch`]) equals the sequential reference
//! ([`SequentialLlama`]) with slots at different positions, forks and clears. Run under
//! `KILN_SIMD=avx2` / `KILN_SIMD=scalar` too, so each kernel version runs the whole model.

use std::sync::Arc;

use kiln_engine::batch::SequentialLlama;
use kiln_engine::gguf::GgufFile;
use kiln_engine::llama::{LlamaBatch, LlamaModel};
use kiln_engine::BatchDecoder;

fn model() -> LlamaModel {
    let p = kiln_data::models::resolve_model("smollm2-135m")
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("smollm2-135m: run `kiln models fetch smollm2-135m`");
    LlamaModel::new(Arc::new(GgufFile::open(&p).unwrap())).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
}

#[test]
fn prefill_in_one_pass_equals_token_by_token() {
    let m = model();
    let prompt: Vec<u32> = vec![1, 504, 3458, 282, 4649, 314, 253, 1345, 28, 378, 21, 8];
    let mut s = m.session(64);
    let mut one = Vec::new();
    for &t in &prompt {
        one.push(m.forward(&mut s, t).unwrap().to_vec());
    }
    let mut s2 = m.session(64);
    let all: Vec<usize> = (0..prompt.len()).collect();
    let batch = m
        .forward_batch(&mut [&mut s2], &vec![0; prompt.len()], &prompt, &all)
        .unwrap();
    let v = m.config.vocab;
    for (i, want) in one.iter().enumerate() {
        let d = max_diff(&batch[i * v..(i + 1) * v], want);
        assert!(d < 1e-3, "position {i}: max diff {d}");
    }
    assert_eq!(s2.pos(), prompt.len());
    // Then both continue the same.
    let a = m.forward(&mut s, 42).unwrap().to_vec();
    let b = m.forward(&mut s2, 42).unwrap().to_vec();
    assert!(max_diff(&a, &b) < 1e-3);
}

#[test]
fn batched_decoder_matches_the_sequential_reference() {
    let m = model();
    let mut reference = SequentialLlama::new(&m, 4, 48);
    let mut batch = LlamaBatch::new(&m, 4, 48);
    let run = |d: &mut dyn BatchDecoder| {
        let mut out = Vec::new();
        out.push(d.prefill(0, &[1, 504, 3458, 282, 4649]).unwrap());
        out.push(d.prefill(2, &[1, 30, 31, 32, 33, 34, 35, 36, 37]).unwrap());
        d.fork(0, 1).unwrap();
        out.push(d.step(&[2, 0, 1], &[100, 200, 300]).unwrap());
        out.push(d.prefill(3, &[1, 7]).unwrap());
        out.push(d.step(&[3, 1, 0, 2], &[5, 6, 7, 8]).unwrap());
        d.clear(1);
        assert!(d.step(&[1], &[5]).is_err());
        assert!(d.step(&[0, 0], &[5, 5]).is_err());
        out.push(d.step(&[0], &[9]).unwrap());
        let lens: Vec<usize> = (0..4).map(|s| d.len(s)).collect();
        (out, lens)
    };
    let (want, want_lens) = run(&mut reference);
    let (got, got_lens) = run(&mut batch);
    assert_eq!(want_lens, got_lens);
    let v = m.config.vocab;
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let d = max_diff(w, g);
        assert!(d < 1e-3, "call {i}: max diff {d}");
        for r in 0..w.len() / v {
            assert_eq!(
                argmax(&w[r * v..(r + 1) * v]),
                argmax(&g[r * v..(r + 1) * v])
            );
        }
    }
}
