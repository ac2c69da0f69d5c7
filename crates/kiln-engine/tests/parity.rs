//! Parity with PyTorch (fixtures written by scripts/engine_fixtures.py, committed): logits, the
//! per-token-weighted loss, every parameter gradient and three AdamW steps, for `gpt2` (loaded
//! from the Hugging Face GPT-2 layout) and `modern`. Relative tolerance 1e-4 of each tensor's
//! largest magnitude.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_engine::safetensors::{read, Tensor};
use kiln_engine::{load_checkpoint, CpuBackend, OptimizerConfig, Trainer};

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(arch)
}

fn get<'a>(ts: &'a [Tensor], name: &str) -> &'a Tensor {
    ts.iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("fixture lacks {name}"))
}

/// max |a - b| / max |b|
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

fn parity(arch: &str) {
    let dir = fixture(arch);
    let ck = load_checkpoint(&dir).unwrap();
    let (ex, _) = read(&dir.join("expect.safetensors")).unwrap();
    let ids = |n: &str| {
        get(&ex, n)
            .data
            .iter()
            .map(|&x| x as u32)
            .collect::<Vec<u32>>()
    };
    let (x, y) = (ids("inputs"), ids("targets"));
    let w = get(&ex, "weights").data.clone();
    let (b, t) = (get(&ex, "inputs").shape[0], get(&ex, "inputs").shape[1]);
    let model = ck.into_model(Arc::new(CpuBackend::new(1))).unwrap();

    let logits = model.forward_logits(&x, b, t).unwrap();
    let e = rel(&logits, &get(&ex, "logits").data);
    assert!(e < 1e-4, "{arch}: logits rel err {e}");

    let oc = OptimizerConfig {
        lr: 1e-2,
        weight_decay: 0.1,
        decay_vectors: true,
        grad_clip: None,
        ..Default::default()
    };
    let mut tr = Trainer::new(model, b, t, oc).unwrap();
    tr.zero_grad();
    let norm: f32 = w.iter().sum();
    let loss = tr.forward_backward(&x, &y, Some(&w), norm).unwrap();
    let want = get(&ex, "loss").data[0];
    assert!(
        ((loss - want) / want).abs() < 1e-4,
        "{arch}: loss {loss} vs {want}"
    );
    let grads = tr.grads_host();
    let mut worst = 0f32;
    for s in &tr.model.layout.specs {
        let e = rel(
            &grads[s.offset..s.offset + s.len],
            &get(&ex, &format!("grad.{}", s.name)).data,
        );
        assert!(e < 1e-4, "{arch}: grad {} rel err {e}", s.name);
        worst = worst.max(e);
    }
    eprintln!("{arch}: loss {loss} (torch {want}), worst grad rel err {worst:.2e}");
    tr.optimizer_step(1.0);
    for (i, &want) in get(&ex, "step_losses").data.iter().enumerate() {
        tr.zero_grad();
        let l = tr.forward_backward(&x, &y, Some(&w), norm).unwrap();
        assert!(
            ((l - want) / want).abs() < 1e-4,
            "{arch}: step {i} loss {l} vs torch {want}"
        );
        tr.optimizer_step(1.0);
    }
}

#[test]
fn parity_gpt2_hf_layout() {
    parity("gpt2");
}

#[test]
fn parity_modern() {
    parity("modern");
}
