//! `kiln label` (order samples in the terminal, let the scripted labeller do it, or import pairs),
//! `kiln rm train|score` (the reward model) and `kiln rlhf` (policy vs reward model with the hack
//! guard): flags → kiln-train's `rm` and `rlhf` jobs, then a summary. The labelling screen only
//! draws [`LabelState`] and feeds it keys; its logic lives (and is tested) in kiln-train.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use console::{Key as TermKey, Term};
use kiln_engine::{OptimizerConfig, Rng};
use kiln_train::device::Device;
use kiln_train::rl::loss::{LossConfig, LossKind};
use kiln_train::rl::RlConfig;
use kiln_train::rlhf::{GuardConfig, RlhfJob};
use kiln_train::rm::label::{pending, Action, Key, LabelState, Sampler};
use kiln_train::rm::person::{prompt_set, SimulatedPerson};
use kiln_train::rm::prefs::{append_prefs, read_prefs, Ordering};
use kiln_train::rm::{RmConfig, RmJob};

use super::DeviceArgs;

#[derive(Args)]
pub struct LabelArgs {
    /// The policy to sample from (an SFT run folder or checkpoint).
    #[arg(long, alias = "model")]
    pub ckpt: Option<PathBuf>,
    /// One prompt per line [default: the built-in open prompts, "write a joke about pelicans" …].
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Samples per prompt to order (≥ 2).
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    /// The preference file (appended; prompts already in it are skipped, so a quit session
    /// continues where it stopped).
    #[arg(long, default_value = "prefs.jsonl")]
    pub out: PathBuf,
    /// Let the scripted labeller — a simulator of a person — order the samples.
    #[arg(long)]
    pub simulate: bool,
    /// The simulator's noise (std of its utility noise).
    #[arg(long, default_value_t = 0.3)]
    pub noise: f64,
    /// Orderings per prompt when simulating.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Import a preference file instead (`{"prompt","chosen","rejected"}` pairs or orderings).
    #[arg(long, conflicts_with_all = ["ckpt", "simulate"])]
    pub import: Option<PathBuf>,
    #[arg(long)]
    pub tokenizer: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub max_new: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn map_key(k: TermKey) -> Option<Key> {
    match k {
        TermKey::Char(c @ '1'..='9') => Some(Key::Pick(c as usize - '1' as usize)),
        TermKey::Char('u') | TermKey::Backspace => Some(Key::Undo),
        TermKey::Enter => Some(Key::Done),
        TermKey::Char('s') => Some(Key::Skip),
        TermKey::Char('q') | TermKey::Escape => Some(Key::Quit),
        _ => None,
    }
}

fn draw(
    term: &Term,
    prompt: &str,
    samples: &[String],
    st: &LabelState,
    msg: &str,
) -> std::io::Result<()> {
    term.clear_screen()?;
    term.write_line(&format!("PROMPT: {prompt}\n"))?;
    for (i, s) in samples.iter().enumerate() {
        let rank = st.ranked().iter().position(|&r| r == i);
        let tag = rank.map_or("   ".to_string(), |r| format!("#{}", r + 1));
        term.write_line(&format!("{tag} [{}] {}\n", i + 1, s.replace('\n', " ⏎ ")))?;
    }
    term.write_line("keys: 1-9 pick the best remaining · u undo · Enter save now (≥2 ranked) · s skip · q quit (saved orderings stay)")?;
    term.write_line(msg)
}

pub fn label(a: LabelArgs, threads: usize) -> anyhow::Result<()> {
    if let Some(src) = &a.import {
        let o = read_prefs(src)?;
        append_prefs(&a.out, &o)?;
        println!(
            "imported {} orderings from {} into {}",
            o.len(),
            src.display(),
            a.out.display()
        );
        return Ok(());
    }
    if a.samples < 2 {
        bail!(
            "--samples {}: an ordering needs at least 2 samples",
            a.samples
        );
    }
    if a.samples > 9 {
        bail!(
            "--samples {}: the keys 1-9 pick samples, so at most 9",
            a.samples
        );
    }
    let ckpt = a
        .ckpt
        .clone()
        .context("--ckpt: the policy to sample from")?;
    let prompts: Vec<String> = match &a.prompts {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| p.display().to_string())?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        None => prompt_set(),
    };
    let done = if a.out.exists() {
        read_prefs(&a.out)?
    } else {
        Vec::new()
    };
    let sampler = Sampler::load(
        &ckpt,
        a.tokenizer.as_deref(),
        threads,
        a.max_new,
        a.temperature,
    )?;
    let todo = pending(&prompts, &done);
    let seed_of =
        |i: usize, r: usize| a.seed ^ ((i * 1000 + r) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if a.simulate {
        let person = SimulatedPerson {
            noise: a.noise,
            ..Default::default()
        };
        let mut rng = Rng::new(a.seed);
        let mut n = 0;
        for (i, p) in todo.iter().enumerate() {
            let mut batch = Vec::new();
            for r in 0..a.rounds {
                let s = sampler.samples(p, a.samples, seed_of(i, r))?;
                batch.push(person.order(p, &s, &mut rng));
            }
            // Identical samples cannot be ordered apart; drop such orderings rather than fail.
            batch.retain(|o: &Ordering| o.validate("").is_ok());
            n += batch.len();
            append_prefs(&a.out, &batch)?;
        }
        println!(
            "the scripted labeller (a simulator of a person) ordered {n} sample sets into {}",
            a.out.display()
        );
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("kiln label orders samples with keys and needs a terminal (or pass --simulate / --import)");
    }
    let term = Term::stdout();
    for (i, p) in todo.iter().enumerate() {
        let samples = sampler.samples(p, a.samples, seed_of(i, 0))?;
        let mut st = LabelState::new(samples.len());
        let mut msg = format!("prompt {} of {} left", i + 1, todo.len());
        loop {
            draw(&term, p, &samples, &st, &msg)?;
            let Some(k) = map_key(term.read_key()?) else {
                continue;
            };
            match st.apply(k) {
                Action::Continue(m) => msg = m.unwrap_or_default(),
                Action::Save(order) => {
                    append_prefs(
                        &a.out,
                        &[Ordering {
                            prompt: p.to_string(),
                            samples: samples.clone(),
                            order,
                            labeller: "person".into(),
                        }],
                    )?;
                    break;
                }
                Action::Skip => break,
                Action::Quit => {
                    println!("saved in {}; run again to continue", a.out.display());
                    return Ok(());
                }
            }
        }
    }
    println!("all prompts labelled: {}", a.out.display());
    Ok(())
}

#[derive(Subcommand)]
pub enum RmCommand {
    /// Train a reward model (the checkpoint's trunk + a scalar head, Bradley–Terry) on orderings.
    Train(Box<RmTrainArgs>),
    /// Score responses to a prompt, or a preference file's pairwise accuracy.
    Score(RmScoreArgs),
}

#[derive(Args)]
pub struct RmTrainArgs {
    /// Starting checkpoint (its trunk): usually the SFT policy's run.
    #[arg(long)]
    pub model: PathBuf,
    /// Preference files (`kiln label`'s orderings and/or imported pairs).
    #[arg(long, required = true, num_args = 1..)]
    pub prefs: Vec<PathBuf>,
    #[arg(long, default_value = "runs/rm")]
    pub out: PathBuf,
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Share of prompts held out for the pairwise accuracy.
    #[arg(long, default_value_t = 0.2)]
    pub held_out: f64,
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub orderings_per_step: usize,
    #[arg(long, default_value_t = 16)]
    pub micro_batch: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f32,
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 100)]
    pub ckpt_every: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Args)]
pub struct RmScoreArgs {
    /// The reward model (`kiln rm train`'s output).
    #[arg(long)]
    pub rm: PathBuf,
    #[arg(long, required_unless_present = "prefs")]
    pub prompt: Option<String>,
    /// Responses to score.
    #[arg(long, num_args = 1..)]
    pub response: Vec<String>,
    /// Preference files: print the pairwise accuracy instead.
    #[arg(long, num_args = 1..)]
    pub prefs: Vec<PathBuf>,
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn rm(c: RmCommand) -> anyhow::Result<()> {
    match c {
        RmCommand::Train(a) => {
            let threads = super::engine_threads(a.threads);
            super::on_engine_pool(|| rm_train(*a, threads))
        }
        RmCommand::Score(a) => {
            let threads = super::engine_threads(a.threads);
            super::on_engine_pool(|| rm_score(a, threads))
        }
    }
}

fn rm_train(a: RmTrainArgs, threads: usize) -> anyhow::Result<()> {
    let spec = a.device.spec(Device::Cpu)?;
    let job = RmJob {
        model: a.model,
        prefs: a.prefs,
        out: a.out.clone(),
        tokenizer: a.tokenizer,
        held_out: a.held_out,
        train: RmConfig {
            steps: a.steps,
            orderings_per_step: a.orderings_per_step,
            micro_batch: a.micro_batch,
            optim: OptimizerConfig {
                lr: a.lr,
                weight_decay: 0.0,
                grad_clip: Some(1.0),
                ..Default::default()
            },
            eval_every: a.eval_every,
            ckpt_every: a.ckpt_every,
            seed: a.seed,
            threads,
            tokenizer: None,
        },
    };
    let s = kiln_train::rm::run_job(&job, &spec)?;
    let f = |p: Option<f64>| p.map_or("-".into(), |p| format!("{p:.3}"));
    println!(
        "step {}  train pairs {}  held-out pairs {}  held-out pairwise accuracy {} → {} (chance {:.1})  last loss {:.4}  {:.0} s  checkpoint {}",
        s.step, s.train_pairs, s.held_out_pairs, f(s.acc_start), f(s.acc), s.chance, s.train_loss_last, s.seconds, s.last_ckpt.display()
    );
    if let Some(c) = s.sim_ceiling {
        println!("the scripted labeller's own noiseless utility scores {c:.3} on the held-out pairs (the ceiling its noise leaves)");
    }
    println!("curves: {}", a.out.join("rm.svg").display());
    Ok(())
}

fn rm_score(a: RmScoreArgs, threads: usize) -> anyhow::Result<()> {
    if !a.prefs.is_empty() {
        let (acc, n) = kiln_train::rm::score_prefs(&a.rm, &a.prefs, threads)?;
        println!("pairwise accuracy {acc:.4} over {n} pairs (chance 0.5)");
        return Ok(());
    }
    if a.response.is_empty() {
        bail!("give --response (one or more) to score, or --prefs");
    }
    let prompt = a.prompt.unwrap_or_default();
    let r = kiln_train::rm::score_texts(&a.rm, &prompt, &a.response, threads)?;
    for (s, t) in r.iter().zip(&a.response) {
        println!("{s:+.4}\t{t}");
    }
    Ok(())
}

#[derive(Args)]
pub struct RlhfArgs {
    /// The SFT policy (start and KL reference).
    #[arg(long, alias = "model")]
    pub policy: PathBuf,
    /// The reward model (`kiln rm train`); its tokenizer must be the policy's.
    #[arg(long)]
    pub rm: PathBuf,
    #[arg(long, default_value = "runs/rlhf")]
    pub out: PathBuf,
    /// One prompt per line, split by hash into training, guard and test prompts [default: the
    /// built-in open prompts].
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    #[arg(long)]
    pub tokenizer: Option<String>,
    #[arg(long, default_value_t = 60)]
    pub steps: usize,
    #[arg(long, default_value_t = 4)]
    pub prompts_per_step: usize,
    #[arg(long, default_value_t = 4)]
    pub group: usize,
    #[arg(long, default_value_t = 48)]
    pub max_new: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f32,
    /// β of the k3 KL penalty to the SFT reference.
    #[arg(long, default_value_t = 0.05)]
    pub kl: f32,
    /// Stop when the KL to the reference passes this (0 = no budget). Measured on the smoke
    /// model: k3 rose to 0.5 within ~30 steps and stayed ≤ 1.8 over 300 while the judge improved.
    #[arg(long, default_value_t = 2.0)]
    pub kl_budget: f64,
    /// Evaluate the guard every this many steps.
    #[arg(long, default_value_t = 10)]
    pub guard_every: usize,
    /// Samples per guard prompt per evaluation.
    #[arg(long, default_value_t = 8)]
    pub guard_samples: usize,
    /// Evaluations in a row with the reward model up and the judge down before the guard fires.
    #[arg(long, default_value_t = 3)]
    pub patience: usize,
    /// The judge must fall by more than this many standard errors to count (0 = any fall).
    #[arg(long, default_value_t = 1.0)]
    pub guard_z: f64,
    #[arg(long, default_value_t = 12)]
    pub guard_prompts: usize,
    /// Unseen prompts for the final win rate over the SFT policy.
    #[arg(long, default_value_t = 40)]
    pub test_prompts: usize,
    /// Samples per test prompt for the win rate (0 = skip it).
    #[arg(long, default_value_t = 8)]
    pub win_samples: usize,
    #[arg(long, default_value_t = 8)]
    pub micro_batch: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub minutes: Option<f64>,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn rlhf(a: RlhfArgs, threads: usize) -> anyhow::Result<()> {
    let spec = a.device.spec(Device::Cpu)?;
    let job = RlhfJob {
        policy: a.policy,
        rm: a.rm,
        out: a.out.clone(),
        prompts: a.prompts,
        tokenizer: a.tokenizer,
        progress: !a.no_progress,
        train: RlConfig {
            task: "rlhf".into(),
            steps: a.steps,
            prompts_per_step: a.prompts_per_step,
            group: a.group,
            max_new: a.max_new,
            temperature: a.temperature,
            loss: LossConfig {
                kind: LossKind::Dapo,
                clip: 0.2,
                kl: a.kl,
                max_new: a.max_new,
            },
            std_scale: true,
            updates: 1,
            micro_batch: a.micro_batch,
            optim: OptimizerConfig {
                lr: a.lr,
                weight_decay: 0.0,
                ..Default::default()
            },
            eval_every: 0,
            eval_problems: 0,
            ckpt_every: a.guard_every.max(1) * 4,
            seed: a.seed,
            threads,
            time_limit_s: a.minutes.map(|m| m * 60.0),
            tokenizer: None,
            // Preference rewards come from the reward model, not a task's answer format.
            format_reward: 0.0,
            // A reward model's scores almost never tie within a group: one round is enough.
            rollout_rounds: 1,
            tools: Vec::new(),
            overlong_filter: false,
        },
        guard: GuardConfig {
            eval_every: a.guard_every,
            samples: a.guard_samples,
            patience: a.patience,
            min_gap: 0.0,
            z: a.guard_z,
            kl_budget: (a.kl_budget > 0.0).then_some(a.kl_budget),
        },
        guard_prompts: a.guard_prompts,
        test_prompts: a.test_prompts,
        win_samples: a.win_samples,
    };
    let s = kiln_train::rlhf::run_job(&job, &spec)?;
    let f = |p: Option<f64>| p.map_or("-".into(), |p| format!("{p:.3}"));
    println!(
        "step {}  {}  best step {} (judge {} → {})  reward model {} → {}  best checkpoint {}",
        s.rl.step,
        s.fired.as_deref().unwrap_or("the guard did not fire"),
        s.best_step.map_or("-".into(), |b| b.to_string()),
        f(s.judge_start),
        f(s.judge_best),
        f(s.rm_start),
        f(s.rm_last),
        s.best_ckpt.display()
    );
    for (what, w) in [
        ("the best checkpoint", &s.win_rate),
        ("the last policy", &s.win_rate_last),
    ] {
        if let Some(w) = w {
            println!(
                "held-out judge win rate of {what} over the SFT policy: {:.3} ± {:.3} (s.e.), 95% CI [{:.3}, {:.3}], {} unseen prompts, {} pairs",
                w.rate, w.std_err, w.ci95.0, w.ci95.1, w.prompts, w.pairs
            );
        }
    }
    println!(
        "curves: {}  samples: {}",
        a.out.join("rlhf.svg").display(),
        a.out.join("rlhf.json").display()
    );
    Ok(())
}
