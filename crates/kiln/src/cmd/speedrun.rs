//! `kiln speedrun`: flags → [`kiln_train::speedrun`] (the stages), then the report card
//! (`report.md` + self-contained `report.html`) and how to chat.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::{Args, ValueEnum};
use kiln_train::speedrun::{self, Options, STAGES};

use super::DeviceArgs;
use crate::report;
use kiln_train::device::{Device, DeviceSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// ≤ 20 minutes on 2 cores: 4 layers × 256 wide, vocab 4096, context 256.
    Default,
    /// ≤ 3 minutes (what the tests run): 2 layers × 64 wide, vocab 512, context 128.
    Smoke,
    /// The default plus a cold start before RL (SFT on the RL task's training problems), ≤ 26
    /// minutes: RL then starts from a model that gets some problems right.
    Reasoning,
    /// The default plus 15 minutes of SFT whose mix gives the tool lessons more rows, ≤ 35
    /// minutes: the tool and honesty evals with more lessons behind them.
    Tools,
    /// The same stages with a GPT-2-124M-class model on a GPU (`--device cuda`), ≤ 5 minutes.
    #[value(name = "gpt2-small")]
    Gpt2Small,
}

impl From<Preset> for speedrun::Preset {
    fn from(p: Preset) -> Self {
        match p {
            Preset::Default => speedrun::Preset::Default,
            Preset::Smoke => speedrun::Preset::Smoke,
            Preset::Reasoning => speedrun::Preset::Reasoning,
            Preset::Tools => speedrun::Preset::Tools,
            Preset::Gpt2Small => speedrun::Preset::Gpt2Small,
        }
    }
}

#[derive(Args)]
pub struct SpeedrunArgs {
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    pub preset: Preset,
    /// Total time budget in minutes [default: 20, smoke: 1, reasoning: 26, tools: 35, gpt2-small: 5];
    /// scales training steps.
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
    /// Where training, probing and the evals run [default: cpu; cuda for gpt2-small].
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Stop after the data stages (fetch, web text, tokenizer, tokens). The run folder then holds
    /// all the training stages read from the web sources: copy it (and the data folder's chitchat,
    /// gsm8k, python-wasm and evals) to a GPU machine and run the same command there.
    #[arg(long)]
    pub data_only: bool,
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
    let default_device = if preset == speedrun::Preset::Gpt2Small {
        Device::Cuda
    } else {
        Device::Cpu
    };
    // The data stages run on the cpu: a build without cuda prepares a GPU run's data.
    let device = if a.data_only {
        DeviceSpec {
            device: a.device.named(default_device),
            precision: None,
        }
    } else {
        a.device.spec(default_device)?
    };
    if !a.data_only && preset == speedrun::Preset::Gpt2Small && device.device == Device::Cpu {
        bail!(
            "--preset gpt2-small trains a 124M-parameter model: it is sized for --device cuda \
             (on the cpu one step takes tens of seconds); `--data-only` prepares its data here"
        );
    }
    let opts = Options {
        preset,
        minutes,
        run: a.runs.join(&name),
        mix: a.mix.clone(),
        threads,
        progress: !a.no_progress,
        device,
        data_only: a.data_only,
    };
    println!(
        "kiln speedrun: preset {:?}, budget {minutes} min, {threads} threads, {}, output {}",
        a.preset,
        device.device.name(),
        opts.run.display()
    );
    let Some(o) = speedrun::run(&opts, &mut |i, what| println!("[{i}/{STAGES}] {what}"))? else {
        println!(
            "data stages done in {:.1} s: {} holds the web text, tokenizer and tokens; run the same \
             command without --data-only to train (on another machine: copy the folder there)",
            t_all.elapsed().as_secs_f64(),
            opts.run.display()
        );
        return Ok(());
    };

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
