//! Pointwise activations (GELU-tanh, ReLU²), forward and backward.

use super::*;

pub(super) const GELU_S: f32 = 0.797_884_6; // sqrt(2/pi)

/// tanh via exp (accurate to ~1e-7 relative; much faster than libm tanhf).
#[inline]
pub(super) fn fast_tanh(x: f32) -> f32 {
    let x = x.clamp(-15.0, 15.0);
    let e = (2.0 * x).exp();
    (e - 1.0) / (e + 1.0)
}

simd_fn! {
    /// GELU-tanh: `0.5·x·(1 + tanh(u)) = x / (1 + e^(-2u))`, `u = √(2/π)(x + 0.044715x³)`.
    pub(super) fn gelu_fwd(out: &mut [f32], inp: &[f32]) {
        for (o, &x) in out.iter_mut().zip(inp) {
            let u = GELU_S * (x + 0.044715 * x * x * x);
            *o = x / (1.0 + exp(-2.0 * u));
        }
    }
}

simd_fn! {
    /// `dinp = gelu'(x)·dout` with `s = σ(2u)`: `gelu' = s + 2x·s(1-s)·u'`.
    pub(super) fn gelu_bwd(dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
        for ((di, &d), &x) in dinp.iter_mut().zip(dout).zip(inp) {
            let u = GELU_S * (x + 0.044715 * x * x * x);
            let s = 1.0 / (1.0 + exp(-2.0 * u));
            let du = GELU_S * (1.0 + 3.0 * 0.044715 * x * x);
            *di = d * (s + 2.0 * x * s * (1.0 - s) * du);
        }
    }
}

simd_fn! {
    pub(super) fn relu_sq_fwd(out: &mut [f32], inp: &[f32]) {
        for (o, &x) in out.iter_mut().zip(inp) {
            let r = if x > 0.0 { x } else { 0.0 };
            *o = r * r;
        }
    }
}

simd_fn! {
    pub(super) fn relu_sq_bwd(dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
        for ((di, &d), &x) in dinp.iter_mut().zip(dout).zip(inp) {
            *di = d * (2.0 * if x > 0.0 { x } else { 0.0 });
        }
    }
}

/// The one-thread row function of an activation's forward (`out = act(inp)`), for GEMM
/// epilogues.
pub(crate) fn act_row_forward(act: Act) -> fn(&mut [f32], &[f32]) {
    match act {
        Act::GeluTanh => gelu_fwd,
        Act::ReluSq => relu_sq_fwd,
    }
}

/// The one-thread row function of an activation's backward (`dinp = act'(inp) · dout`), for
/// GEMM epilogues.
pub(crate) fn act_row_backward(act: Act) -> fn(&mut [f32], &[f32], &[f32]) {
    match act {
        Act::GeluTanh => gelu_bwd,
        Act::ReluSq => relu_sq_bwd,
    }
}

pub fn act_forward(act: Act, out: &mut [f32], inp: &[f32]) {
    assert_eq!(out.len(), inp.len());
    let f = act_row_forward(act);
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .with_max_len(8)
        .for_each(|(o, x)| f(o, x));
}

pub fn act_backward(act: Act, dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
    assert_eq!(dinp.len(), inp.len());
    assert_eq!(dout.len(), inp.len());
    let f = act_row_backward(act);
    dinp.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK))
        .zip(inp.par_chunks(CHUNK))
        .with_max_len(8)
        .for_each(|((di, d), x)| f(di, d, x));
}
