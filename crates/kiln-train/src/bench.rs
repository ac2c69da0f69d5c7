//! `kiln bench train`: the same model, data, optimizer and measurement as
//! `shared/bench/torch_ref.py` (GPT-2 block, init N(0, 0.02), AdamW lr 1e-3, betas 0.9/0.95,
//! wd 0.1 on every tensor, no clipping; warm-up steps then timed steps; decode of 128 tokens after a
//! 16-token prompt without a KV cache), printing the same JSON fields, plus KV-cache decode speed
//! and peak memory. On the cpu (`cpu-small` = torch_ref.py `cpu`): a matmul probe (the machine's
//! f32 GEMM peak measured in the same run), the fraction of that peak the step reaches, peak RSS.
//! On a GPU (`gpu-gpt2-124m` = torch_ref.py `gpu`): MFU against 989 TFLOP/s (H100 dense bf16, as
//! torch_ref.py) and the backend's peak device memory. The loop is generic over the backend.
//!
//! `kiln bench loop`: the speedrun's pretraining loop against that bare step on the same shape, in
//! interleaved rounds, with the ratio ([`bench_loop`]).
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kiln_engine::backend::View;
use kiln_engine::generate::{generate, GenerateOptions};
use kiln_engine::{CpuBackend, Model, ModelConfig, OptimizerConfig, Rng, SamplingParams, Trainer};
use serde::Serialize;

use crate::device::{with_backend, Device, DeviceSpec, OnBackend, TrainBackend};
use crate::error::TrainError;

/// The rated peak torch_ref.py's `gpu` MFU is measured against (H100 SXM, dense bf16), FLOP/s.
pub const GPU_PEAK_FLOPS: f64 = 989e12;

/// How FLOPs per token are counted (torch_ref.py's formula).
pub const FLOP_FORMULA: &str =
    "6*N + 12*L*H*Q*T per token (N = all parameters incl. embeddings, tied head counted once; L layers, H heads, Q head dim, T context)";

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
    /// CPU threads (rayon + gemm); 0 = leave the pool as it is.
    pub threads: usize,
    /// The device the preset is meant for (the `--device` default).
    pub device: Device,
}

/// Preset names, for help and errors.
pub const PRESETS: &str = "cpu-small, gpu-gpt2-124m, tiny";

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
            device: Device::Cpu,
        }),
        // torch_ref.py `gpu`: the GPT-2-124M shape in bf16
        "gpu-gpt2-124m" => Some(Preset {
            name: "gpu-gpt2-124m",
            vocab: 50304,
            ctx: 1024,
            layers: 12,
            heads: 12,
            dim: 768,
            batch: 16,
            warm: 5,
            steps: 20,
            threads: 0,
            device: Device::Cuda,
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
            device: Device::Cpu,
        }),
        _ => None,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    #[serde(rename = "impl")]
    pub impl_: String,
    /// torch_ref.py's mode: `cpu` or `gpu`.
    pub mode: String,
    pub preset: String,
    pub device: String,
    pub precision: String,
    pub batch: usize,
    pub ctx: usize,
    pub params: usize,
    pub first_loss: f64,
    pub ln_vocab: f64,
    pub last_loss: f64,
    pub train_tokens_per_s: f64,
    pub step_ms: f64,
    pub tflops: f64,
    pub flops_per_token: f64,
    pub flop_formula: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfu_vs_989tf_bf16: Option<f64>,
    pub decode_tokens_per_s_nocache: f64,
    pub decode_tokens_per_s_kvcache: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matmul_probe_gflops: Option<f64>,
    pub step_gflops: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraction_of_peak: Option<f64>,
    pub threads: usize,
    pub peak_rss_mb: f64,
    /// Device memory held by the backend at its peak (training step), MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_gpu_memory_mb: Option<f64>,
    /// Device memory in use as the driver reports it after training (context included), MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_used_mb: Option<f64>,
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

/// Run the training + decode benchmark on the device `spec` names.
pub fn bench_train(spec: &DeviceSpec, p: &Preset) -> Result<BenchReport, TrainError> {
    struct Run<'a>(&'a Preset);
    impl OnBackend for Run<'_> {
        type Output = BenchReport;
        fn run<B: TrainBackend>(self, be: Arc<B>) -> Result<BenchReport, TrainError> {
            bench_train_with(be, self.0)
        }
    }
    let threads = if p.threads == 0 {
        rayon::current_num_threads()
    } else {
        p.threads
    };
    with_backend(spec, threads, Run(p))
}

/// torch_ref.py's optimizer: AdamW lr 1e-3, betas 0.9/0.95, wd 0.1 on every tensor, no clipping.
fn bench_optimizer() -> OptimizerConfig {
    OptimizerConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        weight_decay: 0.1,
        decay_vectors: true,
        grad_clip: None,
        ..Default::default()
    }
}

/// torch_ref.py's batch: uniform random ids (seed 0), inputs and next-token targets.
fn bench_batch(p: &Preset) -> (Vec<u32>, Vec<u32>) {
    let mut r = Rng::new(0);
    let data: Vec<u32> = (0..p.batch * (p.ctx + 1))
        .map(|_| r.below(p.vocab as u64) as u32)
        .collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for row in data.chunks(p.ctx + 1) {
        x.extend_from_slice(&row[..p.ctx]);
        y.extend_from_slice(&row[1..]);
    }
    (x, y)
}

/// Run the training + decode benchmark on a given backend.
pub fn bench_train_with<B: TrainBackend>(
    be: Arc<B>,
    p: &Preset,
) -> Result<BenchReport, TrainError> {
    let cfg = ModelConfig::gpt2(p.vocab, p.layers, p.heads, p.dim, p.ctx);
    be.check_fits(cfg.train_bytes(p.batch))?;
    let model = Model::new(be.clone(), cfg.clone(), 0)?;
    let nparams = model.num_params();
    let mut tr = Trainer::new(model, p.batch, p.ctx, bench_optimizer())?;
    let (x, y) = bench_batch(p);
    let first = tr.train_step(&x, &y, None, 1.0)?.loss as f64;
    for _ in 1..p.warm {
        tr.train_step(&x, &y, None, 1.0)?;
    }
    be.synchronize();
    let t0 = Instant::now();
    let mut last = 0.0;
    for _ in 0..p.steps {
        last = tr.train_step(&x, &y, None, 1.0)?.loss as f64;
    }
    be.synchronize();
    let dt = t0.elapsed().as_secs_f64();
    let tps = (p.batch * p.ctx * p.steps) as f64 / dt;
    let (l, h, q, t) = (p.layers, p.heads, p.dim / p.heads, p.ctx);
    let flops_tok = 6.0 * nparams as f64 + 12.0 * (l * h * q * t) as f64;
    let step_gflops = flops_tok * tps / 1e9;
    let peak_dev = be.peak_device_bytes();
    let used_dev = be.device_used_bytes();

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
    // a one-float read: the device has finished everything before the report
    let mut one = [0f32];
    be.read(View::new(&model.params, 0, 1), &mut one);

    let gpu = be.name() != "cpu";
    // the cpu bench's peak probe; a device is compared against its rated peak instead
    let probe = (&*be as &dyn std::any::Any)
        .downcast_ref::<CpuBackend>()
        .map(|cpu| matmul_probe(cpu, p.batch * p.ctx, p.dim, 4 * p.dim));
    let mb = |b: u64| round(b as f64 / 1048576.0, 1);
    Ok(BenchReport {
        impl_: "kiln".into(),
        mode: if gpu { "gpu" } else { "cpu" }.into(),
        preset: p.name.into(),
        device: be.label(),
        precision: be.precision().as_str().into(),
        batch: p.batch,
        ctx: p.ctx,
        params: nparams,
        first_loss: round(first, 4),
        ln_vocab: round((p.vocab as f64).ln(), 4),
        last_loss: round(last, 4),
        train_tokens_per_s: round(tps, 1),
        step_ms: round(dt * 1e3 / p.steps as f64, 2),
        tflops: round(flops_tok * tps / 1e12, 2),
        flops_per_token: flops_tok,
        flop_formula: FLOP_FORMULA,
        mfu_vs_989tf_bf16: gpu.then(|| round(flops_tok * tps / GPU_PEAK_FLOPS, 4)),
        decode_tokens_per_s_nocache: round(nocache, 1),
        decode_tokens_per_s_kvcache: round(kv, 1),
        matmul_probe_gflops: probe.map(|g| round(g, 1)),
        step_gflops: round(step_gflops, 1),
        fraction_of_peak: probe.map(|g| round(step_gflops / g, 3)),
        threads: rayon::current_num_threads(),
        peak_rss_mb: round(peak_rss_mb(), 1),
        peak_gpu_memory_mb: peak_dev.map(mb),
        device_used_mb: used_dev.map(mb),
    })
}

/// `kiln bench loop`: the speedrun's pretraining loop (the real [`crate::pretrain::pretrain`] with
/// the speedrun's configuration for the default preset: data loader, gradient clipping, LR
/// schedule, metrics log, held-out validation data) against the bare training step `kiln bench
/// train` times, on the same shape, in interleaved rounds (A B, B A, …).
#[derive(Clone, Debug)]
pub struct LoopBench {
    pub rounds: usize,
    /// Timed steps per side and round (after warm-up steps).
    pub steps: usize,
    pub warm: usize,
    pub threads: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoopReport {
    pub shape: String,
    pub rounds: usize,
    pub steps: usize,
    /// `kiln bench train`'s loop: `train_step` on one fixed batch, timed steps only.
    pub bench_tok_s: Vec<f64>,
    /// The pretraining loop's timed steps (the step time its metrics and the report card show).
    pub loop_step_tok_s: Vec<f64>,
    /// Each side's tokens over the wall time of the whole call (model init, data, warm-up).
    pub bench_wall_tok_s: Vec<f64>,
    pub loop_wall_tok_s: Vec<f64>,
    /// Medians of the per-round ratios loop / bench.
    pub ratio_step: f64,
    pub ratio_wall: f64,
    pub threads: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Documents of Zipf-distributed ids (a text-like frequency profile: few common ids, a long tail),
/// BOS (id 0) first, `tokens` in all.
fn zipf_docs(vocab: usize, tokens: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut cdf = Vec::with_capacity(vocab - 1);
    let mut acc = 0f64;
    for r in 1..vocab {
        acc += 1.0 / r as f64;
        cdf.push(acc);
    }
    let mut rng = Rng::new(seed);
    let mut docs = Vec::new();
    let mut left = tokens;
    while left > 0 {
        let n = (200 + rng.below(800) as usize).min(left);
        let mut d = vec![0u32];
        for _ in 1..n {
            let u = rng.uniform() * acc;
            d.push(1 + cdf.partition_point(|&c| c < u).min(vocab - 2) as u32);
        }
        left -= n;
        docs.push(d);
    }
    docs
}

/// Run the loop benchmark on the cpu.
pub fn bench_loop(o: &LoopBench) -> Result<LoopReport, TrainError> {
    use crate::speedrun::{base_plan, pretrain_config, Preset as RunPreset};
    let mut plan = base_plan(RunPreset::Default, 20.0);
    // A default run's step count (2026-12-03, idle machine): it sets the eval and checkpoint
    // cadence (every 215 and 172 steps), so the timed steps here see neither.
    plan.pretrain_steps = 1721;
    let cfg = pretrain_config(&plan, plan.vocab, None, o.threads);
    let bt = plan.batch * plan.context;
    let total = o.warm + o.steps;
    let train = zipf_docs(plan.vocab, (total + 2) * (bt + plan.context) * 2, 1);
    let val = zipf_docs(plan.vocab, (cfg.eval_batches + 1) * (bt + plan.batch), 2);
    // Every id is one 4-byte "word" for bits per byte (the value is not reported).
    let token_bytes = vec![4u32; plan.vocab];
    let bench = Preset {
        name: "speedrun-default",
        vocab: plan.vocab,
        ctx: plan.context,
        layers: plan.layers,
        heads: plan.heads,
        dim: plan.dim,
        batch: plan.batch,
        warm: o.warm,
        steps: o.steps,
        threads: o.threads,
        device: Device::Cpu,
    };
    let mut r = LoopReport {
        shape: format!(
            "gpt2 {}L x {}d, {} heads, vocab {}, batch {} x {}",
            plan.layers, plan.dim, plan.heads, plan.vocab, plan.batch, plan.context
        ),
        rounds: o.rounds,
        steps: o.steps,
        bench_tok_s: vec![],
        loop_step_tok_s: vec![],
        bench_wall_tok_s: vec![],
        loop_wall_tok_s: vec![],
        ratio_step: 0.0,
        ratio_wall: 0.0,
        threads: o.threads,
    };
    for round in 0..o.rounds {
        for side in 0..2 {
            // A B in even rounds, B A in odd ones: a drift in the machine's speed cancels out.
            if (side == 0) == (round % 2 == 0) {
                let t0 = Instant::now();
                let tok_s = bare_steps(&bench)?;
                let wall = (total * bt) as f64 / t0.elapsed().as_secs_f64();
                r.bench_tok_s.push(tok_s);
                r.bench_wall_tok_s.push(wall);
            } else {
                let dir = tempfile::tempdir().map_err(|e| TrainError::io(Path::new("."), e))?;
                let hooks = crate::pretrain::Hooks {
                    token_bytes: Some(&token_bytes),
                    stop_after: Some(total),
                    val_docs: Some(&val),
                    ..Default::default()
                };
                let t0 = Instant::now();
                crate::pretrain::pretrain(&cfg, &train, dir.path(), None, &hooks)?;
                let wall = (total * bt) as f64 / t0.elapsed().as_secs_f64();
                let recs = crate::metrics::read_metrics(&dir.path().join("metrics.jsonl"))?;
                let secs: f64 = recs
                    .iter()
                    .filter(|x| x.get("event").is_none())
                    .filter(|x| x["step"].as_u64().is_some_and(|s| s as usize > o.warm))
                    .filter_map(|x| x["tok_per_s"].as_f64())
                    .map(|t| bt as f64 / t)
                    .sum();
                r.loop_step_tok_s.push((o.steps * bt) as f64 / secs);
                r.loop_wall_tok_s.push(wall);
            }
        }
        tracing::info!(
            "round {}: bench {:.0} tok/s, loop {:.0} tok/s (steps), wall {:.0} vs {:.0}",
            round + 1,
            r.bench_tok_s[round],
            r.loop_step_tok_s[round],
            r.bench_wall_tok_s[round],
            r.loop_wall_tok_s[round]
        );
    }
    let ratios = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>();
    r.ratio_step = round(median(ratios(&r.loop_step_tok_s, &r.bench_tok_s)), 3);
    r.ratio_wall = round(median(ratios(&r.loop_wall_tok_s, &r.bench_wall_tok_s)), 3);
    for v in [
        &mut r.bench_tok_s,
        &mut r.loop_step_tok_s,
        &mut r.bench_wall_tok_s,
        &mut r.loop_wall_tok_s,
    ] {
        v.iter_mut().for_each(|x| *x = round(*x, 1));
    }
    Ok(r)
}

/// `kiln bench train`'s training loop on the cpu: model, optimizer as torch_ref.py, one fixed
/// batch, `warm` steps then `steps` timed; tokens per second of the timed steps.
fn bare_steps(p: &Preset) -> Result<f64, TrainError> {
    let be = Arc::new(CpuBackend::new(p.threads));
    let cfg = ModelConfig::gpt2(p.vocab, p.layers, p.heads, p.dim, p.ctx);
    let model = Model::new(be.clone(), cfg, 0)?;
    let mut tr = Trainer::new(model, p.batch, p.ctx, bench_optimizer())?;
    let (x, y) = bench_batch(p);
    for _ in 0..p.warm {
        tr.train_step(&x, &y, None, 1.0)?;
    }
    let t0 = Instant::now();
    for _ in 0..p.steps {
        tr.train_step(&x, &y, None, 1.0)?;
    }
    Ok((p.batch * p.ctx * p.steps) as f64 / t0.elapsed().as_secs_f64())
}
