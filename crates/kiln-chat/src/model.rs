//! The model as the evals see it: [`ChatModel`] (next-token logits and greedy generation over
//! token ids) and [`EngineModel`], its implementation on a kiln-engine model. Its own module so
//! the evals and the engine driver ([`crate::engine`]) do not reach into each other.

use crate::engine::stream;
use kiln_engine::{Backend, EngineError, Model, SamplingParams};

/// What an eval needs from a model: next-token logits and greedy generation over token ids.
/// A failed forward is an error, never a silently wrong score.
pub trait ChatModel {
    /// Logits for the token that follows `prompt`.
    fn next_logits(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError>;
    /// Greedy continuation of `prompt`, at most `max_new` tokens, stopping after any id in `stop`
    /// (the stop id is not returned).
    fn generate_greedy(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>, EngineError>;
    /// The model's context length.
    fn context_len(&self) -> usize;
}

/// A kiln-engine model as a [`ChatModel`].
pub struct EngineModel<'m, B: Backend> {
    pub model: &'m Model<B>,
}

impl<B: Backend> ChatModel for EngineModel<'_, B> {
    fn next_logits(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        let vs = self.model.cfg.vocab_size;
        let logits = self.model.forward_logits(prompt, 1, prompt.len())?;
        Ok(logits[(prompt.len() - 1) * vs..].to_vec())
    }

    fn generate_greedy(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>, EngineError> {
        let sp = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        let mut out = Vec::new();
        stream(self.model, prompt, max_new, stop, &sp, 0, |id, _| {
            out.push(id);
            true
        })?;
        Ok(out)
    }

    fn context_len(&self) -> usize {
        self.model.cfg.context
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_engine::{CpuBackend, Generator, ModelConfig};
    use std::sync::Arc;

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn greedy_generation_matches_engine_and_stops() {
        let be = Arc::new(CpuBackend::new(1));
        let model = Model::new(be, ModelConfig::gpt2(64, 1, 2, 16, 32), 3).unwrap();
        let mut m = EngineModel { model: &model };
        let prompt = [1u32, 2, 3];
        let out = m.generate_greedy(&prompt, 10, &[]).unwrap();
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
        assert!(m
            .generate_greedy(&prompt, 10, &[out[0]])
            .unwrap()
            .is_empty());
        // Context limit: generation stops at the window.
        let long: Vec<u32> = (0..30).map(|i| i % 60).collect();
        assert!(m.generate_greedy(&long, 100, &[]).unwrap().len() <= 2);
    }

    #[test]
    fn last_position_logits_equal_a_full_forward_and_the_kv_cache() {
        let be = Arc::new(CpuBackend::new(1));
        let model = Model::new(be, ModelConfig::gpt2(64, 2, 2, 16, 32), 5).unwrap();
        let mut m = EngineModel { model: &model };
        let prompt = [1u32, 2, 3, 40, 5];
        let l = m.next_logits(&prompt).unwrap();
        assert_eq!(l.len(), 64);
        // Causal attention: position 4 of a longer sequence sees exactly the prompt.
        let longer = [1u32, 2, 3, 40, 5, 9, 17];
        let full = model.forward_logits(&longer, 1, longer.len()).unwrap();
        let d = max_diff(&l, &full[4 * 64..5 * 64]);
        assert!(d < 1e-4, "full forward differs by {d}");
        // The KV-cache prefill that generation uses agrees too.
        let mut g = Generator::new(&model, 1, 32).unwrap();
        let d = max_diff(&l, &g.prefill(&prompt).unwrap());
        assert!(d < 1e-4, "prefill differs by {d}");
        // The values are real logits, not a placeholder.
        assert!(l.iter().any(|&x| x != 0.0));
    }

    #[test]
    fn a_failed_forward_is_an_error() {
        let be = Arc::new(CpuBackend::new(1));
        let model = Model::new(be, ModelConfig::gpt2(64, 1, 2, 16, 32), 3).unwrap();
        let mut m = EngineModel { model: &model };
        // Id 99 is outside the 64-token vocabulary.
        assert!(m.next_logits(&[1, 99]).is_err());
        assert!(m.generate_greedy(&[1, 99], 4, &[]).is_err());
    }
}
