//! Driving kiln-engine for chat: [`EngineModel`] (the [`ChatModel`] the evals use) and
//! [`stream`] (token-by-token sampling with a callback, UTF-8 safe) that `kiln chat` uses.

use crate::evals::ChatModel;
use crate::format::Codec;
use kiln_engine::{sample_token, Backend, EngineError, Generator, Model, Rng, SamplingParams};

/// A kiln-engine model as a [`ChatModel`].
pub struct EngineModel<'m, B: Backend> {
    pub model: &'m Model<B>,
}

impl<B: Backend> ChatModel for EngineModel<'_, B> {
    fn next_logits(&mut self, prompt: &[u32]) -> Vec<f32> {
        let vs = self.model.cfg.vocab_size;
        match self.model.forward_logits(prompt, 1, prompt.len()) {
            Ok(l) => l[(prompt.len() - 1) * vs..].to_vec(),
            Err(e) => {
                tracing::warn!("forward failed: {e}");
                vec![0.0; vs]
            }
        }
    }

    fn generate_greedy(&mut self, prompt: &[u32], max_new: usize, stop: &[u32]) -> Vec<u32> {
        let sp = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        let mut out = Vec::new();
        let r = stream(self.model, prompt, max_new, stop, &sp, 0, |id, _| {
            out.push(id);
            true
        });
        if let Err(e) = r {
            tracing::warn!("generation failed: {e}");
        }
        out
    }

    fn context_len(&self) -> usize {
        self.model.cfg.context
    }
}

/// Why a [`stream`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was sampled (not passed to the callback).
    StopToken(u32),
    /// `max_new` tokens were produced.
    MaxTokens,
    /// The context window is full.
    ContextFull,
    /// The callback asked to stop.
    Callback,
}

/// Samples a continuation of `prompt` one token at a time (KV cache: prefill once, then one step
/// per token), calling `on_token(id, logits)` for each; it returns false to stop early.
pub fn stream<B: Backend>(
    model: &Model<B>,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
    sampling: &SamplingParams,
    seed: u64,
    mut on_token: impl FnMut(u32, &[f32]) -> bool,
) -> Result<StopReason, EngineError> {
    let ctx = model.cfg.context;
    model.check_ids(prompt)?;
    if prompt.is_empty() || prompt.len() >= ctx {
        return Err(EngineError::Shape(format!(
            "prompt of {} tokens must be in 1..{ctx}",
            prompt.len()
        )));
    }
    let mut g = Generator::new(model, 1, ctx)?;
    let mut logits = g.prefill(prompt)?;
    let mut rng = Rng::new(seed);
    for len in prompt.len()..prompt.len() + max_new {
        let id = sample_token(&logits, sampling, &mut rng);
        if stop.contains(&id) {
            return Ok(StopReason::StopToken(id));
        }
        if !on_token(id, &logits) {
            return Ok(StopReason::Callback);
        }
        if len + 1 >= ctx {
            return Ok(StopReason::ContextFull);
        }
        logits = g.step(&[id])?;
    }
    Ok(StopReason::MaxTokens)
}

/// Turns a stream of token ids into text pieces without splitting UTF-8 characters.
#[derive(Default)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    /// Adds one token; returns the text that is now complete.
    pub fn push(&mut self, codec: &dyn Codec, id: u32) -> String {
        self.pending.extend(codec.decode_bytes(&[id]));
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let s = s.to_string();
                self.pending.clear();
                s
            }
            Err(e) => {
                let good = e.valid_up_to();
                // An invalid (not merely incomplete) sequence is flushed lossily.
                let cut = if e.error_len().is_some() {
                    self.pending.len()
                } else {
                    good
                };
                let s = String::from_utf8_lossy(&self.pending[..cut]).into_owned();
                self.pending.drain(..cut);
                s
            }
        }
    }
    /// Whatever is left (lossy).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testing::ByteCodec;
    use kiln_engine::{CpuBackend, ModelConfig};
    use std::sync::Arc;

    #[test]
    fn text_stream_keeps_multibyte_characters_whole() {
        let c = ByteCodec {
            with_specials: true,
        };
        let mut ts = TextStream::default();
        let bytes = "é!".as_bytes();
        assert_eq!(ts.push(&c, bytes[0] as u32), "");
        assert_eq!(ts.push(&c, bytes[1] as u32), "é");
        assert_eq!(ts.push(&c, bytes[2] as u32), "!");
        assert_eq!(ts.finish(), "");
    }

    #[test]
    fn greedy_generation_matches_engine_and_stops() {
        let be = Arc::new(CpuBackend::new(1));
        let model = Model::new(be, ModelConfig::gpt2(64, 1, 2, 16, 32), 3).unwrap();
        let mut m = EngineModel { model: &model };
        let prompt = [1u32, 2, 3];
        let out = m.generate_greedy(&prompt, 10, &[]);
        assert_eq!(out.len(), 10);
        let want = kiln_engine::generate::generate(
            &model,
            &prompt,
            &kiln_engine::generate::GenerateOptions {
                max_tokens: 10,
                num_samples: 1,
                seed: 0,
                stop: vec![],
                no_cache: true,
                sampling: SamplingParams {
                    temperature: 0.0,
                    ..Default::default()
                },
            },
        )
        .unwrap();
        assert_eq!(out, want[0]);
        // Stopping on the first generated token yields nothing.
        assert!(m.generate_greedy(&prompt, 10, &[out[0]]).is_empty());
        // The last-position logits agree with a full forward.
        let l = m.next_logits(&prompt);
        assert_eq!(l.len(), 64);
        // Context limit: generation stops at the window.
        let long: Vec<u32> = (0..30).map(|i| i % 60).collect();
        assert!(m.generate_greedy(&long, 100, &[]).len() <= 2);
    }
}
