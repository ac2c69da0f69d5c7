//! `kiln speedrun`: flags → [`kiln_train::speedrun`] (the stages), then the report card
//! (`report.md` + self-contained `report.html`) and how to chat.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::{Args, ValueEnum};
use kiln_train::speedrun::{self, Options, STAGES};

use crate::report;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// ≤ 20 minutes on 2 cores: 4 layers × 256 wide, vocab 4096, context 256.
    Default,
    /// ≤ 3 minutes (what the tests run): 2 layers × 64 wide, vocab 512, context 128.
    Smoke,
    /// The default plus a cold start before RL (SFT on the RL task's training problems), ≤ 26
    /// minutes: RL then starts from a model that gets some problems right.
    Reasoning,
}

impl From<Preset> for speedrun::Preset {
    fn from(p: Preset) -> Self {
        match p {
            Preset::Default => speedrun::Preset::Default,
            Preset::Smoke => speedrun::Preset::Smoke,
            Preset::Reasoning => speedrun::Preset::Reasoning,
        }
    }
}

#[derive(Args)]
pub struct SpeedrunArgs {
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    pub preset: Preset,
    /// Total time budget in minutes [default: 20, smoke: 1, reasoning: 26]; scales training steps.
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Run name: outputs go to <runs>/<name>/ [default: speedrun, or the preset's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Folder for runs.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// The SFT data mix [default: the built-in mix, written to <run>/configs/sft-mix.toml].
    #[arg(long)]
    pub mix: Option<PathBuf>,
    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(a: SpeedrunArgs, threads: usize) -> anyhow::Result<()> {
    let t_all = Instant::now();
    let preset = speedrun::Preset::from(a.preset);
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| preset.run_name().to_string());
    let minutes = a.minutes.unwrap_or(preset.default_minutes());
    if minutes.is_nan() || minutes <= 0.0 {
        bail!("--minutes must be positive");
    }
    let opts = Options {
        preset,
        minutes,
        run: a.runs.join(&name),
        mix: a.mix.clone(),
        threads,
        progress: !a.no_progress,
    };
    println!(
        "kiln speedrun: preset {:?}, budget {minutes} min, {threads} threads, output {}",
        a.preset,
        opts.run.display()
    );
    let o = speedrun::run(&opts, &mut |i, what| println!("[{i}/{STAGES}] {what}"))?;

    println!("[{STAGES}/{STAGES}] report card");
    let info = report::RunInfo {
        name,
        run: opts.run.clone(),
        plan: serde_json::to_value(&o.plan)?,
        timings: o.timings.stages.clone(),
        eval: o.eval,
        mix: o.mix,
        corpus_docs: o.corpus_docs,
        corpus_tokens: o.corpus_tokens,
        web: serde_json::to_value(&o.web)?,
        rlhf: report::read_rlhf(&opts.run.join("rlhf")),
    };
    let (md, html) = report::write(&info)?;
    println!("report: {} and {}", md.display(), html.display());
    println!("total: {:.1} s", t_all.elapsed().as_secs_f64());
    println!("chat with it:\n  kiln chat --model {}", o.sft.display());
    println!(
        "or the base model as an assistant:\n  kiln chat --model {} --base-prompt {}",
        o.base.display(),
        opts.run.join("configs/base-prompt.txt").display()
    );
    Ok(())
}
