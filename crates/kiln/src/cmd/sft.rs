//! `kiln sft --base <ckpt> --mix <toml>`: load the mix (kiln-chat), render it with the base
//! run's tokenizer, and run the SFT loop (kiln-train). Parsing and wiring only.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use kiln_chat::mix::{MixConfig, SourceStats};
use kiln_engine::OptimizerConfig;
use kiln_train::device::{Device, DeviceSpec};
use kiln_train::sft::{render_data, sft_on, SftConfig, SftSummary};
use serde_json::json;

use super::chat::chat_tokens;
use super::pretrain::DeviceArgs;

/// `kiln sft`'s flags: [`SftArgs`] plus the device (kept apart: the speedrun builds `SftArgs`
/// itself and trains on the cpu).
#[derive(Args)]
pub struct SftCli {
    #[command(flatten)]
    pub args: SftArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Args, Clone)]
pub struct SftArgs {
    /// Base model checkpoint (folder, or a pretraining run folder with ckpt/latest).
    #[arg(long)]
    pub base: PathBuf,
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
    #[arg(long)]
    pub resume: bool,
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
}

/// What `kiln sft` did, for the report card.
pub struct SftOutcome {
    pub summary: SftSummary,
    pub stats: Vec<SourceStats>,
    pub truncated: usize,
    pub dropped: usize,
    pub train_convs: usize,
    pub val_convs: usize,
}

fn tokenizer_of(base: &Path, flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(t) = flag {
        return Ok(t.to_string());
    }
    let dir = kiln_train::pretrain::resolve_checkpoint(base)?;
    let ck =
        kiln_engine::load_checkpoint(&dir).with_context(|| format!("loading {}", dir.display()))?;
    match ck.train["config"]["tokenizer"].as_str() {
        Some(t) => Ok(t.to_string()),
        None => bail!(
            "{}: the base run recorded no tokenizer; pass --tokenizer",
            dir.display()
        ),
    }
}

pub fn execute(a: &SftArgs, threads: usize) -> anyhow::Result<SftOutcome> {
    execute_on(a, threads, &DeviceSpec::cpu())
}

/// [`execute`] on a device.
pub fn execute_on(a: &SftArgs, threads: usize, spec: &DeviceSpec) -> anyhow::Result<SftOutcome> {
    let tok_name = tokenizer_of(&a.base, a.tokenizer.as_deref())?;
    let tok = kiln_tokenizer::Tokenizer::load_named(&tok_name)
        .with_context(|| format!("loading tokenizer {tok_name:?}"))?;
    let tokens = chat_tokens(
        &tok,
        &format!("SFT base {} (tokenizer {tok_name})", a.base.display()),
    )?;
    let base_dir = kiln_train::pretrain::resolve_checkpoint(&a.base)?;
    let context = kiln_engine::load_checkpoint(&base_dir)?.config.context;
    let seq_len = a.seq_len.unwrap_or(context);

    let mix_cfg = MixConfig::load(&a.mix)?;
    let mix_dir = a.mix.parent().unwrap_or(Path::new("."));
    let data_dir = kiln_data::fetch::data_dir();
    let source_dir =
        |name: &str| kiln_data::fetch::source_dir_in(&data_dir, name).map_err(|e| e.to_string());
    let mix = mix_cfg.build(mix_dir, &source_dir, a.scale, a.strict)?;
    let data = render_data(&mix.train, &mix.val, &tok, &tokens, seq_len)?;
    tracing::info!(
        "SFT mix: {} train / {} val conversations; {} cut to {} tokens, {} dropped (answer did not fit)",
        data.train.len(),
        data.val.len(),
        data.truncated,
        seq_len + 1,
        data.dropped
    );
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let stats_json: Vec<_> = mix
        .stats
        .iter()
        .map(|s| json!({"kind": s.kind, "train": s.train, "val": s.val, "malformed": s.malformed, "rejected": s.rejected, "too_long": s.too_long, "first_error": s.first_error}))
        .collect();
    let mix_json = json!({"mix": a.mix, "sources": stats_json, "truncated": data.truncated, "dropped": data.dropped});
    kiln_engine::safetensors::write_atomic(
        &a.out.join("mix.json"),
        serde_json::to_string_pretty(&mix_json)?.as_bytes(),
    )?;

    let tok_abs = match std::fs::canonicalize(&tok_name) {
        Ok(p) => p.display().to_string(),
        Err(_) => tok_name.clone(),
    };
    let cfg = SftConfig {
        steps: a.steps,
        batch: a.batch,
        seq_len,
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
        tokenizer: Some(tok_abs),
    };
    let summary = sft_on(
        spec,
        &cfg,
        &a.base,
        &data,
        tokens.bos,
        &a.out,
        a.resume,
        !a.no_progress,
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

pub fn run(c: SftCli, threads: usize) -> anyhow::Result<()> {
    let spec = c.device.spec(Device::Cpu)?;
    let a = c.args;
    let o = execute_on(&a, threads, &spec)?;
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
    println!("chat with it: kiln chat --ckpt {}", a.out.display());
    Ok(())
}
