//! `kiln perplexity`: perplexity of a text file under a released GGUF model or a kiln checkpoint,
//! computed as llama.cpp's `llama-perplexity` does (`kiln_chat::perplexity`) so the two tools'
//! figures compare. Parsing, loading and printing only.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use kiln_chat::gguf_model::GgufChatModel;
use kiln_chat::perplexity::{first_scored, gguf_chunk_logits, perplexity, PerplexityReport};

use super::pretrain::bos_id;

#[derive(Args)]
pub struct PerplexityArgs {
    /// A GGUF file, a released model's name (`kiln models list`), or a kiln checkpoint (or a run
    /// folder with ckpt/latest).
    #[arg(long, alias = "ckpt")]
    pub model: PathBuf,
    /// The text to score (UTF-8).
    #[arg(long)]
    pub file: PathBuf,
    /// Tokens per chunk (llama-perplexity's `-c`); the second half of each chunk is scored.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks (llama-perplexity's `--chunks`) [default: all].
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Tokenizer of a kiln checkpoint [default: the one its run recorded].
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Print one JSON line instead of the sentence.
    #[arg(long)]
    pub json: bool,
    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(a: PerplexityArgs, threads: usize) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let r = if let Some(path) = kiln_data::models::resolve_model(&a.model.to_string_lossy())? {
        let m =
            GgufChatModel::load(&path).with_context(|| format!("loading {}", path.display()))?;
        check_ctx(a.ctx, m.model.config.context)?;
        // As llama-perplexity tokenizes: BOS if the file adds one, special-token text stays text.
        let tokens = m.encode_prompt(&text, false);
        let bos = m.tok.bos.filter(|_| m.tok.add_bos);
        perplexity(
            &tokens,
            a.ctx,
            bos,
            a.chunks,
            m.model.config.vocab,
            |chunk| gguf_chunk_logits(&m.model, chunk),
        )?
    } else {
        let m = kiln_chat::load::load_model(&a.model, a.tokenizer.as_deref(), threads)?;
        check_ctx(a.ctx, m.model.cfg.context)?;
        // kiln's documents start with BOS, as its GGUF export tells llama.cpp to add it.
        let bos = bos_id(&m.tok);
        let mut tokens: Vec<u32> = bos.into_iter().collect();
        tokens.extend(m.tok.encode_ordinary(&text));
        let vocab = m.model.cfg.vocab_size;
        let first = first_scored(a.ctx);
        perplexity(&tokens, a.ctx, bos, a.chunks, vocab, |chunk| {
            let all = m.model.forward_logits(chunk, 1, chunk.len())?;
            Ok(all[first * vocab..(chunk.len() - 1) * vocab].to_vec())
        })?
    };
    print_report(&r, a.json, threads);
    Ok(())
}

fn check_ctx(ctx: usize, model_context: usize) -> anyhow::Result<()> {
    if ctx > model_context {
        bail!("--ctx {ctx} is longer than the model's context of {model_context} positions");
    }
    Ok(())
}

fn print_report(r: &PerplexityReport, json: bool, threads: usize) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "perplexity": r.perplexity,
                "chunks": r.chunks,
                "ctx": r.ctx,
                "text_tokens": r.text_tokens,
                "scored": r.scored,
                "seconds": r.seconds,
                "tokens_per_second": r.tokens_per_second(),
                "threads": threads,
            })
        );
    } else {
        println!(
            "perplexity {:.4} over {} chunks of {} tokens ({} scored of {}), {:.1} tokens/s on {threads} threads",
            r.perplexity,
            r.chunks,
            r.ctx,
            r.scored,
            r.text_tokens,
            r.tokens_per_second()
        );
    }
}
