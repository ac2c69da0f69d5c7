//! The cpu kernels over plain slices + dims (llm.c style): each forward has its backward next to it.
//! Parallel over rows (rayon); row reductions (weight/bias grads, embedding scatter-add) are
//! parallel over column chunks so each thread owns its outputs and no scratch is allocated.
//! The per-row / per-chunk bodies are [`simd_fn!`]s (AVX-512 / AVX2 / baseline, bit-identical)
//! using the vectorized [`exp`] and fixed-lane reductions of [`vmath`].

use rayon::prelude::*;

use super::sgemm::{self, Tri};
use super::vmath::{self, exp, hsum, simd_fn, LANES};
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
        *p = sum_sq_f64(&x[lo..hi]);
    });
    part.iter().sum()
}

simd_fn! {
    /// Σx² in f64 over 8 lanes.
    fn sum_sq_f64(x: &[f32]) -> f64 {
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
fn add_to(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(a, b)| *a += b);
}

simd_fn! {
    /// Column chunk `[c0, c0 + db.len())` of `Σ_r dout[r, :]`, added to `db`.
    fn col_sum_chunk(db: &mut [f32], dout: &[f32], rows: usize, cols: usize, c0: usize) {
        let w = db.len();
        for r in 0..rows {
            add_to(db, &dout[r * cols + c0..r * cols + c0 + w]);
        }
    }
}

/// Rows per rayon task for row kernels: a few large tasks per thread.
fn row_block(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads * 8).max(1)
}

/// Column chunk width for row reductions.
fn col_chunk(cols: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (cols.div_ceil(threads * 4)).clamp(8, 256)
}

simd_fn! {
    /// `row += bias` on each row of `out` (also a GEMM row epilogue).
    pub(crate) fn add_bias_rows(out: &mut [f32], bias: &[f32]) {
        for row in out.chunks_exact_mut(bias.len()) {
            add_to(row, bias);
        }
    }
}

pub fn add_bias(out: &mut [f32], bias: &[f32], rows: usize, cols: usize) {
    let bias = &bias[..cols];
    out[..rows * cols]
        .par_chunks_mut(row_block(rows) * cols)
        .with_max_len(1)
        .for_each(|blk| add_bias_rows(blk, bias));
}

pub fn bias_backward(dbias: &mut [f32], dout: &[f32], rows: usize, cols: usize) {
    let cc = col_chunk(cols);
    dbias[..cols]
        .par_chunks_mut(cc)
        .enumerate()
        .with_max_len(1)
        .for_each(|(ci, db)| col_sum_chunk(db, dout, rows, cols, ci * cc));
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
    (0..nchunks).into_par_iter().with_max_len(1).for_each(|ci| {
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

simd_fn! {
    /// Normalizes whole rows: `out`/`inp` hold `stats.len() / 2` rows of `cols`.
    fn norm_fwd_rows(
        ln: bool,
        out: &mut [f32],
        stats: &mut [f32],
        inp: &[f32],
        weight: Option<&[f32]>,
        bias: Option<&[f32]>,
        cols: usize,
        eps: f32,
    ) {
        let n = cols as f32;
        for ((o, st), x) in out
            .chunks_exact_mut(cols)
            .zip(stats.chunks_exact_mut(2))
            .zip(inp.chunks_exact(cols))
        {
            let mean = if ln { vmath::sum(x) / n } else { 0.0 };
            let mut acc = [0f32; LANES];
            let ch = x.chunks_exact(LANES);
            let rem = ch.remainder();
            for c in ch {
                for k in 0..LANES {
                    let d = c[k] - mean;
                    acc[k] += d * d;
                }
            }
            let mut ss = hsum(&acc);
            for &v in rem {
                ss += (v - mean) * (v - mean);
            }
            let rstd = 1.0 / (ss / n + eps).sqrt();
            st[0] = mean;
            st[1] = rstd;
            match (weight, bias) {
                (Some(w), Some(b)) => {
                    for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
                        *o = (x - mean) * rstd * w + b;
                    }
                }
                (Some(w), None) => {
                    for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                        *o = (x - mean) * rstd * w;
                    }
                }
                (None, Some(b)) => {
                    for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
                        *o = (x - mean) * rstd + b;
                    }
                }
                (None, None) => {
                    for (o, &x) in o.iter_mut().zip(x) {
                        *o = (x - mean) * rstd;
                    }
                }
            }
        }
    }
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
    let ln = kind == NormKind::LayerNorm;
    let (weight, bias) = (weight.map(|w| &w[..cols]), bias.map(|b| &b[..cols]));
    let rb = row_block(rows);
    out[..rows * cols]
        .par_chunks_mut(rb * cols)
        .zip(stats[..2 * rows].par_chunks_mut(2 * rb))
        .zip(inp[..rows * cols].par_chunks(rb * cols))
        .with_max_len(1)
        .for_each(|((o, st), x)| norm_fwd_rows(ln, o, st, x, weight, bias, cols, eps));
}

simd_fn! {
    /// `dinp += ∂/∂inp` for whole rows (`stats.len() / 2` rows of `cols`).
    fn norm_bwd_rows(
        ln: bool,
        dinp: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        stats: &[f32],
        weight: Option<&[f32]>,
        cols: usize,
    ) {
        let n = cols as f32;
        for (((di, d), x), st) in dinp
            .chunks_exact_mut(cols)
            .zip(dout.chunks_exact(cols))
            .zip(inp.chunks_exact(cols))
            .zip(stats.chunks_exact(2))
        {
            let (mean, rstd) = (st[0], st[1]);
            let mut a_dn = [0f32; LANES];
            let mut a_dnn = [0f32; LANES];
            let mut i = 0;
            while i + LANES <= cols {
                for k in 0..LANES {
                    let norm = (x[i + k] - mean) * rstd;
                    let dn = d[i + k] * weight.map_or(1.0, |w| w[i + k]);
                    a_dn[k] += dn;
                    a_dnn[k] += dn * norm;
                }
                i += LANES;
            }
            let (mut s_dn, mut s_dnn) = (hsum(&a_dn), hsum(&a_dnn));
            while i < cols {
                let norm = (x[i] - mean) * rstd;
                let dn = d[i] * weight.map_or(1.0, |w| w[i]);
                s_dn += dn;
                s_dnn += dn * norm;
                i += 1;
            }
            let m_dn = if ln { s_dn / n } else { 0.0 };
            let m_dnn = s_dnn / n;
            match weight {
                Some(w) => {
                    for (((di, &d), &x), &w) in di.iter_mut().zip(d).zip(x).zip(w) {
                        let norm = (x - mean) * rstd;
                        *di += (d * w - m_dn - norm * m_dnn) * rstd;
                    }
                }
                None => {
                    for ((di, &d), &x) in di.iter_mut().zip(d).zip(x) {
                        let norm = (x - mean) * rstd;
                        *di += (d - m_dn - norm * m_dnn) * rstd;
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// One block of rows' share of the norm parameter gradients: overwrite `pw = Σ_r dout·norm`
    /// and `pb = Σ_r dout` (`cols` each) over the block's rows, in row order.
    fn norm_dparams_rows(
        pw: &mut [f32],
        pb: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        stats: &[f32],
        cols: usize,
    ) {
        pw.fill(0.0);
        pb.fill(0.0);
        for ((d, x), st) in dout
            .chunks_exact(cols)
            .zip(inp.chunks_exact(cols))
            .zip(stats.chunks_exact(2))
        {
            let (mean, rstd) = (st[0], st[1]);
            for (((a, b), &d), &x) in pw.iter_mut().zip(pb.iter_mut()).zip(d).zip(x) {
                *a += d * (x - mean) * rstd;
                *b += d;
            }
        }
    }
}

/// Rows per block of the norm backward when it also sums the parameter gradients: a constant,
/// not a share per thread, so the summation order (rows within a block, then blocks in order) and
/// so the result do not depend on the thread count.
const NORM_DPARAM_ROWS: usize = 64;

thread_local! {
    /// Per-block partial sums of the norm parameter gradients (grown once, then reused).
    static NORM_PARTIALS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One block of rows of the norm backward: ((dinp, dout), inp), stats.
type NormBlock<'a> = (((&'a mut [f32], &'a [f32]), &'a [f32]), &'a [f32]);

/// The norm backward's inputs cut into blocks of `rb` rows.
fn row_blocks<'a>(
    dinp: &'a mut [f32],
    dout: &'a [f32],
    inp: &'a [f32],
    stats: &'a [f32],
    rows: usize,
    cols: usize,
    rb: usize,
) -> impl IndexedParallelIterator<Item = NormBlock<'a>> {
    dinp[..rows * cols]
        .par_chunks_mut(rb * cols)
        .zip(dout[..rows * cols].par_chunks(rb * cols))
        .zip(inp[..rows * cols].par_chunks(rb * cols))
        .zip(stats[..2 * rows].par_chunks(2 * rb))
}

#[allow(clippy::too_many_arguments)]
pub fn norm_backward(
    kind: NormKind,
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
    let ln = kind == NormKind::LayerNorm;
    let weight = weight.map(|w| &w[..cols]);
    if dweight.is_none() && dbias.is_none() {
        row_blocks(dinp, dout, inp, stats, rows, cols, row_block(rows))
            .with_max_len(1)
            .for_each(|(((di, d), x), st)| norm_bwd_rows(ln, di, d, x, st, weight, cols));
        return;
    }
    // The parameter gradients are summed per block of rows in the same task as the block's input
    // gradient, while its rows of dout and inp are in cache (a separate pass over columns read
    // them again from memory), then the blocks are added in order.
    let rb = NORM_DPARAM_ROWS;
    let blocks = rows.div_ceil(rb);
    let mut fresh = Vec::new();
    NORM_PARTIALS.with(|cell| {
        let mut held = cell.try_borrow_mut();
        let part: &mut Vec<f32> = match held.as_deref_mut() {
            Ok(v) => v,
            Err(_) => &mut fresh,
        };
        if part.len() < blocks * 2 * cols {
            part.resize(blocks * 2 * cols, 0.0);
        }
        row_blocks(dinp, dout, inp, stats, rows, cols, rb)
            .zip(part[..blocks * 2 * cols].par_chunks_mut(2 * cols))
            .with_max_len(1)
            .for_each(|((((di, d), x), st), p)| {
                norm_bwd_rows(ln, di, d, x, st, weight, cols);
                let (pw, pb) = p.split_at_mut(cols);
                norm_dparams_rows(pw, pb, d, x, st, cols);
            });
        for (dst, offset) in [(dweight, 0), (dbias, cols)] {
            if let Some(dst) = dst {
                for blk in part[..blocks * 2 * cols].chunks_exact(2 * cols) {
                    add_to(&mut dst[..cols], &blk[offset..offset + cols]);
                }
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

simd_fn! {
    /// GELU-tanh: `0.5·x·(1 + tanh(u)) = x / (1 + e^(-2u))`, `u = √(2/π)(x + 0.044715x³)`.
    fn gelu_fwd(out: &mut [f32], inp: &[f32]) {
        for (o, &x) in out.iter_mut().zip(inp) {
            let u = GELU_S * (x + 0.044715 * x * x * x);
            *o = x / (1.0 + exp(-2.0 * u));
        }
    }
}

simd_fn! {
    /// `dinp = gelu'(x)·dout` with `s = σ(2u)`: `gelu' = s + 2x·s(1-s)·u'`.
    fn gelu_bwd(dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
        for ((di, &d), &x) in dinp.iter_mut().zip(dout).zip(inp) {
            let u = GELU_S * (x + 0.044715 * x * x * x);
            let s = 1.0 / (1.0 + exp(-2.0 * u));
            let du = GELU_S * (1.0 + 3.0 * 0.044715 * x * x);
            *di = d * (s + 2.0 * x * s * (1.0 - s) * du);
        }
    }
}

simd_fn! {
    fn relu_sq_fwd(out: &mut [f32], inp: &[f32]) {
        for (o, &x) in out.iter_mut().zip(inp) {
            let r = if x > 0.0 { x } else { 0.0 };
            *o = r * r;
        }
    }
}

simd_fn! {
    fn relu_sq_bwd(dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
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

simd_fn! {
    /// Causal softmax of rows `[r0, r0 + p.len() / t)` of a `t×t` score matrix, in place
    /// (entries `j > i` set to 0).
    fn causal_softmax_rows(p: &mut [f32], t: usize, r0: usize) {
        for (k, row) in p.chunks_exact_mut(t).enumerate() {
            let i = r0 + k;
            let (live, dead) = row.split_at_mut(i + 1);
            let mx = vmath::max(live);
            let inv = 1.0 / vmath::exp_shift_sum(live, mx);
            live.iter_mut().for_each(|v| *v *= inv);
            dead.iter_mut().for_each(|v| *v = 0.0);
        }
    }
}

simd_fn! {
    /// Softmax backward of rows `[r0, r0 + ds.len() / t)`: `dS = P ⊙ (dP - rowsum(P ⊙ dP))·scale`
    /// over `j ≤ i`, 0 above the diagonal. `ds` holds dP on entry.
    fn causal_softmax_bwd_rows(ds: &mut [f32], p: &[f32], t: usize, r0: usize, scale: f32) {
        for (k, (dr, pr)) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)).enumerate() {
            let i = r0 + k;
            let s = dot(&pr[..=i], &dr[..=i]);
            for (d, &p) in dr[..=i].iter_mut().zip(&pr[..=i]) {
                *d = p * (*d - s) * scale;
            }
            dr[i + 1..].iter_mut().for_each(|v| *v = 0.0);
        }
    }
}

/// Query rows per causal block of the fallback path (no AVX-512): it computes only the blocks on
/// or below the diagonal.
const ATT_BLOCK: usize = 64;

/// One causal-attention product of one (batch, head) over all `t` query rows:
/// `C = alpha · A @ B + beta · C` where, by `tri`, only C's lower triangle is needed (`OutLower`,
/// `n = t`) or A's upper/lower triangle is zero (`ALower`/`AUpper`, depth `k = t`). kiln's
/// sgemm skips the triangle per 14×32 tile and per depth step; the fallback per ATT_BLOCK rows.
///
/// # Safety
/// As for [`gemm_raw`]: `a` (t × k), `b` (k × n) and `c` (t × n, row stride `c_rs`) valid.
#[allow(clippy::too_many_arguments)]
unsafe fn causal_gemm(
    tri: Tri,
    t: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: isize,
    a: Mat,
    b: Mat,
    alpha: f32,
    beta: f32,
) {
    if *super::HAVE_AVX512 && t >= MIN_TRI_ROWS {
        let p = sgemm::Product {
            m: t,
            n,
            k,
            alpha,
            a,
            b,
            beta,
            c,
            ldc: c_rs as usize,
        };
        sgemm::sgemm_tri(p, tri);
        return;
    }
    causal_gemm_blocked(tri, t, n, k, c, c_rs, a, b, alpha, beta);
}

/// [`causal_gemm`] on ATT_BLOCK-row blocks through [`gemm_raw`] (the path without AVX-512).
///
/// # Safety
/// As for [`causal_gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn causal_gemm_blocked(
    tri: Tri,
    t: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: isize,
    a: Mat,
    b: Mat,
    alpha: f32,
    beta: f32,
) {
    let none = gemm::Parallelism::None;
    for r0 in (0..t).step_by(ATT_BLOCK) {
        let r1 = (r0 + ATT_BLOCK).min(t);
        let a_rows = Mat {
            ptr: a.ptr.offset(r0 as isize * a.rs),
            ..a
        };
        let c_rows = c.offset(r0 as isize * c_rs);
        match tri {
            // rows [r0, r1) need columns [0, r1)
            Tri::OutLower => gemm_raw(r1 - r0, r1, k, c_rows, c_rs, a_rows, b, alpha, beta, none),
            // rows [r0, r1) sum over depth [0, r1)
            Tri::ALower => gemm_raw(r1 - r0, n, r1, c_rows, c_rs, a_rows, b, alpha, beta, none),
            // rows [r0, r1) sum over depth [r0, t)
            Tri::AUpper => gemm_raw(
                r1 - r0,
                n,
                t - r0,
                c_rows,
                c_rs,
                Mat {
                    ptr: a_rows.ptr.offset(r0 as isize * a.cs),
                    ..a
                },
                Mat {
                    ptr: b.ptr.offset(r0 as isize * b.rs),
                    ..b
                },
                alpha,
                beta,
                none,
            ),
        }
    }
}

/// Below this many rows the triangular sgemm's tiles are too coarse to skip much (and gemm_raw
/// sends tiny products to the `gemm` crate anyway).
const MIN_TRI_ROWS: usize = 8;

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
        .with_max_len(1)
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
            // S = scale · Q Kᵀ on and below the diagonal; the softmax zeroes the rest.
            // SAFETY: strided views stay inside qkv for rows of this batch; p is this task's.
            unsafe {
                causal_gemm(
                    Tri::OutLower,
                    t,
                    t,
                    hd,
                    p.as_mut_ptr(),
                    t as isize,
                    q,
                    kt,
                    scale,
                    0.0,
                )
            };
            causal_softmax_rows(p, t, 0);
            let pm = Mat {
                ptr: p.as_ptr(),
                rs: t as isize,
                cs: 1,
            };
            // SAFETY: output columns [h*hd, (h+1)*hd) of batch b's rows belong to this task.
            unsafe {
                causal_gemm(
                    Tri::ALower,
                    t,
                    hd,
                    t,
                    out_p.get().add(b * t * wo + h * hd),
                    wo as isize,
                    pm,
                    v,
                    1.0,
                    0.0,
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
    let (wq_s, wo_s, t_s) = (wq as isize, wo as isize, t as isize);
    // One task per (batch, kv head): it owns dK, dV of that head and dQ of its query heads.
    work[..d.b * nh * t * t]
        .par_chunks_mut(grp * t * t)
        .enumerate()
        .with_max_len(1)
        .for_each(|(bk, ws)| {
            let (b, kvh) = (bk / nkv, bk % nkv);
            let base = b * t * wq;
            let k_off = base + (nh + kvh) * hd;
            let v_off = base + (nh + nkv + kvh) * hd;
            for g in 0..grp {
                let h = kvh * grp + g;
                let ds = &mut ws[g * t * t..(g + 1) * t * t];
                let p = &probs[(b * nh + h) * t * t..(b * nh + h + 1) * t * t];
                let do_off = b * t * wo + h * hd;
                let q_off = base + h * hd;
                let dom = Mat {
                    ptr: dout[do_off..].as_ptr(),
                    rs: wo_s,
                    cs: 1,
                };
                let vt = Mat {
                    ptr: qkv[v_off..].as_ptr(),
                    rs: 1,
                    cs: wq_s,
                };
                let k = Mat {
                    ptr: qkv[k_off..].as_ptr(),
                    rs: wq_s,
                    cs: 1,
                };
                let q = Mat {
                    ptr: qkv[q_off..].as_ptr(),
                    rs: wq_s,
                    cs: 1,
                };
                // SAFETY (all four products): strided reads stay in batch b's rows; ds is this
                // task's scratch; dQ of head h and dK, dV of kv head kvh (batch b) are this
                // task's.
                // dP = dO Vᵀ on and below the diagonal, then dS in place (0 above it).
                unsafe {
                    causal_gemm(
                        Tri::OutLower,
                        t,
                        t,
                        hd,
                        ds.as_mut_ptr(),
                        t_s,
                        dom,
                        vt,
                        1.0,
                        0.0,
                    )
                };
                causal_softmax_bwd_rows(ds, p, t, 0, scale);
                let dsm = Mat {
                    ptr: ds.as_ptr(),
                    rs: t_s,
                    cs: 1,
                };
                // dQ = dS K
                unsafe {
                    causal_gemm(
                        Tri::ALower,
                        t,
                        hd,
                        t,
                        dq_p.get().add(q_off),
                        wq_s,
                        dsm,
                        k,
                        1.0,
                        0.0,
                    )
                };
                // dK (+)= dSᵀ Q, dV (+)= Pᵀ dO (the query heads of a group accumulate)
                let beta = if g == 0 { 0.0 } else { 1.0 };
                let dst = Mat {
                    ptr: ds.as_ptr(),
                    rs: 1,
                    cs: t_s,
                };
                let pt = Mat {
                    ptr: p.as_ptr(),
                    rs: 1,
                    cs: t_s,
                };
                unsafe {
                    causal_gemm(
                        Tri::AUpper,
                        t,
                        hd,
                        t,
                        dq_p.get().add(k_off),
                        wq_s,
                        dst,
                        q,
                        1.0,
                        beta,
                    );
                    causal_gemm(
                        Tri::AUpper,
                        t,
                        hd,
                        t,
                        dq_p.get().add(v_off),
                        wq_s,
                        pt,
                        dom,
                        1.0,
                        beta,
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
                let oh = &mut o[h * hd..(h + 1) * hd];
                cached_head(oh, &mut sc, q, kb, vb, row_kv, kvh * hd, scale);
            }
        });
}

simd_fn! {
    /// One query head of cached decode: `oh = softmax(scale · q·Kⱼ) · V` over the `sc.len()`
    /// cached positions (K/V rows of `row_kv` floats, this head's slice at `off`).
    fn cached_head(
        oh: &mut [f32],
        sc: &mut [f32],
        q: &[f32],
        kb: &[f32],
        vb: &[f32],
        row_kv: usize,
        off: usize,
        scale: f32,
    ) {
        let hd = q.len();
        for (j, s) in sc.iter_mut().enumerate() {
            *s = dot(q, &kb[j * row_kv + off..j * row_kv + off + hd]) * scale;
        }
        let mx = vmath::max(sc);
        let inv = 1.0 / vmath::exp_shift_sum(sc, mx);
        oh.iter_mut().for_each(|v| *v = 0.0);
        for (j, &s) in sc.iter().enumerate() {
            let pj = s * inv;
            let vr = &vb[j * row_kv + off..j * row_kv + off + hd];
            oh.iter_mut().zip(vr).for_each(|(a, b)| *a += pj * b);
        }
    }
}

simd_fn! {
    /// One row of the fused loss + gradient: `z` (logits) becomes `ws·(softmax(z) - onehot)`;
    /// returns `logsumexp(z) - z[tgt]`.
    fn ce_row_grad(z: &mut [f32], tgt: usize, ws: f32) -> f32 {
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
    fn ce_row_loss(z: &[f32], tgt: usize) -> f32 {
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

pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamHyper) {
    let bc1 = 1.0 - (h.beta1 as f64).powi(h.step as i32);
    let bc2 = 1.0 - (h.beta2 as f64).powi(h.step as i32);
    let step_size = (h.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = 1.0 - h.lr * h.weight_decay;
    let k = [h.beta1, h.beta2, step_size, bc2_sqrt, h.eps, decay];
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .with_max_len(8)
        .for_each(|(((p, g), m), v)| adamw_chunk(p, g, m, v, k));
}

simd_fn! {
    /// `k` = [beta1, beta2, step size (lr / bias correction 1), √(bias correction 2), eps, decay].
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: [f32; 6]) {
        let [b1, b2, step_size, bc2_sqrt, eps, decay] = k;
        let n = p.len().min(g.len()).min(m.len()).min(v.len());
        let (p, g, m, v) = (&mut p[..n], &g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let gi = g[i];
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let denom = v[i].sqrt() / bc2_sqrt + eps;
            p[i] = p[i] * decay - step_size * m[i] / denom;
        }
    }
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

    /// Every instruction-set version of the kernels gives bit-identical results (so an AVX2-only
    /// machine reproduces an AVX-512 run), checked on one thread per version.
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
            [o, dq, g, dg, n, st, dn, dw, z, loss].concat()
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let want = pool.install(|| with_isa(Isa::Scalar, run));
        for isa in supported() {
            let got = pool.install(|| with_isa(isa, run));
            let diff = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(diff, None, "{isa:?} differs from the baseline version");
        }
    }
}
