//! The cpu kernels over plain slices + dims (llm.c style): each forward has its backward next to it.
//! Parallel over rows (rayon); row reductions (weight/bias grads, embedding scatter-add) are
//! parallel over column chunks so each thread owns its outputs and no scratch is allocated.
//! The per-row / per-chunk bodies are [`simd_fn!`]s (AVX-512 / AVX2 / baseline, bit-identical)
//! using the vectorized [`exp`] and fixed-lane reductions of [`vmath`].

use rayon::prelude::*;

use super::sgemm::{self, Tri};
use super::vmath::{self, exp, hsum, simd_fn, LANES};
use super::{gemm_raw, Mat};
pub(crate) use crate::backend::{Act, AdamHyper, AttnDims, NormKind, QkPrep};

mod activation;
mod attention;
mod bias;
mod embedding;
mod loss;
mod norm;
mod optimizer;

pub use activation::*;
pub use attention::*;
pub use bias::*;
pub use embedding::*;
pub use loss::*;
pub use norm::*;
pub use optimizer::*;

/// Elements per rayon task for elementwise work.
pub(super) const CHUNK: usize = 1 << 14;

/// Raw pointer that may cross threads; every use writes a region no other task touches.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Used inside closures so the whole (Send) wrapper is captured, not the raw pointer field.
    #[inline]
    fn get(self) -> *mut f32 {
        self.0
    }
}

pub fn par_map(x: &mut [f32], f: impl Fn(&mut f32) + Sync) {
    x.par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(&f));
}

pub fn par_zip(y: &mut [f32], x: &[f32], f: impl Fn(&mut f32, f32) + Sync) {
    assert_eq!(y.len(), x.len());
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            y.iter_mut().zip(x).for_each(|(y, &x)| f(y, x));
        });
}

/// Σx² in f64. Deterministic: fixed pieces summed in order (rayon's own `sum` may split
/// differently from run to run, which would break bit-exact resume through gradient clipping).
pub fn sum_squares(x: &[f32]) -> f64 {
    const PIECES: usize = 64;
    let mut part = [0f64; PIECES];
    let per = x.len().div_ceil(PIECES).max(1);
    part.par_iter_mut().enumerate().for_each(|(i, p)| {
        let lo = (i * per).min(x.len());
        let hi = ((i + 1) * per).min(x.len());
        *p = sum_sq_f64(&x[lo..hi]);
    });
    part.iter().sum()
}

simd_fn! {
    /// Σx² in f64 over 8 lanes.
    pub(super) fn sum_sq_f64(x: &[f32]) -> f64 {
        let mut acc = [0f64; 8];
        let ch = x.chunks_exact(8);
        let rem = ch.remainder();
        for c in ch {
            for k in 0..8 {
                acc[k] += (c[k] as f64) * (c[k] as f64);
            }
        }
        let mut s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
        for &v in rem {
            s += (v as f64) * (v as f64);
        }
        s
    }
}

/// Dot product over [`LANES`] independent accumulators (vectorizes without fast-math).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = hsum(&acc);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `dst[i] += src[i]`.
#[inline(always)]
pub(super) fn add_to(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(a, b)| *a += b);
}

simd_fn! {
    /// Column chunk `[c0, c0 + db.len())` of `Σ_r dout[r, :]`, added to `db`.
    pub(super) fn col_sum_chunk(db: &mut [f32], dout: &[f32], rows: usize, cols: usize, c0: usize) {
        let w = db.len();
        for r in 0..rows {
            add_to(db, &dout[r * cols + c0..r * cols + c0 + w]);
        }
    }
}

/// Rows per rayon task for row kernels: a few large tasks per thread.
pub(super) fn row_block(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads * 8).max(1)
}

/// Column chunk width for row reductions.
pub(super) fn col_chunk(cols: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (cols.div_ceil(threads * 4)).clamp(8, 256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::vmath::{supported, with_isa, Isa};
    use crate::rng::Rng;

    fn randn(n: usize, seed: u64, std: f32) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.normal() as f32 * std).collect()
    }

    /// `|got - want| <= tol * max(1, max|want|)` elementwise.
    fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1f64, |m, w| m.max(w.abs()));
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= tol * scale,
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    /// Both paths of [`causal_gemm`] (triangular sgemm, blocked fallback) against an f64 product
    /// with the triangle zeroed, for every mode, on sizes with tile and block tails, with beta.
    #[test]
    fn causal_gemm_matches_masked_product() {
        for &(t, n, k) in &[
            (9usize, 16usize, 8usize),
            (45, 37, 64),
            (100, 64, 20),
            (150, 64, 64),
        ] {
            for tri in [Tri::OutLower, Tri::ALower, Tri::AUpper] {
                // OutLower: A is t×k, B k×t; the A modes: A is t×t, B t×n.
                let (nn, kk) = if tri == Tri::OutLower { (t, k) } else { (n, t) };
                let mut a = randn(t * kk, 3, 1.0);
                for i in 0..t {
                    for p in 0..kk {
                        let zero = match tri {
                            Tri::ALower => p > i,
                            Tri::AUpper => p < i,
                            Tri::OutLower => false,
                        };
                        if zero {
                            a[i * kk + p] = 0.0;
                        }
                    }
                }
                let bm = randn(kk * nn, 4, 1.0);
                let c0 = randn(t * nn, 5, 1.0);
                let (alpha, beta) = (0.75f32, 0.5f32);
                let want: Vec<f64> = (0..t * nn)
                    .map(|idx| {
                        let (i, j) = (idx / nn, idx % nn);
                        let dot: f64 = (0..kk)
                            .map(|p| a[i * kk + p] as f64 * bm[p * nn + j] as f64)
                            .sum();
                        alpha as f64 * dot + beta as f64 * c0[idx] as f64
                    })
                    .collect();
                let am = Mat {
                    ptr: a.as_ptr(),
                    rs: kk as isize,
                    cs: 1,
                };
                let bmat = Mat {
                    ptr: bm.as_ptr(),
                    rs: nn as isize,
                    cs: 1,
                };
                for blocked in [false, true] {
                    let mut c = c0.clone();
                    // SAFETY: all three matrices are dense with the strides given.
                    unsafe {
                        let f = if blocked {
                            causal_gemm_blocked
                        } else {
                            causal_gemm
                        };
                        f(
                            tri,
                            t,
                            nn,
                            kk,
                            c.as_mut_ptr(),
                            nn as isize,
                            am,
                            bmat,
                            alpha,
                            beta,
                        );
                    }
                    let keep = |idx: usize| tri != Tri::OutLower || idx % nn <= idx / nn;
                    let got: Vec<f32> = (0..t * nn).filter(|&i| keep(i)).map(|i| c[i]).collect();
                    let w: Vec<f64> = (0..t * nn).filter(|&i| keep(i)).map(|i| want[i]).collect();
                    close(
                        &got,
                        &w,
                        1e-5,
                        &format!("{tri:?} t{t} n{nn} k{kk} blocked {blocked}"),
                    );
                }
            }
        }
    }

    #[test]
    fn gelu_matches_tanh_formula() {
        let mut x = randn(5000, 1, 3.0);
        x.extend([
            -30.0, -10.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 10.0, 30.0, 1e4, -1e4,
        ]);
        let d = randn(x.len(), 2, 1.0);
        let mut y = vec![0f32; x.len()];
        let mut dx = vec![0f32; x.len()];
        act_forward(Act::GeluTanh, &mut y, &x);
        act_backward(Act::GeluTanh, &mut dx, &d, &x);
        let s = (2.0f64 / std::f64::consts::PI).sqrt();
        for i in 0..x.len() {
            let xv = x[i] as f64;
            let u = s * (xv + 0.044715 * xv.powi(3));
            let th = u.tanh();
            let want = 0.5 * xv * (1.0 + th);
            let dwant = d[i] as f64
                * (0.5 * (1.0 + th)
                    + 0.5 * xv * (1.0 - th * th) * s * (1.0 + 3.0 * 0.044715 * xv * xv));
            let tol = |w: f64| 2e-6 * w.abs().max(1.0);
            assert!(
                (y[i] as f64 - want).abs() <= tol(want),
                "gelu({xv}) = {} vs {want}",
                y[i]
            );
            assert!(
                (dx[i] as f64 - dwant).abs() <= tol(dwant),
                "gelu'({xv}): {} vs {dwant}",
                dx[i]
            );
        }
        assert!(act_fwd_one(f32::NAN).is_nan());
    }

    fn act_fwd_one(x: f32) -> f32 {
        let mut y = [0f32];
        act_forward(Act::GeluTanh, &mut y, &[x]);
        y[0]
    }

    /// Naive f64 causal attention (GQA): returns (out, dqkv) for `dout`.
    fn attention_ref(qkv: &[f32], dout: &[f32], d: AttnDims) -> (Vec<f64>, Vec<f64>) {
        let (t, hd, nh, nkv) = (d.t, d.head_dim, d.n_head, d.n_kv);
        let (wq, wo) = (d.qkv_width(), d.out_width());
        let scale = 1.0 / (hd as f64).sqrt();
        let mut out = vec![0f64; d.b * t * wo];
        let mut dqkv = vec![0f64; d.b * t * wq];
        let at = |b: usize, i: usize, c: usize| qkv[(b * t + i) * wq + c] as f64;
        for b in 0..d.b {
            for h in 0..nh {
                let kvh = h / (nh / nkv);
                let (qo, ko, vo) = (h * hd, (nh + kvh) * hd, (nh + nkv + kvh) * hd);
                for i in 0..t {
                    let s: Vec<f64> = (0..=i)
                        .map(|j| {
                            (0..hd)
                                .map(|c| at(b, i, qo + c) * at(b, j, ko + c))
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
                    let p: Vec<f64> = s.iter().map(|v| (v - mx).exp() / z).collect();
                    let dorow = &dout[(b * t + i) * wo + h * hd..][..hd];
                    let dp: Vec<f64> = (0..=i)
                        .map(|j| (0..hd).map(|c| dorow[c] as f64 * at(b, j, vo + c)).sum())
                        .collect();
                    let sdp: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    for j in 0..=i {
                        let ds = p[j] * (dp[j] - sdp) * scale;
                        for c in 0..hd {
                            out[(b * t + i) * wo + h * hd + c] += p[j] * at(b, j, vo + c);
                            dqkv[(b * t + i) * wq + qo + c] += ds * at(b, j, ko + c);
                            dqkv[(b * t + j) * wq + ko + c] += ds * at(b, i, qo + c);
                            dqkv[(b * t + j) * wq + vo + c] += p[j] * dorow[c] as f64;
                        }
                    }
                }
            }
        }
        (out, dqkv)
    }

    fn attention_run(qkv: &[f32], dout: &[f32], d: AttnDims) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![0f32; d.b * d.t * d.out_width()];
        let mut probs = vec![0f32; d.b * d.n_head * d.t * d.t];
        let mut work = vec![f32::NAN; d.b * d.n_head * d.t * d.t];
        let mut dqkv = vec![0f32; d.b * d.t * d.qkv_width()];
        attention_forward(&mut out, &mut probs, qkv, d);
        attention_backward(&mut dqkv, dout, qkv, &probs, &mut work, d);
        (out, dqkv)
    }

    #[test]
    fn attention_matches_naive_across_causal_blocks() {
        // t = 150: three causal blocks, the last one partial; GQA with 2 query heads per kv head
        let d = AttnDims {
            b: 2,
            t: 150,
            n_head: 4,
            n_kv: 2,
            head_dim: 32,
        };
        let qkv = randn(d.b * d.t * d.qkv_width(), 3, 1.0);
        let dout = randn(d.b * d.t * d.out_width(), 4, 1.0);
        let (out, dqkv) = attention_run(&qkv, &dout, d);
        let (ro, rd) = attention_ref(&qkv, &dout, d);
        close(&out, &ro, 1e-5, "attention out");
        close(&dqkv, &rd, 1e-5, "attention dqkv");
    }

    #[test]
    fn cached_attention_matches_full() {
        // prefill 70 tokens in two calls (50 + 20) through the KV cache vs one causal forward
        let d = AttnDims {
            b: 2,
            t: 70,
            n_head: 4,
            n_kv: 2,
            head_dim: 32,
        };
        let qkv = randn(d.b * d.t * d.qkv_width(), 20, 1.0);
        let dout = vec![0f32; d.b * d.t * d.out_width()];
        let (full, _) = attention_run(&qkv, &dout, d);
        let (max_t, wq, wo) = (80, d.qkv_width(), d.out_width());
        let mut kc = vec![0f32; d.b * max_t * d.n_kv * d.head_dim];
        let mut vc = kc.clone();
        let mut cached = vec![0f32; full.len()];
        for (p0, n) in [(0, 50), (50, 20)] {
            let dd = AttnDims { t: n, ..d };
            let mut q = vec![0f32; d.b * n * wq];
            for b in 0..d.b {
                q[b * n * wq..(b + 1) * n * wq]
                    .copy_from_slice(&qkv[(b * d.t + p0) * wq..(b * d.t + p0 + n) * wq]);
            }
            let mut o = vec![0f32; d.b * n * wo];
            attention_cached(&mut o, &q, &mut kc, &mut vc, dd, p0, max_t);
            for b in 0..d.b {
                cached[(b * d.t + p0) * wo..(b * d.t + p0 + n) * wo]
                    .copy_from_slice(&o[b * n * wo..(b + 1) * n * wo]);
            }
        }
        let want: Vec<f64> = full.iter().map(|&v| v as f64).collect();
        close(&cached, &want, 1e-5, "cached attention");
    }

    #[test]
    fn cross_entropy_matches_reference() {
        let (rows, vocab) = (6, 301);
        let logits = randn(rows * vocab, 5, 3.0);
        let targets: Vec<u32> = (0..rows as u32).map(|r| (r * 97) % vocab as u32).collect();
        let weights: Vec<f32> = (0..rows).map(|r| 0.5 + r as f32 * 0.25).collect();
        let mut want_loss = vec![0f64; rows];
        let mut want_grad = vec![0f64; rows * vocab];
        let gs = 0.125f64;
        for r in 0..rows {
            let z = &logits[r * vocab..(r + 1) * vocab];
            let mx = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let s: f64 = z.iter().map(|&v| (v as f64 - mx).exp()).sum();
            want_loss[r] = mx + s.ln() - z[targets[r] as usize] as f64;
            for j in 0..vocab {
                let p = (z[j] as f64 - mx).exp() / s;
                let y = if j == targets[r] as usize { 1.0 } else { 0.0 };
                want_grad[r * vocab + j] = gs * weights[r] as f64 * (p - y);
            }
        }
        // loss only: logits untouched
        let mut z = logits.clone();
        let mut loss = vec![0f32; rows];
        cross_entropy(
            &mut z, &mut loss, &targets, &weights, rows, vocab, None, None,
        );
        assert_eq!(z, logits);
        close(&loss, &want_loss, 1e-6, "ce loss");
        // fused loss + gradient
        let mut loss = vec![0f32; rows];
        cross_entropy(
            &mut z,
            &mut loss,
            &targets,
            &weights,
            rows,
            vocab,
            None,
            Some(gs as f32),
        );
        close(&loss, &want_loss, 1e-6, "ce loss (fused)");
        close(&z, &want_grad, 1e-6, "ce grad");
    }

    #[test]
    fn norms_match_reference() {
        // 150 rows: two full blocks of the parameter-gradient sums and a partial one.
        let (rows, cols) = (150, 100);
        let x = randn(rows * cols, 6, 2.0);
        let w = randn(cols, 7, 1.0);
        let bias = randn(cols, 8, 1.0);
        let dy = randn(rows * cols, 9, 1.0);
        for (kind, weight, with_bias) in [
            (NormKind::LayerNorm, true, true),
            (NormKind::RmsNorm, false, false),
            (NormKind::RmsNorm, true, false),
        ] {
            let wv = weight.then_some(&w[..]);
            let bv = with_bias.then_some(&bias[..]);
            let mut out = vec![0f32; rows * cols];
            let mut stats = vec![0f32; 2 * rows];
            norm_forward(kind, &mut out, &mut stats, &x, wv, bv, rows, cols, 1e-5);
            // Gradients accumulate onto 1s; the same bits on any number of threads (fixed
            // blocks, summed in order).
            let backward = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut dx = vec![1f32; rows * cols];
                let (mut dw, mut db) = (vec![1f32; cols], vec![1f32; cols]);
                pool.install(|| {
                    norm_backward(
                        kind,
                        &mut dx,
                        weight.then_some(&mut dw[..]),
                        with_bias.then_some(&mut db[..]),
                        &dy,
                        &x,
                        &stats,
                        wv,
                        rows,
                        cols,
                    )
                });
                (dx, dw, db)
            };
            let (dx, dw, db) = backward(1);
            assert!(
                backward(3) == (dx.clone(), dw.clone(), db.clone()),
                "{kind:?}: the thread count changed the bits"
            );
            let (mut ro, mut rdx) = (vec![0f64; rows * cols], vec![1f64; rows * cols]);
            let (mut rdw, mut rdb) = (vec![1f64; cols], vec![1f64; cols]);
            for r in 0..rows {
                let xr: Vec<f64> = x[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let n = cols as f64;
                let mean = if kind == NormKind::LayerNorm {
                    xr.iter().sum::<f64>() / n
                } else {
                    0.0
                };
                let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let rstd = 1.0 / (var + 1e-5).sqrt();
                let xh: Vec<f64> = xr.iter().map(|v| (v - mean) * rstd).collect();
                let wi = |i: usize| if weight { w[i] as f64 } else { 1.0 };
                let dn: Vec<f64> = (0..cols).map(|i| dy[r * cols + i] as f64 * wi(i)).collect();
                let m_dn = if kind == NormKind::LayerNorm {
                    dn.iter().sum::<f64>() / n
                } else {
                    0.0
                };
                let m_dnn = dn.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / n;
                for i in 0..cols {
                    ro[r * cols + i] = xh[i] * wi(i) + if with_bias { bias[i] as f64 } else { 0.0 };
                    rdx[r * cols + i] += (dn[i] - m_dn - xh[i] * m_dnn) * rstd;
                    rdw[i] += dy[r * cols + i] as f64 * xh[i];
                    rdb[i] += dy[r * cols + i] as f64;
                }
                assert!(
                    (stats[2 * r] as f64 - mean).abs() < 1e-5
                        && (stats[2 * r + 1] as f64 - rstd).abs() < 1e-5 * rstd
                );
            }
            close(&out, &ro, 2e-6, "norm out");
            close(&dx, &rdx, 2e-6, "norm dx");
            if weight {
                close(&dw, &rdw, 2e-6, "norm dw");
            }
            if with_bias {
                close(&db, &rdb, 2e-6, "norm db");
            }
        }
    }

    #[test]
    fn bias_and_adamw_match_loops() {
        let (rows, cols) = (37, 70);
        let x = randn(rows * cols, 10, 1.0);
        let b = randn(cols, 11, 1.0);
        let mut y = x.clone();
        add_bias(&mut y, &b, rows, cols);
        let mut db = b.clone();
        bias_backward(&mut db, &x, rows, cols);
        for c in 0..cols {
            for r in 0..rows {
                assert_eq!(y[r * cols + c], x[r * cols + c] + b[c]);
            }
            let s: f64 = (0..rows).map(|r| x[r * cols + c] as f64).sum::<f64>() + b[c] as f64;
            assert!((db[c] as f64 - s).abs() < 1e-5, "dbias[{c}]");
        }
        let n = 40_000;
        let (p0, g) = (randn(n, 12, 1.0), randn(n, 13, 0.1));
        let (m0, v0) = (
            randn(n, 14, 0.01),
            randn(n, 15, 0.01).iter().map(|v| v * v).collect::<Vec<_>>(),
        );
        let h = AdamHyper {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step: 4,
        };
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        adamw(&mut p, &g, &mut m, &mut v, h);
        let (bc1, bc2) = (1.0 - 0.9f64.powi(4), 1.0 - 0.95f64.powi(4));
        for i in (0..n).step_by(7) {
            let mi = 0.9 * m0[i] as f64 + 0.1 * g[i] as f64;
            let vi = 0.95 * v0[i] as f64 + 0.05 * (g[i] as f64).powi(2);
            let pi = p0[i] as f64 * (1.0 - 1e-3) - 1e-2 * (mi / bc1) / ((vi / bc2).sqrt() + 1e-8);
            assert!(
                (p[i] as f64 - pi).abs() < 1e-5 * pi.abs().max(1.0),
                "adamw p[{i}]: {} vs {pi}",
                p[i]
            );
            assert!((m[i] as f64 - mi).abs() < 1e-6 && (v[i] as f64 - vi).abs() < 1e-7);
        }
        let s = sum_squares(&g);
        let want: f64 = g.iter().map(|&v| (v as f64).powi(2)).sum();
        assert!((s - want).abs() < 1e-9 * want);
    }

    /// Every instruction-set version of the row kernels gives bit-identical results (so an
    /// AVX2-only machine reproduces an AVX-512 run), checked on one thread per version; attention
    /// runs on every matmul path (sgemm and the skinny kernel, the `gemm` crate on the baseline).
    #[test]
    fn isa_versions_bit_identical() {
        let d = AttnDims {
            b: 1,
            t: 70,
            n_head: 2,
            n_kv: 2,
            head_dim: 16,
        };
        let qkv = randn(d.b * d.t * d.qkv_width(), 16, 1.0);
        let dout = randn(d.b * d.t * d.out_width(), 17, 1.0);
        let x = randn(33 * 90, 18, 2.0);
        let targets: Vec<u32> = (0..33).map(|r| r * 2).collect();
        let ones = vec![1f32; 33];
        let run = || {
            let (o, dq) = attention_run(&qkv, &dout, d);
            let mut g = vec![0f32; x.len()];
            let mut dg = vec![0f32; x.len()];
            act_forward(Act::GeluTanh, &mut g, &x);
            act_backward(Act::GeluTanh, &mut dg, &x, &x);
            let mut n = vec![0f32; x.len()];
            let mut st = vec![0f32; 66];
            norm_forward(
                NormKind::LayerNorm,
                &mut n,
                &mut st,
                &x,
                Some(&x[..90]),
                Some(&x[90..180]),
                33,
                90,
                1e-5,
            );
            let mut dn = vec![0f32; x.len()];
            let mut dw = vec![0f32; 90];
            norm_backward(
                NormKind::LayerNorm,
                &mut dn,
                Some(&mut dw),
                None,
                &x,
                &x,
                &st,
                Some(&x[..90]),
                33,
                90,
            );
            let mut z = x.clone();
            let mut loss = vec![0f32; 33];
            cross_entropy(&mut z, &mut loss, &targets, &ones, 33, 90, None, Some(0.5));
            ([o, dq].concat(), [g, dg, n, st, dn, dw, z, loss].concat())
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (want_att, want) = pool.install(|| with_isa(Isa::Scalar, run));
        for isa in supported() {
            let (att, got) = pool.install(|| with_isa(isa, run));
            let diff = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(diff, None, "{isa:?} differs from the baseline version");
            // attention's products: the `gemm` crate on the baseline; kiln's sgemm on AVX-512 and
            // its skinny kernel for the few-row products (AVX-512 and AVX2) sum in another order:
            // close, not equal
            if isa != Isa::Scalar {
                let scale = want_att.iter().fold(1f32, |m, w| m.max(w.abs()));
                for (i, (a, b)) in att.iter().zip(&want_att).enumerate() {
                    assert!((a - b).abs() <= 1e-5 * scale, "attention [{i}]: {a} vs {b}");
                }
            } else {
                assert!(
                    att.iter()
                        .zip(&want_att)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa:?}: attention differs from the baseline version"
                );
            }
        }
    }
}
