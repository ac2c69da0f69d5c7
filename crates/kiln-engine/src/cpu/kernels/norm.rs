//! LayerNorm / RMSNorm forward and backward (input gradient per row; weight/bias gradients
//! summed per fixed row block while those rows are in cache).

use super::*;

simd_fn! {
    /// Normalizes whole rows: `out`/`inp` hold `stats.len() / 2` rows of `cols`.
    pub(super) fn norm_fwd_rows(
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
    pub(super) fn norm_bwd_rows(
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
    pub(super) fn norm_dparams_rows(
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
pub(super) const NORM_DPARAM_ROWS: usize = 64;

thread_local! {
    /// Per-block partial sums of the norm parameter gradients (grown once, then reused).
    static NORM_PARTIALS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One block of rows of the norm backward: ((dinp, dout), inp), stats.
pub(super) type NormBlock<'a> = (((&'a mut [f32], &'a [f32]), &'a [f32]), &'a [f32]);

/// The norm backward's inputs cut into blocks of `rb` rows.
pub(super) fn row_blocks<'a>(
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
