//! `kiln sft --model <base checkpoint> --mix <toml>`: flags → [`kiln_train::sft::SftJob`]
//! (load the mix, render it with the base run's tokenizer, train), then a summary.

use std::path::PathBuf;

use clap::Args;
use kiln_engine::OptimizerConfig;
use kiln_train::device::Device;
use kiln_train::sft::{run_job, SftConfig, SftJob};

use super::DeviceArgs;

#[derive(Args)]
pub struct SftArgs {
    /// Base model checkpoint (folder, or a pretraining run folder with ckpt/latest).
    #[arg(long, alias = "base")]
    pub model: PathBuf,
    /// The data mix (TOML), e.g. configs/sft-mix.toml.
    #[arg(long)]
    pub mix: PathBuf,
    /// Output folder: metrics.jsonl, mix.json, ckpt/step_*/ and ckpt/latest.
    #[arg(long, default_value = "runs/sft")]
    pub out: PathBuf,
    /// Tokenizer folder or name [default: the one the base run recorded].
    #[arg(long)]
    pub tokenizer: Option<String>,
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Rows per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per row [default: the model's context].
    #[arg(long)]
    pub seq_len: Option<usize>,
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f32,
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// Validation batches per eval (0 = all held-out conversations).
    #[arg(long, default_value_t = 8)]
    pub eval_batches: usize,
    #[arg(long, default_value_t = 100)]
    pub ckpt_every: usize,
    /// Continue from <out>/ckpt/latest if it exists.
    #[arg(long, num_args = 0..=1, value_name = "PATH")]
    pub resume: Option<Option<PathBuf>>,
    /// Fail on the first malformed or unusable conversation instead of skipping and counting.
    #[arg(long)]
    pub strict: bool,
    /// Multiply every source's count in the mix (e.g. 0.1 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
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
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: SftArgs, threads: usize) -> anyhow::Result<()> {
    let spec = a.device.spec(Device::Cpu)?;
    if let Some(Some(p)) = &a.resume {
        if p != &a.out {
            anyhow::bail!(
                "--resume {}: SFT continues the run in --out ({}); pass the same folder",
                p.display(),
                a.out.display()
            );
        }
    }
    let job = SftJob {
        base: a.model.clone(),
        mix: a.mix.clone(),
        out: a.out.clone(),
        tokenizer: a.tokenizer.clone(),
        seq_len: a.seq_len,
        strict: a.strict,
        scale: a.scale,
        resume: a.resume.is_some(),
        progress: !a.no_progress,
        train: SftConfig {
            steps: a.steps,
            batch: a.batch,
            optim: OptimizerConfig {
                lr: a.lr,
                weight_decay: 0.0,
                ..Default::default()
            },
            warmup_steps: a.warmup,
            eval_every: a.eval_every,
            eval_batches: a.eval_batches,
            ckpt_every: a.ckpt_every,
            seed: a.seed,
            threads,
            time_limit_s: a.minutes.map(|m| m * 60.0),
            ..Default::default()
        },
    };
    let o = run_job(&job, &spec)?;
    for s in &o.stats {
        println!(
            "  {:<10} train {:>6}  val {:>5}  malformed {:>4}  rejected {:>5}  too long {:>4}",
            s.kind, s.train, s.val, s.malformed, s.rejected, s.too_long
        );
        if let Some(e) = &s.first_error {
            println!("             first skipped: {e}");
        }
    }
    println!(
        "{} train / {} val conversations; {} cut to the context, {} dropped (answer did not fit)",
        o.train_convs, o.val_convs, o.truncated, o.dropped
    );
    let s = &o.summary;
    println!(
        "step {}  loss {:.4}  val loss {}{}  {:.0} tok/s  checkpoint {}",
        s.step,
        s.last_loss,
        s.val_loss_start
            .map_or(String::new(), |v| format!("{v:.4} → ")),
        s.val_loss.map_or("-".into(), |v| format!("{v:.4}")),
        s.tokens_per_s,
        s.last_ckpt.display()
    );
    println!("chat with it: kiln chat --model {}", a.out.display());
    Ok(())
}
