//! Supervised fine-tuning: rendered conversations → packed rows → the same engine step as
//! pretraining, with the per-token loss weight set to the assistant mask. Validation loss (mean
//! nats per trained token on held-out conversations) at the start, every N steps and at the end;
//! progress bar; atomic checkpoints (`<out>/ckpt/step_N` + `latest`, pretraining's layout) holding
//! model, optimizer, step and data position, so `--resume` continues exactly.
//!
//! Packing: each row holds whole conversations (each starts with `<|bos|>`) up to `seq_len + 1`
//! tokens; the rest of the row is padding with weight 0. Conversations longer than a row were
//! already cut by the renderer (and counted). Tried first: a flat token stream cut into windows,
//! as in pretraining — it splits conversations so that answers lose their question.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use kiln_chat::format::{render_for_training, ChatTokens, Codec, Conversation, Rendered};
use kiln_engine::{load_checkpoint, CpuBackend, Model, OptimizerConfig, Trainer};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::checkpoint::{latest, save_step};
use crate::device::{with_backend, DeviceSpec, OnBackend, TrainBackend};
use crate::error::TrainError;
use crate::metrics::MetricsLog;
use crate::schedule::Schedule;
use kiln_engine::resolve_checkpoint;

/// Everything that defines an SFT run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    pub steps: usize,
    /// Rows per step.
    pub batch: usize,
    /// Tokens per row (≤ the model's context).
    pub seq_len: usize,
    pub optim: OptimizerConfig,
    pub warmup_steps: usize,
    pub eval_every: usize,
    /// Validation batches per eval (0 = all).
    pub eval_batches: usize,
    pub ckpt_every: usize,
    pub seed: u64,
    pub threads: usize,
    /// Stop early (with a checkpoint) after this many seconds of training.
    pub time_limit_s: Option<f64>,
    /// The tokenizer (folder or name) the run used, recorded for `kiln chat`/`kiln sample`.
    pub tokenizer: Option<String>,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            steps: 200,
            batch: 8,
            seq_len: 256,
            optim: OptimizerConfig {
                lr: 3e-4,
                weight_decay: 0.0,
                ..Default::default()
            },
            warmup_steps: 10,
            eval_every: 50,
            eval_batches: 8,
            ckpt_every: 100,
            seed: 1,
            threads: 2,
            time_limit_s: None,
            tokenizer: None,
        }
    }
}

/// Conversations rendered for training, with what rendering cut or dropped.
#[derive(Debug, Default)]
pub struct SftData {
    pub train: Vec<Rendered>,
    pub val: Vec<Rendered>,
    /// Conversations longer than a row, cut to fit.
    pub truncated: usize,
    /// Conversations with no trained token left after cutting (the answer did not fit).
    pub dropped: usize,
}

/// Renders train and validation conversations to rows of at most `seq_len + 1` tokens.
pub fn render_data(
    train: &[Conversation],
    val: &[Conversation],
    codec: &dyn Codec,
    tokens: &ChatTokens,
    seq_len: usize,
) -> Result<SftData, TrainError> {
    let mut data = SftData::default();
    for (convs, out) in [(train, &mut data.train), (val, &mut data.val)] {
        for c in convs {
            let r = render_for_training(c, codec, tokens, seq_len + 1)
                .map_err(|e| TrainError::Data(e.to_string()))?;
            data.truncated += usize::from(r.truncated);
            if r.mask.iter().skip(1).any(|&m| m == 1) {
                out.push(r);
            } else {
                data.dropped += 1;
            }
        }
    }
    if data.train.is_empty() {
        return Err(TrainError::Data(
            "no trainable conversations in the mix".into(),
        ));
    }
    Ok(data)
}

/// Where the packer is in the training data (saved in checkpoints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftPos {
    pub epoch: u64,
    pub cursor: usize,
}

fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    kiln_engine::Rng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9)).shuffle(&mut order);
    order
}

/// A batch being filled: `x.len() / t` rows of `t` inputs, targets and weights.
struct Rows<'a> {
    x: &'a mut [u32],
    y: &'a mut [u32],
    w: &'a mut [f32],
    t: usize,
}

/// Fills every row of `out` with whole conversations from `items` (indices from `next`; one that
/// did not fit is left in `peek` for the next row). Returns the number of trained targets.
/// Padding uses `pad` with weight 0.
fn pack(
    items: &[Rendered],
    next: &mut dyn FnMut() -> usize,
    peek: &mut Option<usize>,
    pad: u32,
    out: Rows,
) -> usize {
    let Rows { x, y, w, t } = out;
    let rows = x.len() / t;
    let mut trained = 0;
    let mut ids = Vec::with_capacity(t + 1);
    let mut mask = Vec::with_capacity(t + 1);
    for r in 0..rows {
        ids.clear();
        mask.clear();
        loop {
            let i = peek.take().unwrap_or_else(&mut *next);
            let it = &items[i];
            if !ids.is_empty() && ids.len() + it.ids.len() > t + 1 {
                *peek = Some(i);
                break;
            }
            ids.extend_from_slice(&it.ids[..it.ids.len().min(t + 1)]);
            mask.extend_from_slice(&it.mask[..it.mask.len().min(t + 1)]);
            if ids.len() > t {
                break;
            }
        }
        ids.resize(t + 1, pad);
        mask.resize(t + 1, 0);
        for j in 0..t {
            x[r * t + j] = ids[j];
            y[r * t + j] = ids[j + 1];
            w[r * t + j] = f32::from(mask[j + 1]);
            trained += usize::from(mask[j + 1]);
        }
    }
    trained
}

/// Validation batches: every val conversation once, in order.
pub fn val_batches(
    val: &[Rendered],
    b: usize,
    t: usize,
    pad: u32,
    max_batches: usize,
) -> Vec<(Vec<u32>, Vec<u32>, Vec<f32>)> {
    let mut out = Vec::new();
    if val.is_empty() {
        return out;
    }
    let mut i = 0;
    let mut peek = None;
    let n = val.len();
    let mut consumed = 0;
    while consumed < n && (max_batches == 0 || out.len() < max_batches) {
        let (mut x, mut y, mut w) = (vec![0; b * t], vec![0; b * t], vec![0.0; b * t]);
        let before = i;
        let mut next = || {
            let k = i % n;
            i += 1;
            k
        };
        pack(
            val,
            &mut next,
            &mut peek,
            pad,
            Rows {
                x: &mut x,
                y: &mut y,
                w: &mut w,
                t,
            },
        );
        consumed += i - before;
        out.push((x, y, w));
    }
    out
}

/// Mean loss per trained token over `batches`.
pub fn masked_loss<B: TrainBackend>(
    tr: &mut Trainer<B>,
    batches: &[(Vec<u32>, Vec<u32>, Vec<f32>)],
) -> Result<f64, TrainError> {
    let (mut nats, mut n) = (0f64, 0f64);
    for (x, y, w) in batches {
        let losses = tr.eval_losses(x, y)?;
        for (l, wt) in losses.iter().zip(w) {
            nats += (*l as f64) * (*wt as f64);
            n += *wt as f64;
        }
    }
    Ok(if n > 0.0 { nats / n } else { f64::NAN })
}

/// What an SFT run did.
#[derive(Clone, Debug, Serialize)]
pub struct SftSummary {
    pub step: u64,
    pub last_loss: f32,
    /// Validation loss before the first step (the base model on chat data), if measured here.
    pub val_loss_start: Option<f64>,
    pub val_loss: Option<f64>,
    pub tokens_per_s: f64,
    pub trained_tokens_per_step: f64,
    pub seconds: f64,
    pub last_ckpt: PathBuf,
}

/// Run (or resume, when `<out>/ckpt/latest` exists and `resume` is set) SFT starting from the
/// base checkpoint `base`, on the cpu backend (`cfg.threads`).
pub fn sft(
    cfg: &SftConfig,
    base: &Path,
    data: &SftData,
    pad: u32,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<SftSummary, TrainError> {
    let be = Arc::new(CpuBackend::new(cfg.threads));
    sft_with(be, cfg, base, data, pad, out, resume, progress)
}

/// [`sft`] on the device `spec` names (`--device cpu|cuda`).
#[allow(clippy::too_many_arguments)]
pub fn sft_on(
    spec: &DeviceSpec,
    cfg: &SftConfig,
    base: &Path,
    data: &SftData,
    pad: u32,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<SftSummary, TrainError> {
    struct Run<'a> {
        cfg: &'a SftConfig,
        base: &'a Path,
        data: &'a SftData,
        pad: u32,
        out: &'a Path,
        resume: bool,
        progress: bool,
    }
    impl OnBackend for Run<'_> {
        type Output = SftSummary;
        fn run<B: TrainBackend>(self, be: Arc<B>) -> Result<SftSummary, TrainError> {
            let Run {
                cfg,
                base,
                data,
                pad,
                out,
                resume,
                progress,
            } = self;
            sft_with(be, cfg, base, data, pad, out, resume, progress)
        }
    }
    let run = Run {
        cfg,
        base,
        data,
        pad,
        out,
        resume,
        progress,
    };
    with_backend(spec, cfg.threads, run)
}

/// [`sft`] on a given backend.
#[allow(clippy::too_many_arguments)]
pub fn sft_with<B: TrainBackend>(
    be: Arc<B>,
    cfg: &SftConfig,
    base: &Path,
    data: &SftData,
    pad: u32,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<SftSummary, TrainError> {
    if cfg.steps == 0 || cfg.batch == 0 || cfg.seq_len == 0 {
        return Err(TrainError::Config(
            "steps, batch and seq_len must be positive".into(),
        ));
    }
    let root = out.join("ckpt");
    std::fs::create_dir_all(&root).map_err(|e| TrainError::io(&root, e))?;
    let resume_dir = if resume && root.join("latest").exists() {
        Some(resolve_checkpoint(out)?)
    } else {
        None
    };
    let (ck, mut step, mut pos, elapsed_prev) = match &resume_dir {
        Some(dir) => {
            let ck = load_checkpoint(dir)?;
            if ck.train.get("kind").and_then(|k| k.as_str()) != Some("sft") {
                return Err(TrainError::Config(format!(
                    "{}: not an SFT checkpoint; cannot resume from it",
                    dir.display()
                )));
            }
            let step = ck.train["step"].as_u64().unwrap_or(0);
            let pos: SftPos = serde_json::from_value(ck.train["data"].clone()).unwrap_or_default();
            let el = ck.train["elapsed_s"].as_f64().unwrap_or(0.0);
            tracing::info!("resuming SFT from {} (step {step})", dir.display());
            (ck, step, pos, el)
        }
        None => {
            let dir = resolve_checkpoint(base)?;
            (load_checkpoint(&dir)?, 0, SftPos::default(), 0.0)
        }
    };
    let model_cfg = ck.config.clone();
    if cfg.seq_len > model_cfg.context {
        return Err(TrainError::Config(format!(
            "seq_len {} exceeds the model's context {}",
            cfg.seq_len, model_cfg.context
        )));
    }
    if let Some(bad) = data
        .train
        .iter()
        .flat_map(|r| r.ids.iter())
        .find(|&&id| id as usize >= model_cfg.vocab_size)
    {
        return Err(TrainError::Data(format!(
            "token id {bad} ≥ the model's vocabulary of {}: the tokenizer does not belong to this checkpoint",
            model_cfg.vocab_size
        )));
    }
    let model: Model<B> = ck.into_model(be.clone())?;
    let mut tr = Trainer::new(model, cfg.batch, cfg.seq_len, cfg.optim.clone())?;
    if resume_dir.is_some() {
        if let Some(o) = &ck.optimizer {
            tr.opt.set_state_host(&be, &o.m, &o.v, o.step)?;
        }
    }
    drop(ck);

    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = MetricsLog::open(&metrics_path, resume_dir.as_ref().map(|_| step))?;
    let vals = val_batches(&data.val, cfg.batch, cfg.seq_len, pad, cfg.eval_batches);
    let sched = Schedule {
        total_steps: cfg.steps,
        warmup_steps: cfg.warmup_steps,
        warmdown_frac: 0.5,
        final_frac: 0.0,
    };
    let mut val_loss_start = None;
    let mut val_loss = None;
    if step == 0 && !vals.is_empty() {
        let v = masked_loss(&mut tr, &vals)?;
        tracing::info!("SFT val loss before training: {v:.4}");
        metrics.write(&json!({"event": "eval", "step": 0, "val_loss": v}))?;
        val_loss_start = Some(v);
        val_loss = Some(v);
    }
    metrics.write(&json!({"event": "start", "step": step, "train_convs": data.train.len(), "val_convs": data.val.len(),
        "truncated": data.truncated, "dropped": data.dropped, "config": cfg}))?;

    let n = data.train.len();
    let mut order = epoch_order(n, cfg.seed, pos.epoch);
    let bt = cfg.batch * cfg.seq_len;
    let (mut x, mut y, mut w) = (vec![0u32; bt], vec![0u32; bt], vec![0f32; bt]);
    let bar = if progress {
        ProgressBar::new(cfg.steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "sft {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(step);
    let start = Instant::now();
    let (mut last_loss, mut tok_total, mut trained_total, mut steps_here) =
        (f32::NAN, 0f64, 0f64, 0u64);
    let save = |tr: &Trainer<B>,
                step: u64,
                pos: SftPos,
                val: Option<f64>,
                elapsed: f64|
     -> Result<PathBuf, TrainError> {
        let state = json!({"kind": "sft", "step": step, "data": pos, "val_loss": val, "elapsed_s": elapsed, "config": cfg, "base": base, "device": tr.model.backend.name()});
        // Keep the newest two.
        save_step(&root, step, tr, &state, 2)
    };
    let mut last_ckpt = resume_dir.clone().unwrap_or_default();
    let mut peek = None;
    while (step as usize) < cfg.steps {
        let t0 = Instant::now();
        let mut next = || {
            if pos.cursor >= n {
                pos.epoch += 1;
                pos.cursor = 0;
                order = epoch_order(n, cfg.seed, pos.epoch);
            }
            pos.cursor += 1;
            order[pos.cursor - 1]
        };
        let trained = pack(
            &data.train,
            &mut next,
            &mut peek,
            pad,
            Rows {
                x: &mut x,
                y: &mut y,
                w: &mut w,
                t: cfg.seq_len,
            },
        );
        // A conversation peeked but not used goes back (so the saved position is exact).
        if peek.take().is_some() {
            pos.cursor -= 1;
        }
        let lr = sched.lr_scale(step as usize);
        let s = tr.train_step(&x, &y, Some(&w), lr)?;
        tr.model.backend.synchronize(); // no-op on the cpu; timing on a GPU
        if !s.loss.is_finite() {
            return Err(TrainError::NonFinite {
                what: "loss",
                step: step + 1,
                loss: s.loss,
                last_ckpt: last_ckpt.display().to_string(),
            });
        }
        step += 1;
        steps_here += 1;
        last_loss = s.loss;
        let dt = t0.elapsed().as_secs_f64();
        tok_total += bt as f64;
        trained_total += trained as f64;
        let tok_s = bt as f64 / dt.max(1e-9);
        let elapsed = elapsed_prev + start.elapsed().as_secs_f64();
        metrics.write(&json!({"step": step, "loss": s.loss, "lr_scale": lr, "grad_norm": s.grad_norm, "trained_tokens": trained, "tok_per_s": tok_s, "elapsed_s": elapsed}))?;
        let out_of_time = cfg
            .time_limit_s
            .is_some_and(|lim| start.elapsed().as_secs_f64() >= lim);
        let last = step as usize == cfg.steps || out_of_time;
        if !vals.is_empty()
            && ((cfg.eval_every > 0 && (step as usize).is_multiple_of(cfg.eval_every)) || last)
        {
            let v = masked_loss(&mut tr, &vals)?;
            metrics.write(&json!({"event": "eval", "step": step, "val_loss": v}))?;
            val_loss = Some(v);
        }
        bar.set_position(step);
        bar.set_message(format!(
            "loss {:.3}{} {:.0} tok/s",
            s.loss,
            val_loss.map(|v| format!(" val {v:.3}")).unwrap_or_default(),
            tok_s
        ));
        if last || (cfg.ckpt_every > 0 && (step as usize).is_multiple_of(cfg.ckpt_every)) {
            last_ckpt = save(&tr, step, pos, val_loss, elapsed)?;
        }
        if out_of_time {
            tracing::info!("SFT time limit reached at step {step}");
            break;
        }
    }
    bar.finish_and_clear();
    if steps_here == 0 {
        last_ckpt = latest(&root).ok_or_else(|| {
            TrainError::Config(format!("{}: no latest checkpoint", root.display()))
        })?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(SftSummary {
        step,
        last_loss,
        val_loss_start,
        val_loss,
        tokens_per_s: tok_total / secs.max(1e-9),
        trained_tokens_per_step: trained_total / (steps_here.max(1) as f64),
        seconds: secs,
        last_ckpt,
    })
}

/// An SFT run as the CLI and the speedrun describe it: a base checkpoint, a mix file and an output
/// folder. [`run_job`] loads the mix (kiln-chat), renders it with the base run's tokenizer and runs
/// [`sft_on`].
#[derive(Clone, Debug)]
pub struct SftJob {
    /// Base model checkpoint (folder, or a pretraining run folder with ckpt/latest).
    pub base: PathBuf,
    /// The data mix (TOML).
    pub mix: PathBuf,
    pub out: PathBuf,
    /// Tokenizer folder or name; `None`: the one the base run recorded.
    pub tokenizer: Option<String>,
    /// Tokens per row; `None`: the model's context.
    pub seq_len: Option<usize>,
    /// Fail on the first malformed or unusable conversation instead of skipping and counting.
    pub strict: bool,
    /// Multiplies every source's count in the mix.
    pub scale: f64,
    pub resume: bool,
    pub progress: bool,
    /// Steps, batch, optimizer, schedule, seed, threads, time limit (`seq_len` and `tokenizer` are
    /// filled in by [`run_job`]).
    pub train: SftConfig,
}

/// What [`run_job`] did, for printing and the report card.
pub struct SftOutcome {
    pub summary: SftSummary,
    pub stats: Vec<kiln_chat::mix::SourceStats>,
    pub truncated: usize,
    pub dropped: usize,
    pub train_convs: usize,
    pub val_convs: usize,
}

/// The tokenizer a job uses: the flag, or the one the base run recorded.
fn tokenizer_of(base: &Path, flag: Option<&str>) -> Result<String, TrainError> {
    if let Some(t) = flag {
        return Ok(t.to_string());
    }
    let dir = resolve_checkpoint(base)?;
    let ck = load_checkpoint(&dir)?;
    ck.train["config"]["tokenizer"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| {
            TrainError::Config(format!(
                "{}: the base run recorded no tokenizer; pass --tokenizer",
                dir.display()
            ))
        })
}

/// Load the job's mix, render it, write `<out>/mix.json` (per-source counts) and train.
pub fn run_job(job: &SftJob, spec: &DeviceSpec) -> Result<SftOutcome, TrainError> {
    let tok_name = tokenizer_of(&job.base, job.tokenizer.as_deref())?;
    let tok = kiln_tokenizer::Tokenizer::load_named(&tok_name)?;
    let tokens = kiln_chat::load::chat_tokens(
        &tok,
        &format!("SFT base {} (tokenizer {tok_name})", job.base.display()),
    )?;
    let base_dir = resolve_checkpoint(&job.base)?;
    let context = load_checkpoint(&base_dir)?.config.context;
    let seq_len = job.seq_len.unwrap_or(context);

    let mix_cfg = kiln_chat::mix::MixConfig::load(&job.mix)?;
    let mix_dir = job.mix.parent().unwrap_or(Path::new("."));
    let data_dir = kiln_data::fetch::data_dir();
    let source_dir =
        |name: &str| kiln_data::fetch::source_dir_in(&data_dir, name).map_err(|e| e.to_string());
    let mix = mix_cfg.build(mix_dir, &source_dir, job.scale, job.strict)?;
    let data = render_data(&mix.train, &mix.val, &tok, &tokens, seq_len)?;
    tracing::info!(
        "SFT mix: {} train / {} val conversations; {} cut to {} tokens, {} dropped (answer did not fit)",
        data.train.len(),
        data.val.len(),
        data.truncated,
        seq_len + 1,
        data.dropped
    );
    std::fs::create_dir_all(&job.out).map_err(|e| TrainError::io(&job.out, e))?;
    let stats_json: Vec<_> = mix
        .stats
        .iter()
        .map(|s| json!({"kind": s.kind, "train": s.train, "val": s.val, "malformed": s.malformed, "rejected": s.rejected, "too_long": s.too_long, "first_error": s.first_error}))
        .collect();
    let mix_json = json!({"mix": job.mix, "sources": stats_json, "truncated": data.truncated, "dropped": data.dropped});
    crate::checkpoint::write_json(&job.out.join("mix.json"), &mix_json)?;

    let tok_abs = match std::fs::canonicalize(&tok_name) {
        Ok(p) => p.display().to_string(),
        Err(_) => tok_name.clone(),
    };
    let cfg = SftConfig {
        seq_len,
        tokenizer: Some(tok_abs),
        ..job.train.clone()
    };
    let summary = sft_on(
        spec,
        &cfg,
        &job.base,
        &data,
        tokens.bos,
        &job.out,
        job.resume,
        job.progress,
    )?;
    Ok(SftOutcome {
        summary,
        stats: mix.stats,
        truncated: data.truncated,
        dropped: data.dropped,
        train_convs: data.train.len(),
        val_convs: data.val.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_chat::format::testing::ByteCodec;
    use kiln_chat::format::Message;
    use kiln_engine::{save_checkpoint, ModelConfig};

    fn convs(n: usize) -> Vec<Conversation> {
        (0..n)
            .map(|i| {
                Conversation::new(vec![
                    Message::user(format!("q{i}")),
                    Message::assistant(format!("answer {i}")),
                ])
            })
            .collect()
    }

    #[test]
    fn packing_keeps_conversations_whole_and_weights_follow_the_mask() {
        let c = ByteCodec {
            with_specials: true,
        };
        let t = ChatTokens::from_codec(&c).unwrap();
        let data = render_data(&convs(5), &convs(2), &c, &t, 40).unwrap();
        let (b, tl) = (2, 40);
        let (mut x, mut y, mut w) = (vec![0; b * tl], vec![0; b * tl], vec![0.0; b * tl]);
        let mut i = 0;
        let mut next = || {
            i += 1;
            (i - 1) % 5
        };
        let mut peek = None;
        let trained = pack(
            &data.train,
            &mut next,
            &mut peek,
            t.bos,
            Rows {
                x: &mut x,
                y: &mut y,
                w: &mut w,
                t: tl,
            },
        );
        // Each conversation ("q0" ~ 15 tokens) fits twice per row of 41; trained = "answer i" + end.
        assert_eq!(trained, 4 * 9);
        for r in 0..b {
            // rows start with BOS and targets are the inputs shifted by one
            assert_eq!(x[r * tl], t.bos);
            assert_eq!(&x[r * tl + 1..(r + 1) * tl], &y[r * tl..(r + 1) * tl - 1]);
        }
        // weight 1 exactly on assistant text and <|assistant_end|> targets
        for k in 0..b * tl {
            if w[k] == 1.0 {
                assert!(y[k] == t.assistant_end || y[k] < 256);
            } else {
                assert_ne!(y[k], t.assistant_end);
            }
        }
        assert!(
            peek.is_some(),
            "the conversation that did not fit is kept for the next row"
        );
    }

    #[test]
    fn too_long_conversations_are_cut_and_counted_and_untrainable_ones_dropped() {
        let c = ByteCodec {
            with_specials: true,
        };
        let t = ChatTokens::from_codec(&c).unwrap();
        let long = vec![
            Conversation::new(vec![
                Message::user("hi"),
                Message::assistant("x".repeat(100)),
            ]),
            Conversation::new(vec![
                Message::user("y".repeat(100)),
                Message::assistant("z"),
            ]),
        ];
        let d = render_data(&long, &[], &c, &t, 32).unwrap();
        assert_eq!((d.truncated, d.dropped, d.train.len()), (2, 1, 1));
        assert_eq!(d.train[0].ids.len(), 33);
    }

    #[test]
    fn sft_lowers_val_loss_saves_and_resumes() {
        let c = ByteCodec {
            with_specials: true,
        };
        let t = ChatTokens::from_codec(&c).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let be = Arc::new(CpuBackend::new(1));
        let model = Model::new(be, ModelConfig::gpt2(c.vocab_size(), 1, 2, 32, 64), 0).unwrap();
        save_checkpoint(&base, &model, None, &json!({"step": 0})).unwrap();
        let data = render_data(&convs(40), &convs(8), &c, &t, 64).unwrap();
        let mut cfg = SftConfig {
            steps: 30,
            batch: 2,
            seq_len: 64,
            eval_every: 10,
            eval_batches: 0,
            ckpt_every: 10,
            threads: 1,
            ..Default::default()
        };
        cfg.optim.lr = 3e-3;
        let out = dir.path().join("sft");
        let s = sft(&cfg, &base, &data, t.bos, &out, false, false).unwrap();
        assert_eq!(s.step, 30);
        let (v0, v1) = (s.val_loss_start.unwrap(), s.val_loss.unwrap());
        assert!(v1 < v0 * 0.7, "val loss {v0} -> {v1}");
        // Resume: a longer run continues from step 30, not from scratch.
        cfg.steps = 35;
        let s2 = sft(&cfg, &base, &data, t.bos, &out, true, false).unwrap();
        assert_eq!(s2.step, 35);
        assert!(s2.val_loss_start.is_none());
        assert!(s2.last_ckpt.ends_with("step_000035"));
        let ck = load_checkpoint(&s2.last_ckpt).unwrap();
        assert_eq!(ck.train["kind"], "sft");
    }

    #[test]
    fn tokenizer_vocab_larger_than_model_is_an_error() {
        let c = ByteCodec {
            with_specials: true,
        };
        let t = ChatTokens::from_codec(&c).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let model = Model::new(
            Arc::new(CpuBackend::new(1)),
            ModelConfig::gpt2(200, 1, 2, 16, 32),
            0,
        )
        .unwrap();
        save_checkpoint(&base, &model, None, &json!({})).unwrap();
        let data = render_data(&convs(4), &[], &c, &t, 32).unwrap();
        let cfg = SftConfig {
            steps: 1,
            batch: 1,
            seq_len: 32,
            threads: 1,
            ..Default::default()
        };
        let e = sft(
            &cfg,
            &base,
            &data,
            t.bos,
            &dir.path().join("o"),
            false,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
    }
}
