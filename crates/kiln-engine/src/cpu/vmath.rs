//! Vector math for the cpu kernels: a branch-free `exp` written so LLVM vectorizes it, lane-wise
//! reductions, and [`simd_fn!`], which compiles one kernel body three times (AVX-512, AVX2+FMA,
//! baseline x86-64) and picks one at run time.
//!
//! Determinism: the bodies use only IEEE-exact operations in a fixed order (no FMA contraction,
//! which Rust never does implicitly; reductions over a fixed number of lanes), so all three
//! versions give bit-identical results: a run on an AVX2-only CI machine computes exactly what an
//! AVX-512 one does.
//!
//! The cpu backend's one switch lives here, read once: `KILN_SIMD=avx2|scalar` caps the
//! instruction set of every cpu kernel — these bodies and the matmul (kiln's sgemm needs AVX-512;
//! below it the `gemm` crate runs). It exists to run the fallback paths on an AVX-512 machine
//! (CI runs the engine tests once with `KILN_SIMD=avx2`); unit tests pick a version per thread
//! with [`with_isa`].

use std::cell::Cell;
use std::sync::LazyLock;

/// Which instantiation of a [`simd_fn!`] body runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2,
    Scalar,
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq");
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        let best = if avx512 && avx2 {
            Isa::Avx512
        } else if avx2 {
            Isa::Avx2
        } else {
            Isa::Scalar
        };
        match std::env::var("KILN_SIMD").as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx2") if avx2 => Isa::Avx2,
            Ok("avx512") if best == Isa::Avx512 => Isa::Avx512,
            _ => best,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    Isa::Scalar
}

static DETECTED: LazyLock<Isa> = LazyLock::new(detect);

thread_local! {
    /// Per-thread override (tests compare the versions on one thread).
    static FORCE: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The version [`simd_fn!`] functions run on this thread.
#[inline]
pub(crate) fn isa() -> Isa {
    FORCE.with(|f| f.get()).unwrap_or(*DETECTED)
}

/// The versions this CPU supports (ignoring overrides).
pub(crate) fn supported() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            v.push(Isa::Avx2);
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
            {
                v.push(Isa::Avx512);
            }
        }
    }
    v
}

/// Runs `f` on this thread with the [`simd_fn!`] version `isa` (one the caller got from
/// [`isa`], so supported): rayon workers take the version their caller's thread chose.
pub(crate) fn with_isa_here<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    let old = FORCE.with(|c| c.replace(Some(isa)));
    let r = f();
    FORCE.with(|c| c.set(old));
    r
}

/// Runs `f` with this thread's [`simd_fn!`] calls forced to `isa` (must be supported).
#[cfg(test)]
pub(crate) fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    FORCE.with(|c| c.set(Some(isa)));
    let r = f();
    FORCE.with(|c| c.set(None));
    r
}

/// Defines a function whose body is compiled for AVX-512, AVX2+FMA and baseline x86-64 and
/// dispatched on [`isa`]. The body must be plain (non-generic) code over slices and scalars.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v512($($a: $t),*) $(-> $r)? { imp($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v256($($a: $t),*) $(-> $r)? { imp($($a),*) }
                match $crate::cpu::vmath::isa() {
                    // SAFETY: `isa` only answers versions this CPU supports.
                    $crate::cpu::vmath::Isa::Avx512 => unsafe { v512($($a),*) },
                    // SAFETY: as above.
                    $crate::cpu::vmath::Isa::Avx2 => unsafe { v256($($a),*) },
                    $crate::cpu::vmath::Isa::Scalar => imp($($a),*),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            imp($($a),*)
        }
    };
}
pub(crate) use simd_fn;

/// Lane `l` of the result is the sum of the 16 lanes of `v[l]`: a transpose-and-add tree
/// (pairs within 128-bit lanes, then pairs of pairs, then across 128-bit lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn sum16(v: &[std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
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

/// The sum of the 8 lanes of `v`: the horizontal sum of the AVX2 kernels (quant, skinny,
/// attention). Inlined into its `target_feature` callers.
///
/// # Safety
/// The CPU has AVX (every caller is an AVX2 function).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Lanes of the fixed-width reductions (one AVX-512 register of f32).
pub(crate) const LANES: usize = 16;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5·2²³: adding it rounds to an integer kept in the low mantissa bits.
const SHIFTER: f32 = 12_582_912.0;
/// ln 2 split Cody–Waite style (`C1` has 9 significant bits, so `n·C1` is exact).
const C1: f32 = 0.693_359_4;
const C2: f32 = -2.121_944_4e-4;

/// `e^x` in f32 to within 2 ulp (Cephes' range reduction and degree-5 polynomial), correctly
/// overflowing to `inf` above ~88.72, with gradual underflow into denormals below ~-87.3 and
/// 0 below ~-103.97; NaN in, NaN out. Branch-free so loops over it vectorize.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Clamp with comparisons that keep NaN (f32::max/min would replace it).
    let xc = if x < -104.0 { -104.0 } else { x };
    let xc = if xc > 89.0 { 89.0 } else { xc };
    let kf = xc * LOG2E + SHIFTER;
    let n = kf.to_bits() as i32 - SHIFTER.to_bits() as i32;
    let nf = kf - SHIFTER;
    let r = (xc - nf * C1) - nf * C2;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = (r * r * p + r) + 1.0;
    // 2^n as two factors, so n from -150 to 128 needs no special case (denormals, FLT_MAX).
    let n1 = n >> 1;
    let n2 = n - n1;
    let s1 = f32::from_bits(((n1 + 127) << 23) as u32);
    let s2 = f32::from_bits(((n2 + 127) << 23) as u32);
    e * s1 * s2
}

/// Max of a slice (`-inf` when empty; NaN entries are skipped unless all are NaN).
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let ch = x.chunks_exact(LANES);
    let rem = ch.remainder();
    for c in ch {
        for k in 0..LANES {
            acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(rem) {
        m = if v > m { v } else { m };
    }
    m
}

/// Sum of the lanes in a fixed tree order.
#[inline(always)]
pub(crate) fn hsum(acc: &[f32; LANES]) -> f32 {
    let mut a = *acc;
    let mut w = LANES / 2;
    while w > 0 {
        for k in 0..w {
            a[k] += a[k + w];
        }
        w /= 2;
    }
    a[0]
}

/// Σx over `LANES` lanes (deterministic order).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let ch = x.chunks_exact(LANES);
    let rem = ch.remainder();
    for c in ch {
        for k in 0..LANES {
            acc[k] += c[k];
        }
    }
    let mut s = hsum(&acc);
    for &v in rem {
        s += v;
    }
    s
}

/// `x[i] = exp(x[i] - shift)` in place; returns the sum of the new values.
#[inline(always)]
pub(crate) fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut ch = x.chunks_exact_mut(LANES);
    for c in &mut ch {
        for k in 0..LANES {
            let e = exp(c[k] - shift);
            c[k] = e;
            acc[k] += e;
        }
    }
    let mut s = hsum(&acc);
    for v in ch.into_remainder() {
        *v = exp(*v - shift);
        s += *v;
    }
    s
}

simd_fn! {
    #[cfg(test)]
    /// `y[i] = exp(x[i])` (the vectorized [`exp`] over a slice).
    pub(crate) fn exp_slice(y: &mut [f32], x: &[f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = exp(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between `got` and the f64 value `want` rounded to f32
    /// (denormal results count the denormal spacing 2⁻¹⁴⁹).
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        if got == w {
            return 0.0;
        }
        let spacing = if w.abs() < f32::MIN_POSITIVE {
            2f64.powi(-149)
        } else {
            let e = (w.abs() as f64).log2().floor() as i32;
            2f64.powi(e - 23)
        };
        (got as f64 - want).abs() / spacing
    }

    #[test]
    fn exp_within_2_ulp_dense() {
        // every 97th f32 bit pattern in [-104, 89] (about 20M values), both signs
        let mut worst = (0f64, 0f32);
        let mut xs = Vec::new();
        for bits in (0u32..0x42B2_0000).step_by(97) {
            let x = f32::from_bits(bits);
            xs.push(x);
            xs.push(-x);
        }
        for bits in (0x42B2_0000u32..0x42D0_0000).step_by(7) {
            xs.push(-f32::from_bits(bits)); // -89 .. -104: the denormal range
        }
        let mut ys = vec![0f32; xs.len()];
        exp_slice(&mut ys, &xs);
        for (&x, &y) in xs.iter().zip(&ys) {
            let u = ulps(y, (x as f64).exp());
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 2.0, "exp: {} ulp at x = {:e}", worst.0, worst.1);
    }

    #[test]
    fn exp_edges() {
        let cases: &[(f32, f32)] = &[
            (0.0, 1.0),
            (-0.0, 1.0),
            (f32::INFINITY, f32::INFINITY),
            (f32::NEG_INFINITY, 0.0),
            (89.0, f32::INFINITY),
            (88.8, f32::INFINITY),
            (1e30, f32::INFINITY),
            (-1e30, 0.0),
            (-104.0, 0.0),
            (-200.0, 0.0),
        ];
        for &(x, want) in cases {
            assert_eq!(exp(x), want, "exp({x})");
        }
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-f32::NAN).is_nan());
        // the largest finite result and the first overflow
        let big = 88.722_83f32;
        assert!(exp(big).is_finite() && ulps(exp(big), (big as f64).exp()) <= 2.0);
        assert_eq!(exp(88.722_84), f32::INFINITY);
        // denormal results (gradual underflow, not flushed to zero)
        for x in [-87.5f32, -95.0, -100.0, -103.0, -103.9] {
            let y = exp(x);
            assert!(y > 0.0 && y < f32::MIN_POSITIVE, "exp({x}) = {y:e}");
            assert!(ulps(y, (x as f64).exp()) <= 2.0, "exp({x}) = {y:e}");
        }
        assert_eq!(exp(-103.2).to_bits(), 1, "smallest denormal");
    }

    #[test]
    fn versions_agree_bitwise() {
        let xs: Vec<f32> = (0..10_007)
            .map(|i| (i as f32 - 5000.0) * 0.021 + 1e-3)
            .chain([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e-40])
            .collect();
        let mut want = vec![0f32; xs.len()];
        with_isa(Isa::Scalar, || exp_slice(&mut want, &xs));
        for isa in supported() {
            let mut got = vec![0f32; xs.len()];
            with_isa(isa, || exp_slice(&mut got, &xs));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{isa:?} differs at x = {}: {g:e} vs {w:e}",
                    xs[i]
                );
            }
        }
    }

    #[test]
    fn reductions() {
        let x: Vec<f32> = (0..1003).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        assert_eq!(max(&x), 50.0);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(max(&[-3.0, f32::NAN, -1.0]), -1.0);
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        assert_eq!(sum(&x) as f64, want);
        let mut y: Vec<f32> = x.iter().map(|v| v * 0.01).collect();
        let s = exp_shift_sum(&mut y, 0.5);
        let want: f64 = x.iter().map(|&v| ((v * 0.01 - 0.5) as f64).exp()).sum();
        assert!((s as f64 - want).abs() < 1e-5 * want);
        assert!((y[3] as f64 - ((x[3] * 0.01 - 0.5) as f64).exp()).abs() < 1e-6);
    }
}
