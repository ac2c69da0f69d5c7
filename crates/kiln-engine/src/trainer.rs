//! [`Trainer`]: training state for a fixed `(B, T)` — the [`Model`], gradients in the
//! parameter layout, activations preallocated once, the explicit forward and backward pass
//! (the backward mirrors the forward in reverse) and the optimizer step.

use crate::backend::{Backend, MatDims, View};
use crate::config::{check_memory, Arch};
use crate::model::{lin, Model};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::params::Slot;
use crate::EngineError;

/// Per-layer activations kept for backward.
struct LayerActs<Buf> {
    /// Residual stream entering the layer `[BT, C]`.
    res: Buf,
    ln1: Buf,
    ln1_stats: Buf,
    qkv: Buf,
    /// QK-normed + rotated qkv (modern; empty for gpt2).
    qkr: Buf,
    qk_stats: Buf,
    att: Buf,
    probs: Buf,
    /// Residual after attention `[BT, C]`.
    res2: Buf,
    ln2: Buf,
    ln2_stats: Buf,
    fch: Buf,
    fcg: Buf,
}

struct Acts<Buf> {
    layers: Vec<LayerActs<Buf>>,
    res_final: Buf,
    lnf: Buf,
    lnf_stats: Buf,
    logits: Buf,
    losses: Buf,
    // backward scratch
    dres: Buf,
    dln: Buf,
    datt: Buf,
    dqkv: Buf,
    dqkr: Buf,
    dfcg: Buf,
    dfch: Buf,
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// Training state for a fixed `(B, T)`: the model, gradients, activations and optimizer.
pub struct Trainer<B: Backend> {
    pub model: Model<B>,
    pub b: usize,
    pub t: usize,
    pub grads: B::Buf,
    pub opt: Optimizer<B>,
    acts: Acts<B::Buf>,
    ones: Vec<f32>,
    losses_host: Vec<f32>,
}

fn v<Buf>(b: &Buf, len: usize) -> View<'_, Buf> {
    View::new(b, 0, len)
}

impl<B: Backend> Trainer<B> {
    /// Allocate gradients, optimizer state and activations for batch `b` × `t` tokens; refuses
    /// with an estimate when that would not fit in available memory.
    pub fn new(
        model: Model<B>,
        b: usize,
        t: usize,
        opt_cfg: OptimizerConfig,
    ) -> Result<Self, EngineError> {
        let cfg = model.cfg.clone();
        if t == 0 || t > cfg.context || b == 0 {
            return Err(EngineError::Shape(format!(
                "batch {b} × {t} tokens (context {})",
                cfg.context
            )));
        }
        let need = (4 * model.layout.total as u64 + cfg.activation_floats(b, t) as u64) * 4;
        if model.backend.name() == "cpu" {
            check_memory(need)?;
        }
        let be = &model.backend;
        let bt = b * t;
        let c = cfg.n_embd;
        let d = model.attn_dims(b, t);
        let (wq, wo) = (d.qkv_width(), d.out_width());
        let nqk = cfg.n_head + cfg.n_kv_head;
        let modern = cfg.arch == Arch::Modern;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for _ in 0..cfg.n_layer {
            layers.push(LayerActs {
                res: be.alloc(bt * c)?,
                ln1: be.alloc(bt * c)?,
                ln1_stats: be.alloc(2 * bt)?,
                qkv: be.alloc(bt * wq)?,
                qkr: be.alloc(if modern { bt * wq } else { 0 })?,
                qk_stats: be.alloc(if modern { bt * nqk } else { 0 })?,
                att: be.alloc(bt * wo)?,
                probs: be.alloc(be.attention_scratch_len(d))?,
                res2: be.alloc(bt * c)?,
                ln2: be.alloc(bt * c)?,
                ln2_stats: be.alloc(2 * bt)?,
                fch: be.alloc(bt * 4 * c)?,
                fcg: be.alloc(bt * 4 * c)?,
            });
        }
        let acts = Acts {
            layers,
            res_final: be.alloc(bt * c)?,
            lnf: be.alloc(bt * c)?,
            lnf_stats: be.alloc(2 * bt)?,
            logits: be.alloc(bt * cfg.vocab_size)?,
            losses: be.alloc(bt)?,
            dres: be.alloc(bt * c)?,
            dln: be.alloc(bt * c)?,
            datt: be.alloc(bt * wo)?,
            dqkv: be.alloc(bt * wq)?,
            dqkr: be.alloc(if modern { bt * wq } else { 0 })?,
            dfcg: be.alloc(bt * 4 * c)?,
            dfch: be.alloc(bt * 4 * c)?,
        };
        let grads = be.alloc(model.layout.total)?;
        let opt = Optimizer::new(&model, opt_cfg)?;
        Ok(Trainer {
            model,
            b,
            t,
            grads,
            opt,
            acts,
            ones: vec![1.0; bt],
            losses_host: vec![0.0; bt],
        })
    }

    fn check_batch(
        &self,
        inputs: &[u32],
        targets: &[u32],
        weights: Option<&[f32]>,
    ) -> Result<(), EngineError> {
        let bt = self.b * self.t;
        if inputs.len() != bt || targets.len() != bt || weights.is_some_and(|w| w.len() != bt) {
            return Err(EngineError::Shape(format!(
                "batch needs {bt} inputs/targets/weights, got {}/{}/{}",
                inputs.len(),
                targets.len(),
                weights.map_or(bt, |w| w.len())
            )));
        }
        self.model.check_ids(inputs)?;
        self.model.check_ids(targets)
    }

    /// Forward pass through the final norm and, when `logits`, the LM head (all kept in the
    /// activation buffers).
    fn forward(&mut self, inputs: &[u32], logits: bool) {
        let m = &self.model;
        let be = &*m.backend;
        let cfg = &m.cfg;
        let (b, t) = (self.b, self.t);
        let bt = b * t;
        let c = cfg.n_embd;
        let d = m.attn_dims(b, t);
        let (wq, wo) = (d.qkv_width(), d.out_width());
        let p = |s: Slot| View::new(&m.params, s.off, s.len);
        let po = |s: Option<Slot>| s.map(p);
        let nk = m.norm_kind();
        let a = &self.acts;
        be.embedding_forward(
            v(&a.layers[0].res, bt * c),
            p(m.layout.wte),
            po(m.layout.wpe),
            inputs,
            t,
            0,
            c,
        );
        for (l, ls) in m.layout.layers.iter().enumerate() {
            let la = &a.layers[l];
            let next_res = if l + 1 < cfg.n_layer {
                &a.layers[l + 1].res
            } else {
                &a.res_final
            };
            be.norm_forward(
                nk,
                v(&la.ln1, bt * c),
                v(&la.ln1_stats, 2 * bt),
                v(&la.res, bt * c),
                po(ls.ln1_w),
                po(ls.ln1_b),
                bt,
                c,
                cfg.norm_eps,
            );
            be.matmul_bias(
                v(&la.qkv, bt * wq),
                v(&la.ln1, bt * c),
                p(ls.qkv_w),
                po(ls.qkv_b),
                lin(bt, wq, c),
                1.0,
                0.0,
            );
            let att_in = if let Some(prep) = m.qk_prep(0) {
                be.qk_prep_forward(
                    v(&la.qkr, bt * wq),
                    v(&la.qk_stats, bt * (cfg.n_head + cfg.n_kv_head)),
                    v(&la.qkv, bt * wq),
                    d,
                    prep,
                );
                &la.qkr
            } else {
                &la.qkv
            };
            be.attention_forward(
                v(&la.att, bt * wo),
                v(&la.probs, be.attention_scratch_len(d)),
                v(att_in, bt * wq),
                d,
            );
            be.matmul_bias_residual(
                v(&la.res2, bt * c),
                v(&la.res, bt * c),
                v(&la.att, bt * wo),
                p(ls.proj_w),
                po(ls.proj_b),
                lin(bt, c, wo),
            );
            be.norm_forward(
                nk,
                v(&la.ln2, bt * c),
                v(&la.ln2_stats, 2 * bt),
                v(&la.res2, bt * c),
                po(ls.ln2_w),
                po(ls.ln2_b),
                bt,
                c,
                cfg.norm_eps,
            );
            be.matmul_bias_act(
                m.act(),
                v(&la.fcg, bt * 4 * c),
                v(&la.fch, bt * 4 * c),
                v(&la.ln2, bt * c),
                p(ls.fc_w),
                po(ls.fc_b),
                lin(bt, 4 * c, c),
            );
            be.matmul_bias_residual(
                v(next_res, bt * c),
                v(&la.res2, bt * c),
                v(&la.fcg, bt * 4 * c),
                p(ls.fcp_w),
                po(ls.fcp_b),
                lin(bt, c, 4 * c),
            );
        }
        be.norm_forward(
            nk,
            v(&a.lnf, bt * c),
            v(&a.lnf_stats, 2 * bt),
            v(&a.res_final, bt * c),
            po(m.layout.lnf_w),
            po(m.layout.lnf_b),
            bt,
            c,
            cfg.norm_eps,
        );
        if !logits {
            return;
        }
        be.matmul_logits(
            v(&a.logits, bt * cfg.vocab_size),
            v(&a.lnf, bt * c),
            p(m.head_slot()),
            lin(bt, cfg.vocab_size, c),
        );
    }

    /// Backward pass from the dlogits left in the logits buffer; accumulates into `grads`.
    fn backward(&mut self, inputs: &[u32]) {
        let m = &self.model;
        let be = &*m.backend;
        let bt = self.b * self.t;
        let c = m.cfg.n_embd;
        let vs = m.cfg.vocab_size;
        let p = |s: Slot| View::new(&m.params, s.off, s.len);
        let g = |s: Slot| View::new(&self.grads, s.off, s.len);
        let a = &self.acts;
        let tn = MatDims {
            m: 0,
            n: 0,
            k: 0,
            trans_a: false,
            trans_b: false,
        };
        // head: dlnf = dlogits @ W ; dW += dlogits^T @ lnf
        let head = m.head_slot();
        be.matmul(
            v(&a.dln, bt * c),
            v(&a.logits, bt * vs),
            p(head),
            MatDims {
                m: bt,
                n: c,
                k: vs,
                ..tn
            },
            1.0,
            0.0,
        );
        be.matmul(
            g(head),
            v(&a.logits, bt * vs),
            v(&a.lnf, bt * c),
            MatDims {
                m: vs,
                n: c,
                k: bt,
                trans_a: true,
                trans_b: false,
            },
            1.0,
            1.0,
        );
        self.backward_trunk(inputs);
    }

    /// Backward from the gradient of the final hidden states left in `dln` (the head's part of
    /// [`Trainer::backward`], or a caller's own head); accumulates into `grads`.
    fn backward_trunk(&mut self, inputs: &[u32]) {
        let m = &self.model;
        let be = &*m.backend;
        let cfg = &m.cfg;
        let (b, t) = (self.b, self.t);
        let bt = b * t;
        let c = cfg.n_embd;
        let d = m.attn_dims(b, t);
        let (wq, wo) = (d.qkv_width(), d.out_width());
        let p = |s: Slot| View::new(&m.params, s.off, s.len);
        let po = |s: Option<Slot>| s.map(p);
        let g = |s: Slot| View::new(&self.grads, s.off, s.len);
        let go = |s: Option<Slot>| s.map(g);
        let nk = m.norm_kind();
        let a = &self.acts;
        let tn = MatDims {
            m: 0,
            n: 0,
            k: 0,
            trans_a: false,
            trans_b: false,
        };
        be.fill(v(&a.dres, bt * c), 0.0);
        be.norm_backward(
            nk,
            v(&a.dres, bt * c),
            go(m.layout.lnf_w),
            go(m.layout.lnf_b),
            v(&a.dln, bt * c),
            v(&a.res_final, bt * c),
            v(&a.lnf_stats, 2 * bt),
            po(m.layout.lnf_w),
            bt,
            c,
        );
        let wgrad = |n: usize, k: usize| MatDims {
            m: n,
            n: k,
            k: bt,
            trans_a: true,
            trans_b: false,
        };
        for (l, ls) in m.layout.layers.iter().enumerate().rev() {
            let la = &a.layers[l];
            // MLP: res_out = res2 + fcg @ Wfcp^T + b
            be.matmul_wgrad_bias(
                g(ls.fcp_w),
                ls.fcp_b.map(g),
                v(&a.dres, bt * c),
                v(&la.fcg, bt * 4 * c),
                wgrad(c, 4 * c),
            );
            // dfch = act'(fch) * (dres @ Wfcp), and the fc bias gradient
            be.matmul_act_backward(
                m.act(),
                v(&a.dfch, bt * 4 * c),
                v(&a.dfcg, bt * 4 * c),
                ls.fc_b.map(g),
                v(&a.dres, bt * c),
                p(ls.fcp_w),
                v(&la.fch, bt * 4 * c),
                MatDims {
                    m: bt,
                    n: 4 * c,
                    k: c,
                    ..tn
                },
            );
            be.matmul(
                v(&a.dln, bt * c),
                v(&a.dfch, bt * 4 * c),
                p(ls.fc_w),
                MatDims {
                    m: bt,
                    n: c,
                    k: 4 * c,
                    ..tn
                },
                1.0,
                0.0,
            );
            be.matmul(
                g(ls.fc_w),
                v(&a.dfch, bt * 4 * c),
                v(&la.ln2, bt * c),
                wgrad(4 * c, c),
                1.0,
                1.0,
            );
            be.norm_backward(
                nk,
                v(&a.dres, bt * c),
                go(ls.ln2_w),
                go(ls.ln2_b),
                v(&a.dln, bt * c),
                v(&la.res2, bt * c),
                v(&la.ln2_stats, 2 * bt),
                po(ls.ln2_w),
                bt,
                c,
            );
            // attention: res2 = res + att @ Wp^T + b
            be.matmul(
                v(&a.datt, bt * wo),
                v(&a.dres, bt * c),
                p(ls.proj_w),
                MatDims {
                    m: bt,
                    n: wo,
                    k: c,
                    ..tn
                },
                1.0,
                0.0,
            );
            be.matmul_wgrad_bias(
                g(ls.proj_w),
                ls.proj_b.map(g),
                v(&a.dres, bt * c),
                v(&la.att, bt * wo),
                wgrad(c, wo),
            );
            let modern = m.qk_prep(0);
            let (att_in, datt_in) = if modern.is_some() {
                (&la.qkr, &a.dqkr)
            } else {
                (&la.qkv, &a.dqkv)
            };
            be.attention_backward(
                v(datt_in, bt * wq),
                v(&a.datt, bt * wo),
                v(att_in, bt * wq),
                v(&la.probs, be.attention_scratch_len(d)),
                d,
            );
            if let Some(prep) = modern {
                be.qk_prep_backward(
                    v(&a.dqkv, bt * wq),
                    v(&a.dqkr, bt * wq),
                    v(&la.qkv, bt * wq),
                    v(&la.qk_stats, bt * (cfg.n_head + cfg.n_kv_head)),
                    d,
                    prep,
                );
            }
            be.matmul(
                v(&a.dln, bt * c),
                v(&a.dqkv, bt * wq),
                p(ls.qkv_w),
                MatDims {
                    m: bt,
                    n: c,
                    k: wq,
                    ..tn
                },
                1.0,
                0.0,
            );
            be.matmul_wgrad_bias(
                g(ls.qkv_w),
                ls.qkv_b.map(g),
                v(&a.dqkv, bt * wq),
                v(&la.ln1, bt * c),
                wgrad(wq, c),
            );
            be.norm_backward(
                nk,
                v(&a.dres, bt * c),
                go(ls.ln1_w),
                go(ls.ln1_b),
                v(&a.dln, bt * c),
                v(&la.res, bt * c),
                v(&la.ln1_stats, 2 * bt),
                po(ls.ln1_w),
                bt,
                c,
            );
        }
        be.embedding_backward(
            g(m.layout.wte),
            go(m.layout.wpe),
            v(&a.dres, bt * c),
            inputs,
            t,
            c,
        );
    }

    /// Forward + backward on one micro-batch. The loss is `Σ_i w_i · CE_i / norm` (weights
    /// default to 1); its gradient is *added* to `grads` (call [`Trainer::zero_grad`] first, or
    /// not, to accumulate). Returns that loss.
    pub fn forward_backward(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        weights: Option<&[f32]>,
        norm: f32,
    ) -> Result<f32, EngineError> {
        self.check_batch(inputs, targets, weights)?;
        self.forward(inputs, true);
        let bt = self.b * self.t;
        let vs = self.model.cfg.vocab_size;
        let w = weights.unwrap_or(&self.ones);
        let be = &*self.model.backend;
        be.cross_entropy(
            v(&self.acts.logits, bt * vs),
            v(&self.acts.losses, bt),
            targets,
            w,
            bt,
            vs,
            self.model.cfg.logit_softcap,
            Some(1.0 / norm),
        );
        be.read(v(&self.acts.losses, bt), &mut self.losses_host);
        let loss = self
            .losses_host
            .iter()
            .zip(w)
            .map(|(l, w)| (*l as f64) * (*w as f64))
            .sum::<f64>()
            / norm as f64;
        self.backward(inputs);
        Ok(loss as f32)
    }

    /// Per-token cross-entropy (nats) for a batch, forward only (for eval / bpb).
    pub fn eval_losses(&mut self, inputs: &[u32], targets: &[u32]) -> Result<&[f32], EngineError> {
        self.check_batch(inputs, targets, None)?;
        self.forward(inputs, true);
        let bt = self.b * self.t;
        let vs = self.model.cfg.vocab_size;
        let be = &*self.model.backend;
        be.cross_entropy(
            v(&self.acts.logits, bt * vs),
            v(&self.acts.losses, bt),
            targets,
            &self.ones,
            bt,
            vs,
            self.model.cfg.logit_softcap,
            None,
        );
        be.read(v(&self.acts.losses, bt), &mut self.losses_host);
        Ok(&self.losses_host)
    }

    /// The final hidden states `[B*T, C]` (after the final norm, before the LM head) for a batch,
    /// forward only, activations kept: a head of the caller's own (the reward model's scalar
    /// head) reads them and sends its gradient back with [`Trainer::backward_hidden`].
    pub fn forward_hidden(&mut self, inputs: &[u32]) -> Result<Vec<f32>, EngineError> {
        let bt = self.b * self.t;
        if inputs.len() != bt {
            return Err(EngineError::Shape(format!(
                "batch needs {bt} inputs, got {}",
                inputs.len()
            )));
        }
        self.model.check_ids(inputs)?;
        self.forward(inputs, false);
        let n = bt * self.model.cfg.n_embd;
        let mut out = vec![0f32; n];
        self.model.backend.read(v(&self.acts.lnf, n), &mut out);
        Ok(out)
    }

    /// Back-propagate `dhidden` (the loss's gradient w.r.t. the hidden states
    /// [`Trainer::forward_hidden`] returned, `[B*T, C]`) through the trunk; *adds* to `grads`
    /// (the LM head's gradient is untouched). Call it right after `forward_hidden` on the same
    /// `inputs`: it reuses that forward's activations.
    pub fn backward_hidden(&mut self, inputs: &[u32], dhidden: &[f32]) -> Result<(), EngineError> {
        let n = self.b * self.t * self.model.cfg.n_embd;
        if inputs.len() != self.b * self.t || dhidden.len() != n {
            return Err(EngineError::Shape(format!(
                "backward_hidden needs {} inputs and {n} gradients, got {} and {}",
                self.b * self.t,
                inputs.len(),
                dhidden.len()
            )));
        }
        self.model.backend.write(v(&self.acts.dln, n), dhidden);
        self.backward_trunk(inputs);
        Ok(())
    }

    /// Logits of the last forward (before a backward overwrote them), to the host.
    pub fn logits_host(&self) -> Vec<f32> {
        let n = self.b * self.t * self.model.cfg.vocab_size;
        let mut out = vec![0f32; n];
        self.model.backend.read(v(&self.acts.logits, n), &mut out);
        out
    }

    pub fn zero_grad(&mut self) {
        self.model
            .backend
            .fill(v(&self.grads, self.model.layout.total), 0.0);
    }

    /// Gradients to the host, in layout order.
    pub fn grads_host(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.model.layout.total];
        self.model
            .backend
            .read(v(&self.grads, self.model.layout.total), &mut out);
        out
    }

    /// Global L2 norm of the gradients; if `max` is given and exceeded, scale them down to it.
    pub fn clip_grad(&mut self, max: Option<f32>) -> f32 {
        let be = &*self.model.backend;
        let all = v(&self.grads, self.model.layout.total);
        let norm = be.sum_squares(all).sqrt() as f32;
        if let Some(mx) = max {
            if norm > mx && norm.is_finite() {
                be.scale(all, mx / (norm + 1e-6));
            }
        }
        norm
    }

    /// One optimizer update with the learning rates multiplied by `lr_scale` (the schedule).
    pub fn optimizer_step(&mut self, lr_scale: f32) {
        self.opt.step(&self.model, &self.grads, lr_scale);
    }

    /// zero_grad + forward/backward (mean over weighted tokens) + clip + optimizer step.
    pub fn train_step(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        weights: Option<&[f32]>,
        lr_scale: f32,
    ) -> Result<StepStats, EngineError> {
        self.zero_grad();
        let norm = match weights {
            Some(w) => w.iter().map(|x| x.abs()).sum::<f32>().max(1e-8),
            None => (self.b * self.t) as f32,
        };
        let loss = self.forward_backward(inputs, targets, weights, norm)?;
        let grad_norm = self.clip_grad(self.opt.cfg.grad_clip);
        if loss.is_finite() && grad_norm.is_finite() {
            self.optimizer_step(lr_scale);
        }
        Ok(StepStats { loss, grad_norm })
    }
}
