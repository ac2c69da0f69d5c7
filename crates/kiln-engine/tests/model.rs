//! Model-level tests on tiny configs: whole-model finite-difference gradients (both
//! architectures), training reduces loss, inference path == training path, cached == uncached
//! decoding, checkpoint round trips (kiln and HF GPT-2 layouts), bad inputs.

use std::sync::Arc;

use kiln_engine::generate::{generate, GenerateOptions};
use kiln_engine::{
    load_checkpoint, save_checkpoint, CpuBackend, Model, ModelConfig, OptimKind, OptimizerConfig,
    Rng, SamplingParams, Trainer,
};

fn be() -> Arc<CpuBackend> {
    Arc::new(CpuBackend::new(1))
}

fn tiny(arch: &str) -> ModelConfig {
    match arch {
        "gpt2" => ModelConfig::gpt2(37, 2, 2, 16, 8),
        _ => ModelConfig::modern(37, 2, 4, 2, 16, 8),
    }
}

fn batch(cfg: &ModelConfig, b: usize, t: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut r = Rng::new(seed);
    let x = (0..b * t)
        .map(|_| r.below(cfg.vocab_size as u64) as u32)
        .collect();
    let y = (0..b * t)
        .map(|_| r.below(cfg.vocab_size as u64) as u32)
        .collect();
    (x, y)
}

fn no_opt() -> OptimizerConfig {
    OptimizerConfig {
        grad_clip: None,
        ..Default::default()
    }
}

/// Central finite differences on a sample of every tensor's entries vs the analytic gradient.
fn gradcheck(arch: &str) {
    let cfg = tiny(arch);
    let (b, t) = (2, 8);
    let mut model = Model::new(be(), cfg.clone(), 3).unwrap();
    // larger weights than the 0.02 init so gradients are well above f32 noise
    let mut rp = Rng::new(4);
    let big: Vec<f32> = model
        .params_host()
        .iter()
        .map(|p| p * 8.0 + (rp.normal() * 0.05) as f32)
        .collect();
    model.set_params_host(&big).unwrap();
    let mut tr = Trainer::new(model, b, t, no_opt()).unwrap();
    let (x, y) = batch(&cfg, b, t, 5);
    let mut rw = Rng::new(9);
    let w: Vec<f32> = (0..b * t).map(|_| rw.uniform() as f32).collect();
    tr.zero_grad();
    tr.forward_backward(&x, &y, Some(&w), 3.0).unwrap();
    let grads = tr.grads_host();
    let base = tr.model.params_host();
    let specs = tr.model.layout.specs.clone();
    let loss_at = |tr: &mut Trainer<CpuBackend>, p: &[f32]| -> f64 {
        tr.model.set_params_host(p).unwrap();
        let l = tr.eval_losses(&x, &y).unwrap();
        l.iter()
            .zip(&w)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum::<f64>()
            / 3.0
    };
    // Directional derivative per tensor: perturb the whole tensor along a random direction `d`
    // and compare (L(p+d) - L(p-d)) / 2 with g·d (robust in f32, unlike single entries).
    let mut worst = 0f64;
    let mut r = Rng::new(11);
    for s in &specs {
        let gn = grads[s.offset..s.offset + s.len]
            .iter()
            .map(|g| (*g as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        // step of total norm delta along (gradient + equal-norm noise): big enough signal, and
        // the noise part still tests directions other than the gradient itself
        let delta = (3e-4 / gn).clamp(1e-3, 0.3);
        let zs: Vec<f64> = (0..s.len).map(|_| r.normal()).collect();
        let zn = zs.iter().map(|z| z * z).sum::<f64>().sqrt();
        let d: Vec<f32> = (0..s.len)
            .map(|k| (delta * (0.8 * grads[s.offset + k] as f64 / gn + 0.6 * zs[k] / zn)) as f32)
            .collect();
        let mut p = base.clone();
        for (k, dk) in d.iter().enumerate() {
            p[s.offset + k] = base[s.offset + k] + dk;
        }
        let lp = loss_at(&mut tr, &p);
        for (k, dk) in d.iter().enumerate() {
            p[s.offset + k] = base[s.offset + k] - dk;
        }
        let lm = loss_at(&mut tr, &p);
        let num = (lp - lm) / 2.0;
        let ana: f64 = d
            .iter()
            .enumerate()
            .map(|(k, dk)| *dk as f64 * grads[s.offset + k] as f64)
            .sum();
        let err = (num - ana).abs() / (num.abs().max(ana.abs()) + 1e-7);
        assert!(
            err < 1e-2,
            "{arch} {}: analytic {ana:.6e} numeric {num:.6e}",
            s.name
        );
        worst = worst.max(err);
    }
    eprintln!("{arch}: worst relative gradient error {worst:.2e}");
}

#[test]
fn gradcheck_gpt2() {
    gradcheck("gpt2");
}

#[test]
fn gradcheck_modern() {
    gradcheck("modern");
}

#[test]
fn training_reduces_loss_both_optimizers() {
    for (arch, kind) in [
        ("gpt2", OptimKind::AdamW),
        ("modern", OptimKind::Muon),
        ("gpt2", OptimKind::Muon),
    ] {
        let cfg = tiny(arch);
        let model = Model::new(be(), cfg.clone(), 1).unwrap();
        let oc = OptimizerConfig {
            kind,
            lr: 1e-2,
            muon_lr: 0.02,
            ..Default::default()
        };
        let mut tr = Trainer::new(model, 2, 8, oc).unwrap();
        let (x, y) = batch(&cfg, 2, 8, 2);
        let first = tr.train_step(&x, &y, None, 1.0).unwrap().loss;
        let mut last = first;
        for _ in 0..30 {
            last = tr.train_step(&x, &y, None, 1.0).unwrap().loss;
        }
        assert!(last < first * 0.5, "{arch} {kind:?}: {first} -> {last}");
    }
}

#[test]
fn inference_matches_training_forward() {
    for arch in ["gpt2", "modern"] {
        let cfg = tiny(arch);
        let model = Model::new(be(), cfg.clone(), 4).unwrap();
        let (x, y) = batch(&cfg, 2, 8, 3);
        let inf = model.forward_logits(&x, 2, 8).unwrap();
        let mut tr = Trainer::new(model, 2, 8, no_opt()).unwrap();
        tr.eval_losses(&x, &y).unwrap();
        let mut trl = tr.logits_host();
        if let Some(c) = cfg.logit_softcap {
            trl.iter_mut().for_each(|v| *v = c * (*v / c).tanh());
        }
        let md = inf
            .iter()
            .zip(&trl)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(md < 1e-4, "{arch}: max diff {md}");
    }
}

#[test]
fn cached_decoding_equals_uncached() {
    for arch in ["gpt2", "modern"] {
        let cfg = ModelConfig {
            context: 24,
            ..tiny(arch)
        };
        let model = Model::new(be(), cfg, 8).unwrap();
        for sampling in [
            SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.0,
                top_k: 10,
                top_p: 0.9,
                min_p: 0.05,
            },
        ] {
            let mut o = GenerateOptions {
                max_tokens: 12,
                num_samples: 3,
                sampling,
                seed: 42,
                stop: vec![],
                no_cache: false,
            };
            let cached = generate(&model, &[1, 2, 3, 4], &o).unwrap();
            o.no_cache = true;
            let uncached = generate(&model, &[1, 2, 3, 4], &o).unwrap();
            assert_eq!(cached, uncached, "{arch}");
            assert_eq!(cached.len(), 3);
            assert!(cached.iter().all(|s| s.len() == 12));
        }
    }
}

#[test]
fn checkpoint_roundtrip_with_optimizer() {
    for arch in ["gpt2", "modern"] {
        let cfg = tiny(arch);
        let model = Model::new(be(), cfg.clone(), 1).unwrap();
        let mut tr = Trainer::new(
            model,
            2,
            8,
            OptimizerConfig {
                kind: OptimKind::Muon,
                ..Default::default()
            },
        )
        .unwrap();
        let (x, y) = batch(&cfg, 2, 8, 2);
        tr.train_step(&x, &y, None, 1.0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("step_1");
        let state = serde_json::json!({"step": 1, "rng": [1, 2]});
        save_checkpoint(&ck, &tr.model, Some(&tr.opt), &state).unwrap();
        // overwrite in place is atomic too
        save_checkpoint(&ck, &tr.model, Some(&tr.opt), &state).unwrap();
        let c = load_checkpoint(&ck).unwrap();
        assert_eq!(c.config, cfg);
        assert_eq!(c.params, tr.model.params_host());
        assert_eq!(c.train, state);
        let o = c.optimizer.unwrap();
        let (m, v, step) = tr.opt.state_host(&tr.model.backend);
        assert_eq!((o.m, o.v, o.step), (m, v, step));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp dirs left: {names:?}");
    }
}

#[test]
fn gpt2_loads_hf_layout_without_kiln_json() {
    let cfg = tiny("gpt2");
    let model = Model::new(be(), cfg.clone(), 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("hf");
    save_checkpoint(&ck, &model, None, &serde_json::Value::Null).unwrap();
    let conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("config.json")).unwrap()).unwrap();
    assert_eq!(conf["model_type"], "gpt2");
    assert_eq!(conf["n_embd"], 16);
    std::fs::remove_file(ck.join("kiln.json")).unwrap();
    let (ts, _) = kiln_engine::safetensors::read(&ck.join("model.safetensors")).unwrap();
    let qkv = ts
        .iter()
        .find(|t| t.name == "h.0.attn.c_attn.weight")
        .unwrap();
    assert_eq!(qkv.shape, vec![16, 48], "Conv1D layout [in, out]");
    let c = load_checkpoint(&ck).unwrap();
    assert_eq!(c.params, model.params_host());
    assert!(c.optimizer.is_none());
}

#[test]
fn bad_inputs_are_named() {
    let cfg = tiny("gpt2");
    let model = Model::new(be(), cfg.clone(), 1).unwrap();
    let err = model
        .forward_logits(&[1, 2, 99], 1, 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("99") && err.contains("position 2"), "{err}");
    let mut tr = Trainer::new(model, 1, 4, no_opt()).unwrap();
    let err = tr
        .train_step(&[1, 2, 3], &[1, 2, 3, 4], None, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch needs 4"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = load_checkpoint(dir.path()).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
}
