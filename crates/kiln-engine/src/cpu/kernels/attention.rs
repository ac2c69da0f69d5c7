//! Attention: rotary embeddings + QK-norm (`qk_prep`), causal attention forward/backward over
//! sgemm products per (batch, head), and the KV-cache decode step.

use super::*;

/// One query head of cached decode: `oh = softmax(scale · q·Kⱼ) · V` over the `sc.len()`
/// cached positions (K/V rows of `row_kv` floats, this head's slice at `off`).
///
/// On AVX-512 with a head size that is a multiple of 16 (up to 256) this is
/// [`cached_head_v512`]: the portable form's one dot product and horizontal sum per cached
/// position was 28% of a 64-row rollout step (perf, 2026-12-03), as much as all its matmuls. On
/// AVX2 (head size a multiple of 8) it is [`cached_head_v256`].
#[allow(clippy::too_many_arguments)]
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
    let (hd, n) = (q.len(), sc.len());
    #[cfg(target_arch = "x86_64")]
    if vmath::isa() == vmath::Isa::Avx512 && hd % 16 == 0 && (16..=256).contains(&hd) && n > 0 {
        let end = (n - 1) * row_kv + off + hd;
        assert!(oh.len() == hd && kb.len() >= end && vb.len() >= end);
        // SAFETY: AVX-512 is present (isa); every K/V row read lies below `end` (checked).
        unsafe { cached_head_v512(oh, sc, q, kb, vb, row_kv, off, scale) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if vmath::isa() == vmath::Isa::Avx2 && hd % 8 == 0 && (8..=256).contains(&hd) && n > 0 {
        let end = (n - 1) * row_kv + off + hd;
        assert!(oh.len() == hd && kb.len() >= end && vb.len() >= end);
        // SAFETY: AVX2 and FMA are present (isa); every K/V row read lies below `end` (checked).
        unsafe { cached_head_v256(oh, sc, q, kb, vb, row_kv, off, scale) };
        return;
    }
    cached_head_portable(oh, sc, q, kb, vb, row_kv, off, scale);
}

/// [`cached_head`] in AVX-512 registers: 16 cached positions at a time, each position's
/// `hd / 16` products summed lane-wise into one vector, then the 16 vectors reduced together by a
/// transpose-and-add tree (45 shuffles and adds for 16 scores instead of 16 horizontal sums);
/// the weighted sum of V rows accumulates in registers.
///
/// # Safety
/// AVX-512F; `hd = q.len()` a multiple of 16 in 16..=256; `oh.len() == hd`; `kb` and `vb` hold
/// `(sc.len() - 1) · row_kv + off + hd` floats.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn cached_head_v512(
    oh: &mut [f32],
    sc: &mut [f32],
    q: &[f32],
    kb: &[f32],
    vb: &[f32],
    row_kv: usize,
    off: usize,
    scale: f32,
) {
    // One instance per register count, so the per-position loops unroll and q and the output
    // stay in registers (a runtime count spilled both to the stack).
    macro_rules! by_width {
        ($($nv:literal)*) => {
            match q.len() / 16 {
                $($nv => head_v512::<$nv>(oh, sc, q, kb, vb, row_kv, off, scale),)*
                _ => unreachable!("head size checked by the caller"),
            }
        };
    }
    by_width!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
}

/// [`cached_head_v512`] for a head of `NV` registers (`16 · NV` floats).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
unsafe fn head_v512<const NV: usize>(
    oh: &mut [f32],
    sc: &mut [f32],
    q: &[f32],
    kb: &[f32],
    vb: &[f32],
    row_kv: usize,
    off: usize,
    scale: f32,
) {
    use std::arch::x86_64::*;
    let n = sc.len();
    let mut qv = [_mm512_setzero_ps(); NV];
    for i in 0..NV {
        qv[i] = _mm512_loadu_ps(q.as_ptr().add(16 * i));
    }
    let kp = kb.as_ptr().add(off);
    let vscale = _mm512_set1_ps(scale);
    let mut j = 0;
    while j + 16 <= n {
        let mut acc = [_mm512_setzero_ps(); 16];
        for l in 0..16 {
            let row = kp.add((j + l) * row_kv);
            let mut a = _mm512_mul_ps(qv[0], _mm512_loadu_ps(row));
            for i in 1..NV {
                a = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(row.add(16 * i)), a);
            }
            acc[l] = a;
        }
        _mm512_storeu_ps(sc.as_mut_ptr().add(j), _mm512_mul_ps(sum16(&acc), vscale));
        j += 16;
    }
    while j < n {
        let row = kp.add(j * row_kv);
        let mut a = _mm512_mul_ps(qv[0], _mm512_loadu_ps(row));
        for i in 1..NV {
            a = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(row.add(16 * i)), a);
        }
        sc[j] = _mm512_reduce_add_ps(a) * scale;
        j += 1;
    }
    let mx = vmath::max(sc);
    let inv = 1.0 / vmath::exp_shift_sum(sc, mx);
    let mut o = [_mm512_setzero_ps(); NV];
    let vp = vb.as_ptr().add(off);
    for (jj, &s) in sc.iter().enumerate() {
        let p = _mm512_set1_ps(s * inv);
        let row = vp.add(jj * row_kv);
        for i in 0..NV {
            o[i] = _mm512_fmadd_ps(p, _mm512_loadu_ps(row.add(16 * i)), o[i]);
        }
    }
    for i in 0..NV {
        _mm512_storeu_ps(oh.as_mut_ptr().add(16 * i), o[i]);
    }
}

/// [`cached_head`] in AVX2 registers, the form of [`cached_head_v512`] for 8-lane vectors: 8
/// cached positions at a time, reduced together by `hadd`s (the portable form was 25% of a
/// 64-row rollout step on an AVX2-only AMD EPYC, perf 2026-12-03).
///
/// # Safety
/// AVX2 and FMA; `hd = q.len()` a multiple of 8 in 8..=256; `oh.len() == hd`; `kb` and `vb` hold
/// `(sc.len() - 1) · row_kv + off + hd` floats.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn cached_head_v256(
    oh: &mut [f32],
    sc: &mut [f32],
    q: &[f32],
    kb: &[f32],
    vb: &[f32],
    row_kv: usize,
    off: usize,
    scale: f32,
) {
    macro_rules! by_width {
        ($($nv:literal)*) => {
            match q.len() / 8 {
                $($nv => head_v256::<$nv>(oh, sc, q, kb, vb, row_kv, off, scale),)*
                _ => unreachable!("head size checked by the caller"),
            }
        };
    }
    by_width!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32);
}

/// [`cached_head_v256`] for a head of `NV` registers (`8 · NV` floats). The scores loop walks the
/// head's registers in the outer loop and the 8 positions in the inner one, so each q register is
/// loaded once per block and the 8 accumulators plus q fit the 16 ymm registers.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_v256<const NV: usize>(
    oh: &mut [f32],
    sc: &mut [f32],
    q: &[f32],
    kb: &[f32],
    vb: &[f32],
    row_kv: usize,
    off: usize,
    scale: f32,
) {
    use std::arch::x86_64::*;
    let n = sc.len();
    let (qp, kp) = (q.as_ptr(), kb.as_ptr().add(off));
    let vscale = _mm256_set1_ps(scale);
    let mut j = 0;
    while j + 8 <= n {
        let mut acc = [_mm256_setzero_ps(); 8];
        for i in 0..NV {
            let qi = _mm256_loadu_ps(qp.add(8 * i));
            for l in 0..8 {
                let row = kp.add((j + l) * row_kv + 8 * i);
                acc[l] = _mm256_fmadd_ps(qi, _mm256_loadu_ps(row), acc[l]);
            }
        }
        _mm256_storeu_ps(sc.as_mut_ptr().add(j), _mm256_mul_ps(sum8(&acc), vscale));
        j += 8;
    }
    while j < n {
        let row = kp.add(j * row_kv);
        let mut a = _mm256_setzero_ps();
        for i in 0..NV {
            a = _mm256_fmadd_ps(
                _mm256_loadu_ps(qp.add(8 * i)),
                _mm256_loadu_ps(row.add(8 * i)),
                a,
            );
        }
        sc[j] = vmath::hsum256(a) * scale;
        j += 1;
    }
    let mx = vmath::max(sc);
    let inv = 1.0 / vmath::exp_shift_sum(sc, mx);
    let mut o = [_mm256_setzero_ps(); NV];
    let vp = vb.as_ptr().add(off);
    for (jj, &s) in sc.iter().enumerate() {
        let p = _mm256_set1_ps(s * inv);
        let row = vp.add(jj * row_kv);
        for i in 0..NV {
            o[i] = _mm256_fmadd_ps(p, _mm256_loadu_ps(row.add(8 * i)), o[i]);
        }
    }
    for i in 0..NV {
        _mm256_storeu_ps(oh.as_mut_ptr().add(8 * i), o[i]);
    }
}

/// Lane `l` of the result is the sum of the 8 lanes of `v[l]`: two rounds of `hadd` leave, per
/// 128-bit half, partial sums of four vectors in order; one cross-half add finishes them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum8(v: &[std::arch::x86_64::__m256; 8]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    let y = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(x, y),
        _mm256_permute2f128_ps::<0x31>(x, y),
    )
}

/// Lane `l` of the result is the sum of the 16 lanes of `v[l]`: a transpose-and-add tree
/// (pairs within 128-bit lanes, then pairs of pairs, then across 128-bit lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum16(v: &[std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // 16 → 8: t[i] holds, per 128-bit lane, partial sums of v[2i] and v[2i+1] interleaved.
    let mut t = [_mm512_setzero_ps(); 8];
    for (i, t) in t.iter_mut().enumerate() {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        *t = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    // 8 → 4: u[i] holds, per 128-bit lane, one partial sum of each of v[4i..4i+4], in order.
    let mut u = [_mm512_setzero_ps(); 4];
    for (i, u) in u.iter_mut().enumerate() {
        let (a, b) = (_mm512_castps_pd(t[2 * i]), _mm512_castps_pd(t[2 * i + 1]));
        // Pairs of floats move as doubles; the sum is of floats.
        *u = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
        );
    }
    // 4 → 1: the four 128-bit lanes of u[i] summed, into 128-bit lane i.
    let x01 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(u[0], u[1]),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(u[0], u[1]),
    );
    let x23 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(u[2], u[3]),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(u[2], u[3]),
    );
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(x01, x23),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(x01, x23),
    )
}

simd_fn! {
    /// [`cached_head`] for any CPU and head size.
    fn cached_head_portable(
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

/// cos/sin of the rotary angles for one position into `cs` (`[cos; half][sin; half]`).
#[inline]
pub(super) fn rope_table(cs: &mut [f32], pos: usize, half: usize, theta: f32) {
    for i in 0..half {
        let freq = theta.powf(-(i as f32) / half as f32);
        let (s, c) = (pos as f32 * freq).sin_cos();
        cs[i] = c;
        cs[half + i] = s;
    }
}

pub fn qk_prep_forward(out: &mut [f32], stats: &mut [f32], inp: &[f32], d: AttnDims, p: QkPrep) {
    qk_prep_forward_at(out, stats, inp, d, p, |r| p.pos0 + r % d.t);
}

/// [`qk_prep_forward`] for `d.b` rows of one token, row `r` at position `pos[r]`.
pub fn qk_prep_rows(
    out: &mut [f32],
    stats: &mut [f32],
    inp: &[f32],
    d: AttnDims,
    p: QkPrep,
    pos: &[usize],
) {
    assert!(
        d.t == 1 && pos.len() == d.b,
        "qk_prep_rows: one token per row"
    );
    qk_prep_forward_at(out, stats, inp, d, p, |r| pos[r]);
}

/// The QK prep of token row `r` (of `b*t`) at position `pos_of(r)`.
fn qk_prep_forward_at(
    out: &mut [f32],
    stats: &mut [f32],
    inp: &[f32],
    d: AttnDims,
    p: QkPrep,
    pos_of: impl Fn(usize) -> usize + Sync,
) {
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
                rope_table(&mut cs, pos_of(r), half, theta);
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
    pub(super) fn causal_softmax_rows(p: &mut [f32], t: usize, r0: usize) {
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
    pub(super) fn causal_softmax_bwd_rows(ds: &mut [f32], p: &[f32], t: usize, r0: usize, scale: f32) {
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
pub(super) const ATT_BLOCK: usize = 64;

/// One causal-attention product of one (batch, head) over all `t` query rows:
/// `C = alpha · A @ B + beta · C` where, by `tri`, only C's lower triangle is needed (`OutLower`,
/// `n = t`) or A's upper/lower triangle is zero (`ALower`/`AUpper`, depth `k = t`). kiln's
/// sgemm skips the triangle per 14×32 tile and per depth step; the fallback per ATT_BLOCK rows.
///
/// # Safety
/// As for [`gemm_raw`]: `a` (t × k), `b` (k × n) and `c` (t × n, row stride `c_rs`) valid.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn causal_gemm(
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
    if crate::cpu::use_sgemm() && t >= MIN_TRI_ROWS {
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
pub(super) unsafe fn causal_gemm_blocked(
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
pub(super) const MIN_TRI_ROWS: usize = 8;

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

/// Ragged cached attention, one token per row: row `r` appends its k/v to cache slot `slots[r]`
/// (`[slots, max_t, n_kv, hd]`) at position `pos[r]`, then attends over that slot's positions
/// `0..=pos[r]`. Slots are distinct (the caller checks), so each row writes its own cache rows.
#[allow(clippy::too_many_arguments)]
pub fn attention_rows(
    out: &mut [f32],
    qkv: &[f32],
    kc: &mut [f32],
    vc: &mut [f32],
    d: AttnDims,
    slots: &[usize],
    pos: &[usize],
    max_t: usize,
) {
    let (hd, nh, nkv) = (d.head_dim, d.n_head, d.n_kv);
    assert!(d.t == 1 && slots.len() == d.b && pos.len() == d.b);
    let wq = d.qkv_width();
    let wo = d.out_width();
    let grp = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let row_kv = nkv * hd;
    let per_slot = max_t * row_kv;
    for (&s, &p) in slots.iter().zip(pos) {
        assert!(p < max_t, "KV cache overflow: {} > {max_t}", p + 1);
        assert!(
            (s + 1) * per_slot <= kc.len().min(vc.len()),
            "slot {s} outside the cache"
        );
    }
    // 1) append: a few hundred floats per row, cheaper inline than as parallel tasks
    for (r, (&s, &p)) in slots.iter().zip(pos).enumerate() {
        let src = &qkv[r * wq..(r + 1) * wq];
        let at = s * per_slot + p * row_kv;
        kc[at..at + row_kv].copy_from_slice(&src[nh * hd..(nh + nkv) * hd]);
        vc[at..at + row_kv].copy_from_slice(&src[(nh + nkv) * hd..]);
    }
    let (kc, vc) = (&*kc, &*vc);
    // 2) attend: one task per row
    out[..d.b * wo]
        .par_chunks_mut(wo)
        .enumerate()
        .for_each(|(r, o)| {
            let n = pos[r] + 1;
            let mut sc = vec![0f32; n];
            let kb = &kc[slots[r] * per_slot..];
            let vb = &vc[slots[r] * per_slot..];
            for h in 0..nh {
                let kvh = h / grp;
                let q = &qkv[r * wq + h * hd..r * wq + (h + 1) * hd];
                let oh = &mut o[h * hd..(h + 1) * hd];
                cached_head(oh, &mut sc, q, kb, vb, row_kv, kvh * hd, scale);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::vmath::{supported, with_isa};
    use crate::rng::Rng;

    /// Every version of [`cached_head`] on this CPU (the AVX-512 register kernel where it runs)
    /// against an f64 softmax-attention, for head sizes the fast path takes and one it does not,
    /// cache lengths around its 16-position blocks, and a K/V row wider than one head (GQA slice).
    #[test]
    fn cached_head_matches_f64_attention() {
        let mut rng = Rng::new(3);
        for &hd in &[16usize, 64, 80, 128, 256] {
            for &n in &[1usize, 15, 16, 17, 33, 100] {
                let (row_kv, off) = (2 * hd, hd);
                let q: Vec<f32> = (0..hd).map(|_| rng.normal() as f32).collect();
                let kb: Vec<f32> = (0..n * row_kv).map(|_| rng.normal() as f32).collect();
                let vb: Vec<f32> = (0..n * row_kv).map(|_| rng.normal() as f32).collect();
                let scale = 1.0 / (hd as f32).sqrt();
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..hd)
                            .map(|d| q[d] as f64 * kb[j * row_kv + off + d] as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                let want: Vec<f64> = (0..hd)
                    .map(|d| {
                        (0..n)
                            .map(|j| (s[j] - mx).exp() / z * vb[j * row_kv + off + d] as f64)
                            .sum()
                    })
                    .collect();
                for isa in supported() {
                    let mut oh = vec![f32::NAN; hd];
                    let mut sc = vec![0f32; n];
                    with_isa(isa, || {
                        cached_head(&mut oh, &mut sc, &q, &kb, &vb, row_kv, off, scale)
                    });
                    for (d, (&g, &w)) in oh.iter().zip(&want).enumerate() {
                        assert!(
                            (g as f64 - w).abs() < 1e-5,
                            "{isa:?} hd {hd} n {n} [{d}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
