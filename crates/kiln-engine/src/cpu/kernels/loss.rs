//! Softmax cross-entropy with per-token weights (optional logit soft-cap), fused with its gradient.

use super::*;

simd_fn! {
    /// One row of the fused loss + gradient: `z` (logits) becomes `ws·(softmax(z) - onehot)`;
    /// returns `logsumexp(z) - z[tgt]`.
    pub(super) fn ce_row_grad(z: &mut [f32], tgt: usize, ws: f32) -> f32 {
        let mx = vmath::max(z);
        let zt = z[tgt];
        let sum = vmath::exp_shift_sum(z, mx);
        let k = ws / sum;
        z.iter_mut().for_each(|v| *v *= k);
        z[tgt] -= ws;
        mx + sum.ln() - zt
    }
}

simd_fn! {
    /// `logsumexp(z) - z[tgt]`, `z` unchanged.
    pub(super) fn ce_row_loss(z: &[f32], tgt: usize) -> f32 {
        let mx = vmath::max(z);
        let mut acc = [0f32; LANES];
        let ch = z.chunks_exact(LANES);
        let rem = ch.remainder();
        for c in ch {
            for k in 0..LANES {
                acc[k] += exp(c[k] - mx);
            }
        }
        let mut sum = hsum(&acc);
        for &v in rem {
            sum += exp(v - mx);
        }
        mx + sum.ln() - z[tgt]
    }
}

#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    logits: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    weights: &[f32],
    rows: usize,
    vocab: usize,
    softcap: Option<f32>,
    grad_scale: Option<f32>,
) {
    logits[..rows * vocab]
        .par_chunks_mut(vocab)
        .zip(losses[..rows].par_iter_mut())
        .enumerate()
        .with_max_len(32)
        .for_each(|(r, (z, loss))| {
            let tgt = targets[r] as usize;
            assert!(tgt < vocab, "target {tgt} out of vocab {vocab}");
            let cap = |x: f32| match softcap {
                Some(c) => c * fast_tanh(x / c),
                None => x,
            };
            if let (Some(s), None) = (grad_scale, softcap) {
                *loss = ce_row_grad(z, tgt, s * weights[r]);
                return;
            }
            if let (None, None) = (grad_scale, softcap) {
                *loss = ce_row_loss(z, tgt);
                return;
            }
            if grad_scale.is_some() && softcap.is_some() {
                z.iter_mut().for_each(|v| *v = cap(*v));
            }
            let capped = grad_scale.is_some() || softcap.is_none();
            let get = |v: f32| if capped { v } else { cap(v) };
            let mx = z.iter().map(|&v| get(v)).fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = z.iter().map(|&v| (get(v) - mx).exp()).sum();
            let lse = mx + sum.ln();
            *loss = lse - get(z[tgt]);
            if let Some(s) = grad_scale {
                let ws = s * weights[r];
                let inv = 1.0 / sum;
                for (j, v) in z.iter_mut().enumerate() {
                    let p = (*v - mx).exp() * inv;
                    let mut g = ws * (p - if j == tgt { 1.0 } else { 0.0 });
                    if let Some(c) = softcap {
                        let th = *v / c;
                        g *= 1.0 - th * th;
                    }
                    *v = g;
                }
            }
        });
}
