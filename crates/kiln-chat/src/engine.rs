//! Driving kiln-engine for chat: [`stream`] (token-by-token sampling with a callback, UTF-8 safe
//! through [`TextStream`]) that `kiln chat` and [`crate::model::EngineModel`] use.

use crate::format::Codec;
use kiln_engine::{sample_token, Backend, EngineError, Generator, Model, Rng, SamplingParams};

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
}
