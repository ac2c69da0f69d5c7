//! Inference: a KV-cached forward ([`Generator`]: prefill once, fork the cache to `n` rows, decode
//! one token per row per step) and token sampling (temperature, top-k, top-p, min-p). Ids only.

use crate::backend::{Backend, View};
use crate::model::{check_ids, lin, Model};
use crate::params::Slot;
use crate::rng::Rng;
use crate::EngineError;

fn vw<Buf>(buf: &Buf, len: usize) -> View<'_, Buf> {
    View::new(buf, 0, len)
}

/// Per-call activation scratch for `n` token rows.
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
}

/// KV-cached decoding state for `rows` sequences of up to `max_t` tokens.
pub struct Generator<'m, B: Backend> {
    model: &'m Model<B>,
    rows: usize,
    max_t: usize,
    k: Vec<B::Buf>,
    v: Vec<B::Buf>,
    pos: usize,
    scratch: Option<Scratch<B::Buf>>,
}

impl<'m, B: Backend> Generator<'m, B> {
    /// A generator with room for `rows` sequences of `max_t <= context` tokens.
    pub fn new(model: &'m Model<B>, rows: usize, max_t: usize) -> Result<Self, EngineError> {
        let cfg = &model.cfg;
        if max_t > cfg.context || rows == 0 {
            return Err(EngineError::Shape(format!(
                "generator: {rows} rows × {max_t} tokens (context {})",
                cfg.context
            )));
        }
        let per = rows * max_t * cfg.n_kv_head * cfg.head_dim();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for _ in 0..cfg.n_layer {
            k.push(model.backend.alloc(per)?);
            v.push(model.backend.alloc(per)?);
        }
        Ok(Generator {
            model,
            rows,
            max_t,
            k,
            v,
            pos: 0,
            scratch: None,
        })
    }

    /// Tokens already in the cache (per row).
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn rows(&self) -> usize {
        self.rows
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
        });
        Ok(())
    }

    /// Run `b` rows × `t` new tokens at the current position through the blocks and the final
    /// norm (left in `scratch.ln`); appends to the cache of rows `0..b`.
    fn run(&mut self, ids: &[u32], b: usize, t: usize) -> Result<(), EngineError> {
        check_ids(ids, self.model.cfg.vocab_size)?;
        if self.pos + t > self.max_t {
            return Err(EngineError::Shape(format!(
                "sequence of {} tokens exceeds the generator's {} (context {})",
                self.pos + t,
                self.max_t,
                self.model.cfg.context
            )));
        }
        let n = b * t;
        self.scratch(n)?;
        let m = self.model;
        let be = &*m.backend;
        let cfg = &m.cfg;
        let c = cfg.n_embd;
        let s = self.scratch.as_ref().expect("scratch");
        let p = |sl: Slot| View::new(&m.params, sl.off, sl.len);
        let po = |sl: Option<Slot>| sl.map(p);
        let d = m.attn_dims(b, t);
        let (wq, wo) = (d.qkv_width(), d.out_width());
        let nk = m.norm_kind();
        be.embedding_forward(
            vw(&s.x, n * c),
            p(m.layout.wte),
            po(m.layout.wpe),
            ids,
            t,
            self.pos,
            c,
        );
        let per_row = self.max_t * cfg.n_kv_head * cfg.head_dim();
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
            be.matmul(
                vw(&s.qkv, n * wq),
                vw(&s.ln, n * c),
                p(ls.qkv_w),
                lin(n, wq, c),
                1.0,
                0.0,
            );
            if let Some(bias) = ls.qkv_b {
                be.add_bias(vw(&s.qkv, n * wq), p(bias), n, wq);
            }
            let att_in = if let Some(prep) = m.qk_prep(self.pos) {
                be.qk_prep_forward(
                    vw(&s.qkr, n * wq),
                    vw(&s.qk_stats, n * (cfg.n_head + cfg.n_kv_head)),
                    vw(&s.qkv, n * wq),
                    d,
                    prep,
                );
                &s.qkr
            } else {
                &s.qkv
            };
            be.attention_cached(
                vw(&s.att, n * wo),
                vw(att_in, n * wq),
                View::new(&self.k[l], 0, b * per_row),
                View::new(&self.v[l], 0, b * per_row),
                d,
                self.pos,
                self.max_t,
            );
            be.matmul(
                vw(&s.x, n * c),
                vw(&s.att, n * wo),
                p(ls.proj_w),
                lin(n, c, wo),
                1.0,
                1.0,
            );
            if let Some(bias) = ls.proj_b {
                be.add_bias(vw(&s.x, n * c), p(bias), n, c);
            }
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
            be.matmul(
                vw(&s.h, n * 4 * c),
                vw(&s.ln, n * c),
                p(ls.fc_w),
                lin(n, 4 * c, c),
                1.0,
                0.0,
            );
            if let Some(bias) = ls.fc_b {
                be.add_bias(vw(&s.h, n * 4 * c), p(bias), n, 4 * c);
            }
            be.act_forward(m.act(), vw(&s.g, n * 4 * c), vw(&s.h, n * 4 * c));
            be.matmul(
                vw(&s.x, n * c),
                vw(&s.g, n * 4 * c),
                p(ls.fcp_w),
                lin(n, c, 4 * c),
                1.0,
                1.0,
            );
            if let Some(bias) = ls.fcp_b {
                be.add_bias(vw(&s.x, n * c), p(bias), n, c);
            }
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
        self.pos += t;
        Ok(())
    }

    /// Logits `[rows_sel, vocab]` from the final-norm rows `sel` of the scratch.
    fn head(&self, sel: impl Iterator<Item = usize>) -> Result<Vec<f32>, EngineError> {
        let m = self.model;
        let be = &*m.backend;
        let c = m.cfg.n_embd;
        let vs = m.cfg.vocab_size;
        let s = self.scratch.as_ref().expect("scratch");
        let sel: Vec<usize> = sel.collect();
        let k = sel.len();
        // gather the selected rows into `h` (free after the blocks), then one matmul
        for (i, &r) in sel.iter().enumerate() {
            be.copy(View::new(&s.h, i * c, c), View::new(&s.ln, r * c, c));
        }
        let logits = be.alloc(k * vs)?;
        let hs = m.head_slot();
        be.matmul(
            View::new(&logits, 0, k * vs),
            View::new(&s.h, 0, k * c),
            View::new(&m.params, hs.off, hs.len),
            lin(k, vs, c),
            1.0,
            0.0,
        );
        let mut out = vec![0f32; k * vs];
        be.read(View::new(&logits, 0, k * vs), &mut out);
        if let Some(cap) = m.cfg.logit_softcap {
            out.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
        }
        Ok(out)
    }

    /// Logits for every position of `b` fresh rows of `t` tokens (resets the cache).
    pub(crate) fn forward_all(
        &mut self,
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, EngineError> {
        self.pos = 0;
        self.run(ids, b, t)?;
        self.head(0..b * t)
    }

    /// Reset, run `prompt` once on row 0, copy its cache to every row; returns the logits
    /// `[vocab]` after the last prompt token.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::Shape("empty prompt".into()));
        }
        self.pos = 0;
        self.run(prompt, 1, prompt.len())?;
        let be = &*self.model.backend;
        let row = prompt.len() * self.model.cfg.n_kv_head * self.model.cfg.head_dim();
        let per_row = self.max_t * self.model.cfg.n_kv_head * self.model.cfg.head_dim();
        for l in 0..self.k.len() {
            for r in 1..self.rows {
                be.copy(
                    View::new(&self.k[l], r * per_row, row),
                    View::new(&self.k[l], 0, row),
                );
                be.copy(
                    View::new(&self.v[l], r * per_row, row),
                    View::new(&self.v[l], 0, row),
                );
            }
        }
        self.head(std::iter::once(prompt.len() - 1))
    }

    /// Append one token to each row; returns logits `[rows, vocab]`.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        if tokens.len() != self.rows {
            return Err(EngineError::Shape(format!(
                "step: {} tokens for {} rows",
                tokens.len(),
                self.rows
            )));
        }
        self.run(tokens, self.rows, 1)?;
        self.head(0..self.rows)
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
