//! The GRPO-family loss against PyTorch (fixture written by scripts/rl_loss_fixture.py,
//! committed): for each normalisation, with and without a reused batch (old-policy ratio) and the
//! k3 KL term, kiln's per-token weights fed to the engine's cross-entropy kernel must give
//! autograd's gradient w.r.t. the logits, and the loss must match, at 1e-5 relative.

use kiln_engine::backend::{Backend, View};
use kiln_engine::CpuBackend;
use kiln_train::rl::loss::{group_advantages, pg_loss, LossConfig, LossKind, PgBatch};
use serde_json::Value;

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// |a - b| ≤ 1e-5·|b| + floor, where the floor (1e-5 of the largest |b|) covers f32 rounding of
/// entries that are nearly zero; returns the worst relative error for the message.
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * w.abs() + 1e-5 * scale;
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs {w} (tol {tol})");
        worst = worst.max((g - w).abs() / w.abs().max(1e-12));
    }
    eprintln!("{what}: max relative diff {worst:.2e} (scale {scale:.3e})");
}

#[test]
fn loss_and_logit_gradients_match_pytorch() {
    let fx: Value = serde_json::from_str(include_str!("fixtures/rl_loss.json")).unwrap();
    let vocab = fx["vocab"].as_u64().unwrap() as usize;
    let lens: Vec<usize> = fx["lens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let n: usize = lens.iter().sum();
    let logits = f32s(&fx["logits"]);
    let targets: Vec<u32> = fx["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let (old, refp, rewards) = (
        f32s(&fx["old_logp"]),
        f32s(&fx["ref_logp"]),
        f32s(&fx["rewards"]),
    );
    let group = fx["group"].as_u64().unwrap() as usize;
    let be = CpuBackend::new(1);
    let lg = be.alloc(n * vocab).unwrap();
    let losses = be.alloc(n).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for c in cases {
        let kind = match c["kind"].as_str().unwrap() {
            "grpo" => LossKind::Grpo,
            "dr-grpo" => LossKind::DrGrpo,
            _ => LossKind::Dapo,
        };
        let name = format!(
            "{} kl={} old={}",
            kind.name(),
            c["kl"],
            c["use_old"].as_bool().unwrap()
        );
        let adv = group_advantages(&rewards, group, c["std_scale"].as_bool().unwrap());
        assert_close(&format!("{name} advantages"), &adv, &f32s(&c["adv"]));
        // Log-probs from the engine's own cross-entropy (forward only).
        be.write(View::new(&lg, 0, n * vocab), &logits);
        let ones = vec![1.0; n];
        be.cross_entropy(
            View::new(&lg, 0, n * vocab),
            View::new(&losses, 0, n),
            &targets,
            &ones,
            n,
            vocab,
            None,
            None,
        );
        let mut ce = vec![0f32; n];
        be.read(View::new(&losses, 0, n), &mut ce);
        let logp: Vec<f32> = ce.iter().map(|l| -l).collect();
        let cfg = LossConfig {
            kind,
            clip: fx["clip"].as_f64().unwrap() as f32,
            kl: c["kl"].as_f64().unwrap() as f32,
            max_new: fx["max_new"].as_u64().unwrap() as usize,
        };
        let out = pg_loss(
            &PgBatch {
                logp: &logp,
                old_logp: c["use_old"].as_bool().unwrap().then_some(&old[..]),
                ref_logp: Some(&refp),
                adv: &adv,
                lens: &lens,
                sampled: None,
            },
            &cfg,
        );
        assert_close(
            &format!("{name} loss"),
            &[out.loss as f32],
            &[c["loss"].as_f64().unwrap() as f32],
        );
        // The engine's backward of Σ w·CE with these weights is the RL loss's gradient.
        be.cross_entropy(
            View::new(&lg, 0, n * vocab),
            View::new(&losses, 0, n),
            &targets,
            &out.weights,
            n,
            vocab,
            None,
            Some(1.0),
        );
        let mut grad = vec![0f32; n * vocab];
        be.read(View::new(&lg, 0, n * vocab), &mut grad);
        assert_close(&format!("{name} dlogits"), &grad, &f32s(&c["grad"]));
        if c["use_old"].as_bool().unwrap() {
            assert!(
                out.clip_frac > 0.0,
                "{name}: the fixture exercises the clip"
            );
        }
    }
}
