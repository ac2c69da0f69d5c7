//! `kiln bench decode`: RL rollout throughput against batch-1 decode, and against the training
//! throughput of the same model (the "rollout tokens/s beside training tokens/s").
//!
//! Both decode sides run [`rollouts`](super::run::rollouts), the path `kiln rl` uses (sampling at
//! temperature 1 included, no stop token so every row generates the same number of tokens):
//! batch 1 is each of the `rows / group` prompts (of different lengths) decoded alone, one after
//! another; batched is those prompts each prefilled once and forked to its group, all decoded
//! together. The two alternate
//! round by round, so on a shared machine both see the same load and the per-round ratio is what
//! to compare; the median ratio is reported, from wall time and from the process's cpu time (on a
//! machine shared with other work, cpu time does not count the time the threads were
//! descheduled; it does count threads waiting at a join, so with 1 thread it is the cleanest).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kiln_engine::{load_checkpoint, resolve_checkpoint, Model, ModelConfig, Rng};
use kiln_engine::{OptimizerConfig, SamplingParams, Trainer};
use serde::Serialize;

use super::run::rollouts;
use crate::device::{with_backend, DeviceSpec, OnBackend, TrainBackend};
use crate::error::TrainError;

/// What to measure.
#[derive(Clone, Debug)]
pub struct DecodeBench {
    /// Rows decoded together (a multiple of `group`).
    pub rows: usize,
    pub group: usize,
    /// Tokens generated per row.
    pub tokens: usize,
    pub rounds: usize,
    pub threads: usize,
}

/// One round's figures and the summary.
#[derive(Clone, Debug, Serialize)]
pub struct DecodeReport {
    pub model: String,
    /// The backend, as its label reads (`cpu (f32 matmuls)`, `cuda (bf16 matmuls)`).
    pub device: String,
    pub params: usize,
    pub rows: usize,
    pub group: usize,
    pub tokens: usize,
    pub threads: usize,
    /// Generated tokens/s per round: batch 1, batched.
    pub batch1_tok_s: Vec<f64>,
    pub batched_tok_s: Vec<f64>,
    /// Median of the per-round ratios batched / batch 1.
    pub ratio_median: f64,
    /// Generated tokens per process-cpu-second per round (batch 1, batched) and their median
    /// ratio.
    pub batch1_tok_cpu_s: Vec<f64>,
    pub batched_tok_cpu_s: Vec<f64>,
    pub ratio_cpu_median: f64,
    /// Trained tokens/s (forward + backward + optimizer step) of the same model at the RL
    /// update's shape: 8 rows × (prompt + tokens).
    pub train_tok_s: f64,
}

/// Run the benchmark on `model` (a checkpoint), or on a random model of the speedrun's default
/// shape (vocab 4096, 4 layers × 4 heads × 256, context 256) when `None`, on the device `spec`
/// names (sampling stays on the host either way, as in `kiln rl`).
pub fn bench_decode(
    spec: &DeviceSpec,
    model: Option<&Path>,
    o: &DecodeBench,
) -> Result<DecodeReport, TrainError> {
    if o.group == 0 || o.rows == 0 || !o.rows.is_multiple_of(o.group) || o.tokens == 0 {
        return Err(TrainError::Config(format!(
            "--rows {} must be a positive multiple of --group {} (and --tokens positive)",
            o.rows, o.group
        )));
    }
    struct Run<'a>(Option<&'a Path>, &'a DecodeBench);
    impl OnBackend for Run<'_> {
        type Output = DecodeReport;
        fn run<B: TrainBackend>(self, be: Arc<B>) -> Result<DecodeReport, TrainError> {
            bench_on(be, self.0, self.1)
        }
    }
    with_backend(spec, o.threads, Run(model, o))
}

fn bench_on<B: TrainBackend>(
    be: Arc<B>,
    model: Option<&Path>,
    o: &DecodeBench,
) -> Result<DecodeReport, TrainError> {
    let device = be.label();
    let (m, name) = match model {
        Some(p) => {
            let ck = load_checkpoint(&resolve_checkpoint(p)?)?;
            (ck.into_model(be.clone())?, p.display().to_string())
        }
        None => (
            Model::new(be.clone(), ModelConfig::gpt2(4096, 4, 4, 256, 256), 1)?,
            "random gpt2 4L×256 vocab 4096".into(),
        ),
    };
    let vs = m.cfg.vocab_size as u64;
    let mut rng = Rng::new(7);
    // Prompts of 20–35 tokens, like the arithmetic task's rendered questions.
    let n_prompts = o.rows / o.group;
    let plen = 20 + o.tokens.min(16);
    let need = plen + 15 + o.tokens;
    if need > m.cfg.context {
        return Err(TrainError::Config(format!(
            "prompts of up to {} tokens + --tokens {} exceed the model's context {}",
            plen + 15,
            o.tokens,
            m.cfg.context
        )));
    }
    let prompts: Vec<Vec<u32>> = (0..n_prompts)
        .map(|j| {
            (0..plen + j * 15 / n_prompts.max(1))
                .map(|_| rng.below(vs) as u32)
                .collect()
        })
        .collect();
    let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let seeds: Vec<u64> = (0..n_prompts as u64).collect();
    let sp = SamplingParams::default();
    // (wall tokens/s, cpu tokens/s)
    let run = |ps: &[&[u32]], sd: &[u64], g: usize| -> Result<(f64, f64), TrainError> {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let out = rollouts(&m, ps, sd, g, o.tokens, &sp, &[], true, None)?;
        m.backend.synchronize();
        let n = out.ids.iter().map(Vec::len).sum::<usize>() as f64;
        let cpu = (cpu_seconds() - c0).max(0.01);
        Ok((n / t0.elapsed().as_secs_f64(), n / cpu))
    };
    // Batch 1: every prompt decoded alone, one after another (the same prompts as the batched
    // run, and enough tokens to time: one 96-token reply took ~60 ms, within the noise of this
    // shared machine and 6 ticks of the cpu clock).
    let alone = || -> Result<(f64, f64), TrainError> {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let mut n = 0usize;
        for (p, sd) in refs.iter().zip(&seeds) {
            let out = rollouts(&m, &[p], &[*sd], 1, o.tokens, &sp, &[], true, None)?;
            n += out.ids.iter().map(Vec::len).sum::<usize>();
        }
        let cpu = (cpu_seconds() - c0).max(0.01);
        Ok((n as f64 / t0.elapsed().as_secs_f64(), n as f64 / cpu))
    };
    // warm-up: page in the weights, grow the scratch
    run(&refs[..1], &seeds[..1], 1)?;
    run(&refs, &seeds, o.group)?;
    let (mut one, mut many, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut one_c, mut many_c, mut ratios_c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..o.rounds.max(1) {
        let (a, ac) = alone()?;
        let (b, bc) = run(&refs, &seeds, o.group)?;
        tracing::info!(
            "batch 1 {a:.0} tok/s, {} rows {b:.0} tok/s: {:.2}× (per cpu-second {:.2}×)",
            o.rows,
            b / a,
            bc / ac
        );
        one.push(a.round());
        many.push(b.round());
        ratios.push(b / a);
        one_c.push(ac.round());
        many_c.push(bc.round());
        ratios_c.push(bc / ac);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2] * 100.0).round() / 100.0
    };

    let params = m.num_params();
    let (b, t) = (8, need);
    let mut tr = Trainer::new(m, b, t, OptimizerConfig::default())?;
    let ids: Vec<u32> = (0..b * t).map(|_| rng.below(vs) as u32).collect();
    tr.train_step(&ids, &ids, None, 1.0)?;
    let t0 = Instant::now();
    let steps = 3;
    for _ in 0..steps {
        tr.train_step(&ids, &ids, None, 1.0)?;
    }
    tr.model.backend.synchronize();
    let train_tok_s = (steps * b * t) as f64 / t0.elapsed().as_secs_f64();
    Ok(DecodeReport {
        model: name,
        device,
        params,
        rows: o.rows,
        group: o.group,
        tokens: o.tokens,
        threads: o.threads,
        batch1_tok_s: one,
        batched_tok_s: many,
        ratio_median: median(ratios),
        batch1_tok_cpu_s: one_c,
        batched_tok_cpu_s: many_c,
        ratio_cpu_median: median(ratios_c),
        train_tok_s: train_tok_s.round(),
    })
}

/// User + system cpu seconds of this process so far (/proc, 10 ms ticks).
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse::<f64>().ok())
        .sum::<f64>()
        / 100.0
}
