//! `kiln bench train`: the same model, data, optimizer and measurement as
//! `shared/bench/torch_ref.py` (GPT-2 block, init N(0, 0.02), AdamW lr 1e-3, betas 0.9/0.95,
//! wd 0.1 on every tensor, no clipping; warm-up steps then timed steps; decode of 128 tokens after a
//! 16-token prompt without a KV cache), printing the same JSON fields, plus KV-cache decode speed,
//! a matmul probe (the machine's f32 GEMM peak measured in the same run), the fraction of that
//! peak the training step reaches, and peak RSS.

use std::sync::Arc;
use std::time::Instant;

use kiln_engine::generate::{generate, GenerateOptions};
use kiln_engine::{CpuBackend, Model, ModelConfig, OptimizerConfig, Rng, SamplingParams, Trainer};
use serde::Serialize;

use crate::pretrain::TrainError;

/// A benchmark shape (torch_ref.py's `CFG`).
#[derive(Clone, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub vocab: usize,
    pub ctx: usize,
    pub layers: usize,
    pub heads: usize,
    pub dim: usize,
    pub batch: usize,
    pub warm: usize,
    pub steps: usize,
    pub threads: usize,
}

pub fn preset(name: &str) -> Option<Preset> {
    match name {
        "cpu-small" => Some(Preset {
            name: "cpu-small",
            vocab: 4096,
            ctx: 256,
            layers: 4,
            heads: 4,
            dim: 256,
            batch: 8,
            warm: 3,
            steps: 10,
            threads: 2,
        }),
        // a seconds-long variant for tests
        "tiny" => Some(Preset {
            name: "tiny",
            vocab: 128,
            ctx: 32,
            layers: 2,
            heads: 2,
            dim: 32,
            batch: 2,
            warm: 1,
            steps: 2,
            threads: 1,
        }),
        _ => None,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    #[serde(rename = "impl")]
    pub impl_: String,
    pub mode: String,
    pub params: usize,
    pub first_loss: f64,
    pub ln_vocab: f64,
    pub last_loss: f64,
    pub train_tokens_per_s: f64,
    pub tflops: f64,
    pub decode_tokens_per_s_nocache: f64,
    pub decode_tokens_per_s_kvcache: f64,
    pub matmul_probe_gflops: f64,
    pub step_gflops: f64,
    pub fraction_of_peak: f64,
    pub threads: usize,
    pub peak_rss_mb: f64,
}

fn round(x: f64, d: i32) -> f64 {
    let p = 10f64.powi(d);
    (x * p).round() / p
}

/// Peak resident set size of this process (Linux `VmHWM`), MiB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Best-of-N GFLOP/s of the model's own largest forward shape (`b·t × dim` by `dim × 4·dim`).
pub fn matmul_probe(be: &CpuBackend, m: usize, k: usize, n: usize) -> f64 {
    let mut r = Rng::new(1);
    let a: Vec<f32> = (0..m * k).map(|_| r.normal() as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| r.normal() as f32).collect();
    let mut c = vec![0f32; m * n];
    be.gemm_host(&mut c, &a, &b, m, n, k);
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        let reps = 4;
        for _ in 0..reps {
            be.gemm_host(&mut c, &a, &b, m, n, k);
        }
        let gf = 2.0 * (m * n * k * reps) as f64 / t0.elapsed().as_secs_f64() / 1e9;
        best = best.max(gf);
    }
    best
}

/// Run the training + decode benchmark.
pub fn bench_train(p: &Preset) -> Result<BenchReport, TrainError> {
    let be = Arc::new(CpuBackend::new(p.threads));
    let cfg = ModelConfig::gpt2(p.vocab, p.layers, p.heads, p.dim, p.ctx);
    let model = Model::new(be.clone(), cfg.clone(), 0)?;
    let nparams = model.num_params();
    let oc = OptimizerConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        weight_decay: 0.1,
        decay_vectors: true,
        grad_clip: None,
        ..Default::default()
    };
    let mut tr = Trainer::new(model, p.batch, p.ctx, oc)?;
    let mut r = Rng::new(0);
    let data: Vec<u32> = (0..p.batch * (p.ctx + 1))
        .map(|_| r.below(p.vocab as u64) as u32)
        .collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for row in data.chunks(p.ctx + 1) {
        x.extend_from_slice(&row[..p.ctx]);
        y.extend_from_slice(&row[1..]);
    }
    let first = tr.train_step(&x, &y, None, 1.0)?.loss as f64;
    for _ in 1..p.warm {
        tr.train_step(&x, &y, None, 1.0)?;
    }
    let t0 = Instant::now();
    let mut last = 0.0;
    for _ in 0..p.steps {
        last = tr.train_step(&x, &y, None, 1.0)?.loss as f64;
    }
    let dt = t0.elapsed().as_secs_f64();
    let tps = (p.batch * p.ctx * p.steps) as f64 / dt;
    let (l, h, q, t) = (p.layers, p.heads, p.dim / p.heads, p.ctx);
    let flops_tok = 6.0 * nparams as f64 + 12.0 * (l * h * q * t) as f64;
    let step_gflops = flops_tok * tps / 1e9;

    let model = tr.model;
    let prompt = &x[..16.min(p.ctx - 1)];
    let n_new = 128.min(p.ctx - prompt.len());
    let mk = |no_cache| GenerateOptions {
        max_tokens: n_new,
        num_samples: 1,
        sampling: SamplingParams::default(),
        seed: 0,
        stop: vec![],
        no_cache,
    };
    let _ = generate(
        &model,
        prompt,
        &GenerateOptions {
            max_tokens: 3,
            ..mk(true)
        },
    )?;
    let t0 = Instant::now();
    let out = generate(&model, prompt, &mk(true))?;
    let nocache = out[0].len() as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let out = generate(&model, prompt, &mk(false))?;
    let kv = out[0].len() as f64 / t0.elapsed().as_secs_f64();

    let probe = matmul_probe(&be, p.batch * p.ctx, p.dim, 4 * p.dim);
    Ok(BenchReport {
        impl_: "kiln".into(),
        mode: "cpu".into(),
        params: nparams,
        first_loss: round(first, 4),
        ln_vocab: round((p.vocab as f64).ln(), 4),
        last_loss: round(last, 4),
        train_tokens_per_s: round(tps, 1),
        tflops: round(flops_tok * tps / 1e12, 2),
        decode_tokens_per_s_nocache: round(nocache, 1),
        decode_tokens_per_s_kvcache: round(kv, 1),
        matmul_probe_gflops: round(probe, 1),
        step_gflops: round(step_gflops, 1),
        fraction_of_peak: round(step_gflops / probe, 3),
        threads: p.threads,
        peak_rss_mb: round(peak_rss_mb(), 1),
    })
}
