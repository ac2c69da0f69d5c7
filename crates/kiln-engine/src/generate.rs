//! Inference for kiln's own models: [`BatchedDecoder`], the one KV-cached forward (a cache of
//! `slots` sequences, each at its own position; one forward per step over every listed slot), the
//! [`Generator`] convenience on top of it (one prompt forked to `n` rows), and token sampling
//! (temperature, top-k, top-p, min-p). Ids only.
//!
//! A step over `n` slots runs every matmul once over all `n` rows (the weights are read once per
//! step, not once per row: that is where batching pays on a cpu, whose batch-1 decode is bound by
//! reading the weights); only the position-dependent ops (position embedding, RoPE, attention
//! over the slot's own cache) run per row, through the backend's `*_rows` ops.

use crate::backend::{Backend, SharedPrefix, View};
use crate::batch::{check_slot, check_step, BatchDecoder};
use crate::cpu::vmath;
use crate::model::{check_ids, lin, Model};
use crate::params::Slot;
use crate::rng::Rng;
use crate::EngineError;

fn vw<Buf>(buf: &Buf, len: usize) -> View<'_, Buf> {
    View::new(buf, 0, len)
}

/// Per-call activation scratch for `n` token rows (and their logits).
struct Scratch<Buf> {
    n: usize,
    x: Buf,
    ln: Buf,
    stats: Buf,
    qkv: Buf,
    qkr: Buf,
    qk_stats: Buf,
    att: Buf,
    h: Buf,
    g: Buf,
    logits: Buf,
}

/// Which cache rows a forward writes, and at which positions.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// `b` consecutive slots from `slot0`, `t` tokens each, all starting at position `pos0`
    /// (prefill, and steps where every row sits at the same place).
    Block {
        slot0: usize,
        b: usize,
        t: usize,
        pos0: usize,
    },
    /// One token for each of `slots`, slot `slots[i]` at position `pos[i]`, its positions below
    /// `prefix[i].len` stored in slot `prefix[i].slot` (`prefix` empty: none shared).
    Ragged {
        slots: &'a [usize],
        pos: &'a [usize],
        prefix: &'a [SharedPrefix],
    },
}

/// A KV cache of `slots` independent sequences of up to `capacity` tokens over a kiln model, and
/// the batched forward that fills it: the [`BatchDecoder`] for kiln checkpoints (a server's
/// scheduler, RL rollouts, [`generate`]).
pub struct BatchedDecoder<'m, B: Backend> {
    model: &'m Model<B>,
    capacity: usize,
    /// Per layer: `[slots, capacity, n_kv, hd]`.
    k: Vec<B::Buf>,
    v: Vec<B::Buf>,
    /// Tokens in each slot's cache.
    lens: Vec<usize>,
    /// Per slot: the first positions it reads from another slot instead of its own rows (set by
    /// [`BatchDecoder::fork`] on a backend that [`shares_kv_prefix`](Backend::shares_kv_prefix):
    /// a prompt's samples read the prompt's K/V from one copy). A slot that others read from
    /// never has one itself.
    prefix: Vec<SharedPrefix>,
    scratch: Option<Scratch<B::Buf>>,
}

impl<'m, B: Backend> BatchedDecoder<'m, B> {
    /// A cache of `slots` sequences of up to `capacity <= context` tokens each.
    pub fn new(model: &'m Model<B>, slots: usize, capacity: usize) -> Result<Self, EngineError> {
        let cfg = &model.cfg;
        if capacity > cfg.context || capacity == 0 || slots == 0 {
            return Err(EngineError::Shape(format!(
                "decoder: {slots} slots × {capacity} tokens (context {})",
                cfg.context
            )));
        }
        let per = slots * capacity * cfg.n_kv_head * cfg.head_dim();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for _ in 0..cfg.n_layer {
            k.push(model.backend.alloc(per)?);
            v.push(model.backend.alloc(per)?);
        }
        Ok(BatchedDecoder {
            model,
            capacity,
            k,
            v,
            lens: vec![0; slots],
            prefix: vec![SharedPrefix::default(); slots],
            scratch: None,
        })
    }

    pub fn model(&self) -> &'m Model<B> {
        self.model
    }

    /// Floats of one slot's cache in one layer.
    fn per_slot(&self) -> usize {
        self.capacity * self.model.cfg.n_kv_head * self.model.cfg.head_dim()
    }

    /// Copy positions `p0..p1` of slot `src`'s cache rows (every layer, K and V) to slot `dst`.
    fn copy_positions(&self, src: usize, dst: usize, p0: usize, p1: usize) {
        if p1 <= p0 {
            return;
        }
        let be = &*self.model.backend;
        let per_slot = self.per_slot();
        let row = self.model.cfg.n_kv_head * self.model.cfg.head_dim();
        let (at, n) = (p0 * row, (p1 - p0) * row);
        for cache in self.k.iter().chain(&self.v) {
            be.copy(
                View::new(cache, dst * per_slot + at, n),
                View::new(cache, src * per_slot + at, n),
            );
        }
    }

    /// Give `slot` its own copy of the positions it reads from another slot.
    fn materialize(&mut self, slot: usize) {
        let sp = std::mem::take(&mut self.prefix[slot]);
        if sp.slot != slot {
            self.copy_positions(sp.slot, slot, 0, sp.len);
        }
    }

    /// Before `slot` is written from position `from` on: the slots reading positions at or past
    /// `from` of it take their own copies first.
    fn release(&mut self, slot: usize, from: usize) {
        for d in 0..self.prefix.len() {
            let sp = self.prefix[d];
            if d != slot && sp.slot == slot && sp.len > from {
                self.materialize(d);
            }
        }
    }

    /// The kernel's per-row prefixes for a ragged step over `slots` (empty when nothing is
    /// shared): a forked slot names its source; a source names itself with its samples' shared
    /// length, so it joins their group and the shared rows are read once for all of them.
    fn step_prefixes(&self, slots: &[usize]) -> Vec<SharedPrefix> {
        if self.prefix.iter().all(|p| p.len == 0) {
            return Vec::new();
        }
        let mut own = vec![0usize; self.prefix.len()];
        for sp in self.prefix.iter().filter(|p| p.len > 0) {
            own[sp.slot] = own[sp.slot].max(sp.len);
        }
        slots
            .iter()
            .map(|&s| match self.prefix[s] {
                sp if sp.len > 0 => sp,
                _ => SharedPrefix {
                    slot: s,
                    len: own[s].min(self.lens[s]),
                },
            })
            .collect()
    }

    fn scratch(&mut self, n: usize) -> Result<(), EngineError> {
        if self.scratch.as_ref().is_some_and(|s| s.n >= n) {
            return Ok(());
        }
        let cfg = &self.model.cfg;
        let be = &self.model.backend;
        let c = cfg.n_embd;
        let wq = (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim();
        self.scratch = Some(Scratch {
            n,
            x: be.alloc(n * c)?,
            ln: be.alloc(n * c)?,
            stats: be.alloc(2 * n)?,
            qkv: be.alloc(n * wq)?,
            qkr: be.alloc(n * wq)?,
            qk_stats: be.alloc(n * (cfg.n_head + cfg.n_kv_head))?,
            att: be.alloc(n * cfg.n_head * cfg.head_dim())?,
            h: be.alloc(n * 4 * c)?,
            g: be.alloc(n * 4 * c)?,
            logits: be.alloc(n * cfg.vocab_size)?,
        });
        Ok(())
    }

    /// Run `ids` (one per row of `rows`) through the blocks and the final norm (left in
    /// `scratch.ln`), appending their k/v to the cache. The caller has checked ids, slots and
    /// capacity, and updates `lens`.
    fn run(&mut self, ids: &[u32], rows: Rows) -> Result<(), EngineError> {
        let n = ids.len();
        self.scratch(n)?;
        let per_slot = self.per_slot();
        let m = self.model;
        let be = &*m.backend;
        let cfg = &m.cfg;
        let c = cfg.n_embd;
        let s = self.scratch.as_ref().expect("scratch");
        let p = |sl: Slot| View::new(&m.params, sl.off, sl.len);
        let po = |sl: Option<Slot>| sl.map(p);
        let d = match rows {
            Rows::Block { b, t, .. } => m.attn_dims(b, t),
            Rows::Ragged { .. } => m.attn_dims(n, 1),
        };
        let (wq, wo) = (d.qkv_width(), d.out_width());
        let nqk = cfg.n_head + cfg.n_kv_head;
        let nk = m.norm_kind();
        match rows {
            Rows::Block { t, pos0, .. } => be.embedding_forward(
                vw(&s.x, n * c),
                p(m.layout.wte),
                po(m.layout.wpe),
                ids,
                t,
                pos0,
                c,
            ),
            Rows::Ragged { pos, .. } => be.embedding_rows(
                vw(&s.x, n * c),
                p(m.layout.wte),
                po(m.layout.wpe),
                ids,
                pos,
                c,
            ),
        }
        for (l, ls) in m.layout.layers.iter().enumerate() {
            be.norm_forward(
                nk,
                vw(&s.ln, n * c),
                vw(&s.stats, 2 * n),
                vw(&s.x, n * c),
                po(ls.ln1_w),
                po(ls.ln1_b),
                n,
                c,
                cfg.norm_eps,
            );
            be.matmul_bias(
                vw(&s.qkv, n * wq),
                vw(&s.ln, n * c),
                p(ls.qkv_w),
                po(ls.qkv_b),
                lin(n, wq, c),
                1.0,
                0.0,
            );
            let att_in = if let Some(prep) = m.qk_prep(0) {
                let (out, st, inp) = (
                    vw(&s.qkr, n * wq),
                    vw(&s.qk_stats, n * nqk),
                    vw(&s.qkv, n * wq),
                );
                match rows {
                    Rows::Block { pos0, .. } => {
                        be.qk_prep_forward(out, st, inp, d, m.qk_prep(pos0).unwrap_or(prep))
                    }
                    Rows::Ragged { pos, .. } => be.qk_prep_rows(out, st, inp, d, prep, pos),
                }
                &s.qkr
            } else {
                &s.qkv
            };
            let (kc, vc) = (&self.k[l], &self.v[l]);
            match rows {
                Rows::Block { slot0, b, pos0, .. } => be.attention_cached(
                    vw(&s.att, n * wo),
                    vw(att_in, n * wq),
                    View::new(kc, slot0 * per_slot, b * per_slot),
                    View::new(vc, slot0 * per_slot, b * per_slot),
                    d,
                    pos0,
                    self.capacity,
                ),
                Rows::Ragged { slots, pos, prefix } => {
                    let all = self.lens.len() * per_slot;
                    be.attention_rows(
                        vw(&s.att, n * wo),
                        vw(att_in, n * wq),
                        View::new(kc, 0, all),
                        View::new(vc, 0, all),
                        d,
                        slots,
                        pos,
                        prefix,
                        self.capacity,
                    )
                }
            }
            be.matmul_bias(
                vw(&s.x, n * c),
                vw(&s.att, n * wo),
                p(ls.proj_w),
                po(ls.proj_b),
                lin(n, c, wo),
                1.0,
                1.0,
            );
            be.norm_forward(
                nk,
                vw(&s.ln, n * c),
                vw(&s.stats, 2 * n),
                vw(&s.x, n * c),
                po(ls.ln2_w),
                po(ls.ln2_b),
                n,
                c,
                cfg.norm_eps,
            );
            be.matmul_bias_act(
                m.act(),
                vw(&s.g, n * 4 * c),
                vw(&s.h, n * 4 * c),
                vw(&s.ln, n * c),
                p(ls.fc_w),
                po(ls.fc_b),
                lin(n, 4 * c, c),
            );
            be.matmul_bias(
                vw(&s.x, n * c),
                vw(&s.g, n * 4 * c),
                p(ls.fcp_w),
                po(ls.fcp_b),
                lin(n, c, 4 * c),
                1.0,
                1.0,
            );
        }
        be.norm_forward(
            nk,
            vw(&s.ln, n * c),
            vw(&s.stats, 2 * n),
            vw(&s.x, n * c),
            po(m.layout.lnf_w),
            po(m.layout.lnf_b),
            n,
            c,
            cfg.norm_eps,
        );
        Ok(())
    }

    /// Logits `[k, vocab]` of the final-norm rows `r0..r0 + k` of the scratch: one matmul over
    /// the rows as they lie (no gather), into the preallocated logits buffer.
    fn head(&self, r0: usize, k: usize) -> Vec<f32> {
        let mut out = Vec::new();
        self.head_into(r0, k, &mut out);
        out
    }

    /// [`Self::head`] into `out` (resized; its memory is reused from call to call: a fresh
    /// `[rows, vocab]` vector per step is a fresh mapping whose pages the kernel zeroes, 6% of a
    /// rollout in perf).
    fn head_into(&self, r0: usize, k: usize, out: &mut Vec<f32>) {
        let m = self.model;
        let be = &*m.backend;
        let c = m.cfg.n_embd;
        let vs = m.cfg.vocab_size;
        let s = self.scratch.as_ref().expect("scratch");
        let hs = m.head_slot();
        be.matmul(
            View::new(&s.logits, 0, k * vs),
            View::new(&s.ln, r0 * c, k * c),
            View::new(&m.params, hs.off, hs.len),
            lin(k, vs, c),
            1.0,
            0.0,
        );
        out.resize(k * vs, 0.0);
        be.read(View::new(&s.logits, 0, k * vs), out);
        if let Some(cap) = m.cfg.logit_softcap {
            out.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
        }
    }

    fn check_room(&self, slot: usize, extra: usize) -> Result<(), EngineError> {
        let need = self.lens[slot] + extra;
        if need > self.capacity {
            return Err(EngineError::Shape(format!(
                "slot {slot}: sequence of {need} tokens exceeds the decoder's {} (context {})",
                self.capacity, self.model.cfg.context
            )));
        }
        Ok(())
    }

    /// Append `tokens` to `slot` where it stands (a prompt continued, a tool's output inserted);
    /// returns the logits `[vocab]` after the last one.
    pub fn extend(&mut self, slot: usize, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        check_slot(slot, self.lens.len())?;
        if tokens.is_empty() {
            return Err(EngineError::Shape("extend: no tokens".into()));
        }
        check_ids(tokens, self.model.cfg.vocab_size)?;
        self.check_room(slot, tokens.len())?;
        // The block forward reads and writes this slot's own rows only.
        self.release(slot, self.lens[slot]);
        self.materialize(slot);
        let t = tokens.len();
        let rows = Rows::Block {
            slot0: slot,
            b: 1,
            t,
            pos0: self.lens[slot],
        };
        self.run(tokens, rows)?;
        self.lens[slot] += t;
        Ok(self.head(t - 1, 1))
    }

    /// [`BatchDecoder::step`] writing the logits into `out` (resized, its memory reused: the
    /// loop that decodes thousands of steps keeps one buffer).
    pub fn step_into(
        &mut self,
        slots: &[usize],
        tokens: &[u32],
        out: &mut Vec<f32>,
    ) -> Result<(), EngineError> {
        check_step(slots, tokens, self.lens.len())?;
        check_ids(tokens, self.model.cfg.vocab_size)?;
        for &s in slots {
            if self.lens[s] == 0 {
                return Err(EngineError::Shape(format!(
                    "step: slot {s} is empty (prefill it first)"
                )));
            }
            self.check_room(s, 1)?;
        }
        let n = slots.len();
        if n == 0 {
            out.clear();
            return Ok(());
        }
        for &s in slots {
            self.release(s, self.lens[s]);
        }
        let pos: Vec<usize> = slots.iter().map(|&s| self.lens[s]).collect();
        // Consecutive slots at one position, each reading only its own rows, are one block: the
        // backend's plain cached attention (one launch on a device) instead of per-row ops.
        let block = slots.windows(2).all(|w| w[1] == w[0] + 1)
            && pos.iter().all(|&p| p == pos[0])
            && slots.iter().all(|&s| self.prefix[s].len == 0);
        let prefix = if block {
            Vec::new()
        } else {
            self.step_prefixes(slots)
        };
        let rows = if block {
            Rows::Block {
                slot0: slots[0],
                b: n,
                t: 1,
                pos0: pos[0],
            }
        } else {
            Rows::Ragged {
                slots,
                pos: &pos,
                prefix: &prefix,
            }
        };
        self.run(tokens, rows)?;
        for &s in slots {
            self.lens[s] += 1;
        }
        self.head_into(0, n, out);
        Ok(())
    }

    /// Logits for every position of `b` rows of `t` tokens, from position 0 (slots `0..b`).
    pub(crate) fn forward_all(
        &mut self,
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, EngineError> {
        check_ids(ids, self.model.cfg.vocab_size)?;
        if b > self.lens.len() || t > self.capacity || ids.len() != b * t {
            return Err(EngineError::Shape(format!(
                "forward: {} ids for {b} rows × {t} (decoder {} × {})",
                ids.len(),
                self.lens.len(),
                self.capacity
            )));
        }
        for s in 0..b {
            self.release(s, 0);
            self.prefix[s] = SharedPrefix::default();
        }
        let rows = Rows::Block {
            slot0: 0,
            b,
            t,
            pos0: 0,
        };
        self.run(ids, rows)?;
        self.lens[..b].iter_mut().for_each(|l| *l = t);
        Ok(self.head(0, b * t))
    }
}

impl<B: Backend> BatchDecoder for BatchedDecoder<'_, B> {
    fn slots(&self) -> usize {
        self.lens.len()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn vocab(&self) -> usize {
        self.model.cfg.vocab_size
    }
    fn len(&self, slot: usize) -> usize {
        self.lens[slot]
    }
    fn prefill(&mut self, slot: usize, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        check_slot(slot, self.lens.len())?;
        if prompt.is_empty() {
            return Err(EngineError::Shape("empty prompt".into()));
        }
        self.lens[slot] = 0;
        self.prefix[slot] = SharedPrefix::default();
        self.extend(slot, prompt)
    }
    fn prefill_reusing(
        &mut self,
        slot: usize,
        keep: usize,
        prompt: &[u32],
    ) -> Result<Vec<f32>, EngineError> {
        check_slot(slot, self.lens.len())?;
        crate::batch::check_reuse(keep, self.lens[slot], prompt)?;
        self.lens[slot] = keep;
        self.extend(slot, &prompt[keep..])
    }
    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let mut out = Vec::new();
        self.step_into(slots, tokens, &mut out)?;
        Ok(out)
    }
    fn fork(&mut self, src: usize, dst: usize) -> Result<(), EngineError> {
        check_slot(src, self.lens.len())?;
        check_slot(dst, self.lens.len())?;
        if src == dst {
            return Ok(());
        }
        // dst is rewritten from position 0: whoever reads it takes a copy first (src included,
        // so src's own prefix below is final).
        self.release(dst, 0);
        let len = self.lens[src];
        let sp = self.prefix[src];
        self.prefix[dst] = if !self.model.backend.shares_kv_prefix() || len == 0 {
            self.copy_positions(src, dst, 0, len);
            SharedPrefix::default()
        } else if sp.len > 0 {
            // src reads from a third slot: share that too, copy src's own rows
            self.copy_positions(src, dst, sp.len, len);
            sp
        } else {
            SharedPrefix { slot: src, len }
        };
        self.lens[dst] = len;
        Ok(())
    }
    fn clear(&mut self, slot: usize) {
        self.lens[slot] = 0;
        self.prefix[slot] = SharedPrefix::default();
    }
}

/// `rows` sequences decoded in lockstep from one prompt: a [`BatchedDecoder`] whose slot 0 is
/// prefilled and forked to the other rows (nanochat's "prefill once, clone the cache").
pub struct Generator<'m, B: Backend> {
    dec: BatchedDecoder<'m, B>,
    all: Vec<usize>,
}

impl<'m, B: Backend> Generator<'m, B> {
    /// A generator with room for `rows` sequences of `max_t <= context` tokens.
    pub fn new(model: &'m Model<B>, rows: usize, max_t: usize) -> Result<Self, EngineError> {
        Ok(Generator {
            dec: BatchedDecoder::new(model, rows, max_t)?,
            all: (0..rows).collect(),
        })
    }

    /// Tokens already in the cache (per row).
    pub fn pos(&self) -> usize {
        self.dec.len(0)
    }

    pub fn rows(&self) -> usize {
        self.all.len()
    }

    /// Reset, run `prompt` once on row 0, copy its cache to every row; returns the logits
    /// `[vocab]` after the last prompt token.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        let logits = self.dec.prefill(0, prompt)?;
        for r in 1..self.all.len() {
            self.dec.fork(0, r)?;
        }
        Ok(logits)
    }

    /// Append one token to each row; returns logits `[rows, vocab]`.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        if tokens.len() != self.all.len() {
            return Err(EngineError::Shape(format!(
                "step: {} tokens for {} rows",
                tokens.len(),
                self.all.len()
            )));
        }
        self.dec.step(&self.all, tokens)
    }
}

/// How to pick the next token from logits.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep the `k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set with cumulative probability ≥ p (1 = off).
    pub top_p: f32,
    /// Drop tokens with probability < min_p × the top probability (0 = off).
    pub min_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
        }
    }
}

/// Sample one token id from `logits` (`[vocab]`).
pub fn sample_token(logits: &[f32], sp: &SamplingParams, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |b, (i, &x)| {
                if x > b.1 {
                    (i, x)
                } else {
                    b
                }
            })
            .0 as u32
    };
    if sp.temperature <= 0.0 {
        return argmax();
    }
    let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if sp.top_k == 0 && sp.top_p >= 1.0 {
        // No truncation by rank: draw straight from the weights in id order, no sort (sorting
        // the whole vocabulary per token cost more than a small model's decode step). The
        // weights are relative to the top one, in (0, 1]; `min_p` cuts below `min_p · 1`.
        let cut = sp.min_p.max(0.0);
        let mut w = vec![0f32; logits.len()];
        let mut blocks = vec![0f32; logits.len().div_ceil(vmath::LANES)];
        sampling_weights(&mut w, &mut blocks, logits, mx, 1.0 / sp.temperature, cut);
        let sum: f64 = blocks.iter().map(|&b| b as f64).sum();
        if !(sum.is_finite() && sum > 0.0) {
            return argmax();
        }
        // The block holding the draw first (a sequential scan over every id was as slow as the
        // exps), then the id inside it.
        let mut u = rng.uniform() * sum;
        let mut last = None;
        for (b, &bs) in blocks.iter().enumerate() {
            if bs <= 0.0 {
                continue;
            }
            last = Some(b);
            if u <= bs as f64 {
                let ids = b * vmath::LANES..((b + 1) * vmath::LANES).min(w.len());
                let mut pick = None;
                for i in ids {
                    if w[i] > 0.0 {
                        pick = Some(i);
                        u -= w[i] as f64;
                        if u <= 0.0 {
                            break;
                        }
                    }
                }
                return pick.map_or_else(argmax, |i| i as u32);
            }
            u -= bs as f64;
        }
        // Rounding left a sliver past the last block: its last weighted id.
        let b = last.expect("a positive sum has a positive block");
        let ids = b * vmath::LANES..((b + 1) * vmath::LANES).min(w.len());
        return ids
            .rev()
            .find(|&i| w[i] > 0.0)
            .map_or_else(argmax, |i| i as u32);
    }
    let mut cand: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, (((x - mx) / sp.temperature) as f64).exp()))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if sp.top_k > 0 && sp.top_k < cand.len() {
        cand.truncate(sp.top_k);
    }
    let total: f64 = cand.iter().map(|c| c.1).sum();
    if sp.min_p > 0.0 {
        let cut = cand[0].1 * sp.min_p as f64;
        cand.retain(|c| c.1 >= cut);
    }
    if sp.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = cand.len();
        for (i, c) in cand.iter().enumerate() {
            acc += c.1 / total;
            if acc >= sp.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep.max(1));
    }
    let sum: f64 = cand.iter().map(|c| c.1).sum();
    if !(sum.is_finite() && sum > 0.0) {
        return argmax();
    }
    let mut u = rng.uniform() * sum;
    for c in &cand {
        u -= c.1;
        if u <= 0.0 {
            return c.0;
        }
    }
    cand[cand.len() - 1].0
}

vmath::simd_fn! {
    /// `w[i] = exp((x[i] - mx)·inv_t)`, 0 below `cut`, and each block of [`vmath::LANES`] ids'
    /// sum in `blocks` (vectorized: libm's `expf` per id and a scan over every id were most of a
    /// batched decode step's sampling).
    fn sampling_weights(
        w: &mut [f32],
        blocks: &mut [f32],
        x: &[f32],
        mx: f32,
        inv_t: f32,
        cut: f32,
    ) {
        const L: usize = vmath::LANES;
        let weigh = |x: f32| {
            let v = vmath::exp((x - mx) * inv_t);
            if v >= cut {
                v
            } else {
                0.0
            }
        };
        let full = x.len() / L;
        for ((w, x), b) in w
            .chunks_exact_mut(L)
            .zip(x.chunks_exact(L))
            .zip(blocks.iter_mut())
        {
            let mut e = [0f32; L];
            for k in 0..L {
                e[k] = weigh(x[k]);
            }
            w.copy_from_slice(&e);
            *b = vmath::hsum(&e);
        }
        if full < blocks.len() {
            let mut sum = 0.0;
            for (w, &x) in w[full * L..].iter_mut().zip(&x[full * L..]) {
                *w = weigh(x);
                sum += *w;
            }
            blocks[full] = sum;
        }
    }
}

vmath::simd_fn! {
    /// `(Σ e^(x−mx), Σ e^(x−mx)·(x−mx))` in [`vmath::LANES`] lanes.
    fn exp_moments(x: &[f32], mx: f32) -> (f32, f32) {
        const L: usize = vmath::LANES;
        let (mut z, mut ez) = ([0f32; L], [0f32; L]);
        let ch = x.chunks_exact(L);
        let rem = ch.remainder();
        for c in ch {
            for k in 0..L {
                let d = c[k] - mx;
                let e = vmath::exp(d);
                z[k] += e;
                ez[k] += e * d;
            }
        }
        for (k, &x) in rem.iter().enumerate() {
            let d = x - mx;
            let e = vmath::exp(d);
            z[k] += e;
            ez[k] += e * d;
        }
        (vmath::hsum(&z), vmath::hsum(&ez))
    }
}

/// Entropy in nats of the softmax of `logits` (temperature 1), as RL logs it per sampled token.
pub fn softmax_entropy(logits: &[f32]) -> f64 {
    let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (z, ez) = exp_moments(logits, mx);
    (z as f64).ln() - ez as f64 / z as f64
}

/// Options for [`generate`].
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub num_samples: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Stop a row when it emits one of these.
    pub stop: Vec<u32>,
    /// Recompute the whole sequence each step instead of using the KV cache (for tests/benches).
    pub no_cache: bool,
}

/// Continue `prompt` `num_samples` times; returns the new tokens of each sample (stop token
/// included if hit). The cached path prefills once and forks the cache.
pub fn generate<B: Backend>(
    model: &Model<B>,
    prompt: &[u32],
    o: &GenerateOptions,
) -> Result<Vec<Vec<u32>>, EngineError> {
    model.check_ids(prompt)?;
    let ctx = model.cfg.context;
    if prompt.is_empty() || prompt.len() >= ctx {
        return Err(EngineError::Shape(format!(
            "prompt of {} tokens must be in 1..{ctx}",
            prompt.len()
        )));
    }
    let max_new = o.max_tokens.min(ctx - prompt.len());
    let n = o.num_samples.max(1);
    let mut rng = Rng::new(o.seed);
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut done = vec![false; n];
    let vs = model.cfg.vocab_size;
    if o.no_cache {
        let mut seqs: Vec<Vec<u32>> = vec![prompt.to_vec(); n];
        for _ in 0..max_new {
            for r in 0..n {
                if done[r] {
                    continue;
                }
                let t = seqs[r].len();
                let logits = model.forward_logits(&seqs[r], 1, t)?;
                let tok = sample_token(&logits[(t - 1) * vs..t * vs], &o.sampling, &mut rng);
                seqs[r].push(tok);
                out[r].push(tok);
                done[r] = o.stop.contains(&tok);
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        return Ok(out);
    }
    let mut g = Generator::new(model, n, (prompt.len() + max_new).min(ctx))?;
    let first = g.prefill(prompt)?;
    let mut logits: Vec<f32> = (0..n).flat_map(|_| first.iter().copied()).collect();
    for step in 0..max_new {
        let mut next = vec![0u32; n];
        for r in 0..n {
            if done[r] {
                continue;
            }
            let tok = sample_token(&logits[r * vs..(r + 1) * vs], &o.sampling, &mut rng);
            next[r] = tok;
            out[r].push(tok);
            done[r] = o.stop.contains(&tok);
        }
        if done.iter().all(|&d| d) || step + 1 == max_new {
            break;
        }
        logits = g.step(&next)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freqs(logits: &[f32], sp: &SamplingParams) -> Vec<f64> {
        let mut rng = Rng::new(9);
        let mut n = vec![0f64; logits.len()];
        for _ in 0..40_000 {
            n[sample_token(logits, sp, &mut rng) as usize] += 1.0 / 40_000.0;
        }
        n
    }

    /// A vocabulary that is not a whole number of blocks: the blockwise draw still follows
    /// the softmax (weights spread over several blocks and the partial last one), and the
    /// entropy matches an f64 reference.
    #[test]
    fn blockwise_sampling_follows_the_softmax_over_a_large_vocabulary() {
        let n = 4096 + 7;
        let mut l = vec![-30f32; n];
        let hot = [3usize, 17, 500, 2047, 4095, 4096, 4102];
        for (i, &h) in hot.iter().enumerate() {
            l[h] = (1.0 + i as f32).ln();
        }
        let z: f64 = (1..=hot.len()).map(|i| i as f64).sum();
        let f = freqs(&l, &SamplingParams::default());
        for (i, &h) in hot.iter().enumerate() {
            let want = (1 + i) as f64 / z;
            assert!((f[h] - want).abs() < 0.01, "id {h}: {} vs {want}", f[h]);
        }
        let mut rng = Rng::new(4);
        let l: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * 3.0).collect();
        let mx = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let zs: f64 = l.iter().map(|&x| (x as f64 - mx).exp()).sum();
        let want: f64 = -l
            .iter()
            .map(|&x| {
                let p = (x as f64 - mx).exp() / zs;
                p * p.ln()
            })
            .sum::<f64>();
        let got = softmax_entropy(&l);
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
    }

    #[test]
    fn sampling_follows_the_softmax_and_its_truncations() {
        let l = [0.0, 2f32.ln(), 4f32.ln()];
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 0.01);
        let plain = SamplingParams::default();
        assert!(close(
            &freqs(&l, &plain),
            &[1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0]
        ));
        let min_p = SamplingParams {
            min_p: 0.3,
            ..plain.clone()
        };
        assert!(close(&freqs(&l, &min_p), &[0.0, 1.0 / 3.0, 2.0 / 3.0]));
        // the sorted path (top-k) agrees
        let top_k = SamplingParams {
            top_k: 2,
            ..plain.clone()
        };
        assert!(close(&freqs(&l, &top_k), &[0.0, 1.0 / 3.0, 2.0 / 3.0]));
        let greedy = SamplingParams {
            temperature: 0.0,
            ..plain
        };
        assert!((freqs(&l, &greedy)[2] - 1.0).abs() < 1e-9);
    }
}
