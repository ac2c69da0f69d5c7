//! Decoding many independent sequences together: [`BatchDecoder`], a KV cache of `slots`
//! sequences that may each sit at a different position. A server's scheduler (continuous
//! batching: requests join and leave between steps) and RL rollouts (one prompt forked into a
//! group) both drive a model through this one trait, for kiln's own models and GGUF models alike.
//!
//! [`SequentialDecoder`] and [`SequentialLlama`] are the reference implementations: one cache per
//! slot, stepped one after another. They define the semantics the batched implementations are
//! tested against.

use crate::backend::Backend;
use crate::generate::Generator;
use crate::llama::{LlamaModel, LlamaSession};
use crate::model::Model;
use crate::EngineError;

/// A KV cache of [`slots`](BatchDecoder::slots) independent sequences of up to
/// [`capacity`](BatchDecoder::capacity) tokens each.
pub trait BatchDecoder {
    /// Number of sequences the cache holds.
    fn slots(&self) -> usize;
    /// Most tokens one slot can hold (prompt + generated).
    fn capacity(&self) -> usize;
    /// Logits per position.
    fn vocab(&self) -> usize;
    /// Tokens now in `slot`'s cache.
    fn len(&self, slot: usize) -> usize;
    /// Clear `slot`, run `prompt` into it; returns the logits `[vocab]` after its last token.
    fn prefill(&mut self, slot: usize, prompt: &[u32]) -> Result<Vec<f32>, EngineError>;
    /// Append `tokens[i]` to slot `slots[i]` (distinct slots, each at its own position);
    /// returns logits `[slots.len(), vocab]` in the same order.
    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<Vec<f32>, EngineError>;
    /// Make `dst` a copy of `src` (a prompt prefilled once, sampled `n` ways).
    fn fork(&mut self, src: usize, dst: usize) -> Result<(), EngineError>;
    /// Forget `slot`'s tokens (its memory stays allocated for the next sequence).
    fn clear(&mut self, slot: usize);
}

fn check_slot(slot: usize, slots: usize) -> Result<(), EngineError> {
    if slot < slots {
        Ok(())
    } else {
        Err(EngineError::Shape(format!(
            "slot {slot} out of range ({slots} slots)"
        )))
    }
}

fn check_step(slots: &[usize], tokens: &[u32], n: usize) -> Result<(), EngineError> {
    if slots.len() != tokens.len() {
        return Err(EngineError::Shape(format!(
            "step: {} tokens for {} slots",
            tokens.len(),
            slots.len()
        )));
    }
    for (i, &s) in slots.iter().enumerate() {
        check_slot(s, n)?;
        if slots[..i].contains(&s) {
            return Err(EngineError::Shape(format!("step: slot {s} given twice")));
        }
    }
    Ok(())
}

/// Reference [`BatchDecoder`] over a kiln model: one single-row [`Generator`] per slot, stepped in
/// turn. Each slot remembers its tokens so that `fork` can replay them.
pub struct SequentialDecoder<'m, B: Backend> {
    gens: Vec<Generator<'m, B>>,
    history: Vec<Vec<u32>>,
    capacity: usize,
    vocab: usize,
}

impl<'m, B: Backend> SequentialDecoder<'m, B> {
    pub fn new(model: &'m Model<B>, slots: usize, capacity: usize) -> Result<Self, EngineError> {
        let gens = (0..slots)
            .map(|_| Generator::new(model, 1, capacity))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SequentialDecoder {
            gens,
            history: vec![Vec::new(); slots],
            capacity,
            vocab: model.cfg.vocab_size,
        })
    }
}

impl<B: Backend> BatchDecoder for SequentialDecoder<'_, B> {
    fn slots(&self) -> usize {
        self.gens.len()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn len(&self, slot: usize) -> usize {
        self.history[slot].len()
    }
    fn prefill(&mut self, slot: usize, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        check_slot(slot, self.gens.len())?;
        self.history[slot].clear();
        let logits = self.gens[slot].prefill(prompt)?;
        self.history[slot] = prompt.to_vec();
        Ok(logits)
    }
    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        check_step(slots, tokens, self.gens.len())?;
        let mut out = Vec::with_capacity(slots.len() * self.vocab);
        for (&s, &t) in slots.iter().zip(tokens) {
            if self.history[s].is_empty() {
                return Err(EngineError::Shape(format!(
                    "step: slot {s} is empty (prefill it first)"
                )));
            }
            out.extend(self.gens[s].step(&[t])?);
            self.history[s].push(t);
        }
        Ok(out)
    }
    fn fork(&mut self, src: usize, dst: usize) -> Result<(), EngineError> {
        check_slot(src, self.gens.len())?;
        check_slot(dst, self.gens.len())?;
        if src != dst {
            let h = self.history[src].clone();
            if h.is_empty() {
                self.clear(dst);
            } else {
                self.prefill(dst, &h)?;
            }
        }
        Ok(())
    }
    fn clear(&mut self, slot: usize) {
        self.history[slot].clear();
    }
}

/// Reference [`BatchDecoder`] over a GGUF llama model: one [`LlamaSession`] per slot.
pub struct SequentialLlama<'m> {
    model: &'m LlamaModel,
    sessions: Vec<LlamaSession>,
    capacity: usize,
}

impl<'m> SequentialLlama<'m> {
    pub fn new(model: &'m LlamaModel, slots: usize, capacity: usize) -> Self {
        let sessions: Vec<LlamaSession> = (0..slots).map(|_| model.session(capacity)).collect();
        let capacity = sessions.first().map_or(0, LlamaSession::capacity);
        SequentialLlama {
            model,
            sessions,
            capacity,
        }
    }
}

impl BatchDecoder for SequentialLlama<'_> {
    fn slots(&self) -> usize {
        self.sessions.len()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn vocab(&self) -> usize {
        self.model.config.vocab
    }
    fn len(&self, slot: usize) -> usize {
        self.sessions[slot].pos()
    }
    fn prefill(&mut self, slot: usize, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        check_slot(slot, self.sessions.len())?;
        if prompt.is_empty() {
            return Err(EngineError::Shape("empty prompt".into()));
        }
        let s = &mut self.sessions[slot];
        s.reset();
        let mut logits = Vec::new();
        for &t in prompt {
            logits = self.model.forward(s, t)?.to_vec();
        }
        Ok(logits)
    }
    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        check_step(slots, tokens, self.sessions.len())?;
        let mut out = Vec::with_capacity(slots.len() * self.vocab());
        for (&s, &t) in slots.iter().zip(tokens) {
            if self.sessions[s].pos() == 0 {
                return Err(EngineError::Shape(format!(
                    "step: slot {s} is empty (prefill it first)"
                )));
            }
            out.extend_from_slice(self.model.forward(&mut self.sessions[s], t)?);
        }
        Ok(out)
    }
    fn fork(&mut self, src: usize, dst: usize) -> Result<(), EngineError> {
        check_slot(src, self.sessions.len())?;
        check_slot(dst, self.sessions.len())?;
        if src != dst {
            self.sessions[dst] = self.sessions[src].clone();
        }
        Ok(())
    }
    fn clear(&mut self, slot: usize) {
        self.sessions[slot].reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CpuBackend, ModelConfig};
    use std::sync::Arc;

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn slots_at_different_positions_match_their_own_forward() {
        let be = Arc::new(CpuBackend::new(1));
        let model = Model::new(be, ModelConfig::gpt2(64, 2, 2, 16, 32), 7).unwrap();
        let mut d = SequentialDecoder::new(&model, 3, 32).unwrap();
        d.prefill(0, &[1, 2, 3]).unwrap();
        d.prefill(2, &[5, 6, 7, 8, 9]).unwrap();
        d.fork(0, 1).unwrap();
        assert_eq!((d.len(0), d.len(1), d.len(2)), (3, 3, 5));
        let out = d.step(&[2, 0, 1], &[10, 11, 12]).unwrap();
        let want = |ids: &[u32]| {
            let l = model.forward_logits(ids, 1, ids.len()).unwrap();
            l[(ids.len() - 1) * 64..].to_vec()
        };
        assert!(max_diff(&out[..64], &want(&[5, 6, 7, 8, 9, 10])) < 1e-4);
        assert!(max_diff(&out[64..128], &want(&[1, 2, 3, 11])) < 1e-4);
        assert!(max_diff(&out[128..], &want(&[1, 2, 3, 12])) < 1e-4);
        // Bad calls are errors, not panics.
        assert!(d.step(&[0, 0], &[1, 2]).is_err());
        assert!(d.step(&[3], &[1]).is_err());
        d.clear(1);
        assert!(d.step(&[1], &[1]).is_err());
    }
}
