//! The model, written once against [`Backend`]: [`Model`] (config + one contiguous parameter
//! buffer; inference forward with a KV cache). Training (gradients, activations, the backward
//! pass, the optimizer step) is [`crate::Trainer`] in `trainer.rs`.
//!
//! Block (pre-norm): `x += proj(attn(prep(qkv(norm1(x)))))`, `x += fc2(act(fc(norm2(x))))`;
//! the residual adds are folded into the projection matmuls (`beta = 1`), so the residual stream
//! of layer `l+1` is written in place of a copy of layer `l`'s.

use std::sync::Arc;

use crate::backend::{Act, AttnDims, Backend, MatDims, NormKind, QkPrep, View};
use crate::config::{Arch, ModelConfig};
use crate::params::{Layout, ParamKind, Slot};
use crate::rng::Rng;
use crate::EngineError;

/// A model: config, layout and parameters on a backend.
pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    pub layout: Layout,
    pub backend: Arc<B>,
    pub params: B::Buf,
}

pub(crate) fn lin(m: usize, n: usize, k: usize) -> MatDims {
    MatDims {
        m,
        n,
        k,
        trans_a: false,
        trans_b: true,
    }
}

impl<B: Backend> Model<B> {
    /// A freshly initialized model: N(0, 0.02) weights (residual projections scaled by
    /// `1/sqrt(2·n_layer)`), zero biases, unit norm gains.
    pub fn new(backend: Arc<B>, cfg: ModelConfig, seed: u64) -> Result<Self, EngineError> {
        cfg.validate()?;
        let layout = Layout::new(&cfg);
        let mut host = vec![0f32; layout.total];
        let mut rng = Rng::new(seed);
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        for s in &layout.specs {
            let dst = &mut host[s.offset..s.offset + s.len];
            match s.kind {
                ParamKind::Vector => {
                    let v = if s.name.ends_with("bias") { 0.0 } else { 1.0 };
                    dst.iter_mut().for_each(|x| *x = v);
                }
                _ => {
                    let std = if s.name.ends_with("c_proj.weight") {
                        proj_std
                    } else {
                        0.02
                    };
                    dst.iter_mut()
                        .for_each(|x| *x = (rng.normal() * std) as f32);
                }
            }
        }
        Self::from_host(backend, cfg, &host)
    }

    /// A model from host parameters in layout order.
    pub fn from_host(backend: Arc<B>, cfg: ModelConfig, host: &[f32]) -> Result<Self, EngineError> {
        cfg.validate()?;
        let layout = Layout::new(&cfg);
        if host.len() != layout.total {
            return Err(EngineError::Shape(format!(
                "parameter vector has {} floats, config needs {}",
                host.len(),
                layout.total
            )));
        }
        let params = backend.alloc(layout.total)?;
        backend.write(View::new(&params, 0, layout.total), host);
        Ok(Model {
            cfg,
            layout,
            backend,
            params,
        })
    }

    pub fn num_params(&self) -> usize {
        self.layout.total
    }

    /// All parameters to the host, in layout order.
    pub fn params_host(&self) -> Vec<f32> {
        let mut v = vec![0f32; self.layout.total];
        self.backend
            .read(View::new(&self.params, 0, self.layout.total), &mut v);
        v
    }

    /// Overwrite all parameters from the host.
    pub fn set_params_host(&mut self, host: &[f32]) -> Result<(), EngineError> {
        if host.len() != self.layout.total {
            return Err(EngineError::Shape(format!(
                "{} floats, need {}",
                host.len(),
                self.layout.total
            )));
        }
        self.backend
            .write(View::new(&self.params, 0, self.layout.total), host);
        Ok(())
    }

    /// One named tensor to the host.
    pub fn tensor(&self, name: &str) -> Option<Vec<f32>> {
        let s = self.layout.get(name)?;
        let mut v = vec![0f32; s.len];
        self.backend
            .read(View::new(&self.params, s.offset, s.len), &mut v);
        Some(v)
    }

    pub(crate) fn attn_dims(&self, b: usize, t: usize) -> AttnDims {
        AttnDims {
            b,
            t,
            n_head: self.cfg.n_head,
            n_kv: self.cfg.n_kv_head,
            head_dim: self.cfg.head_dim(),
        }
    }

    pub(crate) fn norm_kind(&self) -> NormKind {
        match self.cfg.arch {
            Arch::Gpt2 => NormKind::LayerNorm,
            Arch::Modern => NormKind::RmsNorm,
        }
    }

    pub(crate) fn act(&self) -> Act {
        match self.cfg.arch {
            Arch::Gpt2 => Act::GeluTanh,
            Arch::Modern => Act::ReluSq,
        }
    }

    pub(crate) fn qk_prep(&self, pos0: usize) -> Option<QkPrep> {
        (self.cfg.arch == Arch::Modern).then_some(QkPrep {
            qk_norm_eps: Some(self.cfg.norm_eps),
            rope_theta: Some(self.cfg.rope_theta),
            pos0,
        })
    }

    /// The output head (tied to `wte` for gpt2).
    pub(crate) fn head_slot(&self) -> Slot {
        self.layout.lm_head.unwrap_or(self.layout.wte)
    }

    /// Error if any id is outside the vocabulary.
    pub fn check_ids(&self, ids: &[u32]) -> Result<(), EngineError> {
        check_ids(ids, self.cfg.vocab_size)
    }

    /// Logits `[b*t, vocab]` for `ids` (`b` rows of `t` tokens, `t <= context`), no gradients.
    pub fn forward_logits(&self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, EngineError> {
        if ids.len() != b * t || t > self.cfg.context || t == 0 {
            return Err(EngineError::Shape(format!(
                "forward_logits: {} ids for b={b} t={t} (context {})",
                ids.len(),
                self.cfg.context
            )));
        }
        crate::generate::BatchedDecoder::new(self, b, t)?.forward_all(ids, b, t)
    }
}

pub(crate) fn check_ids(ids: &[u32], vocab: usize) -> Result<(), EngineError> {
    if let Some((pos, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(EngineError::TokenOutOfRange { id, pos, vocab });
    }
    Ok(())
}
