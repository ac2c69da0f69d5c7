//! Attention: rotary embeddings + QK-norm (`qk_prep`), causal attention forward/backward over
//! sgemm products per (batch, head), and the KV-cache decode step.

use super::*;
use crate::backend::SharedPrefix;

/// One row's cached K/V for one KV head: position `j`'s row lies in the row's own cache slot, or,
/// for `j < shared`, in the slot it was forked from (a group of samples reads its prompt's K/V
/// from one copy instead of one copy per sample). Built by [`HeadCache::new`], which checks that
/// every position below `n` lies inside the slices, so the kernels may read them unchecked.
#[derive(Clone, Copy)]
struct HeadCache<'a> {
    own_k: &'a [f32],
    own_v: &'a [f32],
    src_k: &'a [f32],
    src_v: &'a [f32],
    shared: usize,
    row_kv: usize,
    off: usize,
}

impl<'a> HeadCache<'a> {
    /// A cache of `n` positions of `hd` floats at offset `off` in rows of `row_kv` floats, the
    /// first `shared` of them in `src_*` (the rest, and all when `shared == 0`, in `own_*`).
    #[allow(clippy::too_many_arguments)]
    fn new(
        own: (&'a [f32], &'a [f32]),
        src: (&'a [f32], &'a [f32]),
        shared: usize,
        n: usize,
        hd: usize,
        row_kv: usize,
        off: usize,
    ) -> Self {
        assert!(off + hd <= row_kv && shared <= n);
        let end = |rows: usize| {
            if rows == 0 {
                0
            } else {
                (rows - 1) * row_kv + off + hd
            }
        };
        assert!(
            own.0.len() >= end(n) && own.1.len() >= end(n),
            "cache slot too short"
        );
        assert!(
            src.0.len() >= end(shared) && src.1.len() >= end(shared),
            "shared cache slot too short"
        );
        HeadCache {
            own_k: own.0,
            own_v: own.1,
            src_k: src.0,
            src_v: src.1,
            shared,
            row_kv,
            off,
        }
    }

    /// Start of position `j`'s K row; in bounds for `j < n` of [`HeadCache::new`].
    #[inline(always)]
    fn k(&self, j: usize) -> *const f32 {
        let base = if j < self.shared {
            self.src_k
        } else {
            self.own_k
        };
        // SAFETY (of the later reads): `new` checked `(n - 1) · row_kv + off + hd` floats.
        base.as_ptr().wrapping_add(j * self.row_kv + self.off)
    }

    #[inline(always)]
    fn v(&self, j: usize) -> *const f32 {
        let base = if j < self.shared {
            self.src_v
        } else {
            self.own_v
        };
        base.as_ptr().wrapping_add(j * self.row_kv + self.off)
    }

    fn k_row(&self, j: usize, hd: usize) -> &'a [f32] {
        let base = if j < self.shared {
            self.src_k
        } else {
            self.own_k
        };
        &base[j * self.row_kv + self.off..j * self.row_kv + self.off + hd]
    }

    fn v_row(&self, j: usize, hd: usize) -> &'a [f32] {
        let base = if j < self.shared {
            self.src_v
        } else {
            self.own_v
        };
        &base[j * self.row_kv + self.off..j * self.row_kv + self.off + hd]
    }
}

/// Positions per block of the register kernels' score loops (16 on AVX-512, 8 on AVX2); a
/// range split at a multiple of this computes every score exactly as the unsplit range does.
const SCORE_BLOCK: usize = 16;

/// Which register kernel a head of `hd` floats takes on this CPU.
#[derive(Clone, Copy, PartialEq)]
enum HeadIsa {
    V512,
    V256,
    Portable,
}

fn head_isa(hd: usize) -> HeadIsa {
    #[cfg(target_arch = "x86_64")]
    {
        if vmath::isa() == vmath::Isa::Avx512 && hd.is_multiple_of(16) && (16..=256).contains(&hd) {
            return HeadIsa::V512;
        }
        if vmath::isa() == vmath::Isa::Avx2 && hd.is_multiple_of(8) && (8..=256).contains(&hd) {
            return HeadIsa::V256;
        }
    }
    let _ = hd;
    HeadIsa::Portable
}

/// `$f::<NV>($args)` for the register count `NV` of a head of `$hd` floats in `$lanes`-float
/// registers: one instance per count, so the kernels' loops unroll and q and the output stay in
/// registers (a runtime count spilled both to the stack).
#[cfg(target_arch = "x86_64")]
macro_rules! by_head_width {
    ($hd:expr, 16, $f:ident $args:tt) => {
        by_head_width!(@ $hd / 16, $f $args, 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
    };
    ($hd:expr, 8, $f:ident $args:tt) => {
        by_head_width!(@ $hd / 8, $f $args,
            1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32)
    };
    (@ $n:expr, $f:ident $args:tt, $($nv:literal)*) => {
        match $n {
            $($nv => $f::<$nv> $args,)*
            _ => unreachable!("head size checked by head_isa"),
        }
    };
}

/// `sc[j] = scale · q·Kⱼ` for `j` in `j0..j1`. Whole blocks of [`SCORE_BLOCK`] positions from
/// `j0`, then single positions: so `j0` must be a block multiple and, for the scores to equal
/// those of one call over `0..n`, `j1` a block multiple or `n`.
///
/// On AVX-512 with a head size that is a multiple of 16 (up to 256) this is [`scores_v512`]: the
/// portable form's one dot product and horizontal sum per cached position was 28% of a 64-row
/// rollout step (perf, 2026-12-03), as much as all its matmuls. On AVX2 (head size a multiple of
/// 8) it is [`scores_v256`].
fn head_scores(sc: &mut [f32], j0: usize, j1: usize, q: &[f32], c: &HeadCache, scale: f32) {
    debug_assert!(j0.is_multiple_of(SCORE_BLOCK) && j1 <= sc.len());
    match head_isa(q.len()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 is present (head_isa); positions below sc.len() = n are in bounds
        // (HeadCache::new).
        HeadIsa::V512 => unsafe {
            by_head_width!(q.len(), 16, scores_v512(sc, j0, j1, q, c, scale))
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are present (head_isa); positions in bounds as above.
        HeadIsa::V256 => unsafe {
            by_head_width!(q.len(), 8, scores_v256(sc, j0, j1, q, c, scale))
        },
        _ => scores_portable(sc, j0, j1, q, c, scale),
    }
}

/// `oh += Σⱼ (p[j] · inv) · Vⱼ` for `j` in `j0..j1`, in order of `j` (so consecutive ranges
/// accumulate exactly as one range does).
fn head_weighted(oh: &mut [f32], p: &[f32], inv: f32, j0: usize, j1: usize, c: &HeadCache) {
    debug_assert!(j1 <= p.len());
    match head_isa(oh.len()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 is present; positions below p.len() = n are in bounds.
        HeadIsa::V512 => unsafe {
            by_head_width!(oh.len(), 16, weighted_v512(oh, p, inv, j0, j1, c))
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are present; positions in bounds as above.
        HeadIsa::V256 => unsafe {
            by_head_width!(oh.len(), 8, weighted_v256(oh, p, inv, j0, j1, c))
        },
        _ => weighted_portable(oh, p, inv, j0, j1, c),
    }
}

/// In-place softmax of a row of scores; returns `1 / Σ exp` (the scores become the exps).
fn softmax_inv(sc: &mut [f32]) -> f32 {
    let mx = vmath::max(sc);
    1.0 / vmath::exp_shift_sum(sc, mx)
}

/// One query head of cached decode: `oh = softmax(scale · q·Kⱼ) · V` over the `sc.len()`
/// cached positions of `c`.
fn cached_head(oh: &mut [f32], sc: &mut [f32], q: &[f32], c: &HeadCache, scale: f32) {
    let n = sc.len();
    head_scores(sc, 0, n, q, c, scale);
    let inv = softmax_inv(sc);
    oh.fill(0.0);
    head_weighted(oh, sc, inv, 0, n, c);
}

/// [`head_scores`] in AVX-512 registers for a head of `NV` registers: 16 cached positions at a
/// time, each position's `hd / 16` products summed lane-wise into one vector, then the 16
/// vectors reduced together by a transpose-and-add tree (45 shuffles and adds for 16 scores
/// instead of 16 horizontal sums).
///
/// # Safety
/// AVX-512F; `q.len() == 16 · NV`; positions below `j1` in bounds of `c`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
unsafe fn scores_v512<const NV: usize>(
    sc: &mut [f32],
    j0: usize,
    j1: usize,
    q: &[f32],
    c: &HeadCache,
    scale: f32,
) {
    use std::arch::x86_64::*;
    let mut qv = [_mm512_setzero_ps(); NV];
    for i in 0..NV {
        qv[i] = _mm512_loadu_ps(q.as_ptr().add(16 * i));
    }
    let vscale = _mm512_set1_ps(scale);
    let mut j = j0;
    while j + 16 <= j1 {
        let mut acc = [_mm512_setzero_ps(); 16];
        for l in 0..16 {
            let row = c.k(j + l);
            let mut a = _mm512_mul_ps(qv[0], _mm512_loadu_ps(row));
            for i in 1..NV {
                a = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(row.add(16 * i)), a);
            }
            acc[l] = a;
        }
        _mm512_storeu_ps(
            sc.as_mut_ptr().add(j),
            _mm512_mul_ps(vmath::sum16(&acc), vscale),
        );
        j += 16;
    }
    while j < j1 {
        let row = c.k(j);
        let mut a = _mm512_mul_ps(qv[0], _mm512_loadu_ps(row));
        for i in 1..NV {
            a = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(row.add(16 * i)), a);
        }
        sc[j] = _mm512_reduce_add_ps(a) * scale;
        j += 1;
    }
}

/// [`head_weighted`] in AVX-512 registers: the output accumulates in `NV` registers.
///
/// # Safety
/// AVX-512F; `oh.len() == 16 · NV`; positions below `j1` in bounds of `c`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_v512<const NV: usize>(
    oh: &mut [f32],
    p: &[f32],
    inv: f32,
    j0: usize,
    j1: usize,
    c: &HeadCache,
) {
    use std::arch::x86_64::*;
    let mut o = [_mm512_setzero_ps(); NV];
    for i in 0..NV {
        o[i] = _mm512_loadu_ps(oh.as_ptr().add(16 * i));
    }
    for (j, &s) in p.iter().enumerate().take(j1).skip(j0) {
        let pj = _mm512_set1_ps(s * inv);
        let row = c.v(j);
        for i in 0..NV {
            o[i] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(row.add(16 * i)), o[i]);
        }
    }
    for i in 0..NV {
        _mm512_storeu_ps(oh.as_mut_ptr().add(16 * i), o[i]);
    }
}

/// [`head_scores`] in AVX2 registers for a head of `NV` registers (`8 · NV` floats): 8 positions
/// at a time, reduced together by `hadd`s. The loop walks the head's registers in the outer loop
/// and the 8 positions in the inner one, so each q register is loaded once per block and the 8
/// accumulators plus q fit the 16 ymm registers (the portable form was 25% of a 64-row rollout
/// step on an AVX2-only AMD EPYC, perf 2026-12-03).
///
/// # Safety
/// AVX2 and FMA; `q.len() == 8 · NV`; positions below `j1` in bounds of `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_v256<const NV: usize>(
    sc: &mut [f32],
    j0: usize,
    j1: usize,
    q: &[f32],
    c: &HeadCache,
    scale: f32,
) {
    use std::arch::x86_64::*;
    let qp = q.as_ptr();
    let vscale = _mm256_set1_ps(scale);
    let mut j = j0;
    while j + 8 <= j1 {
        let mut acc = [_mm256_setzero_ps(); 8];
        for i in 0..NV {
            let qi = _mm256_loadu_ps(qp.add(8 * i));
            for (l, a) in acc.iter_mut().enumerate() {
                let row = c.k(j + l).add(8 * i);
                *a = _mm256_fmadd_ps(qi, _mm256_loadu_ps(row), *a);
            }
        }
        _mm256_storeu_ps(sc.as_mut_ptr().add(j), _mm256_mul_ps(sum8(&acc), vscale));
        j += 8;
    }
    while j < j1 {
        let row = c.k(j);
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
}

/// [`head_weighted`] in AVX2 registers.
///
/// # Safety
/// AVX2 and FMA; `oh.len() == 8 · NV`; positions below `j1` in bounds of `c`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_v256<const NV: usize>(
    oh: &mut [f32],
    p: &[f32],
    inv: f32,
    j0: usize,
    j1: usize,
    c: &HeadCache,
) {
    use std::arch::x86_64::*;
    let mut o = [_mm256_setzero_ps(); NV];
    for i in 0..NV {
        o[i] = _mm256_loadu_ps(oh.as_ptr().add(8 * i));
    }
    for (j, &s) in p.iter().enumerate().take(j1).skip(j0) {
        let pj = _mm256_set1_ps(s * inv);
        let row = c.v(j);
        for i in 0..NV {
            o[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(row.add(8 * i)), o[i]);
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

simd_fn! {
    /// [`head_scores`] for any CPU and head size.
    fn scores_portable(sc: &mut [f32], j0: usize, j1: usize, q: &[f32], c: &HeadCache, scale: f32) {
        let hd = q.len();
        for (j, s) in sc.iter_mut().enumerate().take(j1).skip(j0) {
            *s = dot(q, c.k_row(j, hd)) * scale;
        }
    }
}

simd_fn! {
    /// [`head_weighted`] for any CPU and head size.
    fn weighted_portable(oh: &mut [f32], p: &[f32], inv: f32, j0: usize, j1: usize, c: &HeadCache) {
        let hd = oh.len();
        for (j, &s) in p.iter().enumerate().take(j1).skip(j0) {
            let pj = s * inv;
            oh.iter_mut().zip(c.v_row(j, hd)).for_each(|(a, b)| *a += pj * b);
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
    let per_slot = max_t * row_kv;
    assert!(
        kc.len().min(vc.len()) >= d.b * per_slot,
        "cache shorter than its rows"
    );
    // 1) append new k, v
    kc[..d.b * per_slot]
        .par_chunks_mut(per_slot)
        .zip(vc[..d.b * per_slot].par_chunks_mut(per_slot))
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
            let slot = (
                &kc[b * per_slot..(b + 1) * per_slot],
                &vc[b * per_slot..(b + 1) * per_slot],
            );
            for h in 0..nh {
                let cache = HeadCache::new(slot, slot, 0, n, hd, row_kv, (h / grp) * hd);
                let q = &qkv[r * wq + h * hd..r * wq + (h + 1) * hd];
                cached_head(&mut o[h * hd..(h + 1) * hd], &mut sc, q, &cache, scale);
            }
        });
}

/// Cached positions per chunk of a group's shared prefix: one KV head's K (or V) rows of a chunk
/// (64 × 256 B at head size 64) stay in L1 while every row of the group reads them.
const SHARED_CHUNK: usize = 64;

/// Ragged cached attention, one token per row: row `r` appends its k/v to cache slot `slots[r]`
/// (`[slots, max_t, n_kv, hd]`) at position `pos[r]`, then attends over positions `0..=pos[r]`,
/// those below `prefix[r].len` read from slot `prefix[r].slot` (an empty `prefix`: each row
/// reads its own slot only). Slots are distinct (the caller checks), so each row writes its own
/// cache rows.
///
/// Rows naming the same prefix (a prompt's samples, and the row they were forked from naming its
/// own slot) are one task per KV head that walks the shared positions in chunks, every row and
/// query head of the group against a chunk while it is in L1: the prompt's K/V is read from
/// memory once per group instead of once per sample (each row reading its own copy was ~40 MB
/// per 64-row rollout step of the speedrun's model, more than the hosts' L3, and 22–32% of the
/// step in perf on AMD Zen 4). Every score and output is formed exactly as for the row alone
/// (chunks split at block multiples, outputs accumulated in position order), so grouping never
/// changes a result.
#[allow(clippy::too_many_arguments)]
pub fn attention_rows(
    out: &mut [f32],
    qkv: &[f32],
    kc: &mut [f32],
    vc: &mut [f32],
    d: AttnDims,
    slots: &[usize],
    pos: &[usize],
    prefix: &[SharedPrefix],
    max_t: usize,
) {
    let (hd, nh, nkv) = (d.head_dim, d.n_head, d.n_kv);
    assert!(d.t == 1 && slots.len() == d.b && pos.len() == d.b);
    assert!(
        prefix.is_empty() || prefix.len() == d.b,
        "one prefix per row"
    );
    let wq = d.qkv_width();
    let wo = d.out_width();
    let grp = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let row_kv = nkv * hd;
    let per_slot = max_t * row_kv;
    let room = kc.len().min(vc.len());
    for (r, (&s, &p)) in slots.iter().zip(pos).enumerate() {
        assert!(p < max_t, "KV cache overflow: {} > {max_t}", p + 1);
        assert!((s + 1) * per_slot <= room, "slot {s} outside the cache");
        if let Some(sp) = prefix.get(r) {
            assert!(
                sp.len <= p,
                "row {r}: shared prefix {} past position {p}",
                sp.len
            );
            assert!(
                sp.len == 0 || (sp.slot + 1) * per_slot <= room,
                "shared slot {} outside the cache",
                sp.slot
            );
        }
    }
    // 1) append: a few hundred floats per row, cheaper inline than as parallel tasks
    for (r, (&s, &p)) in slots.iter().zip(pos).enumerate() {
        let src = &qkv[r * wq..(r + 1) * wq];
        let at = s * per_slot + p * row_kv;
        kc[at..at + row_kv].copy_from_slice(&src[nh * hd..(nh + nkv) * hd]);
        vc[at..at + row_kv].copy_from_slice(&src[(nh + nkv) * hd..]);
    }
    let (kc, vc) = (&*kc, &*vc);
    // 2) groups: rows sharing a prefix of at least one chunk of blocks, the others alone
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_prefix: Vec<((usize, usize), usize)> = Vec::new();
    for r in 0..d.b {
        match prefix.get(r).filter(|sp| sp.len >= SCORE_BLOCK) {
            Some(sp) => match by_prefix.iter().find(|(k, _)| *k == (sp.slot, sp.len)) {
                Some(&(_, g)) => groups[g].push(r),
                None => {
                    by_prefix.push(((sp.slot, sp.len), groups.len()));
                    groups.push(vec![r]);
                }
            },
            None => groups.push(vec![r]),
        }
    }
    let slot_of = |s: usize| {
        (
            &kc[s * per_slot..(s + 1) * per_slot],
            &vc[s * per_slot..(s + 1) * per_slot],
        )
    };
    // 3) attend: one task per (group, KV head), each returning its rows' heads
    let tasks: Vec<(usize, usize)> = (0..groups.len())
        .flat_map(|g| (0..nkv).map(move |kvh| (g, kvh)))
        .collect();
    let heads: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(g, kvh)| {
            let rows = &groups[g];
            let shared = |r: usize| prefix.get(r).map_or(0, |sp| sp.len);
            let caches: Vec<HeadCache> = rows
                .iter()
                .map(|&r| {
                    let src = prefix.get(r).map_or(slots[r], |sp| sp.slot);
                    let (own, src) = (slot_of(slots[r]), slot_of(src));
                    HeadCache::new(own, src, shared(r), pos[r] + 1, hd, row_kv, kvh * hd)
                })
                .collect();
            // Chunks cover the shared prefix's whole blocks (every row has more positions).
            let chunked = if rows.len() > 1 {
                shared(rows[0]) / SCORE_BLOCK * SCORE_BLOCK
            } else {
                0
            };
            let n = |i: usize| pos[rows[i]] + 1;
            let q = |i: usize, hh: usize| {
                let at = rows[i] * wq + (kvh * grp + hh) * hd;
                &qkv[at..at + hd]
            };
            let mut sc: Vec<Vec<f32>> = (0..rows.len() * grp)
                .map(|k| vec![0f32; n(k / grp)])
                .collect();
            let mut oh = vec![0f32; rows.len() * grp * hd];
            let chunks = || {
                (0..chunked)
                    .step_by(SHARED_CHUNK)
                    .map(move |c| (c, (c + SHARED_CHUNK).min(chunked)))
            };
            for (c0, c1) in chunks() {
                for hh in 0..grp {
                    for (i, cache) in caches.iter().enumerate() {
                        head_scores(&mut sc[i * grp + hh], c0, c1, q(i, hh), cache, scale);
                    }
                }
            }
            let mut inv = vec![0f32; rows.len() * grp];
            for (k, s) in sc.iter_mut().enumerate() {
                let (i, hh) = (k / grp, k % grp);
                head_scores(s, chunked, n(i), q(i, hh), &caches[i], scale);
                inv[k] = softmax_inv(s);
            }
            for (c0, c1) in chunks() {
                for hh in 0..grp {
                    for (i, cache) in caches.iter().enumerate() {
                        let k = i * grp + hh;
                        let o = &mut oh[k * hd..(k + 1) * hd];
                        head_weighted(o, &sc[k], inv[k], c0, c1, cache);
                    }
                }
            }
            for (k, s) in sc.iter().enumerate() {
                let i = k / grp;
                let o = &mut oh[k * hd..(k + 1) * hd];
                head_weighted(o, s, inv[k], chunked, n(i), &caches[i]);
            }
            oh
        })
        .collect();
    for (&(g, kvh), oh) in tasks.iter().zip(&heads) {
        for (i, &r) in groups[g].iter().enumerate() {
            let at = r * wo + kvh * grp * hd;
            out[at..at + grp * hd].copy_from_slice(&oh[i * grp * hd..(i + 1) * grp * hd]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::vmath::{supported, with_isa};
    use crate::rng::Rng;

    /// Rows reading a shared prefix from another slot give exactly (bit for bit) what they give
    /// reading their own copy of it, on every ISA: groups of several rows (a source naming
    /// itself among them), a row alone with a prefix, prefixes shorter than a block, of whole
    /// blocks and longer than a chunk, GQA (2 query heads per KV head) and head sizes on and off
    /// the register kernels.
    #[test]
    fn shared_prefixes_read_exactly_like_copies() {
        let mut rng = Rng::new(11);
        for &(hd, nh, nkv) in &[(64usize, 4usize, 4usize), (32, 4, 2), (24, 2, 1)] {
            for &plen in &[5usize, 16, 37, 64, 150] {
                let max_t = plen + 40;
                let d = AttnDims {
                    b: 6,
                    t: 1,
                    n_head: nh,
                    n_kv: nkv,
                    head_dim: hd,
                };
                let (wq, wo, row_kv) = (d.qkv_width(), d.out_width(), nkv * hd);
                let per_slot = max_t * row_kv;
                // slots: 0 the source (prompt + its own tokens), 1..4 its samples, 5 a row
                // sharing 0's prompt alone in its own group (a shorter prefix), 6 unrelated
                let slots = [0usize, 1, 2, 3, 5, 6];
                let pos = [plen + 7, plen + 3, plen + 9, plen, plen + 1, plen + 20];
                let mut kc: Vec<f32> = (0..7 * per_slot).map(|_| rng.normal() as f32).collect();
                let mut vc: Vec<f32> = (0..7 * per_slot).map(|_| rng.normal() as f32).collect();
                let qkv: Vec<f32> = (0..d.b * wq).map(|_| rng.normal() as f32).collect();
                let sp = |slot, len| SharedPrefix { slot, len };
                let short = plen.min(3);
                let prefix = [
                    sp(0, plen),
                    sp(0, plen),
                    sp(0, plen),
                    sp(0, plen),
                    sp(0, short),
                    SharedPrefix::default(),
                ];
                // the copies: each sample's shared positions written into its own slot
                let (mut kcopy, mut vcopy) = (kc.clone(), vc.clone());
                for (&s, p) in slots.iter().zip(&prefix) {
                    if p.len > 0 && p.slot != s {
                        let n = p.len * row_kv;
                        let (from, to) = (p.slot * per_slot, s * per_slot);
                        kcopy.copy_within(from..from + n, to);
                        vcopy.copy_within(from..from + n, to);
                    }
                }
                // what the samples' own slots hold below the prefix must not be read
                for (&s, p) in slots.iter().zip(&prefix) {
                    if p.slot != s {
                        kc[s * per_slot..s * per_slot + p.len * row_kv].fill(f32::NAN);
                        vc[s * per_slot..s * per_slot + p.len * row_kv].fill(f32::NAN);
                    }
                }
                for isa in supported() {
                    let (mut a, mut b) = (vec![0f32; d.b * wo], vec![0f32; d.b * wo]);
                    let (mut k1, mut v1) = (kc.clone(), vc.clone());
                    let (mut k2, mut v2) = (kcopy.clone(), vcopy.clone());
                    with_isa(isa, || {
                        attention_rows(
                            &mut a, &qkv, &mut k1, &mut v1, d, &slots, &pos, &prefix, max_t,
                        );
                        attention_rows(&mut b, &qkv, &mut k2, &mut v2, d, &slots, &pos, &[], max_t);
                    });
                    assert!(
                        a.iter().all(|x| x.is_finite()),
                        "{isa:?}: a masked row was read"
                    );
                    assert_eq!(
                        a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        "{isa:?} hd {hd} heads {nh}/{nkv} prefix {plen}"
                    );
                }
            }
        }
    }

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
                        let cache = HeadCache::new((&kb, &vb), (&kb, &vb), 0, n, hd, row_kv, off);
                        cached_head(&mut oh, &mut sc, &q, &cache, scale)
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
