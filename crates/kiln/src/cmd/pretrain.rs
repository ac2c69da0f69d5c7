//! `kiln pretrain`: flags → `kiln_train::pretrain::PretrainConfig`, token shards and tokenizer
//! hooks → the pretraining loop. Parsing and wiring only; the loop lives in kiln-train.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use kiln_engine::{Arch, ModelConfig, OptimKind, OptimizerConfig};
use kiln_tokenizer::Tokenizer;
use kiln_train::device::Device;

use super::DeviceArgs;
use kiln_engine::resolve_checkpoint;
use kiln_train::pretrain::{load_shards, pretrain_on, Hooks, PretrainConfig};

/// Model architectures kiln trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ArchChoice {
    /// Learned positions, LayerNorm, GELU, tied head (loads GPT-2 weights).
    Gpt2,
    /// RoPE, QK-norm, RMSNorm, ReLU², untied head, GQA.
    Modern,
}

impl From<ArchChoice> for Arch {
    fn from(a: ArchChoice) -> Arch {
        match a {
            ArchChoice::Gpt2 => Arch::Gpt2,
            ArchChoice::Modern => Arch::Modern,
        }
    }
}

/// Optimizers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptimChoice {
    Adamw,
    /// Muon for hidden matrices, AdamW for the rest.
    Muon,
}

#[derive(Args)]
pub struct PretrainArgs {
    /// Token shards: a `*.parquet` file or a folder of them (from `kiln tok`/`kiln data`).
    #[arg(long)]
    pub data: PathBuf,
    /// Tokenizer (folder from `kiln tok train`, or a pretrained name) for bits-per-byte and the
    /// live samples; without it, `--vocab-size` is required and eval reports nats/token.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Output folder: metrics.jsonl, curves.svg, ckpt/step_*/ and ckpt/latest.
    #[arg(long)]
    pub out: PathBuf,
    /// Resume: from --out's latest checkpoint, or from PATH (a checkpoint folder, or a run folder
    /// with ckpt/latest).
    #[arg(long, num_args = 0..=1, value_name = "PATH")]
    pub resume: Option<Option<PathBuf>>,
    /// Architecture [default: gpt2].
    #[arg(long, value_enum)]
    pub arch: Option<ArchChoice>,
    /// Vocabulary size (default: the tokenizer's).
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Transformer blocks [default: 4].
    #[arg(long)]
    pub layers: Option<usize>,
    /// Attention heads [default: 4].
    #[arg(long)]
    pub heads: Option<usize>,
    /// Key/value heads (GQA, modern only) [default: heads].
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Model width [default: 256].
    #[arg(long)]
    pub dim: Option<usize>,
    /// Context length = training sequence length [default: 256].
    #[arg(long)]
    pub context: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimChoice::Adamw)]
    pub optim: OptimChoice,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.02)]
    pub muon_lr: f32,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    /// Clip the global gradient norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f32,
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Fraction of steps (at the end) with linearly decaying learning rate.
    #[arg(long, default_value_t = 0.2)]
    pub warmdown: f32,
    #[arg(long, default_value_t = 0.0)]
    pub final_lr_frac: f32,
    /// Evaluate validation loss / bits-per-byte every N steps (0 = only never).
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 8)]
    pub eval_batches: usize,
    /// Fraction of documents held out for validation.
    #[arg(long, default_value_t = 0.02)]
    pub val_frac: f32,
    /// Held-out validation token shards (a file or a folder); then every document of `--data`
    /// trains and `--val-frac` is not used.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Print sampled completions every N steps (0 = off).
    #[arg(long, default_value_t = 200)]
    pub sample_every: usize,
    #[arg(long, default_value_t = 48)]
    pub sample_tokens: usize,
    /// Prompts for the live samples (repeatable).
    #[arg(long = "sample-prompt")]
    pub sample_prompts: Vec<String>,
    /// Write a checkpoint every N steps (and always at the end).
    #[arg(long, default_value_t = 500)]
    pub ckpt_every: usize,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// CPU threads (rayon + gemm) [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Stop this process after N steps (the run can be resumed; for tests and staged runs).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn load_tokenizer(name: &str) -> anyhow::Result<Tokenizer> {
    Tokenizer::load_named(name).with_context(|| format!("loading tokenizer {name:?}"))
}

/// The BOS id: `<|bos|>`, else GPT-2's `<|endoftext|>`.
pub fn bos_id(tok: &Tokenizer) -> Option<u32> {
    tok.special_token_id("<|bos|>")
        .or_else(|| tok.special_token_id("<|endoftext|>"))
}

pub fn run(a: PretrainArgs, threads: usize) -> anyhow::Result<()> {
    let spec = a.device.spec(Device::Cpu)?;
    let tok = a.tokenizer.as_deref().map(load_tokenizer).transpose()?;
    // base model config: the checkpoint's when resuming, else defaults; flags override
    // `--resume` alone continues the run in --out.
    let resume: Option<PathBuf> = a.resume.clone().map(|p| p.unwrap_or_else(|| a.out.clone()));
    let base = match &resume {
        Some(p) => {
            let dir = resolve_checkpoint(p)?;
            kiln_engine::load_checkpoint(&dir)
                .with_context(|| format!("reading checkpoint {}", dir.display()))?
                .config
        }
        None => {
            let arch: Arch = a.arch.map_or(Arch::Gpt2, Arch::from);
            let vocab = a.vocab_size.or(tok.as_ref().map(|t| t.vocab_size()));
            let Some(vocab) = vocab else {
                bail!("--vocab-size is required without --tokenizer")
            };
            let (l, h, d, c) = (
                a.layers.unwrap_or(4),
                a.heads.unwrap_or(4),
                a.dim.unwrap_or(256),
                a.context.unwrap_or(256),
            );
            match arch {
                Arch::Gpt2 => ModelConfig::gpt2(vocab, l, h, d, c),
                Arch::Modern => ModelConfig::modern(vocab, l, h, a.kv_heads.unwrap_or(h), d, c),
            }
        }
    };
    let mut model = base;
    if let Some(arch) = a.arch {
        model.arch = arch.into();
    }
    if let Some(v) = a.vocab_size.or(if resume.is_some() {
        tok.as_ref().map(|t| t.vocab_size())
    } else {
        None
    }) {
        model.vocab_size = v;
    }
    macro_rules! over {
        ($f:ident, $g:ident) => {
            if let Some(v) = a.$f {
                model.$g = v;
            }
        };
    }
    over!(layers, n_layer);
    over!(heads, n_head);
    over!(kv_heads, n_kv_head);
    over!(dim, n_embd);
    over!(context, context);
    if a.kv_heads.is_none() && model.arch == Arch::Gpt2 {
        model.n_kv_head = model.n_head;
    }
    let kind = match a.optim {
        OptimChoice::Adamw => OptimKind::AdamW,
        OptimChoice::Muon => OptimKind::Muon,
    };
    let optim = OptimizerConfig {
        kind,
        lr: a.lr,
        muon_lr: a.muon_lr,
        weight_decay: a.weight_decay,
        grad_clip: (a.grad_clip > 0.0).then_some(a.grad_clip),
        ..Default::default()
    };
    let cfg = PretrainConfig {
        seq_len: model.context,
        model,
        optim,
        batch: a.batch,
        grad_accum: a.accum,
        steps: a.steps,
        warmup_steps: a.warmup,
        warmdown_frac: a.warmdown,
        final_lr_frac: a.final_lr_frac,
        eval_every: a.eval_every,
        eval_batches: a.eval_batches,
        sample_every: a.sample_every,
        sample_tokens: a.sample_tokens,
        ckpt_every: a.ckpt_every,
        keep_ckpts: a.keep,
        seed: a.seed,
        val_frac: a.val_frac,
        threads,
        tokenizer: a.tokenizer.clone(),
    };
    let docs = load_shards(&a.data)?;
    tracing::info!(
        "{} documents, {} tokens from {}",
        docs.len(),
        docs.iter().map(|d| d.len()).sum::<usize>(),
        a.data.display()
    );

    let val_docs = a.val.as_deref().map(load_shards).transpose()?;
    if let (Some(v), Some(p)) = (&val_docs, &a.val) {
        tracing::info!(
            "{} validation documents, {} tokens from {}",
            v.len(),
            v.iter().map(|d| d.len()).sum::<usize>(),
            p.display()
        );
    }
    let token_bytes: Option<Vec<u32>> = tok.as_ref().map(|t| {
        (0..t.vocab_size() as u32)
            .map(|id| {
                if t.is_special(id) {
                    0
                } else {
                    t.token_bytes(id).map_or(0, |b| b.len() as u32)
                }
            })
            .collect()
    });
    let decode = tok.as_ref().map(|t| move |ids: &[u32]| t.decode(ids));
    let mut prompts = Vec::new();
    if let Some(t) = &tok {
        let texts = if a.sample_prompts.is_empty() {
            vec!["The".to_string(), "Once upon a time".to_string()]
        } else {
            a.sample_prompts.clone()
        };
        for p in texts {
            let mut ids: Vec<u32> = bos_id(t).into_iter().collect();
            ids.extend(t.encode_ordinary(&p));
            prompts.push(ids);
        }
    }
    let hooks = Hooks {
        decode: decode.as_ref().map(|d| d as &dyn Fn(&[u32]) -> String),
        token_bytes: token_bytes.as_deref(),
        sample_prompts: prompts,
        progress: !a.no_progress,
        stop_after: a.stop_after,
        deadline: None,
        val_docs: val_docs.as_deref(),
    };
    let s = pretrain_on(&spec, &cfg, &docs, &a.out, resume.as_deref(), &hooks)?;
    println!(
        "step {}  loss {:.4}{}  {:.0} tok/s  checkpoint {}",
        s.step,
        s.last_loss,
        s.last_val_bpb
            .map_or(String::new(), |b| format!("  val bpb {b:.4}")),
        s.tokens_per_s,
        s.last_ckpt.map_or("-".into(), |p| p.display().to_string())
    );
    Ok(())
}
