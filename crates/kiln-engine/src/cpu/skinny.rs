//! Skinny products for decode: a few rows of activations times a `Linear` weight stored `[n, k]`
//! (torch layout), `C[i, j] = alpha · A[i, :]·W[j, :] + beta · C[i, j]`, with no packing.
//!
//! Why: the BLIS-style [`sgemm`](super::sgemm) packs (transposes) the whole weight for every call;
//! with a batch of 8–64 decode rows that packing pass costs as much as the product itself (perf:
//! `transpose16` 28% of a 32-row decode step, beside 35% in the microkernel), and the `gemm`
//! crate's path for fewer than 8 rows is a vector product that does not reuse the weights across
//! rows. Here both operands are read along `k` where they lie: a 4×4 register tile of dot
//! products (4 weight rows × 4 activation rows, 16 zmm accumulators, 8 loads per 16 FMAs),
//! reduced once per tile. Each weight row is read from memory once per call, whatever the number
//! of activation rows (they stay in L1/L2), which is what makes a batched decode step cost about
//! one batch-1 step while the batch is small.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::vmath::{isa, Isa};
use super::Mat;

/// Most activation rows this path takes; above it the packed sgemm wins (its packing is then
/// amortised over enough rows).
pub const MAX_ROWS: usize = 64;

/// Weight rows per parallel task: small enough for two threads to balance, large enough that a
/// task's setup is noise.
const TASK_COLS: usize = 64;

/// Whether `skinny` takes this product: 2 to [`MAX_ROWS`] rows, `a` row-major and `b` a `[n, k]`
/// weight read transposed (both contiguous along `k`), and a CPU with AVX-512. One row stays on
/// the `gemm` crate's vector product, the batch-1 decode baseline (on a loaded machine the two
/// measured within noise of each other).
pub fn takes(m: usize, k: usize, a: Mat, b: Mat) -> bool {
    (2..=MAX_ROWS).contains(&m)
        && k >= 16
        && a.cs == 1
        && b.rs == 1
        && matches!(isa(), Isa::Avx512 | Isa::Avx2)
}

/// `c = alpha · a @ b + beta · c` (`beta == 0` never reads `c`), `c` row stride `c_rs`.
///
/// # Safety
/// [`takes`] holds; `a` (m × k), `b` (k × n) and `c` (m × n) are valid for their strides; `c`
/// does not alias `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn skinny(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: *mut f32,
    c_rs: usize,
    threads: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let cp = CPtr(c);
        let wide = isa() == Isa::Avx512;
        let run = |j0: usize| {
            let j1 = (j0 + TASK_COLS).min(n);
            // SAFETY: each task writes columns j0..j1 of c only; `takes` checked that the CPU
            // runs the version picked.
            unsafe {
                if wide {
                    block(m, j0, j1, k, alpha, a, b, beta, cp.get(), c_rs)
                } else {
                    block_v256(m, j0, j1, k, alpha, a, b, beta, cp.get(), c_rs)
                }
            };
        };
        if threads > 1 && n > TASK_COLS {
            (0..n.div_ceil(TASK_COLS))
                .into_par_iter()
                .for_each(|t| run(t * TASK_COLS));
        } else {
            (0..n.div_ceil(TASK_COLS)).for_each(|t| run(t * TASK_COLS));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, n, k, alpha, a, b, beta, c, c_rs, threads);
        unreachable!("skinny needs AVX-512 or AVX2 (see `takes`)");
    }
}

#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks write disjoint columns of c.
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

impl CPtr {
    // A method, so closures capture the whole Sync wrapper rather than its raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Columns `j0..j1` of c for every row: 4×4 tiles, then the leftover rows and columns.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn block(
    m: usize,
    j0: usize,
    j1: usize,
    k: usize,
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: *mut f32,
    c_rs: usize,
) {
    let (lda, ldb) = (a.rs as usize, b.cs as usize);
    let mut j = j0;
    while j < j1 {
        let nj = (j1 - j).min(4);
        let mut i = 0;
        while i < m {
            let mi = (m - i).min(4);
            let ap = a.ptr.add(i * lda);
            let bp = b.ptr.add(j * ldb);
            let cp = c.add(i * c_rs + j);
            // While the first rows of a sweep this weight block, fetch the next one: the
            // weights stream from L3 or memory once per call, and four short row streams are
            // too short for the hardware prefetcher to get ahead.
            let next = if i == 0 && j + 2 * nj <= j1 {
                bp.add(nj * ldb)
            } else {
                std::ptr::null()
            };
            match (mi, nj) {
                (4, 4) => tile::<4, 4>(ap, lda, bp, ldb, k, alpha, beta, cp, c_rs, next),
                (4, _) => {
                    for q in 0..nj {
                        tile::<4, 1>(
                            ap,
                            lda,
                            bp.add(q * ldb),
                            ldb,
                            k,
                            alpha,
                            beta,
                            cp.add(q),
                            c_rs,
                            std::ptr::null(),
                        )
                    }
                }
                // two or three rows in one pass over the weight block (not one pass each)
                (3, 4) => tile::<3, 4>(ap, lda, bp, ldb, k, alpha, beta, cp, c_rs, next),
                (2, 4) => tile::<2, 4>(ap, lda, bp, ldb, k, alpha, beta, cp, c_rs, next),
                (_, 4) => {
                    for r in 0..mi {
                        tile::<1, 4>(
                            ap.add(r * lda),
                            lda,
                            bp,
                            ldb,
                            k,
                            alpha,
                            beta,
                            cp.add(r * c_rs),
                            c_rs,
                            if r == 0 { next } else { std::ptr::null() },
                        )
                    }
                }
                _ => {
                    for r in 0..mi {
                        for q in 0..nj {
                            tile::<1, 1>(
                                ap.add(r * lda),
                                lda,
                                bp.add(q * ldb),
                                ldb,
                                k,
                                alpha,
                                beta,
                                cp.add(r * c_rs + q),
                                c_rs,
                                std::ptr::null(),
                            )
                        }
                    }
                }
            }
            i += mi;
        }
        j += nj;
    }
}

/// `MI` rows of a against `NJ` weight rows: `MI × NJ` dot products of length `k` in zmm
/// accumulators (the last partial 16 lanes masked), each reduced once; `next_b` (or null): the
/// next `NJ` weight rows, prefetched meanwhile.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const MI: usize, const NJ: usize>(
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    k: usize,
    alpha: f32,
    beta: f32,
    c: *mut f32,
    c_rs: usize,
    next_b: *const f32,
) {
    let mut acc = [[_mm512_setzero_ps(); NJ]; MI];
    let mut p = 0;
    while p + 16 <= k {
        if !next_b.is_null() {
            for q in 0..NJ {
                _mm_prefetch::<_MM_HINT_T0>(next_b.add(q * ldb + p).cast());
            }
        }
        let mut bv = [_mm512_setzero_ps(); NJ];
        for (q, v) in bv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(b.add(q * ldb + p));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_loadu_ps(a.add(r * lda + p));
            for (q, s) in row.iter_mut().enumerate() {
                *s = _mm512_fmadd_ps(av, bv[q], *s);
            }
        }
        p += 16;
    }
    if p < k {
        let mask: __mmask16 = (1u32 << (k - p)) as u16 - 1;
        let mut bv = [_mm512_setzero_ps(); NJ];
        for (q, v) in bv.iter_mut().enumerate() {
            *v = _mm512_maskz_loadu_ps(mask, b.add(q * ldb + p));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_maskz_loadu_ps(mask, a.add(r * lda + p));
            for (q, s) in row.iter_mut().enumerate() {
                *s = _mm512_fmadd_ps(av, bv[q], *s);
            }
        }
    }
    if MI == 4 && NJ == 4 {
        // The 16 dot products reduced together by one transpose-and-add tree (45 shuffles and
        // adds) instead of 16 horizontal sums of ~8 dependent steps each: at k = 256, the
        // width of most of the speedrun model's products, the sums were a quarter of the
        // tile's instructions.
        let mut flat = [_mm512_setzero_ps(); 16];
        for (r, row) in acc.iter().enumerate() {
            flat[r * 4..r * 4 + NJ].copy_from_slice(row);
        }
        let mut sums = [0f32; 16];
        _mm512_storeu_ps(
            sums.as_mut_ptr(),
            _mm512_mul_ps(super::vmath::sum16(&flat), _mm512_set1_ps(alpha)),
        );
        for (r, v) in sums.chunks_exact(4).enumerate() {
            let out = c.add(r * c_rs);
            let v = _mm_loadu_ps(v.as_ptr());
            let v = if beta == 0.0 {
                v
            } else {
                _mm_add_ps(v, _mm_mul_ps(_mm_set1_ps(beta), _mm_loadu_ps(out)))
            };
            _mm_storeu_ps(out, v);
        }
        return;
    }
    for (r, row) in acc.iter().enumerate() {
        for (q, s) in row.iter().enumerate() {
            let out = c.add(r * c_rs + q);
            let v = alpha * _mm512_reduce_add_ps(*s);
            *out = if beta == 0.0 { v } else { v + beta * *out };
        }
    }
}

/// [`block`] for AVX2 + FMA: 2×4 tiles (8 ymm accumulators, 4 weight vectors and one activation
/// vector: 13 of the 16 registers), then the leftover rows and columns. A 3×4 tile needs 17 with
/// the compiler's temporaries: it spilled one accumulator to the stack inside the loop, and the
/// store-to-load round trip on it held the kernel to a third of its speed (perf annotate).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_v256(
    m: usize,
    j0: usize,
    j1: usize,
    k: usize,
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: *mut f32,
    c_rs: usize,
) {
    let (lda, ldb) = (a.rs as usize, b.cs as usize);
    let mut j = j0;
    while j < j1 {
        let nj = (j1 - j).min(4);
        let mut i = 0;
        while i < m {
            let mi = (m - i).min(2);
            let ap = a.ptr.add(i * lda);
            let bp = b.ptr.add(j * ldb);
            let cp = c.add(i * c_rs + j);
            // The next weight block, fetched while the first rows sweep this one (as in `block`).
            let next = if i == 0 && j + 2 * nj <= j1 {
                bp.add(nj * ldb)
            } else {
                std::ptr::null()
            };
            match (mi, nj) {
                (2, 4) => tile_v256::<2, 4>(ap, lda, bp, ldb, k, alpha, beta, cp, c_rs, next),
                (1, 4) => tile_v256::<1, 4>(ap, lda, bp, ldb, k, alpha, beta, cp, c_rs, next),
                _ => {
                    for q in 0..nj {
                        let (bq, cq) = (bp.add(q * ldb), cp.add(q));
                        match mi {
                            2 => {
                                tile_v256::<2, 1>(ap, lda, bq, ldb, k, alpha, beta, cq, c_rs, next)
                            }
                            _ => {
                                tile_v256::<1, 1>(ap, lda, bq, ldb, k, alpha, beta, cq, c_rs, next)
                            }
                        }
                    }
                }
            }
            i += mi;
        }
        j += nj;
    }
}

/// [`tile`] in 8-lane registers: `MI × NJ` dot products of length `k` (a scalar tail past the
/// last multiple of 8); four weight rows' sums are reduced together by `hadd`s and stored as one
/// 4-wide vector per activation row.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile_v256<const MI: usize, const NJ: usize>(
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    k: usize,
    alpha: f32,
    beta: f32,
    c: *mut f32,
    c_rs: usize,
    next_b: *const f32,
) {
    let mut acc = [[_mm256_setzero_ps(); NJ]; MI];
    // One 8-deep step of every dot product (a macro: a closure here was not inlined).
    macro_rules! step {
        ($p:expr) => {{
            let p = $p;
            let mut bv = [_mm256_setzero_ps(); NJ];
            for (q, v) in bv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(b.add(q * ldb + p));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_loadu_ps(a.add(r * lda + p));
                for (q, s) in row.iter_mut().enumerate() {
                    *s = _mm256_fmadd_ps(av, bv[q], *s);
                }
            }
        }};
    }
    let mut p = 0;
    // Two steps per turn: one 64-byte line of each weight row, and one prefetch per line.
    while p + 16 <= k {
        if !next_b.is_null() {
            for q in 0..NJ {
                _mm_prefetch::<_MM_HINT_T0>(next_b.add(q * ldb + p).cast());
            }
        }
        step!(p);
        step!(p + 8);
        p += 16;
    }
    if p + 8 <= k {
        step!(p);
        p += 8;
    }
    let mut tail = [[0f32; NJ]; MI];
    for pp in p..k {
        for (r, row) in tail.iter_mut().enumerate() {
            for (q, t) in row.iter_mut().enumerate() {
                *t += *a.add(r * lda + pp) * *b.add(q * ldb + pp);
            }
        }
    }
    for r in 0..MI {
        let out = c.add(r * c_rs);
        if NJ == 4 {
            // lanes: the sums of rows q = 0..4, each across both 128-bit halves
            let x = _mm256_hadd_ps(
                _mm256_hadd_ps(acc[r][0], acc[r][1]),
                _mm256_hadd_ps(acc[r][2], acc[r][3]),
            );
            let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
            let s = _mm_add_ps(s, _mm_loadu_ps(tail[r].as_ptr()));
            let mut v = _mm_mul_ps(_mm_set1_ps(alpha), s);
            if beta != 0.0 {
                v = _mm_fmadd_ps(_mm_set1_ps(beta), _mm_loadu_ps(out), v);
            }
            _mm_storeu_ps(out, v);
        } else {
            for q in 0..NJ {
                let v = alpha * (super::vmath::hsum256(acc[r][q]) + tail[r][q]);
                let o = out.add(q);
                *o = if beta == 0.0 { v } else { v + beta * *o };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both versions (AVX-512 and AVX2, where this CPU runs them) against an f64 product, on
    /// shapes with leftover rows and columns for either tile and a `k` past the last full vector.
    #[test]
    fn matches_naive_on_awkward_shapes() {
        for isa in super::super::vmath::supported() {
            if matches!(isa, Isa::Avx512 | Isa::Avx2) {
                super::super::vmath::with_isa(isa, || matches_naive(isa));
            }
        }
    }

    fn matches_naive(isa: Isa) {
        let mut rng = crate::Rng::new(1);
        for &(m, n, k) in &[
            (2, 1, 16),
            (3, 5, 17),
            (4, 4, 32),
            (9, 70, 70),
            (7, 9, 23),
            (64, 130, 48),
        ] {
            for &(alpha, beta) in &[(1.0f32, 0.0f32), (0.5, 1.0)] {
                let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
                let w: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
                let c0: Vec<f32> = (0..m * n).map(|_| rng.normal() as f32).collect();
                let mut c = c0.clone();
                let am = Mat {
                    ptr: a.as_ptr(),
                    rs: k as isize,
                    cs: 1,
                };
                let bm = Mat {
                    ptr: w.as_ptr(),
                    rs: 1,
                    cs: k as isize,
                };
                assert!(takes(m, k, am, bm));
                // SAFETY: shapes as allocated above.
                unsafe { skinny(m, n, k, alpha, am, bm, beta, c.as_mut_ptr(), n, 2) };
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k)
                            .map(|p| a[i * k + p] as f64 * w[j * k + p] as f64)
                            .sum();
                        let want = alpha as f64 * dot + beta as f64 * c0[i * n + j] as f64;
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{isa:?} {m}x{n}x{k} ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
