//! Perplexity of a text the way llama.cpp's `llama-perplexity` computes it (tools/perplexity,
//! `perplexity()` without `--ppl-stride`), so the two tools' figures compare: the whole text is
//! tokenized once (BOS first when the model adds one), cut into `len / ctx` non-overlapping
//! chunks of `ctx` tokens (the tail that does not fill a chunk is dropped), each chunk run from an
//! empty cache with its first token replaced by BOS (when the model adds one), and only the
//! second half scored: the logits at positions `ctx/2 .. ctx-1` predict the tokens after them, so
//! every scored token has at least `ctx/2` tokens of context. Perplexity is
//! `exp(mean negative log-likelihood)` over all scored tokens; the log-softmax is summed in f64,
//! as llama.cpp does.
//!
//! The model is a closure from a chunk's ids to the logits of the scored positions, so GGUF
//! models and kiln checkpoints share this code ([`gguf_chunk_logits`] is the GGUF one).

use kiln_engine::llama::LlamaModel;
use kiln_engine::EngineError;

/// What [`perplexity`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    pub perplexity: f64,
    /// Tokens of the whole text (BOS included when added).
    pub text_tokens: usize,
    pub chunks: usize,
    pub ctx: usize,
    /// Tokens whose probability was scored: `chunks · (ctx − ctx/2 − 1)`.
    pub scored: usize,
    /// Seconds spent in the model (tokenization excluded).
    pub seconds: f64,
}

impl PerplexityReport {
    /// Tokens run through the model per second.
    pub fn tokens_per_second(&self) -> f64 {
        (self.chunks * self.ctx) as f64 / self.seconds.max(1e-9)
    }
}

/// The position of the first logit row that is scored in a chunk of `ctx` tokens.
pub fn first_scored(ctx: usize) -> usize {
    ctx / 2
}

/// Perplexity of `tokens` (the whole text, as tokenized with BOS if the model adds one):
/// `chunk_logits(chunk)` must return the logits of positions `first_scored(ctx) .. ctx - 1`
/// of `chunk`, row by row (`vocab` each). `bos`: the token that replaces each chunk's first
/// one (`None` when the model adds no BOS). `max_chunks` caps the chunks (llama-perplexity's
/// `--chunks`).
pub fn perplexity(
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    max_chunks: Option<usize>,
    vocab: usize,
    mut chunk_logits: impl FnMut(&[u32]) -> Result<Vec<f32>, EngineError>,
) -> Result<PerplexityReport, EngineError> {
    if ctx < 4 {
        return Err(EngineError::Config(format!(
            "perplexity: a context of {ctx} tokens leaves nothing to score (at least 4)"
        )));
    }
    if tokens.len() < 2 * ctx {
        return Err(EngineError::Config(format!(
            "perplexity: the text is {} tokens; a context of {ctx} needs at least {} \
             (llama-perplexity's rule: two chunks)",
            tokens.len(),
            2 * ctx
        )));
    }
    let chunks = (tokens.len() / ctx).min(max_chunks.unwrap_or(usize::MAX));
    let first = first_scored(ctx);
    let rows = ctx - 1 - first;
    let t0 = std::time::Instant::now();
    let mut nll = 0f64;
    let mut chunk = vec![0u32; ctx];
    for c in 0..chunks {
        chunk.copy_from_slice(&tokens[c * ctx..(c + 1) * ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let logits = chunk_logits(&chunk)?;
        if logits.len() != rows * vocab {
            return Err(EngineError::Shape(format!(
                "perplexity: {} logits for {rows} rows of {vocab}",
                logits.len()
            )));
        }
        for (row, &next) in logits.chunks_exact(vocab).zip(&chunk[first + 1..]) {
            nll -= log_softmax_at(row, next as usize);
        }
    }
    let scored = chunks * rows;
    Ok(PerplexityReport {
        perplexity: (nll / scored as f64).exp(),
        text_tokens: tokens.len(),
        chunks,
        ctx,
        scored,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// `log softmax(logits)[at]`, the sum of exponentials in f64.
fn log_softmax_at(logits: &[f32], at: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (logits[at] - max) as f64 - sum.ln()
}

/// Prompts are run through a GGUF model in pieces of this many tokens (bounds activations).
const PIECE: usize = 512;

/// [`perplexity`]'s closure for a GGUF model: the chunk from an empty cache, in pieces, keeping
/// the logits of the scored positions only.
pub fn gguf_chunk_logits(model: &LlamaModel, chunk: &[u32]) -> Result<Vec<f32>, EngineError> {
    let ctx = chunk.len();
    let first = first_scored(ctx);
    let mut s = model.session(ctx);
    let mut out = Vec::with_capacity((ctx - 1 - first) * model.config.vocab);
    for (p, piece) in chunk.chunks(PIECE).enumerate() {
        let start = p * PIECE;
        let wanted: Vec<usize> = (0..piece.len())
            .filter(|&i| (first..ctx - 1).contains(&(start + i)))
            .collect();
        let seq = vec![0; piece.len()];
        let logits = model.forward_batch(&mut [&mut s], &seq, piece, &wanted)?;
        out.extend_from_slice(&logits);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "model" whose logits give the next token (its position's id + 1) probability `p` and
    /// spread the rest evenly: perplexity is known in closed form.
    #[test]
    fn scores_the_second_half_of_each_chunk_as_llama_perplexity() {
        let vocab = 8;
        let p: f64 = 0.5;
        let ctx = 10;
        // Chunk c holds ids (c + i) % vocab; 3 full chunks and a tail of 5 that is dropped.
        let tokens: Vec<u32> = (0..35)
            .map(|i| ((i / ctx + i % ctx) % vocab) as u32)
            .collect();
        let bos = 7;
        let mut seen = Vec::new();
        let r = perplexity(&tokens, ctx, Some(bos), None, vocab, |chunk| {
            seen.push(chunk.to_vec());
            let mut out = Vec::new();
            for pos in first_scored(ctx)..ctx - 1 {
                let next = chunk[pos + 1] as usize;
                let rest = ((1.0 - p) / (vocab - 1) as f64).ln() as f32;
                out.extend((0..vocab).map(|v| if v == next { p.ln() as f32 } else { rest }));
            }
            Ok(out)
        })
        .unwrap();
        assert_eq!((r.chunks, r.scored, r.text_tokens), (3, 3 * 4, 35));
        // Every scored token had probability p.
        assert!((r.perplexity - 1.0 / p).abs() < 1e-5, "{}", r.perplexity);
        // Each chunk starts with BOS, the rest is the text's.
        for (c, chunk) in seen.iter().enumerate() {
            assert_eq!(chunk[0], bos);
            assert_eq!(chunk[1..], tokens[c * ctx + 1..(c + 1) * ctx]);
        }
        // --chunks 2
        let r2 = perplexity(&tokens, ctx, None, Some(2), vocab, |_| {
            Ok(vec![0.0; 4 * vocab])
        })
        .unwrap();
        assert_eq!(r2.chunks, 2);
        assert!((r2.perplexity - vocab as f64).abs() < 1e-9);
    }

    #[test]
    fn too_short_a_text_says_how_many_tokens_it_needs() {
        let e = perplexity(&[1; 15], 8, None, None, 4, |_| unreachable!())
            .unwrap_err()
            .to_string();
        assert!(e.contains("15 tokens") && e.contains("at least 16"), "{e}");
    }
}
