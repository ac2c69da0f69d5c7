//! The RL loop: rollouts → verifier rewards → group-relative advantages → policy-gradient update
//! through the engine's per-token loss weights; held-out pass@1 and pass@k evals,
//! `metrics.jsonl`, an SVG of the R1 curves (reward, accuracy, response length), checkpoints and
//! resume.
//!
//! Rollouts use the engine's [`BatchedDecoder`]: one prefill per prompt, its cache forked to the
//! `group` rows, and every group of a round decoded together, one batched forward per token
//! ([`rollouts`]). Prompts come from a cursor over the training problems (saved in checkpoints)
//! and sampling seeds from `(seed, prompt's place in that stream, sample)`, so a resumed run draws
//! what the uninterrupted one would have (model and optimizer come from the checkpoint).
//!
//! Dynamic sampling (DAPO): a group whose rewards are all equal has advantage 0 everywhere and
//! is left out of the update; a step draws up to `rollout_rounds` rounds of `prompts_per_step`
//! prompts until it has that many groups with a signal. A step with none makes no update.
//!
//! Each batch is used for `updates` optimizer steps. The first step is on-policy (ratio 1), so its
//! weights need no extra forward; later steps (and the KL term) need current log-probs, which one
//! forward-only pass per micro-batch gives ([`Trainer::eval_losses`] is `-log p`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use kiln_chat::format::Codec;
use kiln_chat::tasks::Score;
use kiln_chat::tools::runtime::{
    call_output, CallStep, CallTracker, Tool, ToolRunner, ToolTokens, TurnLimits,
};
use kiln_engine::{
    load_checkpoint, resolve_checkpoint, sample_token, softmax_entropy, Backend, BatchDecoder,
    BatchedDecoder, CpuBackend, Model, OptimizerConfig, Rng, SamplingParams, Trainer,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::loss::{group_advantages, pg_loss, LossConfig, LossKind, PgBatch};
use crate::checkpoint::save_step;
use crate::device::{with_backend, DeviceSpec, OnBackend, TrainBackend};
use crate::error::TrainError;
use crate::metrics::MetricsLog;
use crate::plot::{write_svg, Series};

/// Everything that defines an RL run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RlConfig {
    /// Task name (recorded; the problems come from the caller).
    pub task: String,
    pub steps: usize,
    pub prompts_per_step: usize,
    /// Samples per prompt (≥ 2: advantages are relative to the group).
    pub group: usize,
    pub max_new: usize,
    pub temperature: f32,
    pub loss: LossConfig,
    /// Divide advantages by the group's std.
    pub std_scale: bool,
    /// Optimizer steps per rollout batch (> 1 reuses it: the clipped ratio matters).
    pub updates: usize,
    /// Rows per forward/backward (gradients accumulate over micro-batches).
    pub micro_batch: usize,
    pub optim: OptimizerConfig,
    pub eval_every: usize,
    /// Held-out problems per eval (greedy pass@1).
    pub eval_problems: usize,
    pub ckpt_every: usize,
    pub seed: u64,
    pub threads: usize,
    pub time_limit_s: Option<f64>,
    /// The tokenizer the model uses, recorded so `kiln chat --model <out>` finds it.
    pub tokenizer: Option<String>,
    /// Reward for an answer in the task's expected place, right or wrong (added to 1 for a
    /// correct one). Runs recorded before it existed resume with the old constant.
    #[serde(default = "default_format_reward")]
    pub format_reward: f32,
    /// Most rounds of `prompts_per_step` prompts a step draws to find that many groups whose
    /// rewards differ (DAPO's dynamic sampling); groups with equal rewards are never trained on.
    #[serde(default = "one")]
    pub rollout_rounds: usize,
    /// The tools offered in the prompts and run in rollouts (`code`, `search`; recorded, set by
    /// [`run_job`](super::run_job) from the job).
    #[serde(default)]
    pub tools: Vec<String>,
    /// DAPO's overlong filtering: a response cut at `max_new` (no stop token) is left out of the
    /// loss, since its reward says little about the reply it would have ended with. Its reward
    /// still counts in its group's advantages.
    #[serde(default)]
    pub overlong_filter: bool,
}

fn one() -> usize {
    1
}

fn default_format_reward() -> f32 {
    kiln_chat::tasks::FORMAT_REWARD
}

impl Default for RlConfig {
    fn default() -> Self {
        RlConfig {
            task: "arith".into(),
            steps: 100,
            prompts_per_step: 4,
            group: 8,
            max_new: 128,
            temperature: 1.0,
            loss: LossConfig {
                kind: LossKind::Dapo,
                clip: 0.2,
                kl: 0.0,
                max_new: 128,
            },
            std_scale: true,
            updates: 1,
            micro_batch: 8,
            optim: OptimizerConfig {
                lr: 1e-5,
                weight_decay: 0.0,
                ..Default::default()
            },
            eval_every: 20,
            eval_problems: 50,
            ckpt_every: 50,
            seed: 1,
            threads: 2,
            time_limit_s: None,
            tokenizer: None,
            format_reward: kiln_chat::tasks::FORMAT_REWARD,
            rollout_rounds: 4,
            tools: Vec::new(),
            overlong_filter: false,
        }
    }
}

/// How a reply (response token ids, stop token excluded) scores.
pub type Scorer = Arc<dyn Fn(&[u32]) -> Score + Send + Sync>;

/// What a [`StepHook`] asks of the loop after a step.
#[derive(Debug, Default)]
pub struct HookOut {
    /// Records for `metrics.jsonl`.
    pub log: Vec<serde_json::Value>,
    /// Stop the run (after this step's checkpoint), for this reason.
    pub stop: Option<String>,
}

/// Called by the loop around its updates: RLHF's hack guard lives behind it (evaluate a held-out
/// judge, keep the best checkpoint, stop). [`NoHook`] does nothing.
pub trait StepHook {
    /// Before the first step of a fresh run (the starting policy's baseline).
    fn before<B: Backend>(&mut self, tr: &Trainer<B>) -> Result<HookOut, TrainError>;
    /// After step `step`, whose metrics record is `rec`.
    fn after_step<B: Backend>(
        &mut self,
        step: u64,
        tr: &Trainer<B>,
        rec: &serde_json::Value,
    ) -> Result<HookOut, TrainError>;
}

/// The hook of plain RL: nothing.
pub struct NoHook;

impl StepHook for NoHook {
    fn before<B: Backend>(&mut self, _: &Trainer<B>) -> Result<HookOut, TrainError> {
        Ok(HookOut::default())
    }
    fn after_step<B: Backend>(
        &mut self,
        _: u64,
        _: &Trainer<B>,
        _: &serde_json::Value,
    ) -> Result<HookOut, TrainError> {
        Ok(HookOut::default())
    }
}

/// One problem as the loop sees it: the rendered prompt (ending at `<|assistant_start|>`) and its
/// verifier.
#[derive(Clone)]
pub struct RlItem {
    pub prompt: Vec<u32>,
    pub score: Scorer,
}

/// Training problems (used in order, cycling) and held-out ones (evals only).
pub struct RlData {
    pub train: Vec<RlItem>,
    pub held_out: Vec<RlItem>,
    /// Ids that end a response (`<|assistant_end|>` first; the rest also stop it).
    pub stop: Vec<u32>,
    /// Tools the policy may call in its rollouts and evals (`None`: no tools).
    pub tools: Option<RlTools>,
}

/// Tools inside rollouts, as the tool runtime of `kiln chat` runs them
/// ([`kiln_chat::tools::runtime`]): when a row closes a call, the tool runs on the call's text and
/// `<|output_start|> output <|output_end|>` joins the row as forced tokens (its cache extended by
/// them), which the loss leaves out; then the row samples on. Per response: at most
/// `limits.max_calls` calls (later ones read an error), outputs cut at `limits.max_output_chars`;
/// forced tokens count against `--max-new` like sampled ones.
pub struct RlTools {
    pub tokens: ToolTokens,
    pub codec: Arc<dyn Codec + Send + Sync>,
    /// Runs a call: `(tool, input) → output`. Shared, since the calls closed in one decode step
    /// run in parallel.
    pub run: Box<ToolFn>,
    pub limits: TurnLimits,
}

/// A tool call as a shared function: `(tool, input) → what the model reads`.
pub type ToolFn = dyn Fn(Tool, &str) -> String + Send + Sync;

/// What [`rollouts`] sampled: per row the response ids (stop token included) and which of them
/// a tool forced, and the summed entropy (nats) at the sampled positions.
pub struct Rollouts {
    pub ids: Vec<Vec<u32>>,
    pub forced: Vec<Vec<bool>>,
    pub entropy: f64,
}

/// Runs of forced ids: the tool outputs in a response.
fn forced_runs(forced: &[bool]) -> usize {
    forced
        .iter()
        .enumerate()
        .filter(|&(i, &f)| f && (i == 0 || !forced[i - 1]))
        .count()
}

/// The ids the policy wrote (tool outputs left out): what a verifier reads.
fn own_ids(ids: &[u32], forced: &[bool]) -> Vec<u32> {
    ids.iter()
        .zip(forced)
        .filter(|(_, &f)| !f)
        .map(|(&id, _)| id)
        .collect()
}

/// What an RL run did.
#[derive(Clone, Debug, Serialize)]
pub struct RlSummary {
    pub step: u64,
    /// Held-out pass@1 before the first step (a fresh run) and at the end.
    pub pass1_start: Option<f64>,
    pub pass1: Option<f64>,
    /// Held-out pass@k (k = the group size, sampled at the rollout temperature), likewise.
    pub pass_k_start: Option<f64>,
    pub pass_k: Option<f64>,
    /// Held-out pass@1 sampled: the share of the k samples that are correct (DeepSeek-R1's
    /// pass@1), likewise. Less noisy than greedy pass@1 on a few problems.
    #[serde(default)]
    pub pass1_sampled_start: Option<f64>,
    #[serde(default)]
    pub pass1_sampled: Option<f64>,
    /// Mean reward of the first and last step of this process.
    pub reward_first: Option<f64>,
    pub reward_last: Option<f64>,
    /// Generated tokens per second in rollouts, and trained tokens per second in updates.
    pub rollout_tok_s: f64,
    pub train_tok_s: f64,
    pub seconds: f64,
    pub last_ckpt: PathBuf,
    /// Why a [`StepHook`] stopped the run early, if it did.
    pub stopped: Option<String>,
}

/// One sampled response.
struct Sample {
    /// Index of its prompt in the step.
    prompt: usize,
    /// Cut at the length limit (or by a tool output's budget) before a stop token.
    truncated: bool,
    tokens: Vec<u32>,
    /// Parallel to `tokens`: forced by a tool (no loss).
    forced: Vec<bool>,
    reward: f32,
    score: Score,
}

/// Most rows one rollout decoder holds: enough to fill the matmuls (the weights are read once per
/// step for all rows), few enough that the caches of long prompts stay small.
const MAX_ROWS: usize = 64;

/// Samples `group` responses to each of `prompts` (row `j * group + g` is sample `g` of prompt
/// `j`): one [`BatchedDecoder`] for as many prompts as fit in [`MAX_ROWS`] rows, one prefill per
/// prompt forked to its group, then one batched step per token over every unfinished row (a row
/// that emits a stop token leaves the batch). Row `r` samples with its own generator seeded by
/// `seeds[j]` and `g`, so the draws do not depend on how rows are batched. With `tools`, a row
/// that closes a call is extended by the tool's output ([`RlTools`]) instead of stepping. The
/// entropy is summed only if `entropy`.
#[allow(clippy::too_many_arguments)]
pub fn rollouts<B: Backend>(
    model: &Model<B>,
    prompts: &[&[u32]],
    seeds: &[u64],
    group: usize,
    max_new: usize,
    sp: &SamplingParams,
    stop: &[u32],
    entropy: bool,
    tools: Option<&RlTools>,
) -> Result<Rollouts, TrainError> {
    assert_eq!(prompts.len(), seeds.len(), "one seed per prompt");
    let mut all = Rollouts {
        ids: Vec::with_capacity(prompts.len() * group),
        forced: Vec::with_capacity(prompts.len() * group),
        entropy: 0.0,
    };
    let per_chunk = (MAX_ROWS / group.max(1)).max(1);
    for (ps, ss) in prompts.chunks(per_chunk).zip(seeds.chunks(per_chunk)) {
        let r = rollout_chunk(model, ps, ss, group, max_new, sp, stop, entropy, tools)?;
        all.ids.extend(r.ids);
        all.forced.extend(r.forced);
        all.entropy += r.entropy;
    }
    Ok(all)
}

#[allow(clippy::too_many_arguments)]
fn rollout_chunk<B: Backend>(
    model: &Model<B>,
    prompts: &[&[u32]],
    seeds: &[u64],
    group: usize,
    max_new: usize,
    sp: &SamplingParams,
    stop: &[u32],
    want_entropy: bool,
    tools: Option<&RlTools>,
) -> Result<Rollouts, TrainError> {
    let rows = prompts.len() * group;
    let vs = model.cfg.vocab_size;
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut dec = BatchedDecoder::new(model, rows, longest + max_new)?;
    // logits[r]: row r's next-token logits.
    let mut logits = vec![0f32; rows * vs];
    for (j, p) in prompts.iter().enumerate() {
        let first = dec.prefill(j * group, p)?;
        for g in 0..group {
            if g > 0 {
                dec.fork(j * group, j * group + g)?;
            }
            logits[(j * group + g) * vs..(j * group + g + 1) * vs].copy_from_slice(&first);
        }
    }
    let mut rngs: Vec<Rng> = (0..rows)
        .map(|r| {
            Rng::new(
                seeds[r / group] ^ ((r % group) as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            )
        })
        .collect();
    let mut out = Rollouts {
        ids: vec![Vec::new(); rows],
        forced: vec![Vec::new(); rows],
        entropy: 0.0,
    };
    let mut done = vec![false; rows];
    let mut open = vec![CallTracker::default(); rows];
    let mut calls = vec![0usize; rows];
    // Calls closed at this step: (row, tool, input, calls the row made before).
    let mut pending: Vec<(usize, Tool, String, usize)> = Vec::new();
    let mut stepped = Vec::new();
    loop {
        // Sample every unfinished row in parallel (each row owns its generator).
        let mut live: Vec<(usize, &mut Rng)> = rngs
            .iter_mut()
            .enumerate()
            .filter(|(r, _)| !done[*r])
            .collect();
        if live.is_empty() {
            break;
        }
        let picks: Vec<(usize, u32, f64)> = live
            .par_iter_mut()
            .map(|(r, rng)| {
                let row = &logits[*r * vs..(*r + 1) * vs];
                let e = if want_entropy {
                    softmax_entropy(row)
                } else {
                    0.0
                };
                (*r, sample_token(row, sp, rng), e)
            })
            .collect();
        let (mut slots, mut next) = (Vec::new(), Vec::new());
        for (r, tok, e) in picks {
            out.entropy += e;
            out.ids[r].push(tok);
            out.forced[r].push(false);
            done[r] = stop.contains(&tok) || out.ids[r].len() >= max_new;
            if done[r] {
                continue;
            }
            let call = match tools {
                Some(t) => match open[r].push(&t.tokens, &out.ids[r]) {
                    CallStep::Closed(tool, text) => {
                        Some((tool, t.codec.decode_text(&out.ids[r][text])))
                    }
                    _ => None,
                },
                None => None,
            };
            match call {
                None => {
                    slots.push(r);
                    next.push(tok);
                }
                Some((tool, input)) => {
                    calls[r] += 1;
                    pending.push((r, tool, input, calls[r] - 1));
                }
            }
        }
        if let Some(t) = tools.filter(|_| !pending.is_empty()) {
            // The calls closed at this step run in parallel (a sandboxed program takes
            // milliseconds, as long as many decode steps).
            let outputs: Vec<Vec<u32>> = pending
                .par_iter()
                .map(|(_, tool, input, made)| {
                    let output =
                        call_output(&mut FnRunner(&*t.run), *tool, input, *made, &t.limits);
                    t.tokens.output_ids(&*t.codec, &output)
                })
                .collect();
            for ((r, ..), mut f) in pending.drain(..).zip(outputs) {
                // The closing id and the output join the row's cache in one pass; what does not
                // fit the budget is cut and ends the row.
                let room = max_new - out.ids[r].len();
                if f.len() >= room {
                    f.truncate(room);
                    done[r] = true;
                }
                out.ids[r].extend(&f);
                out.forced[r].extend(std::iter::repeat_n(true, f.len()));
                if !done[r] {
                    let j = r / group;
                    let history: Vec<u32> = prompts[j].iter().chain(&out.ids[r]).copied().collect();
                    let keep = prompts[j].len() + out.ids[r].len() - f.len() - 1;
                    let l = dec.prefill_reusing(r, keep, &history)?;
                    logits[r * vs..(r + 1) * vs].copy_from_slice(&l);
                }
            }
        }
        if slots.is_empty() {
            continue;
        }
        dec.step_into(&slots, &next, &mut stepped)?;
        for (i, &r) in slots.iter().enumerate() {
            logits[r * vs..(r + 1) * vs].copy_from_slice(&stepped[i * vs..(i + 1) * vs]);
        }
    }
    Ok(out)
}

/// A shared tool function as the runtime's [`ToolRunner`].
struct FnRunner<'a>(&'a ToolFn);

impl ToolRunner for FnRunner<'_> {
    fn run(&mut self, tool: Tool, input: &str) -> String {
        (self.0)(tool, input)
    }
}

/// Held-out scores: greedy pass@1, its format rate, pass@k (any of `k` samples at the rollout
/// temperature correct; one prefill and `k` forked rows per problem, a fixed seed so evals compare)
/// and sampled pass@1 (the share of those samples that are correct).
struct Eval {
    pass1: f64,
    format: f64,
    pass_k: f64,
    pass1_sampled: f64,
}

fn evaluate<B: Backend>(
    model: &Model<B>,
    items: &[RlItem],
    max_new: usize,
    stop: &[u32],
    k: usize,
    sp: &SamplingParams,
    tools: Option<&RlTools>,
) -> Result<Eval, TrainError> {
    let greedy = SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    // Every problem in one batched decode: greedy once, then k samples (fixed seeds).
    let prompts: Vec<&[u32]> = items.iter().map(|it| it.prompt.as_slice()).collect();
    let seeds: Vec<u64> = (0..items.len() as u64).collect();
    let greedy_out = rollouts(
        model, &prompts, &seeds, 1, max_new, &greedy, stop, false, tools,
    )?;
    let sampled = rollouts(model, &prompts, &seeds, k, max_new, sp, stop, false, tools)?;
    let score = |it: &RlItem, out: &Rollouts, row: usize| {
        (it.score)(strip_stop(&own_ids(&out.ids[row], &out.forced[row]), stop))
    };
    let (mut ok, mut fmt, mut any, mut samples_ok) = (0usize, 0usize, 0usize, 0usize);
    for (j, it) in items.iter().enumerate() {
        let s = score(it, &greedy_out, j);
        ok += usize::from(s.correct);
        fmt += usize::from(s.formatted);
        let right = (j * k..(j + 1) * k)
            .filter(|&row| score(it, &sampled, row).correct)
            .count();
        any += usize::from(right > 0);
        samples_ok += right;
    }
    let n = items.len().max(1) as f64;
    Ok(Eval {
        pass1: ok as f64 / n,
        format: fmt as f64 / n,
        pass_k: any as f64 / n,
        pass1_sampled: samples_ok as f64 / (n * k.max(1) as f64),
    })
}

pub(crate) fn strip_stop<'a>(toks: &'a [u32], stop: &[u32]) -> &'a [u32] {
    match toks.last() {
        Some(t) if stop.contains(t) => &toks[..toks.len() - 1],
        _ => toks,
    }
}

/// Run (or resume, when `resume` and `<out>/ckpt/latest` exists) RL from the checkpoint `model`
/// on the cpu backend.
pub fn rl(
    cfg: &RlConfig,
    model: &Path,
    data: &RlData,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<RlSummary, TrainError> {
    rl_with(
        Arc::new(CpuBackend::new(cfg.threads)),
        cfg,
        model,
        data,
        out,
        resume,
        progress,
    )
}

/// [`rl`] on the device `spec` names.
pub fn rl_on(
    spec: &DeviceSpec,
    cfg: &RlConfig,
    model: &Path,
    data: &RlData,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<RlSummary, TrainError> {
    rl_on_hooked(spec, cfg, model, data, out, resume, progress, &mut NoHook)
}

/// [`rl_on`] with a [`StepHook`].
#[allow(clippy::too_many_arguments)]
pub fn rl_on_hooked<H: StepHook>(
    spec: &DeviceSpec,
    cfg: &RlConfig,
    model: &Path,
    data: &RlData,
    out: &Path,
    resume: bool,
    progress: bool,
    hook: &mut H,
) -> Result<RlSummary, TrainError> {
    struct Run<'a, H> {
        hook: &'a mut H,
        cfg: &'a RlConfig,
        model: &'a Path,
        data: &'a RlData,
        out: &'a Path,
        resume: bool,
        progress: bool,
    }
    impl<H: StepHook> OnBackend for Run<'_, H> {
        type Output = RlSummary;
        fn run<B: TrainBackend>(self, be: Arc<B>) -> Result<RlSummary, TrainError> {
            rl_hooked(
                be,
                self.cfg,
                self.model,
                self.data,
                self.out,
                self.resume,
                self.progress,
                self.hook,
            )
        }
    }
    let run = Run {
        hook,
        cfg,
        model,
        data,
        out,
        resume,
        progress,
    };
    with_backend(spec, cfg.threads, run)
}

fn check_config(cfg: &RlConfig, data: &RlData) -> Result<(), TrainError> {
    if cfg.group < 2 {
        return Err(TrainError::Config(format!(
            "--group {}: group-relative advantages need at least 2 samples per prompt (a group of 1 has advantage 0 and learns nothing)",
            cfg.group
        )));
    }
    if cfg.steps == 0
        || cfg.prompts_per_step == 0
        || cfg.max_new == 0
        || cfg.updates == 0
        || cfg.rollout_rounds == 0
    {
        return Err(TrainError::Config(
            "steps, prompts per step, max new tokens, updates and rollout rounds must be positive"
                .into(),
        ));
    }
    if cfg.micro_batch == 0 {
        return Err(TrainError::Config("micro batch must be positive".into()));
    }
    if data.train.is_empty() {
        return Err(TrainError::Data("no training problems".into()));
    }
    if data.stop.is_empty() {
        return Err(TrainError::Config("no stop token for responses".into()));
    }
    Ok(())
}

/// [`rl`] on a given backend.
pub fn rl_with<B: TrainBackend>(
    be: Arc<B>,
    cfg: &RlConfig,
    model_path: &Path,
    data: &RlData,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<RlSummary, TrainError> {
    rl_hooked(
        be,
        cfg,
        model_path,
        data,
        out,
        resume,
        progress,
        &mut NoHook,
    )
}

/// [`rl_with`] with a [`StepHook`] called before the first step and after every step.
#[allow(clippy::too_many_arguments)]
pub fn rl_hooked<B: TrainBackend, H: StepHook>(
    be: Arc<B>,
    cfg: &RlConfig,
    model_path: &Path,
    data: &RlData,
    out: &Path,
    resume: bool,
    progress: bool,
    hook: &mut H,
) -> Result<RlSummary, TrainError> {
    check_config(cfg, data)?;
    let root = out.join("ckpt");
    std::fs::create_dir_all(&root).map_err(|e| TrainError::io(&root, e))?;
    let resume_dir = if resume && root.join("latest").exists() {
        Some(resolve_checkpoint(out)?)
    } else {
        None
    };
    let base_dir = resolve_checkpoint(model_path)?;
    // Where the stream of training prompts stands (rounds of dynamic sampling move it on).
    let mut cursor = 0u64;
    let (ck, mut step) = match &resume_dir {
        Some(dir) => {
            let ck = load_checkpoint(dir)?;
            if ck.train.get("kind").and_then(|k| k.as_str()) != Some("rl") {
                return Err(TrainError::Config(format!(
                    "{}: not an RL checkpoint; cannot resume from it",
                    dir.display()
                )));
            }
            let step = ck.train["step"].as_u64().unwrap_or(0);
            // Checkpoints from before dynamic sampling drew one round per step.
            cursor = ck.train["prompt_cursor"]
                .as_u64()
                .unwrap_or(step * cfg.prompts_per_step as u64);
            tracing::info!("resuming RL from {} (step {step})", dir.display());
            (ck, step)
        }
        None => (load_checkpoint(&base_dir)?, 0),
    };
    let mcfg = ck.config.clone();
    let longest = data
        .train
        .iter()
        .chain(&data.held_out)
        .map(|i| i.prompt.len())
        .max()
        .unwrap_or(0);
    let t = longest + cfg.max_new;
    if t > mcfg.context {
        return Err(TrainError::Config(format!(
            "the longest prompt ({longest} tokens) + --max-new {} exceeds the model's context {}",
            cfg.max_new, mcfg.context
        )));
    }
    if let Some(bad) = data
        .train
        .iter()
        .chain(&data.held_out)
        .flat_map(|i| i.prompt.iter())
        .chain(&data.stop)
        .find(|&&id| id as usize >= mcfg.vocab_size)
    {
        return Err(TrainError::Data(format!(
            "token id {bad} ≥ the model's vocabulary of {}: the tokenizer does not belong to this checkpoint",
            mcfg.vocab_size
        )));
    }
    let rows = cfg.prompts_per_step * cfg.group;
    let mb = cfg.micro_batch.min(rows);
    let model: Model<B> = ck.into_model(be.clone())?;
    let mut tr = Trainer::new(model, mb, t, cfg.optim.clone())?;
    if resume_dir.is_some() {
        if let Some(o) = &ck.optimizer {
            tr.opt.set_state_host(&be, &o.m, &o.v, o.step)?;
        }
    }
    drop(ck);
    // The frozen reference for the KL term: the starting model, forward only.
    let mut reference = if cfg.loss.kl > 0.0 {
        let m: Model<B> = load_checkpoint(&base_dir)?.into_model(be.clone())?;
        Some(Trainer::new(m, mb, t, cfg.optim.clone())?)
    } else {
        None
    };

    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = MetricsLog::open(&metrics_path, resume_dir.as_ref().map(|_| step))?;
    let eval_items = &data.held_out[..cfg.eval_problems.min(data.held_out.len())];
    let sp = SamplingParams {
        temperature: cfg.temperature,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
    };
    let (mut pass1_start, mut pass1, mut pass_k_start, mut pass_k) = (None, None, None, None);
    let (mut pass1_sampled_start, mut pass1_sampled) = (None, None);
    if step == 0 && !eval_items.is_empty() {
        let e = evaluate(
            &tr.model,
            eval_items,
            cfg.max_new,
            &data.stop,
            cfg.group,
            &sp,
            data.tools.as_ref(),
        )?;
        tracing::info!(
            "RL held-out pass@1 before training: {:.3} (format {:.3}, pass@{} {:.3})",
            e.pass1,
            e.format,
            cfg.group,
            e.pass_k
        );
        metrics.write(&json!({"event": "eval", "step": 0, "pass1": e.pass1, "format": e.format, "pass_k": e.pass_k, "pass1_sampled": e.pass1_sampled, "k": cfg.group}))?;
        (pass1_start, pass1) = (Some(e.pass1), Some(e.pass1));
        (pass_k_start, pass_k) = (Some(e.pass_k), Some(e.pass_k));
        (pass1_sampled_start, pass1_sampled) = (Some(e.pass1_sampled), Some(e.pass1_sampled));
    }
    metrics.write(&json!({"event": "start", "step": step, "train_problems": data.train.len(), "held_out": data.held_out.len(), "config": cfg}))?;
    if step == 0 {
        for r in hook.before(&tr)?.log {
            metrics.write(&r)?;
        }
    }
    let mut stopped = None;

    let bar = if progress {
        ProgressBar::new(cfg.steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "rl {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(step);
    let save = |tr: &Trainer<B>, step: u64, cursor: u64, pass1: Option<f64>| {
        let state = json!({"kind": "rl", "step": step, "prompt_cursor": cursor, "pass1": pass1,
            "config": cfg, "base": base_dir});
        save_step(&root, step, tr, &state, 2)
    };
    let mut last_ckpt = resume_dir.clone().unwrap_or_default();
    let start = Instant::now();
    let (mut gen_tokens, mut gen_s, mut train_tokens, mut train_s) = (0f64, 0f64, 0f64, 0f64);
    let (mut reward_first, mut reward_last) = (None, None);
    let bt = mb * t;
    let (mut x, mut y, mut w) = (vec![0u32; bt], vec![0u32; bt], vec![0f32; bt]);
    let mut curves: Vec<[f64; 3]> = Vec::new();
    // (step, greedy pass@1, sampled pass@1) per held-out eval
    let mut evals: Vec<[f64; 3]> = pass1_start
        .zip(pass1_sampled_start)
        .map(|(p, ps)| [0.0, p, ps])
        .into_iter()
        .collect();
    while (step as usize) < cfg.steps {
        // ---- rollouts ----
        // Rounds of `prompts_per_step` prompts until that many groups carry a signal or
        // `rollout_rounds` rounds are spent (DAPO's dynamic sampling). A group whose rewards are
        // all equal has advantage 0 on every sample: under a weak policy most groups are all
        // wrong, and updating on them costs a forward and backward each for no gradient.
        let t0 = Instant::now();
        let mut samples: Vec<Sample> = Vec::with_capacity(rows);
        let mut rewards_all: Vec<f32> = Vec::new();
        let (mut n_gen_all, mut correct_all, mut formatted_all) = (0usize, 0usize, 0usize);
        let mut truncated_all = 0usize;
        // Tool outputs forced into this step's rollouts (one per call the policy closed).
        let mut tool_calls = 0usize;
        let mut entropy = 0f64;
        let mut rounds = 0;
        let mut informative = 0;
        while rounds < cfg.rollout_rounds && informative < cfg.prompts_per_step {
            rounds += 1;
            // Prompts come from a cursor over the training problems; seeds from the prompt's
            // position in that stream, so a resumed run draws what the uninterrupted one would.
            let ks: Vec<u64> = (0..cfg.prompts_per_step as u64)
                .map(|j| cursor + j)
                .collect();
            cursor += cfg.prompts_per_step as u64;
            let prompts: Vec<&[u32]> = ks
                .iter()
                .map(|&k| data.train[k as usize % data.train.len()].prompt.as_slice())
                .collect();
            let seeds: Vec<u64> = ks
                .iter()
                .map(|&k| {
                    cfg.seed ^ (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xBF58_476D_1CE4_E5B9
                })
                .collect();
            let outs = rollouts(
                &tr.model,
                &prompts,
                &seeds,
                cfg.group,
                cfg.max_new,
                &sp,
                &data.stop,
                true,
                data.tools.as_ref(),
            )?;
            entropy += outs.entropy;
            for (j, rows) in (0..outs.ids.len())
                .collect::<Vec<_>>()
                .chunks(cfg.group)
                .enumerate()
            {
                let k = ks[j] as usize % data.train.len();
                let scored: Vec<Sample> = rows
                    .iter()
                    .map(|&row| {
                        let (tokens, forced) = (&outs.ids[row], &outs.forced[row]);
                        let own = own_ids(tokens, forced);
                        let score = (data.train[k].score)(strip_stop(&own, &data.stop));
                        Sample {
                            prompt: k,
                            truncated: tokens.last().is_none_or(|t| !data.stop.contains(t)),
                            tokens: tokens.clone(),
                            forced: forced.clone(),
                            reward: score.reward,
                            score,
                        }
                    })
                    .collect();
                if let Some(bad) = scored.iter().find(|s| !s.reward.is_finite()) {
                    return Err(TrainError::Data(format!(
                        "the verifier returned a reward of {} at step {}; rewards must be finite",
                        bad.reward,
                        step + 1
                    )));
                }
                rewards_all.extend(scored.iter().map(|s| s.reward));
                n_gen_all += scored.iter().map(|s| s.tokens.len()).sum::<usize>();
                correct_all += scored.iter().filter(|s| s.score.correct).count();
                tool_calls += scored.iter().map(|s| forced_runs(&s.forced)).sum::<usize>();
                formatted_all += scored.iter().filter(|s| s.score.formatted).count();
                truncated_all += scored.iter().filter(|s| s.truncated).count();
                let signal = scored.iter().any(|s| s.reward != scored[0].reward);
                if signal && informative < cfg.prompts_per_step {
                    informative += 1;
                    samples.extend(scored);
                }
            }
        }
        if !entropy.is_finite() {
            // Non-finite logits: the last update broke the weights (a step with no informative
            // group makes no update, so the loss check below may never see it).
            return Err(TrainError::NonFinite {
                what: "the policy's entropy",
                step: step + 1,
                loss: entropy as f32,
                last_ckpt: last_ckpt.display().to_string(),
            });
        }
        tr.model.backend.synchronize();
        let rollout_s = t0.elapsed().as_secs_f64();
        gen_tokens += n_gen_all as f64;
        gen_s += rollout_s;
        let rewards: Vec<f32> = samples.iter().map(|s| s.reward).collect();
        let adv = group_advantages(&rewards, cfg.group, cfg.std_scale);
        let lens: Vec<usize> = samples.iter().map(|s| s.tokens.len()).collect();
        // The tokens the loss counts: those the policy sampled (not a tool's output), and with
        // overlong filtering none of a truncated response's.
        let sampled_mask: Vec<bool> = samples
            .iter()
            .flat_map(|s| {
                let kept = !(cfg.overlong_filter && s.truncated);
                s.forced.iter().map(move |&f| kept && !f)
            })
            .collect();
        let n_gen: usize = lens.iter().sum();
        let rows = samples.len();

        // ---- update ----
        let t1 = Instant::now();
        let micro: Vec<std::ops::Range<usize>> = (0..rows.div_ceil(mb))
            .map(|i| i * mb..((i + 1) * mb).min(rows))
            .collect();
        // Fill x/y for the micro-batch `r`; returns, per sample, where its response targets sit.
        let fill = |r: &std::ops::Range<usize>, x: &mut [u32], y: &mut [u32]| {
            x.fill(data.stop[0]);
            y.fill(data.stop[0]);
            for (row, s) in samples[r.clone()].iter().enumerate() {
                let p = &data.train[s.prompt].prompt;
                let ids: Vec<u32> = p.iter().chain(&s.tokens).copied().collect();
                let n = ids.len() - 1;
                x[row * t..row * t + n].copy_from_slice(&ids[..n]);
                y[row * t..row * t + n].copy_from_slice(&ids[1..]);
            }
        };
        // Response target positions of sample `i` in its row: from prompt_len - 1, lens[i] of them.
        let resp_start = |i: usize| data.train[samples[i].prompt].prompt.len() - 1;
        let need_logp = cfg.loss.kl > 0.0 || cfg.updates > 1;
        let logp_of =
            |tr: &mut Trainer<B>, x: &mut [u32], y: &mut [u32]| -> Result<Vec<f32>, TrainError> {
                let mut lp = Vec::with_capacity(n_gen);
                for r in &micro {
                    fill(r, x, y);
                    let ce = tr.eval_losses(x, y)?;
                    for (row, i) in r.clone().enumerate() {
                        let s0 = row * t + resp_start(i);
                        lp.extend(ce[s0..s0 + lens[i]].iter().map(|l| -l));
                    }
                }
                Ok(lp)
            };
        let ref_logp = match reference.as_mut() {
            Some(rt) => Some(logp_of(rt, &mut x, &mut y)?),
            None => None,
        };
        let mut old_logp: Option<Vec<f32>> = None;
        let (mut loss_v, mut kl_v, mut clip_v, mut gn) = (0f64, 0f64, 0f64, 0f32);
        // A step with no informative group makes no update (there is no gradient to take).
        let updates = if rows == 0 { 0 } else { cfg.updates };
        for u in 0..updates {
            let cur = if need_logp {
                logp_of(&mut tr, &mut x, &mut y)?
            } else {
                // On-policy without KL the weights do not depend on the log-probs.
                vec![0.0; n_gen]
            };
            let pl = pg_loss(
                &PgBatch {
                    logp: &cur,
                    old_logp: if u == 0 { None } else { old_logp.as_deref() },
                    ref_logp: ref_logp.as_deref(),
                    adv: &adv,
                    lens: &lens,
                    sampled: Some(&sampled_mask),
                },
                &cfg.loss,
            );
            if u == 0 && cfg.updates > 1 {
                old_logp = Some(cur);
            }
            tr.zero_grad();
            let mut k = 0;
            let offsets: Vec<usize> = lens
                .iter()
                .scan(0, |acc, &l| {
                    let o = *acc;
                    *acc += l;
                    Some(o)
                })
                .collect();
            for r in &micro {
                fill(r, &mut x, &mut y);
                w.fill(0.0);
                for (row, i) in r.clone().enumerate() {
                    let s0 = row * t + resp_start(i);
                    w[s0..s0 + lens[i]]
                        .copy_from_slice(&pl.weights[offsets[i]..offsets[i] + lens[i]]);
                    k += lens[i];
                }
                // The weights already hold the normalisation: norm 1.
                tr.forward_backward(&x, &y, Some(&w), 1.0)?;
            }
            debug_assert_eq!(k, n_gen);
            gn = tr.clip_grad(tr.opt.cfg.grad_clip);
            if !(pl.loss.is_finite() && gn.is_finite()) {
                return Err(TrainError::NonFinite {
                    what: "loss",
                    step: step + 1,
                    loss: if pl.loss.is_finite() {
                        gn
                    } else {
                        pl.loss as f32
                    },
                    last_ckpt: last_ckpt.display().to_string(),
                });
            }
            tr.optimizer_step(1.0);
            (loss_v, kl_v, clip_v) = (pl.loss, pl.kl, pl.clip_frac);
        }
        tr.model.backend.synchronize();
        let update_s = t1.elapsed().as_secs_f64();
        train_tokens += (updates * micro.len() * bt) as f64;
        train_s += update_s;
        step += 1;

        // The step's figures cover every rollout drawn, kept for the update or not.
        let n = rewards_all.len() as f64;
        let mean = rewards_all.iter().map(|&r| r as f64).sum::<f64>() / n;
        let std = (rewards_all
            .iter()
            .map(|&r| (r as f64 - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        let correct = correct_all as f64 / n;
        let formatted = formatted_all as f64 / n;
        let len_mean = n_gen_all as f64 / n;
        reward_first.get_or_insert(mean);
        reward_last = Some(mean);
        curves.push([step as f64, mean, len_mean]);
        let rec = json!({"step": step, "reward_mean": mean, "reward_std": std, "correct": correct,
            "format": formatted, "len_mean": len_mean, "truncated": truncated_all as f64 / n, "entropy": entropy / (n_gen_all.max(1) as f64),
            "rollout_rounds": rounds, "groups_updated": informative, "tool_calls": tool_calls,
            // No update, no loss: null rather than a 0 that reads as a measured value.
            "loss": (updates > 0).then_some(loss_v), "kl": (updates > 0).then_some(kl_v),
            "clip_frac": (updates > 0).then_some(clip_v), "grad_norm": (updates > 0).then_some(gn),
            "rollout_s": rollout_s, "update_s": update_s, "gen_tok_per_s": n_gen_all as f64 / rollout_s.max(1e-9),
            "elapsed_s": start.elapsed().as_secs_f64()});
        metrics.write(&rec)?;
        let h = hook.after_step(step, &tr, &rec)?;
        for r in &h.log {
            metrics.write(r)?;
        }
        if let Some(why) = h.stop {
            tracing::info!("RL stopped at step {step}: {why}");
            stopped = Some(why);
        }
        let out_of_time = cfg
            .time_limit_s
            .is_some_and(|lim| start.elapsed().as_secs_f64() >= lim);
        let last = step as usize == cfg.steps || out_of_time || stopped.is_some();
        if !eval_items.is_empty()
            && ((cfg.eval_every > 0 && (step as usize).is_multiple_of(cfg.eval_every)) || last)
        {
            let e = evaluate(
                &tr.model,
                eval_items,
                cfg.max_new,
                &data.stop,
                cfg.group,
                &sp,
                data.tools.as_ref(),
            )?;
            metrics.write(&json!({"event": "eval", "step": step, "pass1": e.pass1, "format": e.format, "pass_k": e.pass_k, "pass1_sampled": e.pass1_sampled, "k": cfg.group}))?;
            (pass1, pass_k) = (Some(e.pass1), Some(e.pass_k));
            pass1_sampled = Some(e.pass1_sampled);
            evals.push([step as f64, e.pass1, e.pass1_sampled]);
        }
        if last || (cfg.eval_every > 0 && (step as usize).is_multiple_of(cfg.eval_every)) {
            plot(&out.join("rl.svg"), &curves, &evals)?;
        }
        bar.set_position(step);
        bar.set_message(format!(
            "reward {mean:.3} len {len_mean:.0}{}",
            pass1.map(|p| format!(" pass@1 {p:.3}")).unwrap_or_default()
        ));
        if last || (cfg.ckpt_every > 0 && (step as usize).is_multiple_of(cfg.ckpt_every)) {
            last_ckpt = save(&tr, step, cursor, pass1)?;
        }
        if out_of_time {
            tracing::info!("RL time limit reached at step {step}");
            break;
        }
        if stopped.is_some() {
            break;
        }
    }
    bar.finish_and_clear();
    if last_ckpt.as_os_str().is_empty() {
        last_ckpt = crate::checkpoint::latest(&root).unwrap_or_default();
    }
    Ok(RlSummary {
        step,
        pass1_start,
        pass1,
        pass_k_start,
        pass_k,
        pass1_sampled_start,
        pass1_sampled,
        reward_first,
        reward_last,
        rollout_tok_s: gen_tokens / gen_s.max(1e-9),
        train_tok_s: train_tokens / train_s.max(1e-9),
        seconds: start.elapsed().as_secs_f64(),
        last_ckpt,
        stopped,
    })
}

/// The R1 curves: mean reward and response length per step; held-out pass@1 per eval, sampled
/// (DeepSeek-R1's pass@1: the mean over samples at the rollout temperature) and greedy (this
/// process's steps; the full history is in metrics.jsonl).
fn plot(path: &Path, curves: &[[f64; 3]], evals: &[[f64; 3]]) -> Result<(), TrainError> {
    let reward: Vec<(f64, f64)> = curves.iter().map(|c| (c[0], c[1])).collect();
    let len: Vec<(f64, f64)> = curves.iter().map(|c| (c[0], c[2])).collect();
    let greedy: Vec<(f64, f64)> = evals.iter().map(|e| (e[0], e[1])).collect();
    let sampled: Vec<(f64, f64)> = evals.iter().map(|e| (e[0], e[2])).collect();
    write_svg(
        path,
        &[
            Series {
                title: "mean reward",
                points: &reward,
            },
            Series {
                title: "held-out pass@1, sampled",
                points: &sampled,
            },
            Series {
                title: "held-out pass@1, greedy",
                points: &greedy,
            },
            Series {
                title: "mean response length (tokens)",
                points: &len,
            },
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_engine::{save_checkpoint, ModelConfig};

    const TARGET: u32 = b'A' as u32;
    const END: u32 = 300;

    /// A tiny random model over 301 ids; the "task" rewards the share of response tokens that are
    /// `TARGET` and counts a reply correct when it starts with it.
    fn toy(dir: &Path) -> (PathBuf, RlData) {
        let base = dir.join("base");
        let be = Arc::new(CpuBackend::new(1));
        let model = Model::new(be, ModelConfig::gpt2(301, 1, 2, 32, 32), 3).unwrap();
        save_checkpoint(&base, &model, None, &json!({"step": 0})).unwrap();
        let score: Scorer = Arc::new(|ids: &[u32]| {
            let hits = ids.iter().filter(|&&t| t == TARGET).count();
            Score {
                correct: ids.first() == Some(&TARGET),
                formatted: false,
                reward: hits as f32 / ids.len().max(1) as f32,
            }
        });
        let item = |p: &[u32]| RlItem {
            prompt: p.to_vec(),
            score: score.clone(),
        };
        let data = RlData {
            train: vec![item(&[256, 104, 105, 257]), item(&[256, 111, 107, 257])],
            held_out: vec![item(&[256, 121, 111, 257])],
            stop: vec![END],
            tools: None,
        };
        (base, data)
    }

    fn cfg(steps: usize) -> RlConfig {
        let mut c = RlConfig {
            steps,
            prompts_per_step: 2,
            group: 8,
            max_new: 4,
            eval_every: 10,
            eval_problems: 1,
            ckpt_every: 10,
            threads: 1,
            micro_batch: 8,
            ..Default::default()
        };
        c.loss.max_new = 4;
        c.optim.lr = 1e-2;
        c
    }

    #[test]
    fn a_tiny_model_learns_to_answer_the_rewarded_token() {
        let dir = tempfile::tempdir().unwrap();
        let (base, data) = toy(dir.path());
        let out = dir.path().join("rl");
        let s = rl(&cfg(40), &base, &data, &out, false, false).unwrap();
        assert_eq!(s.step, 40);
        assert_eq!(s.pass1_start, Some(0.0));
        assert_eq!(s.pass1, Some(1.0), "greedy reply starts with the target");
        let (r0, r1) = (s.reward_first.unwrap(), s.reward_last.unwrap());
        assert!(r0 < 0.1 && r1 > 0.8, "mean reward {r0} -> {r1}");
        let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        assert!(m.contains("\"pass1\"") && m.contains("\"pass_k\"") && m.contains("\"entropy\""));
        assert_eq!(s.pass_k, Some(1.0));
        let (p0, p1) = (s.pass1_sampled_start.unwrap(), s.pass1_sampled.unwrap());
        assert!(p0 < 0.2 && p1 > 0.6, "sampled pass@1 {p0} -> {p1}");
        assert!(std::fs::read_to_string(out.join("rl.svg"))
            .unwrap()
            .contains("held-out pass@1, sampled"));
        // Resume continues from the last checkpoint (step 40), not from scratch.
        let s2 = rl(&cfg(42), &base, &data, &out, true, false).unwrap();
        assert_eq!(s2.step, 42);
        assert!(s2.pass1_start.is_none());
        assert_eq!(load_checkpoint(&s2.last_ckpt).unwrap().train["kind"], "rl");
    }

    #[test]
    fn reused_batches_and_the_kl_leash_learn_too() {
        let dir = tempfile::tempdir().unwrap();
        let (base, data) = toy(dir.path());
        let mut c = cfg(60);
        c.updates = 2;
        c.loss.kl = 0.01;
        c.loss.kind = LossKind::Grpo;
        c.micro_batch = 5; // uneven micro-batches
        let s = rl(&c, &base, &data, &dir.path().join("rl"), false, false).unwrap();
        let m = std::fs::read_to_string(dir.path().join("rl/metrics.jsonl")).unwrap();
        assert!(s.reward_last.unwrap() > 0.5, "{s:?}");
        assert_eq!(s.pass1, Some(1.0));
        // The last step that made an update (once every sample is right, groups carry no signal
        // and steps skip the update).
        let last = m
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .rfind(|v| v["kl"].is_f64())
            .unwrap();
        assert!(last["kl"].as_f64().unwrap() > 0.0, "{last}");
    }

    #[test]
    fn groups_with_equal_rewards_are_not_trained_on_and_more_rounds_are_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let (base, mut data) = toy(dir.path());
        // The first prompt's replies all score the same; the second's differ (by the first
        // token's parity: eight samples of a random model are almost never all odd or all even).
        data.train[0].score = Arc::new(|_: &[u32]| Score {
            correct: false,
            formatted: false,
            reward: 0.5,
        });
        data.train[1].score = Arc::new(|ids: &[u32]| Score {
            correct: false,
            formatted: false,
            reward: (ids.first().copied().unwrap_or(0) % 2) as f32,
        });
        let mut c = cfg(3);
        c.eval_problems = 0;
        c.prompts_per_step = 1;
        c.rollout_rounds = 3;
        rl(&c, &base, &data, &dir.path().join("rl"), false, false).unwrap();
        let steps: Vec<serde_json::Value> =
            std::fs::read_to_string(dir.path().join("rl/metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v.get("reward_mean").is_some())
                .collect();
        // Prompts alternate 0, 1, 0, 1, …: a step that starts on prompt 0 (uninformative) draws a
        // second round and trains on prompt 1's group only.
        let rounds: Vec<u64> = steps
            .iter()
            .map(|v| v["rollout_rounds"].as_u64().unwrap())
            .collect();
        assert_eq!(rounds, [2, 2, 2], "{steps:?}");
        assert!(steps.iter().all(|v| v["groups_updated"] == 1));

        // Every group uninformative: all rounds spent, no update, weights untouched.
        let s = |_: &[u32]| Score {
            correct: false,
            formatted: false,
            reward: 0.0,
        };
        data.train.iter_mut().for_each(|i| i.score = Arc::new(s));
        let out = dir.path().join("flat");
        let sum = rl(&c, &base, &data, &out, false, false).unwrap();
        let before = load_checkpoint(&base).unwrap();
        let after = load_checkpoint(&sum.last_ckpt).unwrap();
        assert!(before.params == after.params, "no gradient, no update");
        let last: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(out.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .rfind(|l| l.contains("reward_mean"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(last["rollout_rounds"], 3);
        assert_eq!(last["groups_updated"], 0);
        assert!(last["loss"].is_null(), "{last}");
    }

    #[test]
    fn overlong_filtering_leaves_truncated_responses_out_of_the_loss() {
        let dir = tempfile::tempdir().unwrap();
        let (base, mut data) = toy(dir.path());
        // Rewards that differ within every group (the first token's parity), so each step
        // updates; with 4 new tokens of 301 a random model almost never ends a reply.
        for item in &mut data.train {
            item.score = Arc::new(|ids: &[u32]| Score {
                correct: false,
                formatted: false,
                reward: (ids.first().copied().unwrap_or(0) % 2) as f32,
            });
        }
        let mut c = cfg(2);
        c.eval_problems = 0;
        let run = |c: &RlConfig, name: &str| {
            let s = rl(c, &base, &data, &dir.path().join(name), false, false).unwrap();
            let truncated: Vec<f64> =
                std::fs::read_to_string(dir.path().join(name).join("metrics.jsonl"))
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                    .filter_map(|v| v["truncated"].as_f64())
                    .collect();
            (load_checkpoint(&s.last_ckpt).unwrap().params, truncated)
        };
        let before = load_checkpoint(&base).unwrap().params;
        let (plain, truncated) = run(&c, "plain");
        assert_eq!(truncated, [1.0, 1.0], "every response cut at max_new");
        assert!(
            plain != before,
            "without the filter the cut responses are trained on"
        );
        c.overlong_filter = true;
        let (filtered, _) = run(&c, "filtered");
        assert!(filtered == before, "with it nothing is left to train on");
    }

    /// Text as ids 4..12 (ids 0..4 are the tool tokens) for the 12-id test model.
    struct SmallCodec;

    impl Codec for SmallCodec {
        fn encode_text(&self, text: &str) -> Vec<u32> {
            text.bytes().map(|b| 4 + u32::from(b % 8)).collect()
        }
        fn decode_text(&self, ids: &[u32]) -> String {
            ids.iter()
                .map(|&i| char::from(b'a' + (i % 26) as u8))
                .collect()
        }
        fn special_id(&self, _: &str) -> Option<u32> {
            None
        }
        fn vocab_size(&self) -> usize {
            12
        }
    }

    /// A random model over 12 ids opens (id 0) and closes (id 1) code calls often: each closed
    /// call is followed by the tool's output as forced ids (the runtime's error once the row has
    /// made its 2 calls; cut at the budget), the tool runs once per allowed call, and rows draw
    /// the same with or without other rows in the batch (the forced ids extend only their row's
    /// cache).
    #[test]
    fn tool_calls_in_rollouts_feed_the_output_and_do_not_depend_on_batching() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let be = Arc::new(CpuBackend::new(2));
        let model = Model::new(be, ModelConfig::gpt2(12, 2, 2, 32, 64), 5).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let tools = RlTools {
            tokens: ToolTokens {
                python: Some((0, 1)),
                search: None,
                output_start: 2,
                output_end: 3,
            },
            codec: Arc::new(SmallCodec),
            run: {
                let count = count.clone();
                Box::new(move |_, _| {
                    count.fetch_add(1, SeqCst);
                    "ok\n".into()
                })
            },
            limits: TurnLimits {
                max_calls: 2,
                ..Default::default()
            },
        };
        let prompts: [&[u32]; 3] = [&[4, 5, 6], &[7], &[8, 9, 10, 11, 4]];
        let seeds = [21, 22, 23];
        let sp = SamplingParams::default();
        let max_new = 40;
        let all = rollouts(
            &model,
            &prompts,
            &seeds,
            4,
            max_new,
            &sp,
            &[],
            true,
            Some(&tools),
        )
        .unwrap();
        let ran = count.swap(0, SeqCst);
        let (mut ids, mut forced) = (Vec::new(), Vec::new());
        for (p, s) in prompts.iter().zip(seeds) {
            let r = rollouts(&model, &[p], &[s], 4, max_new, &sp, &[], true, Some(&tools)).unwrap();
            ids.extend(r.ids);
            forced.extend(r.forced);
        }
        assert_eq!(all.ids, ids);
        assert_eq!(all.forced, forced);
        assert_eq!(count.load(SeqCst), ran);
        let ok = tools.tokens.output_ids(&SmallCodec, "ok\n");
        let limit = tools
            .tokens
            .output_ids(&SmallCodec, "error: tool call limit reached (2 per turn)\n");
        let (mut closed, mut allowed) = (0, 0);
        for (ids, forced) in all.ids.iter().zip(&all.forced) {
            assert_eq!(ids.len(), max_new);
            let (mut i, mut open, mut made) = (0, false, 0);
            while i < ids.len() {
                assert!(!forced[i], "a forced id where the model samples: {ids:?}");
                let id = ids[i];
                i += 1;
                if !open && id == 0 {
                    open = true;
                } else if open && id == 1 {
                    open = false;
                    closed += 1;
                    let want = if made < 2 { &ok } else { &limit };
                    allowed += usize::from(made < 2);
                    made += 1;
                    let n = want.len().min(ids.len() - i);
                    assert_eq!(ids[i..i + n], want[..n], "{ids:?}");
                    assert!(forced[i..i + n].iter().all(|&f| f));
                    i += n;
                }
            }
        }
        assert!(closed >= 4, "only {closed} calls closed");
        assert_eq!(ran, allowed);
        // Each row replayed one token at a time on a fresh cache: every sampled id is what the
        // row's generator draws from the logits after everything before it, forced ids included
        // (a row whose cache missed or misplaced its tool output would draw otherwise).
        for (r, (ids, forced)) in all.ids.iter().zip(&all.forced).enumerate() {
            let (j, g) = (r / 4, r % 4);
            let mut rng = Rng::new(seeds[j] ^ ((g as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)));
            let mut dec = BatchedDecoder::new(&model, 1, prompts[j].len() + max_new).unwrap();
            let mut logits = dec.prefill(0, prompts[j]).unwrap();
            for (i, (&id, &f)) in ids.iter().zip(forced).enumerate() {
                if !f {
                    assert_eq!(sample_token(&logits, &sp, &mut rng), id, "row {r} at {i}");
                }
                if i + 1 < ids.len() {
                    logits = dec.step(&[0], &[id]).unwrap();
                }
            }
        }
    }

    #[test]
    fn batched_rollouts_draw_what_each_prompt_draws_alone() {
        let be = Arc::new(CpuBackend::new(2));
        let model = Model::new(be, ModelConfig::gpt2(301, 2, 2, 32, 64), 5).unwrap();
        let prompts: [&[u32]; 3] = [
            &[256, 104, 105, 257],
            &[256, 7, 257],
            &[256, 1, 2, 3, 4, 257],
        ];
        let seeds = [11, 12, 13];
        let sp = SamplingParams::default();
        // a fifth of the ids stop a row, so rows finish at different steps and leave the batch
        let stop: Vec<u32> = (0..60).chain([END]).collect();
        let r = rollouts(&model, &prompts, &seeds, 4, 12, &sp, &stop, true, None).unwrap();
        let (all, e_all) = (r.ids, r.entropy);
        let mut alone = Vec::new();
        let mut e_alone = 0.0;
        for (p, s) in prompts.iter().zip(seeds) {
            let r = rollouts(&model, &[p], &[s], 4, 12, &sp, &stop, true, None).unwrap();
            alone.extend(r.ids);
            e_alone += r.entropy;
        }
        assert_eq!(all, alone);
        assert!((e_all - e_alone).abs() < 1e-3 * e_alone.abs().max(1.0));
        assert!(all.iter().any(|r| r.len() < 12), "some row stopped early");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (base, mut data) = toy(dir.path());
        let mut c = cfg(2);
        c.group = 1;
        let e = rl(&c, &base, &data, &dir.path().join("a"), false, false).unwrap_err();
        assert!(e.to_string().contains("at least 2 samples"), "{e}");
        let mut c = cfg(2);
        c.rollout_rounds = 0;
        let e = rl(&c, &base, &data, &dir.path().join("r"), false, false).unwrap_err();
        assert!(
            e.to_string().contains("rollout rounds must be positive"),
            "{e}"
        );
        data.train[0].score = Arc::new(|_: &[u32]| Score {
            correct: false,
            formatted: false,
            reward: f32::NAN,
        });
        let e = rl(&cfg(2), &base, &data, &dir.path().join("b"), false, false).unwrap_err();
        assert!(e.to_string().contains("rewards must be finite"), "{e}");
    }

    #[test]
    fn a_non_finite_update_stops_the_run_and_keeps_the_last_good_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (base, data) = toy(dir.path());
        let mut c = cfg(30);
        c.ckpt_every = 1;
        c.eval_problems = 0;
        c.optim.lr = 1e30; // parameters overflow within a few steps
        c.optim.grad_clip = None;
        let e = rl(&c, &base, &data, &dir.path().join("rl"), false, false).unwrap_err();
        let TrainError::NonFinite {
            last_ckpt, step, ..
        } = &e
        else {
            panic!("{e}")
        };
        assert!(e.to_string().contains("last good checkpoint"), "{e}");
        assert!(*step > 1, "{e}");
        let ck = load_checkpoint(Path::new(last_ckpt)).unwrap();
        assert_eq!(ck.train["step"].as_u64().unwrap(), step - 1);
    }
}
