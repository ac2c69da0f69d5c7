//! `kiln sample`: continue a prompt from a checkpoint (kiln's, or a Hugging Face GPT-2 folder)
//! with a KV cache shared by all samples; prompt text ↔ ids via the tokenizer here, the engine
//! sees ids only.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use kiln_engine::generate::{generate, GenerateOptions};
use kiln_engine::{CpuBackend, SamplingParams};

use super::pretrain::{bos_id, load_tokenizer};

#[derive(Args)]
pub struct SampleArgs {
    /// Checkpoint folder (or a run folder with ckpt/latest, or an HF GPT-2 folder).
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Tokenizer (folder or pretrained name) [default: the one the run was trained with; `gpt2`
    /// for HF GPT-2 folders].
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Prompt text.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file (few-shot prompts, conversation documents).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1)]
    pub num_samples: usize,
    /// Do not prepend the BOS token.
    #[arg(long)]
    pub no_bos: bool,
    /// Recompute the whole sequence per token instead of using the KV cache (for comparison).
    #[arg(long, hide = true)]
    pub no_cache: bool,
    /// Backend: cpu, or cuda (a build with `--features cuda` and an NVIDIA GPU; matmul precision
    /// from KILN_CUDA_PRECISION: bf16 (default), tf32 or f32).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: SampleArgs, threads: usize) -> anyhow::Result<()> {
    let dir = kiln_train::pretrain::resolve_checkpoint(&a.ckpt)?;
    let ck =
        kiln_engine::load_checkpoint(&dir).with_context(|| format!("loading {}", dir.display()))?;
    let tok_name = match (&a.tokenizer, ck.train["config"]["tokenizer"].as_str()) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => t.to_string(),
        (None, None) if ck.train.is_null() => "gpt2".to_string(),
        _ => bail!(
            "{}: the run recorded no tokenizer; pass --tokenizer",
            dir.display()
        ),
    };
    let tok = load_tokenizer(&tok_name)?;
    if tok.vocab_size() > ck.config.vocab_size {
        bail!(
            "tokenizer {tok_name:?} has {} tokens but the model's vocab is {}",
            tok.vocab_size(),
            ck.config.vocab_size
        );
    }
    let text = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => bail!("give --prompt or --prompt-file"),
    };
    let mut ids: Vec<u32> = if a.no_bos {
        Vec::new()
    } else {
        bos_id(&tok).into_iter().collect()
    };
    ids.extend(tok.encode_ordinary(&text));
    if ids.is_empty() {
        bail!("empty prompt");
    }
    let o = GenerateOptions {
        max_tokens: a.max_tokens,
        num_samples: a.num_samples,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
        },
        seed: a.seed,
        stop: bos_id(&tok).into_iter().collect(),
        no_cache: a.no_cache,
    };
    let t0 = std::time::Instant::now();
    let outs = match a.device.as_str() {
        "cpu" => generate(
            &ck.into_model(Arc::new(CpuBackend::new(threads)))?,
            &ids,
            &o,
        )?,
        other => generate_on(other, &ck, &ids, &o)?,
    };
    let n: usize = outs.iter().map(|s| s.len()).sum();
    for (i, s) in outs.iter().enumerate() {
        if outs.len() > 1 {
            println!("--- sample {} ---", i + 1);
        }
        let body: Vec<u32> = s.iter().copied().filter(|t| !o.stop.contains(t)).collect();
        println!("{}{}", text, tok.decode(&body));
    }
    tracing::info!("{n} tokens in {:.2}s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// `kiln sample --device cuda` (the cuda backend, feature `cuda`).
#[cfg(feature = "cuda")]
fn generate_on(
    device: &str,
    ck: &kiln_engine::Checkpoint,
    ids: &[u32],
    o: &GenerateOptions,
) -> anyhow::Result<Vec<Vec<u32>>> {
    if device != "cuda" {
        bail!("unknown --device {device:?} (cpu or cuda)");
    }
    let be = Arc::new(kiln_engine::cuda::CudaBackend::from_env()?);
    Ok(generate(&ck.into_model(be)?, ids, o)?)
}

#[cfg(not(feature = "cuda"))]
fn generate_on(
    device: &str,
    _: &kiln_engine::Checkpoint,
    _: &[u32],
    _: &GenerateOptions,
) -> anyhow::Result<Vec<Vec<u32>>> {
    match device {
        "cuda" => bail!("this kiln was built without CUDA: rebuild with `cargo build --release -p kiln --features cuda`"),
        _ => bail!("unknown --device {device:?} (cpu or cuda)"),
    }
}
