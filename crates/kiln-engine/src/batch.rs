//! Decoding many independent sequences together: [`BatchDecoder`], a KV cache of `slots`
//! sequences that may each sit at a different position. A server's scheduler (continuous
//! batching: requests join and leave between steps) and RL rollouts (one prompt forked into a
//! group) both drive a model through this one trait, for kiln's own models and GGUF models alike.
//!
//! [`BatchedDecoder`](crate::BatchedDecoder) (in [`crate::generate`]) is the implementation for
//! kiln models: one forward per step over every listed slot. [`SequentialDecoder`] and
//! [`SequentialLlama`] are the reference implementations: one cache per slot, stepped one after
//! another. They define the semantics the batched implementations are tested against.

use crate::backend::Backend;
use crate::generate::Generator;
use crate::llama::{LlamaModel, LlamaSession};
use crate::model::Model;
use crate::EngineError;

/// A KV cache of [`slots`](BatchDecoder::slots) independent sequences of up to
/// [`capacity`](BatchDecoder::capacity) tokens each.
pub trait BatchDecoder: Send {
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
    /// [`prefill`](Self::prefill) for a slot whose cache already holds `prompt[..keep]` (the
    /// caller tracks what each slot holds: a server reusing the system prompt and earlier turns
    /// of a conversation): keeps those `keep` positions and runs only the rest. `keep` must be at
    /// most [`len`](Self::len) and less than `prompt.len()` (at least one token runs, for the
    /// logits). Decoders that cannot cut a cache short prefill the whole prompt (the default).
    fn prefill_reusing(
        &mut self,
        slot: usize,
        keep: usize,
        prompt: &[u32],
    ) -> Result<Vec<f32>, EngineError> {
        let _ = keep;
        self.prefill(slot, prompt)
    }
    /// Append `tokens[i]` to slot `slots[i]` (distinct slots, each at its own position);
    /// returns logits `[slots.len(), vocab]` in the same order.
    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<Vec<f32>, EngineError>;
    /// Make `dst` a copy of `src` (a prompt prefilled once, sampled `n` ways).
    fn fork(&mut self, src: usize, dst: usize) -> Result<(), EngineError>;
    /// Forget `slot`'s tokens (its memory stays allocated for the next sequence).
    fn clear(&mut self, slot: usize);
}

pub(crate) fn check_slot(slot: usize, slots: usize) -> Result<(), EngineError> {
    if slot < slots {
        Ok(())
    } else {
        Err(EngineError::Shape(format!(
            "slot {slot} out of range ({slots} slots)"
        )))
    }
}

/// The checks every [`BatchDecoder::prefill_reusing`] makes before it cuts `slot` (holding
/// `len` tokens) back to `keep`.
pub(crate) fn check_reuse(keep: usize, len: usize, prompt: &[u32]) -> Result<(), EngineError> {
    if keep > len || keep >= prompt.len() {
        return Err(EngineError::Shape(format!(
            "prefill_reusing: keep {keep} of a slot holding {len} for a prompt of {}",
            prompt.len()
        )));
    }
    Ok(())
}

pub(crate) fn check_step(slots: &[usize], tokens: &[u32], n: usize) -> Result<(), EngineError> {
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
    use crate::{Backend, CpuBackend, ModelConfig};
    use std::sync::Arc;

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Run `op` on both decoders: the same logits (within 1e-4) and slot lengths after it.
    fn both(
        a: &mut dyn BatchDecoder,
        b: &mut dyn BatchDecoder,
        op: &dyn Fn(&mut dyn BatchDecoder) -> Vec<f32>,
    ) {
        let (x, y) = (op(a), op(b));
        assert!(max_diff(&x, &y) < 1e-4, "max diff {}", max_diff(&x, &y));
        for s in 0..a.slots() {
            assert_eq!(a.len(s), b.len(s), "slot {s}");
        }
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

    /// Drive a batched and a sequential decoder through the same script (slots at different
    /// positions, steps over subsets in any order, forks, clears, reuse of a cleared slot) and
    /// compare every logit.
    fn batched_matches_sequential(cfg: ModelConfig) {
        let be = Arc::new(CpuBackend::new(2));
        let vs = cfg.vocab_size;
        let model = Model::new(be, cfg, 11).unwrap();
        let mut a = crate::BatchedDecoder::new(&model, 5, 40).unwrap();
        let mut b = SequentialDecoder::new(&model, 5, 40).unwrap();
        let mut rng = crate::Rng::new(5);
        let mut toks =
            |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(vs as u64) as u32).collect() };
        let (p0, p2, p4) = (toks(3), toks(7), toks(1));
        both(&mut a, &mut b, &|d| d.prefill(0, &p0).unwrap());
        both(&mut a, &mut b, &|d| d.prefill(2, &p2).unwrap());
        // keeping the first 5 tokens slot 2 holds and running 2 new ones equals prefilling all 7
        let mut q = p2[..5].to_vec();
        q.extend(toks(2));
        both(&mut a, &mut b, &|d| d.prefill_reusing(2, 5, &q).unwrap());
        assert!(a
            .prefill_reusing(2, 8, &[q.clone(), toks(2)].concat())
            .is_err());
        assert!(a.prefill_reusing(2, 7, &q).is_err());
        both(&mut a, &mut b, &|d| d.prefill(4, &p4).unwrap());
        both(&mut a, &mut b, &|d| {
            d.fork(0, 1).unwrap();
            Vec::new()
        });
        for round in 0..6 {
            let t = toks(5);
            // all slots, out of order, then a subset
            both(&mut a, &mut b, &|d| d.step(&[2, 0, 4, 1], &t[..4]).unwrap());
            both(&mut a, &mut b, &|d| d.step(&[1, 4], &t[..2]).unwrap());
            if round == 2 {
                let p = toks(4);
                both(&mut a, &mut b, &|d| {
                    d.clear(0);
                    d.fork(4, 3).unwrap();
                    d.prefill(0, &p).unwrap()
                });
                both(&mut a, &mut b, &|d| d.step(&[3, 0], &t[3..]).unwrap());
            }
        }
        // consecutive slots at one position take the block path: same answer
        both(&mut a, &mut b, &|d| {
            d.fork(1, 2).unwrap();
            d.step(&[1, 2], &[1, 2]).unwrap()
        });
        // extending a slot where it stands equals prefilling the whole sequence
        let mut ext = crate::BatchedDecoder::new(&model, 1, 40).unwrap();
        ext.prefill(0, &p2[..3]).unwrap();
        let x = ext.extend(0, &p2[3..]).unwrap();
        let y = ext.prefill(0, &p2).unwrap();
        assert!(max_diff(&x, &y) < 1e-4);
        // bad calls are errors, and leave the decoder usable
        assert!(a.step(&[0, 0], &[1, 2]).is_err());
        assert!(a.step(&[5], &[1]).is_err());
        assert!(a.step(&[0], &[vs as u32]).is_err());
        a.clear(1);
        assert!(a.step(&[1], &[1]).is_err());
        assert!(a.prefill(1, &[1; 41]).is_err());
        assert!(a.fork(0, 9).is_err());
        assert!(crate::BatchedDecoder::new(&model, 1, model.cfg.context + 1).is_err());
    }

    /// Forked slots read their source's prompt instead of a copy (cpu): through forks of forks,
    /// steps that group a prompt's samples (prompts longer than a chunk of blocks), a tool's
    /// output appended to a sample, and the source rewritten below what its samples share, every
    /// logit still equals the sequential decoder's.
    #[test]
    fn forked_slots_share_the_prompt_and_match_the_sequential_one() {
        let be = Arc::new(CpuBackend::new(2));
        assert!(be.shares_kv_prefix());
        let cfg = ModelConfig::modern(40, 2, 4, 2, 32, 160);
        let vs = cfg.vocab_size;
        let model = Model::new(be, cfg, 3).unwrap();
        let mut a = crate::BatchedDecoder::new(&model, 6, 150).unwrap();
        let mut b = SequentialDecoder::new(&model, 6, 150).unwrap();
        let mut rng = crate::Rng::new(9);
        let mut toks =
            |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(vs as u64) as u32).collect() };
        let (long, short) = (toks(70), toks(20));
        // what each slot holds, to rebuild prompts for prefill_reusing
        let mut hist = vec![
            long.clone(),
            long.clone(),
            long.clone(),
            long.clone(),
            short.clone(),
        ];
        hist.push(short.clone());
        both(&mut a, &mut b, &|d| d.prefill(0, &long).unwrap());
        both(&mut a, &mut b, &|d| d.prefill(4, &short).unwrap());
        both(&mut a, &mut b, &|d| {
            for dst in 1..4 {
                d.fork(0, dst).unwrap();
            }
            d.fork(4, 5).unwrap();
            Vec::new()
        });
        for round in 0..8 {
            let t = toks(6);
            both(&mut a, &mut b, &|d| {
                d.step(&[0, 1, 2, 3, 4, 5], &t).unwrap()
            });
            hist.iter_mut().zip(&t).for_each(|(h, &x)| h.push(x));
            match round {
                // a sample forked from a sample: shares the prompt, copies its own tokens
                2 => {
                    both(&mut a, &mut b, &|d| {
                        d.fork(2, 3).unwrap();
                        Vec::new()
                    });
                    hist[3] = hist[2].clone();
                }
                // a tool's output appended to a sample where it stands
                3 => {
                    let at = hist[1].len();
                    hist[1].extend(toks(5));
                    let seq = hist[1].clone();
                    both(&mut a, &mut b, &|d| d.prefill_reusing(1, at, &seq).unwrap());
                }
                // the source rewritten from position 30: its samples keep their prompt
                5 => {
                    hist[0] = [&long[..30], &toks(10)[..]].concat();
                    let seq = hist[0].clone();
                    both(&mut a, &mut b, &|d| d.prefill_reusing(0, 30, &seq).unwrap());
                }
                _ => {}
            }
        }
    }

    #[test]
    fn batched_decoder_matches_the_sequential_one_gpt2() {
        batched_matches_sequential(ModelConfig::gpt2(50, 2, 2, 16, 64));
    }

    #[test]
    fn batched_decoder_matches_the_sequential_one_modern_gqa() {
        batched_matches_sequential(ModelConfig::modern(50, 2, 4, 2, 32, 64));
    }

    /// The trait's per-row defaults (what a backend without its own ragged ops runs, e.g. cuda)
    /// against the cpu backend's one-pass overrides.
    #[test]
    fn per_row_defaults_match_the_cpu_ragged_ops() {
        use crate::backend::{self as bk, AttnDims, QkPrep, View};
        let be = CpuBackend::new(2);
        let mut rng = crate::Rng::new(3);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
        let d = AttnDims {
            b: 3,
            t: 1,
            n_head: 4,
            n_kv: 2,
            head_dim: 8,
        };
        let (slots, pos, max_t) = ([3usize, 0, 1], [5usize, 0, 9], 12);
        let (wq, wo) = (d.qkv_width(), d.out_width());
        let cache = 4 * max_t * d.n_kv * d.head_dim;
        let up = |v: &[f32]| {
            let b = be.alloc(v.len()).unwrap();
            be.write(View::new(&b, 0, v.len()), v);
            b
        };
        let down = |b: &crate::cpu::CpuBuf| {
            let mut v = vec![0f32; be.buf_len(b)];
            be.read(View::new(b, 0, v.len()), &mut v);
            v
        };
        let all = |b| View::new(b, 0, be.buf_len(b));
        // attention: the same caches and queries through both
        let (qkv, k0, v0) = (up(&rand(d.b * wq)), rand(cache), rand(cache));
        let (ka, va, kb, vb) = (up(&k0), up(&v0), up(&k0), up(&v0));
        let (oa, ob) = (be.alloc(d.b * wo).unwrap(), be.alloc(d.b * wo).unwrap());
        be.attention_rows(
            all(&oa),
            all(&qkv),
            all(&ka),
            all(&va),
            d,
            &slots,
            &pos,
            &[],
            max_t,
        );
        bk::attention_per_row(
            &be,
            all(&ob),
            all(&qkv),
            all(&kb),
            all(&vb),
            d,
            &slots,
            &pos,
            max_t,
        );
        assert!(max_diff(&down(&oa), &down(&ob)) < 1e-5);
        assert!(max_diff(&down(&ka), &down(&kb)) == 0.0);
        assert!(max_diff(&down(&va), &down(&vb)) == 0.0);
        // rope + qk-norm per row
        let p = QkPrep {
            qk_norm_eps: Some(1e-6),
            rope_theta: Some(10000.0),
            pos0: 0,
        };
        let nqk = d.n_head + d.n_kv;
        let (qa, qb) = (be.alloc(d.b * wq).unwrap(), be.alloc(d.b * wq).unwrap());
        let (sa, sb) = (be.alloc(d.b * nqk).unwrap(), be.alloc(d.b * nqk).unwrap());
        be.qk_prep_rows(all(&qa), all(&sa), all(&qkv), d, p, &pos);
        bk::qk_prep_per_row(&be, all(&qb), all(&sb), all(&qkv), d, p, &pos);
        assert!(max_diff(&down(&qa), &down(&qb)) < 1e-6);
        assert!(max_diff(&down(&sa), &down(&sb)) < 1e-6);
        // embedding with learned positions
        let c = 8;
        let (wte, wpe) = (up(&rand(10 * c)), up(&rand(max_t * c)));
        let (ea, eb) = (be.alloc(3 * c).unwrap(), be.alloc(3 * c).unwrap());
        let ids = [7u32, 2, 7];
        be.embedding_rows(all(&ea), all(&wte), Some(all(&wpe)), &ids, &pos, c);
        bk::embedding_per_row(&be, all(&eb), all(&wte), Some(all(&wpe)), &ids, &pos, c);
        assert!(max_diff(&down(&ea), &down(&eb)) == 0.0);
    }
}
