//! The pretraining loop: token shards → random windows → AdamW/Muon steps with warmup/warmdown,
//! gradient accumulation and clipping; eval in bits-per-byte every N steps, live samples every N
//! steps, metrics JSONL + SVG curves, atomic checkpoints every N steps and at the end, and exact
//! resume (same seed on CPU: the loss sequence after resuming equals the uninterrupted run bit
//! for bit — model, optimizer moments, step, data position and sample RNG are all restored).
//!
//! Bad input stops the run with an error naming the problem: shards that are not token shards or
//! are truncated, ids ≥ vocab, a checkpoint whose model config disagrees with the flags, a model
//! that would not fit in memory (refused with the estimate before allocating), and NaN/inf loss
//! (stops naming the step; the last good checkpoint is kept, nothing is written after it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use kiln_engine::generate::{generate, GenerateOptions};
use kiln_engine::{
    load_checkpoint, CpuBackend, Model, ModelConfig, OptimizerConfig, Rng, SamplingParams, Trainer,
};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::checkpoint::{ckpt_root, latest, save_step};
use crate::device::{with_backend, DeviceSpec, OnBackend, TrainBackend};
use crate::error::TrainError;
use crate::loader::{val_batches, DataPos, Loader, TokenData};
use crate::metrics::{bits_per_byte, read_metrics, MetricsLog};
use crate::plot::{write_svg, Series};
use crate::schedule::Schedule;
use kiln_engine::resolve_checkpoint;

/// Everything that defines a pretraining run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    pub model: ModelConfig,
    pub optim: OptimizerConfig,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Tokens per sequence (≤ model context).
    pub seq_len: usize,
    pub grad_accum: usize,
    pub steps: usize,
    pub warmup_steps: usize,
    pub warmdown_frac: f32,
    pub final_lr_frac: f32,
    pub eval_every: usize,
    pub eval_batches: usize,
    pub sample_every: usize,
    pub sample_tokens: usize,
    pub ckpt_every: usize,
    /// Checkpoints kept (older ones are deleted; at least 1).
    pub keep_ckpts: usize,
    pub seed: u64,
    pub val_frac: f32,
    pub threads: usize,
    /// Tokenizer name/folder the data was made with (recorded so `kiln sample` can find it).
    #[serde(default)]
    pub tokenizer: Option<String>,
}

/// What the caller provides besides the config (the engine stays tokenizer-free).
/// Turns ids into text (the tokenizer's decode, supplied by the caller).
pub type Decode<'a> = &'a dyn Fn(&[u32]) -> String;

#[derive(Default)]
pub struct Hooks<'a> {
    /// Turns ids into text for the live samples.
    pub decode: Option<Decode<'a>>,
    /// Byte length of each token id (0 for special tokens) for bits-per-byte.
    pub token_bytes: Option<&'a [u32]>,
    /// Prompts for the live samples (ids, BOS first).
    pub sample_prompts: Vec<Vec<u32>>,
    pub progress: bool,
    /// Stop after this many steps in this process (tests; a later `--resume` continues).
    pub stop_after: Option<usize>,
    /// Stop at the first step that ends after this instant, with an eval and a checkpoint as at
    /// the last step (the speedrun's time guard; a later `--resume` continues).
    pub deadline: Option<Instant>,
    /// Validation documents the caller held out (the speedrun's web text, `kiln pretrain --val`):
    /// when given, every document of `docs` trains and `val_frac` is not used.
    pub val_docs: Option<&'a [Vec<u32>]>,
}

/// Outcome of a run.
#[derive(Clone, Debug)]
pub struct Summary {
    pub step: u64,
    pub last_loss: f32,
    pub last_val_bpb: Option<f64>,
    pub last_ckpt: Option<PathBuf>,
    /// Training tokens per second (step time only).
    pub tokens_per_s: f64,
}

/// Read every token shard under `path` (a file or a folder of `*.parquet`).
pub fn load_shards(path: &Path) -> Result<Vec<Vec<u32>>, TrainError> {
    let files = kiln_data::list_shards(path)?;
    if files.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no *.parquet token shards",
            path.display()
        )));
    }
    let mut docs = Vec::new();
    for f in files {
        docs.extend(kiln_tokenizer::shards::read_token_shard(&f)?);
    }
    Ok(docs)
}

/// Human-readable differences between two model configs.
pub fn config_diff(a: &ModelConfig, b: &ModelConfig) -> Vec<String> {
    let (va, vb) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let mut out = Vec::new();
    if let (Some(ma), Some(mb)) = (va.as_object(), vb.as_object()) {
        for (k, x) in ma {
            let y = mb.get(k).cloned().unwrap_or(Value::Null);
            if *x != y {
                out.push(format!("{k}: checkpoint {x} vs requested {y}"));
            }
        }
    }
    out
}

/// Run (or resume) pretraining on `docs` on the cpu backend (`cfg.threads`), writing everything
/// under `out`.
pub fn pretrain(
    cfg: &PretrainConfig,
    docs: &[Vec<u32>],
    out: &Path,
    resume: Option<&Path>,
    hooks: &Hooks,
) -> Result<Summary, TrainError> {
    pretrain_with(
        Arc::new(CpuBackend::new(cfg.threads)),
        cfg,
        docs,
        out,
        resume,
        hooks,
    )
}

/// [`pretrain`] on the device `spec` names (`--device cpu|cuda`).
pub fn pretrain_on(
    spec: &DeviceSpec,
    cfg: &PretrainConfig,
    docs: &[Vec<u32>],
    out: &Path,
    resume: Option<&Path>,
    hooks: &Hooks,
) -> Result<Summary, TrainError> {
    struct Run<'a, 'h> {
        cfg: &'a PretrainConfig,
        docs: &'a [Vec<u32>],
        out: &'a Path,
        resume: Option<&'a Path>,
        hooks: &'a Hooks<'h>,
    }
    impl OnBackend for Run<'_, '_> {
        type Output = Summary;
        fn run<B: TrainBackend>(self, be: Arc<B>) -> Result<Summary, TrainError> {
            pretrain_with(be, self.cfg, self.docs, self.out, self.resume, self.hooks)
        }
    }
    let run = Run {
        cfg,
        docs,
        out,
        resume,
        hooks,
    };
    with_backend(spec, cfg.threads, run)
}

/// [`pretrain`] on a given backend. The checkpoints are host-side, so a run resumes on any
/// backend; bit-exact resume holds on the cpu (the cuda kernels' atomics are not deterministic).
pub fn pretrain_with<B: TrainBackend>(
    backend: Arc<B>,
    cfg: &PretrainConfig,
    docs: &[Vec<u32>],
    out: &Path,
    resume: Option<&Path>,
    hooks: &Hooks,
) -> Result<Summary, TrainError> {
    cfg.model.validate()?;
    if cfg.seq_len == 0 || cfg.seq_len > cfg.model.context {
        return Err(TrainError::Config(format!(
            "seq_len {} must be in 1..={} (model context)",
            cfg.seq_len, cfg.model.context
        )));
    }
    if cfg.batch == 0 || cfg.grad_accum == 0 || cfg.steps == 0 {
        return Err(TrainError::Config(
            "batch, grad_accum and steps must be positive".into(),
        ));
    }
    // refuse before reading data or allocating anything big
    backend.check_fits(cfg.model.train_bytes(cfg.batch))?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let root = ckpt_root(out);
    std::fs::create_dir_all(&root).map_err(|e| TrainError::io(&root, e))?;

    let data = match hooks.val_docs {
        Some(val) => TokenData::from_split(docs, val, cfg.model.vocab_size)?,
        None => TokenData::from_documents(docs, cfg.val_frac, cfg.model.vocab_size)?,
    };
    let mut loader = Loader::new(data.train, cfg.seq_len, cfg.seed)?;
    let vals = val_batches(&data.val, cfg.batch, cfg.seq_len, cfg.eval_batches);
    if cfg.eval_every > 0 && vals.is_empty() {
        tracing::warn!(
            "validation split has {} tokens, fewer than one {}×{} batch: eval disabled",
            data.val.len(),
            cfg.batch,
            cfg.seq_len
        );
    }

    let need = cfg.model.train_bytes(cfg.batch);
    tracing::info!(
        "model {} ({} params) on {}, batch {}×{}×{} accum, estimated memory {} MiB",
        cfg.model.arch,
        cfg.model.num_params(),
        backend.label(),
        cfg.batch,
        cfg.seq_len,
        cfg.grad_accum,
        need >> 20
    );
    // partial checkpoints left by a killed process (never renamed into place)
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(".step_") && (n.contains(".tmp-") || n.contains(".old-")) {
                tracing::warn!("removing partial checkpoint {}", e.path().display());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let mut step: u64 = 0;
    let mut sample_rng = Rng::new(cfg.seed ^ 0x5a5a);
    let mut elapsed_prev = 0f64;
    let (model, opt_state) = match resume {
        Some(p) => {
            let dir = resolve_checkpoint(p)?;
            let ck = load_checkpoint(&dir)?;
            let diff = config_diff(&ck.config, &cfg.model);
            if !diff.is_empty() {
                return Err(TrainError::Config(format!(
                    "checkpoint {} disagrees with the requested model: {}",
                    dir.display(),
                    diff.join("; ")
                )));
            }
            let tr = &ck.train;
            step = tr["step"].as_u64().ok_or_else(|| {
                TrainError::Config(format!("{}: kiln.json has no train.step", dir.display()))
            })?;
            let pos: DataPos = serde_json::from_value(tr["data"].clone()).map_err(|e| {
                TrainError::Config(format!("{}: bad train.data: {e}", dir.display()))
            })?;
            loader.set_pos(pos);
            if let Ok(r) = serde_json::from_value::<Rng>(tr["sample_rng"].clone()) {
                sample_rng = r;
            }
            elapsed_prev = tr["elapsed_s"].as_f64().unwrap_or(0.0);
            if let Ok(old) = serde_json::from_value::<PretrainConfig>(tr["config"].clone()) {
                if old.batch != cfg.batch
                    || old.seq_len != cfg.seq_len
                    || old.seed != cfg.seed
                    || old.grad_accum != cfg.grad_accum
                {
                    tracing::warn!("resuming with a different batch/seq_len/accum/seed than the checkpoint: the run will not match an uninterrupted one");
                }
            }
            tracing::info!("resuming from {} at step {step}", dir.display());
            (ck.into_model(backend.clone())?, ck.optimizer)
        }
        None => (
            Model::new(backend.clone(), cfg.model.clone(), cfg.seed)?,
            None,
        ),
    };
    let mut tr = Trainer::new(model, cfg.batch, cfg.seq_len, cfg.optim.clone())?;
    if let Some(o) = opt_state {
        tr.opt.set_state_host(&backend, &o.m, &o.v, o.step)?;
    }
    let sched = Schedule {
        total_steps: cfg.steps,
        warmup_steps: cfg.warmup_steps,
        warmdown_frac: cfg.warmdown_frac,
        final_frac: cfg.final_lr_frac,
    };
    let mpath = out.join("metrics.jsonl");
    let mut metrics = MetricsLog::open(&mpath, resume.map(|_| step))?;
    if resume.is_none() {
        metrics.write(
            &json!({"event": "start", "step": 0, "params": tr.model.num_params(), "config": cfg, "device": backend.label()}),
        )?;
    }

    let bar = if hooks.progress {
        let b = ProgressBar::new(cfg.steps as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_position(step);
        b
    } else {
        ProgressBar::hidden()
    };

    let bt = cfg.batch * cfg.seq_len;
    let (mut x, mut y) = (vec![0u32; bt], vec![0u32; bt]);
    let tokens_per_step = (bt * cfg.grad_accum) as f64;
    let mut last_loss = f32::NAN;
    let mut last_bpb = None;
    let mut last_ckpt: Option<PathBuf> = latest(&root);
    let mut step_time = 0f64;
    let mut steps_timed = 0u64;
    let run_start = Instant::now();
    let mut done_here = 0usize;

    let save = |tr: &Trainer<B>,
                step: u64,
                pos: DataPos,
                rng: &Rng,
                elapsed: f64|
     -> Result<PathBuf, TrainError> {
        let state = json!({"step": step, "data": pos, "sample_rng": rng, "elapsed_s": elapsed, "config": cfg, "device": tr.model.backend.name()});
        save_step(&root, step, tr, &state, cfg.keep_ckpts)
    };

    while (step as usize) < cfg.steps {
        let t0 = Instant::now();
        tr.zero_grad();
        let mut loss = 0f32;
        for _ in 0..cfg.grad_accum {
            loader.next_batch(&mut x, &mut y);
            loss += tr.forward_backward(&x, &y, None, tokens_per_step as f32)?;
        }
        let grad_norm = tr.clip_grad(cfg.optim.grad_clip);
        if !loss.is_finite() || !grad_norm.is_finite() {
            bar.abandon();
            let bad = if loss.is_finite() { grad_norm } else { loss };
            metrics
                .write(&json!({"event": "nonfinite", "step": step + 1, "loss": bad.to_string()}))?;
            return Err(TrainError::NonFinite {
                what: "loss",
                step: step + 1,
                loss: bad,
                last_ckpt: last_ckpt
                    .as_ref()
                    .map_or("none written yet".into(), |p| p.display().to_string()),
            });
        }
        let lr = sched.lr_scale(step as usize);
        tr.optimizer_step(lr);
        // no-op on the cpu; on a GPU the step's work is queued and timing needs it done
        tr.model.backend.synchronize();
        step += 1;
        done_here += 1;
        let dt = t0.elapsed().as_secs_f64();
        step_time += dt;
        steps_timed += 1;
        last_loss = loss;
        let tok_s = tokens_per_step / dt;
        metrics.write(&json!({"step": step, "loss": loss, "lr_scale": lr, "grad_norm": grad_norm, "tok_per_s": tok_s, "elapsed_s": elapsed_prev + run_start.elapsed().as_secs_f64()}))?;
        bar.set_position(step);
        bar.set_message(format!("loss {loss:.4}  {tok_s:.0} tok/s"));

        let out_of_time = hooks.deadline.is_some_and(|d| Instant::now() >= d);
        let last = step as usize == cfg.steps || out_of_time;
        if cfg.eval_every > 0
            && !vals.is_empty()
            && ((step as usize).is_multiple_of(cfg.eval_every) || last)
        {
            let (mut nats, mut bytes, mut ntok) = (0f64, 0u64, 0usize);
            let mut sum_loss = 0f64;
            for (vx, vy) in &vals {
                let l = tr.eval_losses(vx, vy)?;
                sum_loss += l.iter().map(|v| *v as f64).sum::<f64>();
                ntok += l.len();
                if let Some(tb) = hooks.token_bytes {
                    let (n, b) = bits_per_byte(l, vy, tb);
                    nats += n;
                    bytes += b;
                }
            }
            let val_loss = sum_loss / ntok.max(1) as f64;
            let bpb = (bytes > 0).then(|| nats / (std::f64::consts::LN_2 * bytes as f64));
            last_bpb = bpb;
            metrics.write(
                &json!({"event": "eval", "step": step, "val_loss": val_loss, "val_bpb": bpb}),
            )?;
            bar.suspend(|| {
                tracing::info!(
                    "step {step}: val loss {val_loss:.4}{}",
                    bpb.map_or(String::new(), |b| format!(", val bpb {b:.4}"))
                )
            });
            write_plot(out, &mpath)?;
        }
        if cfg.sample_every > 0
            && !hooks.sample_prompts.is_empty()
            && ((step as usize).is_multiple_of(cfg.sample_every) || last)
        {
            for p in &hooks.sample_prompts {
                let p = &p[..p.len().min(cfg.model.context - 1)];
                let o = GenerateOptions {
                    max_tokens: cfg.sample_tokens,
                    num_samples: 1,
                    sampling: SamplingParams {
                        temperature: 0.8,
                        top_k: 50,
                        ..Default::default()
                    },
                    seed: sample_rng.next_u64(),
                    stop: vec![p[0]],
                    no_cache: false,
                };
                let s = generate(&tr.model, p, &o)?;
                let text = hooks.decode.map(|d| d(&[p, &s[0][..]].concat()));
                bar.suspend(|| {
                    tracing::info!(
                        "step {step} sample: {}",
                        text.as_deref().unwrap_or("(no tokenizer)")
                    )
                });
                metrics.write(&json!({"event": "sample", "step": step, "prompt": p, "tokens": s[0], "text": text}))?;
            }
        }
        if (cfg.ckpt_every > 0 && (step as usize).is_multiple_of(cfg.ckpt_every)) || last {
            let dir = save(
                &tr,
                step,
                loader.pos,
                &sample_rng,
                elapsed_prev + run_start.elapsed().as_secs_f64(),
            )?;
            bar.suspend(|| tracing::info!("checkpoint {}", dir.display()));
            last_ckpt = Some(dir);
        }
        if out_of_time || hooks.stop_after.is_some_and(|n| done_here >= n) {
            break;
        }
    }
    bar.finish_and_clear();
    write_plot(out, &mpath)?;
    Ok(Summary {
        step,
        last_loss,
        last_val_bpb: last_bpb,
        last_ckpt,
        tokens_per_s: if step_time > 0.0 {
            tokens_per_step * steps_timed as f64 / step_time
        } else {
            0.0
        },
    })
}

/// Redraw `curves.svg` from the metrics file.
pub fn write_plot(out: &Path, metrics: &Path) -> Result<(), TrainError> {
    let recs = read_metrics(metrics)?;
    let loss: Vec<(f64, f64)> = recs
        .iter()
        .filter(|r| r.get("event").is_none())
        .filter_map(|r| Some((r["step"].as_f64()?, r["loss"].as_f64()?)))
        .collect();
    let bpb: Vec<(f64, f64)> = recs
        .iter()
        .filter(|r| r["event"] == "eval")
        .filter_map(|r| {
            Some((
                r["step"].as_f64()?,
                r["val_bpb"].as_f64().or_else(|| r["val_loss"].as_f64())?,
            ))
        })
        .collect();
    let has_bpb = recs
        .iter()
        .any(|r| r["event"] == "eval" && r["val_bpb"].is_number());
    write_svg(
        &out.join("curves.svg"),
        &[
            Series {
                title: "train loss (nats/token)",
                points: &loss,
            },
            Series {
                title: if has_bpb {
                    "val bits per byte"
                } else {
                    "val loss (nats/token)"
                },
                points: &bpb,
            },
        ],
    )
}
