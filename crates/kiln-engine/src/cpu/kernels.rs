//! The cpu kernels over plain slices + dims (llm.c style): each forward has its backward next to it.
//! Parallel over rows (rayon); row reductions (weight/bias grads, embedding scatter-add) are
//! parallel over column chunks so each thread owns its outputs and no scratch is allocated.

use rayon::prelude::*;

use super::{gemm_raw, Mat};
use crate::backend::{Act, AdamHyper, AttnDims, NormKind, QkPrep};

/// Elements per rayon task for elementwise work.
const CHUNK: usize = 1 << 14;

/// Raw pointer that may cross threads; every use writes a region no other task touches.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
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
        *p = x[lo..hi].iter().map(|&v| (v as f64) * (v as f64)).sum();
    });
    part.iter().sum()
}

/// Dot product with 8 independent accumulators (vectorizes without fast-math).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Column chunk width for row reductions.
fn col_chunk(cols: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (cols.div_ceil(threads * 4)).clamp(8, 256)
}

pub fn add_bias(out: &mut [f32], bias: &[f32], rows: usize, cols: usize) {
    out[..rows * cols].par_chunks_mut(cols).for_each(|row| {
        row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
    });
}

pub fn bias_backward(dbias: &mut [f32], dout: &[f32], rows: usize, cols: usize) {
    let cc = col_chunk(cols);
    dbias[..cols]
        .par_chunks_mut(cc)
        .enumerate()
        .for_each(|(ci, db)| {
            let c0 = ci * cc;
            for r in 0..rows {
                let d = &dout[r * cols + c0..r * cols + c0 + db.len()];
                db.iter_mut().zip(d).for_each(|(a, b)| *a += b);
            }
        });
}

pub fn embedding_forward(
    out: &mut [f32],
    wte: &[f32],
    wpe: Option<&[f32]>,
    ids: &[u32],
    t: usize,
    pos0: usize,
    c: usize,
) {
    out[..ids.len() * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(r, o)| {
            let id = ids[r] as usize;
            o.copy_from_slice(&wte[id * c..(id + 1) * c]);
            if let Some(wpe) = wpe {
                let p = pos0 + r % t;
                o.iter_mut()
                    .zip(&wpe[p * c..(p + 1) * c])
                    .for_each(|(a, b)| *a += b);
            }
        });
}

pub fn embedding_backward(
    dwte: &mut [f32],
    dwpe: Option<&mut [f32]>,
    dout: &[f32],
    ids: &[u32],
    t: usize,
    c: usize,
) {
    // Parallel over column chunks: each task owns columns [c0, c0+w) of every table row.
    let cc = col_chunk(c);
    let nchunks = c.div_ceil(cc);
    let wte_p = SendPtr(dwte.as_mut_ptr());
    let wpe_p = dwpe.map(|p| SendPtr(p.as_mut_ptr()));
    (0..nchunks).into_par_iter().for_each(|ci| {
        let c0 = ci * cc;
        let wdt = cc.min(c - c0);
        for (r, &id) in ids.iter().enumerate() {
            let d = &dout[r * c + c0..r * c + c0 + wdt];
            // SAFETY: columns [c0, c0+wdt) of each row belong to this task only.
            let row = unsafe {
                std::slice::from_raw_parts_mut(wte_p.get().add(id as usize * c + c0), wdt)
            };
            row.iter_mut().zip(d).for_each(|(a, b)| *a += b);
            if let Some(p) = wpe_p {
                let pos = r % t;
                let row = unsafe { std::slice::from_raw_parts_mut(p.get().add(pos * c + c0), wdt) };
                row.iter_mut().zip(d).for_each(|(a, b)| *a += b);
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub fn norm_forward(
    kind: NormKind,
    out: &mut [f32],
    stats: &mut [f32],
    inp: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    rows: usize,
    cols: usize,
    eps: f32,
) {
    out[..rows * cols]
        .par_chunks_mut(cols)
        .zip(stats[..2 * rows].par_chunks_mut(2))
        .enumerate()
        .for_each(|(r, (o, st))| {
            let x = &inp[r * cols..(r + 1) * cols];
            let n = cols as f32;
            let mean = if kind == NormKind::LayerNorm {
                x.iter().sum::<f32>() / n
            } else {
                0.0
            };
            let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let rstd = 1.0 / (var + eps).sqrt();
            st[0] = mean;
            st[1] = rstd;
            for i in 0..cols {
                let mut y = (x[i] - mean) * rstd;
                if let Some(w) = weight {
                    y *= w[i];
                }
                if let Some(b) = bias {
                    y += b[i];
                }
                o[i] = y;
            }
        });
}

#[allow(clippy::too_many_arguments)]
pub fn norm_backward(
    _kind: NormKind,
    dinp: &mut [f32],
    dweight: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    stats: &[f32],
    weight: Option<&[f32]>,
    rows: usize,
    cols: usize,
) {
    let n = cols as f32;
    let is_ln = _kind == NormKind::LayerNorm;
    dinp[..rows * cols]
        .par_chunks_mut(cols)
        .enumerate()
        .for_each(|(r, di)| {
            let x = &inp[r * cols..(r + 1) * cols];
            let d = &dout[r * cols..(r + 1) * cols];
            let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
            let mut s_dn = 0f32;
            let mut s_dnn = 0f32;
            for i in 0..cols {
                let norm = (x[i] - mean) * rstd;
                let dn = d[i] * weight.map_or(1.0, |w| w[i]);
                s_dn += dn;
                s_dnn += dn * norm;
            }
            let m_dn = if is_ln { s_dn / n } else { 0.0 };
            let m_dnn = s_dnn / n;
            for i in 0..cols {
                let norm = (x[i] - mean) * rstd;
                let dn = d[i] * weight.map_or(1.0, |w| w[i]);
                di[i] += (dn - m_dn - norm * m_dnn) * rstd;
            }
        });
    if dweight.is_none() && dbias.is_none() {
        return;
    }
    let cc = col_chunk(cols);
    let nchunks = cols.div_ceil(cc);
    let dw_p = dweight.map(|p| SendPtr(p.as_mut_ptr()));
    let db_p = dbias.map(|p| SendPtr(p.as_mut_ptr()));
    (0..nchunks).into_par_iter().for_each(|ci| {
        let c0 = ci * cc;
        let wdt = cc.min(cols - c0);
        // SAFETY: this task owns columns [c0, c0+wdt).
        let mut dw = dw_p.map(|p| unsafe { std::slice::from_raw_parts_mut(p.get().add(c0), wdt) });
        let mut db = db_p.map(|p| unsafe { std::slice::from_raw_parts_mut(p.get().add(c0), wdt) });
        for r in 0..rows {
            let x = &inp[r * cols + c0..r * cols + c0 + wdt];
            let d = &dout[r * cols + c0..r * cols + c0 + wdt];
            let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
            if let Some(dw) = dw.as_deref_mut() {
                for i in 0..wdt {
                    dw[i] += d[i] * (x[i] - mean) * rstd;
                }
            }
            if let Some(db) = db.as_deref_mut() {
                db.iter_mut().zip(d).for_each(|(a, b)| *a += b);
            }
        }
    });
}

const GELU_S: f32 = 0.797_884_6; // sqrt(2/pi)

/// tanh via exp (accurate to ~1e-7 relative; much faster than libm tanhf).
#[inline]
fn fast_tanh(x: f32) -> f32 {
    let x = x.clamp(-15.0, 15.0);
    let e = (2.0 * x).exp();
    (e - 1.0) / (e + 1.0)
}

pub fn act_forward(act: Act, out: &mut [f32], inp: &[f32]) {
    match act {
        Act::GeluTanh => par_zip(out, inp, |o, x| {
            let u = GELU_S * (x + 0.044715 * x * x * x);
            *o = 0.5 * x * (1.0 + fast_tanh(u));
        }),
        Act::ReluSq => par_zip(out, inp, |o, x| {
            let r = x.max(0.0);
            *o = r * r;
        }),
    }
}

pub fn act_backward(act: Act, dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
    assert_eq!(dinp.len(), inp.len());
    dinp.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK))
        .zip(inp.par_chunks(CHUNK))
        .for_each(|((di, d), x)| {
            for i in 0..di.len() {
                let x = x[i];
                di[i] = d[i]
                    * match act {
                        Act::GeluTanh => {
                            let u = GELU_S * (x + 0.044715 * x * x * x);
                            let th = fast_tanh(u);
                            let sech2 = 1.0 - th * th;
                            0.5 * (1.0 + th)
                                + 0.5 * x * sech2 * GELU_S * (1.0 + 3.0 * 0.044715 * x * x)
                        }
                        Act::ReluSq => 2.0 * x.max(0.0),
                    };
            }
        });
}

/// cos/sin of the rotary angles for one position into `cs` (`[cos; half][sin; half]`).
#[inline]
fn rope_table(cs: &mut [f32], pos: usize, half: usize, theta: f32) {
    for i in 0..half {
        let freq = theta.powf(-(i as f32) / half as f32);
        let (s, c) = (pos as f32 * freq).sin_cos();
        cs[i] = c;
        cs[half + i] = s;
    }
}

pub fn qk_prep_forward(out: &mut [f32], stats: &mut [f32], inp: &[f32], d: AttnDims, p: QkPrep) {
    let wdt = d.qkv_width();
    let hd = d.head_dim;
    let half = hd / 2;
    let nqk = d.n_head + d.n_kv;
    assert!(hd <= 1024, "head dim {hd} too large for the rope table");
    out[..d.b * d.t * wdt]
        .par_chunks_mut(wdt)
        .zip(stats[..d.b * d.t * nqk].par_chunks_mut(nqk))
        .enumerate()
        .for_each(|(r, (o, st))| {
            let x = &inp[r * wdt..(r + 1) * wdt];
            let mut cs = [0f32; 1024];
            if let Some(theta) = p.rope_theta {
                rope_table(&mut cs, p.pos0 + r % d.t, half, theta);
            }
            for h in 0..nqk {
                let xs = &x[h * hd..(h + 1) * hd];
                let os = &mut o[h * hd..(h + 1) * hd];
                let rstd = match p.qk_norm_eps {
                    Some(eps) => {
                        1.0 / (xs.iter().map(|v| v * v).sum::<f32>() / hd as f32 + eps).sqrt()
                    }
                    None => 1.0,
                };
                st[h] = rstd;
                if p.rope_theta.is_some() {
                    for i in 0..half {
                        let (y1, y2) = (xs[i] * rstd, xs[i + half] * rstd);
                        let (c, s) = (cs[i], cs[half + i]);
                        os[i] = y1 * c - y2 * s;
                        os[i + half] = y1 * s + y2 * c;
                    }
                } else {
                    os.iter_mut().zip(xs).for_each(|(o, x)| *o = x * rstd);
                }
            }
            o[nqk * hd..].copy_from_slice(&x[nqk * hd..]);
        });
}

pub fn qk_prep_backward(
    dinp: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    stats: &[f32],
    d: AttnDims,
    p: QkPrep,
) {
    let wdt = d.qkv_width();
    let hd = d.head_dim;
    let half = hd / 2;
    let nqk = d.n_head + d.n_kv;
    dinp[..d.b * d.t * wdt]
        .par_chunks_mut(wdt)
        .enumerate()
        .for_each(|(r, di)| {
            let x = &inp[r * wdt..(r + 1) * wdt];
            let dy_all = &dout[r * wdt..(r + 1) * wdt];
            let mut cs = [0f32; 1024];
            if let Some(theta) = p.rope_theta {
                rope_table(&mut cs, p.pos0 + r % d.t, half, theta);
            }
            for h in 0..nqk {
                let xs = &x[h * hd..(h + 1) * hd];
                let dos = &dy_all[h * hd..(h + 1) * hd];
                let ds = &mut di[h * hd..(h + 1) * hd];
                // inverse rotation: dy = R^T dout
                if p.rope_theta.is_some() {
                    for i in 0..half {
                        let (d1, d2) = (dos[i], dos[i + half]);
                        let (c, s) = (cs[i], cs[half + i]);
                        ds[i] = d1 * c + d2 * s;
                        ds[i + half] = -d1 * s + d2 * c;
                    }
                } else {
                    ds.copy_from_slice(dos);
                }
                let rstd = stats[r * nqk + h];
                if p.qk_norm_eps.is_some() {
                    let m: f32 = (0..hd).map(|i| ds[i] * xs[i] * rstd).sum::<f32>() / hd as f32;
                    for i in 0..hd {
                        ds[i] = rstd * (ds[i] - xs[i] * rstd * m);
                    }
                }
            }
            di[nqk * hd..].copy_from_slice(&dy_all[nqk * hd..]);
        });
}

/// Masked softmax of row `i` of a `t×t` score matrix in place (entries `j > i` set to 0).
#[inline]
fn causal_softmax_row(row: &mut [f32], i: usize) {
    let (live, dead) = row.split_at_mut(i + 1);
    let mx = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in live.iter_mut() {
        *v = (*v - mx).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|v| *v *= inv);
    dead.iter_mut().for_each(|v| *v = 0.0);
}

pub fn attention_forward(out: &mut [f32], probs: &mut [f32], qkv: &[f32], d: AttnDims) {
    let (t, hd, nh) = (d.t, d.head_dim, d.n_head);
    let wq = d.qkv_width();
    let wo = d.out_width();
    let grp = nh / d.n_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let out_p = SendPtr(out.as_mut_ptr());
    probs[..d.b * nh * t * t]
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(bh, p)| {
            let (b, h) = (bh / nh, bh % nh);
            let kvh = h / grp;
            let base = b * t * wq;
            let q = Mat {
                ptr: qkv[base + h * hd..].as_ptr(),
                rs: wq as isize,
                cs: 1,
            };
            let kt = Mat {
                ptr: qkv[base + (nh + kvh) * hd..].as_ptr(),
                rs: 1,
                cs: wq as isize,
            };
            let v = Mat {
                ptr: qkv[base + (nh + d.n_kv + kvh) * hd..].as_ptr(),
                rs: wq as isize,
                cs: 1,
            };
            // SAFETY: strided views stay inside qkv for rows of this batch; p is this task's own.
            unsafe {
                gemm_raw(
                    t,
                    t,
                    hd,
                    p.as_mut_ptr(),
                    t as isize,
                    q,
                    kt,
                    scale,
                    0.0,
                    gemm::Parallelism::None,
                )
            };
            for i in 0..t {
                causal_softmax_row(&mut p[i * t..(i + 1) * t], i);
            }
            let pm = Mat {
                ptr: p.as_ptr(),
                rs: t as isize,
                cs: 1,
            };
            // SAFETY: output columns [h*hd, (h+1)*hd) of batch b's rows belong to this task only.
            unsafe {
                gemm_raw(
                    t,
                    hd,
                    t,
                    out_p.get().add(b * t * wo + h * hd),
                    wo as isize,
                    pm,
                    v,
                    1.0,
                    0.0,
                    gemm::Parallelism::None,
                )
            };
        });
}

pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    probs: &[f32],
    work: &mut [f32],
    d: AttnDims,
) {
    let (t, hd, nh, nkv) = (d.t, d.head_dim, d.n_head, d.n_kv);
    let wq = d.qkv_width();
    let wo = d.out_width();
    let grp = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let dq_p = SendPtr(dqkv.as_mut_ptr());
    // One task per (batch, kv head): it owns dK, dV of that head and dQ of its query heads.
    work[..d.b * nh * t * t]
        .par_chunks_mut(grp * t * t)
        .enumerate()
        .for_each(|(bk, ws)| {
            let (b, kvh) = (bk / nkv, bk % nkv);
            let base = b * t * wq;
            let none = gemm::Parallelism::None;
            for g in 0..grp {
                let h = kvh * grp + g;
                let ds = &mut ws[g * t * t..(g + 1) * t * t];
                let p = &probs[(b * nh + h) * t * t..(b * nh + h + 1) * t * t];
                let dom = Mat {
                    ptr: dout[b * t * wo + h * hd..].as_ptr(),
                    rs: wo as isize,
                    cs: 1,
                };
                let vt = Mat {
                    ptr: qkv[base + (nh + nkv + kvh) * hd..].as_ptr(),
                    rs: 1,
                    cs: wq as isize,
                };
                // SAFETY: all strided reads stay in batch b's rows; ds is this task's own scratch.
                unsafe {
                    gemm_raw(
                        t,
                        t,
                        hd,
                        ds.as_mut_ptr(),
                        t as isize,
                        dom,
                        vt,
                        1.0,
                        0.0,
                        none,
                    )
                };
                // softmax backward: dS = P ⊙ (dP - rowsum(P ⊙ dP)), times the score scale.
                for i in 0..t {
                    let pr = &p[i * t..(i + 1) * t];
                    let dr = &mut ds[i * t..(i + 1) * t];
                    let s = dot(&pr[..=i], &dr[..=i]);
                    for j in 0..=i {
                        dr[j] = pr[j] * (dr[j] - s) * scale;
                    }
                    dr[i + 1..].iter_mut().for_each(|v| *v = 0.0);
                }
                let dsm = Mat {
                    ptr: ds.as_ptr(),
                    rs: t as isize,
                    cs: 1,
                };
                let dstm = Mat {
                    ptr: ds.as_ptr(),
                    rs: 1,
                    cs: t as isize,
                };
                let k = Mat {
                    ptr: qkv[base + (nh + kvh) * hd..].as_ptr(),
                    rs: wq as isize,
                    cs: 1,
                };
                let q = Mat {
                    ptr: qkv[base + h * hd..].as_ptr(),
                    rs: wq as isize,
                    cs: 1,
                };
                let pt = Mat {
                    ptr: p.as_ptr(),
                    rs: 1,
                    cs: t as isize,
                };
                let beta = if g == 0 { 0.0 } else { 1.0 };
                // SAFETY: dQ of head h and dK/dV of kv head kvh (rows of batch b) belong to this task.
                unsafe {
                    gemm_raw(
                        t,
                        hd,
                        t,
                        dq_p.get().add(base + h * hd),
                        wq as isize,
                        dsm,
                        k,
                        1.0,
                        0.0,
                        none,
                    );
                    gemm_raw(
                        t,
                        hd,
                        t,
                        dq_p.get().add(base + (nh + kvh) * hd),
                        wq as isize,
                        dstm,
                        q,
                        1.0,
                        beta,
                        none,
                    );
                    gemm_raw(
                        t,
                        hd,
                        t,
                        dq_p.get().add(base + (nh + nkv + kvh) * hd),
                        wq as isize,
                        pt,
                        dom,
                        1.0,
                        beta,
                        none,
                    );
                }
            }
        });
}

pub fn attention_cached(
    out: &mut [f32],
    qkv: &[f32],
    kc: &mut [f32],
    vc: &mut [f32],
    d: AttnDims,
    pos0: usize,
    max_t: usize,
) {
    let (t, hd, nh, nkv) = (d.t, d.head_dim, d.n_head, d.n_kv);
    assert!(
        pos0 + t <= max_t,
        "KV cache overflow: {} > {max_t}",
        pos0 + t
    );
    let wq = d.qkv_width();
    let wo = d.out_width();
    let grp = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let row_kv = nkv * hd;
    // 1) append new k, v
    kc[..d.b * max_t * row_kv]
        .par_chunks_mut(max_t * row_kv)
        .zip(vc[..d.b * max_t * row_kv].par_chunks_mut(max_t * row_kv))
        .enumerate()
        .for_each(|(b, (kb, vb))| {
            for i in 0..t {
                let src = &qkv[(b * t + i) * wq..(b * t + i + 1) * wq];
                let pos = pos0 + i;
                kb[pos * row_kv..(pos + 1) * row_kv]
                    .copy_from_slice(&src[nh * hd..(nh + nkv) * hd]);
                vb[pos * row_kv..(pos + 1) * row_kv].copy_from_slice(&src[(nh + nkv) * hd..]);
            }
        });
    let (kc, vc) = (&*kc, &*vc);
    // 2) attend: one task per (batch row, token)
    out[..d.b * t * wo]
        .par_chunks_mut(wo)
        .enumerate()
        .for_each(|(r, o)| {
            let (b, i) = (r / t, r % t);
            let n = pos0 + i + 1;
            let mut sc = vec![0f32; n];
            let kb = &kc[b * max_t * row_kv..];
            let vb = &vc[b * max_t * row_kv..];
            for h in 0..nh {
                let kvh = h / grp;
                let q = &qkv[r * wq + h * hd..r * wq + (h + 1) * hd];
                for (j, s) in sc.iter_mut().enumerate() {
                    *s = dot(q, &kb[j * row_kv + kvh * hd..j * row_kv + (kvh + 1) * hd]) * scale;
                }
                let mx = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                sc.iter_mut().for_each(|s| {
                    *s = (*s - mx).exp();
                    sum += *s;
                });
                let oh = &mut o[h * hd..(h + 1) * hd];
                oh.iter_mut().for_each(|v| *v = 0.0);
                for (j, &s) in sc.iter().enumerate() {
                    let pj = s / sum;
                    let vr = &vb[j * row_kv + kvh * hd..j * row_kv + (kvh + 1) * hd];
                    oh.iter_mut().zip(vr).for_each(|(a, b)| *a += pj * b);
                }
            }
        });
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
        .for_each(|(r, (z, loss))| {
            let tgt = targets[r] as usize;
            assert!(tgt < vocab, "target {tgt} out of vocab {vocab}");
            let cap = |x: f32| match softcap {
                Some(c) => c * fast_tanh(x / c),
                None => x,
            };
            if let (Some(s), None) = (grad_scale, softcap) {
                // fused: one exp per logit, stored in place and turned into the gradient
                let mx = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let zt = z[tgt];
                let mut sum = 0f32;
                for v in z.iter_mut() {
                    *v = (*v - mx).exp();
                    sum += *v;
                }
                *loss = mx + sum.ln() - zt;
                let ws = s * weights[r];
                let k = ws / sum;
                z.iter_mut().for_each(|v| *v *= k);
                z[tgt] -= ws;
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

pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamHyper) {
    let bc1 = 1.0 - (h.beta1 as f64).powi(h.step as i32);
    let bc2 = 1.0 - (h.beta2 as f64).powi(h.step as i32);
    let step_size = (h.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = 1.0 - h.lr * h.weight_decay;
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                let gi = g[i];
                m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * gi;
                v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + h.eps;
                p[i] = p[i] * decay - step_size * m[i] / denom;
            }
        });
}
