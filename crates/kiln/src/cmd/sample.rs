//! `kiln sample`: continue a prompt from a checkpoint (kiln's, or a Hugging Face GPT-2 folder)
//! with a KV cache shared by all samples; prompt text ↔ ids via the tokenizer here, the engine
//! sees ids only.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use kiln_engine::generate::{generate, GenerateOptions};
use kiln_engine::Checkpoint;
use kiln_train::device::{with_backend, Device, OnBackend, TrainBackend};
use kiln_train::TrainError;

use super::pretrain::{bos_id, load_tokenizer};
use super::{DeviceArgs, SamplingArgs};

#[derive(Args)]
pub struct SampleArgs {
    /// Checkpoint folder (or a run folder with ckpt/latest, or an HF GPT-2 folder), a GGUF file,
    /// or a released model's name (`kiln models list`).
    #[arg(long, alias = "ckpt")]
    pub model: PathBuf,
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
    #[command(flatten)]
    pub sampling: SamplingArgs,
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
    #[command(flatten)]
    pub device: DeviceArgs,
    /// After the samples, print one JSON line with the generation's tokens, seconds and
    /// tokens/s (model load and tokenization excluded).
    #[arg(long)]
    pub stats: bool,
    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

/// The model built on the chosen backend, then `generate`; returns the samples and the seconds
/// `generate` took.
struct Sample<'a> {
    ck: &'a Checkpoint,
    ids: &'a [u32],
    o: &'a GenerateOptions,
}

impl OnBackend for Sample<'_> {
    type Output = (Vec<Vec<u32>>, f64, String);
    fn run<B: TrainBackend>(self, be: Arc<B>) -> Result<Self::Output, TrainError> {
        let model = self.ck.into_model(be.clone())?;
        let t0 = std::time::Instant::now();
        let outs = generate(&model, self.ids, self.o)?;
        Ok((outs, t0.elapsed().as_secs_f64(), be.label()))
    }
}

pub fn run(a: SampleArgs, threads: usize) -> anyhow::Result<()> {
    // A GGUF file or a catalogue name (`smollm2-135m`) is a released model.
    if let Some(path) = kiln_data::models::resolve_model(&a.model.to_string_lossy())? {
        return super::gguf::sample(&path, &a);
    }
    let spec = a.device.spec(Device::Cpu)?;
    let dir = kiln_engine::resolve_checkpoint(&a.model)?;
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
        sampling: a.sampling.params(),
        seed: a.seed,
        stop: bos_id(&tok).into_iter().collect(),
        no_cache: a.no_cache,
    };
    let (outs, secs, device) = with_backend(
        &spec,
        threads,
        Sample {
            ck: &ck,
            ids: &ids,
            o: &o,
        },
    )?;
    let n: usize = outs.iter().map(|s| s.len()).sum();
    for (i, s) in outs.iter().enumerate() {
        if outs.len() > 1 {
            println!("--- sample {} ---", i + 1);
        }
        let body: Vec<u32> = s.iter().copied().filter(|t| !o.stop.contains(t)).collect();
        println!("{}{}", text, tok.decode(&body));
    }
    tracing::info!("{n} tokens in {secs:.2}s on {device}");
    if a.stats {
        println!(
            "{}",
            serde_json::json!({"sample": "stats", "device": device, "num_samples": outs.len(),
                "prompt_tokens": ids.len(), "tokens": n, "seconds": secs,
                "tokens_per_s": n as f64 / secs.max(1e-9)})
        );
    }
    Ok(())
}
