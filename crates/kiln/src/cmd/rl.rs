//! `kiln rl --model <sft checkpoint> --task arith|arith-easy|two-digit-sums|word|countdown|count-items`: flags →
//! [`kiln_train::rl::RlJob`] (render the task's problems with the model's tokenizer, run the GRPO
//! loop), then a summary.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use kiln_chat::tasks::TaskKind;
use kiln_engine::OptimizerConfig;
use kiln_train::device::Device;
use kiln_train::rl::loss::{LossConfig, LossKind};
use kiln_train::rl::{run_job, RlConfig, RlJob, RlToolSet};

use super::chat::ToolName;
use super::DeviceArgs;

/// The verifiable tasks (kiln-chat's `tasks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TaskChoice {
    /// Multi-digit addition, subtraction, multiplication.
    Arith,
    /// The same with small operands (+ and - up to 20, one-digit products): a first rung.
    ArithEasy,
    /// Sums of two two-digit numbers (its cold start works them column by column).
    TwoDigitSums,
    /// GSM-style templated word problems.
    Word,
    /// Reach a target with the given numbers and + - * /.
    Countdown,
    /// Count the items of a list (3 to 15 words).
    CountItems,
}

/// How per-token losses are averaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LossChoice {
    /// Token-level mean over the batch.
    Dapo,
    /// Sum over tokens / (sequences × max-new); advantages not std-scaled.
    DrGrpo,
    /// Mean per sequence, then over sequences.
    Grpo,
}

#[derive(Args)]
pub struct RlArgs {
    /// Starting checkpoint: an SFT run folder (ckpt/latest) or a checkpoint folder.
    #[arg(long, alias = "base")]
    pub model: PathBuf,
    #[arg(long, value_enum)]
    pub task: TaskChoice,
    /// Output folder: metrics.jsonl, rl.svg, ckpt/step_*/ and ckpt/latest.
    #[arg(long, default_value = "runs/rl")]
    pub out: PathBuf,
    /// Tokenizer folder or name [default: the one the model's run recorded].
    #[arg(long)]
    pub tokenizer: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    #[arg(long, default_value_t = 4)]
    pub prompts_per_step: usize,
    /// Samples per prompt (≥ 2).
    #[arg(long, default_value_t = 8)]
    pub group: usize,
    /// Most tokens per response.
    #[arg(long, default_value_t = 128)]
    pub max_new: usize,
    /// Rollout sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f32,
    /// Reward for an answer in the expected place (`The answer is X.`), right or wrong; 0 rewards
    /// correctness alone.
    #[arg(long, default_value_t = kiln_chat::tasks::FORMAT_REWARD)]
    pub format_reward: f32,
    /// β of the k3 KL penalty to the starting model (0 = none, no reference kept).
    #[arg(long, default_value_t = 0.0)]
    pub kl: f32,
    /// ε of the clipped ratio (matters when a batch is reused, --updates > 1).
    #[arg(long, default_value_t = 0.2)]
    pub clip: f32,
    #[arg(long, value_enum, default_value = "dapo")]
    pub loss: LossChoice,
    /// Divide advantages by the group's std [default: yes, except for dr-grpo].
    #[arg(long)]
    pub std_scale: Option<bool>,
    /// Most rounds of --prompts-per-step prompts a step draws to find that many groups whose
    /// rewards differ (DAPO's dynamic sampling: groups that are all right or all wrong give no
    /// gradient and are not trained on); 1 = one round, whatever it holds.
    #[arg(long, default_value_t = 4)]
    pub rollout_rounds: usize,
    /// Leave responses cut at --max-new (no end token) out of the loss (DAPO's overlong
    /// filtering); their rewards still count in their groups' advantages.
    #[arg(long)]
    pub overlong_filter: bool,
    /// Optimizer steps per rollout batch.
    #[arg(long, default_value_t = 1)]
    pub updates: usize,
    /// Rows per forward/backward (gradients accumulate).
    #[arg(long, default_value_t = 8)]
    pub micro_batch: usize,
    #[arg(long, default_value_t = 20)]
    pub eval_every: usize,
    /// Held-out problems per eval (greedy pass@1).
    #[arg(long, default_value_t = 50)]
    pub eval_problems: usize,
    #[arg(long, default_value_t = 50)]
    pub ckpt_every: usize,
    /// Continue from <out>/ckpt/latest if it exists.
    #[arg(long)]
    pub resume: bool,
    /// Stop (with a checkpoint) after this many minutes.
    #[arg(long)]
    pub minutes: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub no_progress: bool,
    /// Tools the policy may call in rollouts and evals: `code` (sandboxed Python), `search`,
    /// both (`code,search`) or `none`. The prompts then offer them as the SFT tool lessons do;
    /// tool outputs join the response but not the loss.
    #[arg(long, value_delimiter = ',', default_value = "none")]
    pub tools: Vec<ToolName>,
    /// Search index folder (`kiln index build`) [default: the generated world of places the
    /// `tool_search` SFT lessons teach on].
    #[arg(long)]
    pub index: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: RlArgs, threads: usize) -> anyhow::Result<()> {
    let spec = a.device.spec(Device::Cpu)?;
    let kind = match a.loss {
        LossChoice::Dapo => LossKind::Dapo,
        LossChoice::DrGrpo => LossKind::DrGrpo,
        LossChoice::Grpo => LossKind::Grpo,
    };
    let task = match a.task {
        TaskChoice::Arith => TaskKind::Arith,
        TaskChoice::ArithEasy => TaskKind::ArithEasy,
        TaskChoice::TwoDigitSums => TaskKind::TwoDigitSums,
        TaskChoice::Word => TaskKind::Word,
        TaskChoice::Countdown => TaskKind::Countdown,
        TaskChoice::CountItems => TaskKind::CountItems,
    };
    let job = RlJob {
        model: a.model.clone(),
        task,
        out: a.out.clone(),
        tokenizer: a.tokenizer.clone(),
        resume: a.resume,
        progress: !a.no_progress,
        train: RlConfig {
            task: task.name().into(),
            steps: a.steps,
            prompts_per_step: a.prompts_per_step,
            group: a.group,
            max_new: a.max_new,
            temperature: a.temperature,
            loss: LossConfig {
                kind,
                clip: a.clip,
                kl: a.kl,
                max_new: a.max_new,
            },
            std_scale: a.std_scale.unwrap_or(kind.default_std_scale()),
            updates: a.updates,
            micro_batch: a.micro_batch,
            optim: OptimizerConfig {
                lr: a.lr,
                weight_decay: 0.0,
                ..Default::default()
            },
            eval_every: a.eval_every,
            eval_problems: a.eval_problems,
            ckpt_every: a.ckpt_every,
            seed: a.seed,
            threads,
            time_limit_s: a.minutes.map(|m| m * 60.0),
            tokenizer: None,
            format_reward: a.format_reward,
            rollout_rounds: a.rollout_rounds,
            tools: Vec::new(),
            overlong_filter: a.overlong_filter,
        },
        tools: RlToolSet {
            code: a.tools.contains(&ToolName::Code),
            search: a.tools.contains(&ToolName::Search),
            index: a.index.clone(),
        },
    };
    let s = run_job(&job, &spec)?;
    let f = |p: Option<f64>| p.map_or("-".into(), |p| format!("{p:.3}"));
    println!(
        "step {}  held-out pass@1 {} → {}  sampled pass@1 {} → {}  pass@{} {} → {}  mean reward {} → {}  rollouts {:.0} tok/s  updates {:.0} tok/s  {:.0} s  checkpoint {}",
        s.step,
        f(s.pass1_start),
        f(s.pass1),
        f(s.pass1_sampled_start),
        f(s.pass1_sampled),
        a.group,
        f(s.pass_k_start),
        f(s.pass_k),
        f(s.reward_first),
        f(s.reward_last),
        s.rollout_tok_s,
        s.train_tok_s,
        s.seconds,
        s.last_ckpt.display()
    );
    println!(
        "curves: {}  chat with it: kiln chat --model {}",
        a.out.join("rl.svg").display(),
        a.out.display()
    );
    Ok(())
}
