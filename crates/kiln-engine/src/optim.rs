//! Optimizers over the contiguous parameter buffer: AdamW (every tensor) and Muon (Newton–Schulz
//! orthogonalized momentum for hidden matrices, AdamW for embeddings, head and vectors). Moments
//! live in buffers with the parameter layout. Parameter groups come from the layout's
//! [`ParamKind`]; Muon is composed from backend matmuls, so every backend gets it for free.

use serde::{Deserialize, Serialize};

use crate::backend::{AdamHyper, Backend, MatDims, View};
use crate::model::Model;
use crate::params::ParamKind;
use crate::EngineError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimKind {
    AdamW,
    Muon,
}

impl std::str::FromStr for OptimKind {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, EngineError> {
        match s {
            "adamw" => Ok(OptimKind::AdamW),
            "muon" => Ok(OptimKind::Muon),
            _ => Err(EngineError::Config(format!(
                "unknown optimizer `{s}` (adamw or muon)"
            ))),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimKind,
    /// AdamW learning rate (all tensors for AdamW; embeddings/head/vectors under Muon).
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Apply weight decay to 1-D tensors (norm gains, biases) too (PyTorch's default).
    pub decay_vectors: bool,
    pub muon_lr: f32,
    pub muon_momentum: f32,
    pub ns_steps: usize,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f32>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimKind::AdamW,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            decay_vectors: false,
            muon_lr: 0.02,
            muon_momentum: 0.95,
            ns_steps: 5,
            grad_clip: Some(1.0),
        }
    }
}

#[derive(Clone, Debug)]
enum Rule {
    Adam { weight_decay: f32 },
    Muon { rows: usize, cols: usize },
}

#[derive(Clone, Debug)]
struct Group {
    off: usize,
    len: usize,
    rule: Rule,
}

/// Optimizer state: moments in the parameter layout plus Newton–Schulz scratch.
pub struct Optimizer<B: Backend> {
    pub cfg: OptimizerConfig,
    pub m: B::Buf,
    pub v: B::Buf,
    /// Number of updates taken so far.
    pub step: u64,
    groups: Vec<Group>,
    total: usize,
    ns: Option<[B::Buf; 4]>,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(model: &Model<B>, cfg: OptimizerConfig) -> Result<Self, EngineError> {
        let be = &model.backend;
        let mut groups = Vec::new();
        let mut max_mat = 0usize;
        let mut max_sq = 0usize;
        for s in &model.layout.specs {
            let rule = if cfg.kind == OptimKind::Muon && s.kind == ParamKind::Matrix {
                let (rows, cols) = (s.shape[0], s.shape[1]);
                max_mat = max_mat.max(rows * cols);
                max_sq = max_sq.max(rows.min(cols).pow(2));
                Rule::Muon { rows, cols }
            } else {
                let decay = s.kind != ParamKind::Vector || cfg.decay_vectors;
                Rule::Adam {
                    weight_decay: if decay { cfg.weight_decay } else { 0.0 },
                }
            };
            // merge adjacent Adam tensors with the same decay into one call
            if let (Some(last), Rule::Adam { weight_decay }) = (groups.last_mut(), &rule) {
                let last: &mut Group = last;
                if let Rule::Adam { weight_decay: wd } = last.rule {
                    if wd == *weight_decay && last.off + last.len == s.offset {
                        last.len += s.len;
                        continue;
                    }
                }
            }
            groups.push(Group {
                off: s.offset,
                len: s.len,
                rule,
            });
        }
        let ns = if max_mat > 0 {
            Some([
                be.alloc(max_mat)?,
                be.alloc(max_mat)?,
                be.alloc(max_sq)?,
                be.alloc(max_sq)?,
            ])
        } else {
            None
        };
        let total = model.layout.total;
        Ok(Optimizer {
            cfg,
            m: be.alloc(total)?,
            v: be.alloc(total)?,
            step: 0,
            groups,
            total,
            ns,
        })
    }

    /// Apply one update from `grads` with learning rates scaled by `lr_scale`.
    pub fn step(&mut self, model: &Model<B>, grads: &B::Buf, lr_scale: f32) {
        self.step += 1;
        let be = &*model.backend;
        let h = AdamHyper {
            lr: self.cfg.lr * lr_scale,
            beta1: self.cfg.beta1,
            beta2: self.cfg.beta2,
            eps: self.cfg.eps,
            weight_decay: 0.0,
            step: self.step,
        };
        let bufs = [&model.params, grads, &self.m, &self.v];
        // runs of consecutive Adam groups go to the backend together (one launch on cuda)
        let mut run: Vec<(usize, usize, f32)> = Vec::new();
        for gr in &self.groups {
            if let Rule::Adam { weight_decay } = gr.rule {
                run.push((gr.off, gr.len, weight_decay));
                continue;
            }
            if !run.is_empty() {
                be.adamw_groups(bufs, &run, h);
                run.clear();
            }
            let p = View::new(&model.params, gr.off, gr.len);
            let g = View::new(grads, gr.off, gr.len);
            let m = View::new(&self.m, gr.off, gr.len);
            match gr.rule {
                Rule::Adam { .. } => unreachable!("batched above"),
                Rule::Muon { rows, cols } => {
                    let ns = self.ns.as_ref().expect("muon scratch");
                    let n = rows * cols;
                    let mu = self.cfg.muon_momentum;
                    // momentum: m = mu*m + g; nesterov direction x = g + mu*m
                    be.scale(m, mu);
                    be.axpy(m, 1.0, g);
                    let x = View::new(&ns[0], 0, n);
                    be.copy(x, g);
                    be.axpy(x, mu, m);
                    let o = newton_schulz(be, ns, rows, cols, self.cfg.ns_steps);
                    let scale = (rows as f32 / cols as f32).max(1.0).sqrt();
                    be.axpy(p, -self.cfg.muon_lr * lr_scale * scale, o);
                }
            }
        }
        if !run.is_empty() {
            be.adamw_groups(bufs, &run, h);
        }
    }

    /// Moments and step count to the host (for checkpoints).
    pub fn state_host(&self, be: &B) -> (Vec<f32>, Vec<f32>, u64) {
        let mut m = vec![0f32; self.total];
        let mut v = vec![0f32; self.total];
        be.read(View::new(&self.m, 0, self.total), &mut m);
        be.read(View::new(&self.v, 0, self.total), &mut v);
        (m, v, self.step)
    }

    pub fn set_state_host(
        &mut self,
        be: &B,
        m: &[f32],
        v: &[f32],
        step: u64,
    ) -> Result<(), EngineError> {
        if m.len() != self.total || v.len() != self.total {
            return Err(EngineError::Shape(format!(
                "optimizer state has {}/{} floats, model needs {}",
                m.len(),
                v.len(),
                self.total
            )));
        }
        be.write(View::new(&self.m, 0, self.total), m);
        be.write(View::new(&self.v, 0, self.total), v);
        self.step = step;
        Ok(())
    }
}

/// Newton–Schulz quintic iteration (coefficients from Keller Jordan's Muon) on the `rows×cols`
/// matrix in `ns[0]`; returns the view holding the (approximately) orthogonalized result.
fn newton_schulz<'a, B: Backend>(
    be: &B,
    ns: &'a [B::Buf; 4],
    rows: usize,
    cols: usize,
    steps: usize,
) -> View<'a, B::Buf> {
    let (a, b, c) = (3.4445f32, -4.7750f32, 2.0315f32);
    let n = rows * cols;
    let s = rows.min(cols);
    let mut x = View::new(&ns[0], 0, n);
    let mut y = View::new(&ns[1], 0, n);
    let gram = View::new(&ns[2], 0, s * s);
    let poly = View::new(&ns[3], 0, s * s);
    let norm = be.sum_squares(x).sqrt() as f32;
    be.scale(x, 1.0 / (norm + 1e-7));
    let sq = MatDims {
        m: s,
        n: s,
        k: s,
        trans_a: false,
        trans_b: false,
    };
    for _ in 0..steps {
        if rows <= cols {
            // A = X Xᵀ; B = bA + cA²; X ← aX + B X
            be.matmul(
                gram,
                x,
                x,
                MatDims {
                    m: rows,
                    n: rows,
                    k: cols,
                    trans_a: false,
                    trans_b: true,
                },
                1.0,
                0.0,
            );
            be.matmul(poly, gram, gram, sq, c, 0.0);
            be.axpy(poly, b, gram);
            be.matmul(
                y,
                poly,
                x,
                MatDims {
                    m: rows,
                    n: cols,
                    k: rows,
                    trans_a: false,
                    trans_b: false,
                },
                1.0,
                0.0,
            );
        } else {
            // A = Xᵀ X; B = bA + cA²; X ← aX + X B
            be.matmul(
                gram,
                x,
                x,
                MatDims {
                    m: cols,
                    n: cols,
                    k: rows,
                    trans_a: true,
                    trans_b: false,
                },
                1.0,
                0.0,
            );
            be.matmul(poly, gram, gram, sq, c, 0.0);
            be.axpy(poly, b, gram);
            be.matmul(
                y,
                x,
                poly,
                MatDims {
                    m: rows,
                    n: cols,
                    k: cols,
                    trans_a: false,
                    trans_b: false,
                },
                1.0,
                0.0,
            );
        }
        be.axpy(y, a, x);
        std::mem::swap(&mut x, &mut y);
    }
    x
}
