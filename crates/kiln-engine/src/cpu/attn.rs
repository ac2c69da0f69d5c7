//! Causal attention of a tile of query vectors against one KV head of a cache whose keys are
//! stored in panels: [`PANEL`] positions side by side per head dimension (`[panel][dim][PANEL]`),
//! so `Q·Kᵀ` is a small matrix product — each query value broadcast against a row of 16 keys,
//! 16 scores accumulating in one register — instead of one dot product and one horizontal sum
//! per score. Values stay one row per position (`P·V` broadcasts each probability against a row
//! of values).
//!
//! A tile is up to [`tile_vectors`] query vectors sharing the KV head: the heads of a group
//! (grouped-query attention) of one or several prompt rows. Each score and each output is
//! computed by the same operations in the same order whatever tile it is in and whatever the
//! tile's key range: a score is `Σ_d q_d·k_d` in order of `d`; a softmax sum adds position `t` in
//! lane `t mod 16`; `P·V` adds positions in order. Keys outside a vector's range (later
//! positions of the prompt, positions that left a sliding window, a panel's unused lanes) get a
//! probability of exactly 0, and adding `0·v` changes nothing. So a prompt row gives the same bits
//! in a prompt pass as alone in a decode step (`LlamaModel::prefill` is batch-invariant), and —
//! no FMA contraction, as everywhere in [`vmath`] — the AVX-512, AVX2 and scalar builds agree
//! bit for bit.
//!
//! Measured on Gemma-3-270M (head size 256), pp512, 1 thread: the per-score form (one vectorized
//! dot and horizontal sum per score, one call per head) was 29% of the pass.

use super::vmath::{self, Isa};

/// Positions per key panel (one AVX-512 register of f32).
pub const PANEL: usize = 16;

/// Query vectors per [`attend`] call for the kernel version `isa`: the score tile keeps
/// `vectors × 16` accumulators in registers (AVX-512 has 32 of them, AVX2 16 of half the width).
pub(crate) fn tile_vectors(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 8,
        _ => 4,
    }
}

/// Value columns per `P·V` pass for `isa` (accumulators: vectors × columns / lanes).
fn value_columns(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 32,
        _ => 16,
    }
}

/// `out[m] = softmax(scale · q[m]·kₜ) · vₜ` over `lo[m] ≤ t < hi[m]` for `m < lo.len()` (at most
/// 8) query vectors of `q` (`lo.len() × head`), the keys `k` in panels (`panels × head × PANEL`,
/// position `t` in panel `t / PANEL`, lane `t % PANEL`), value row `t` at `v[t·stride..]`
/// (`head` values). `s` is scratch of at least `lo.len() × panels × PANEL`.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    lo: &[usize],
    hi: &[usize],
    scale: f32,
    s: &mut [f32],
    out: &mut [f32],
) {
    let cw = value_columns(vmath::isa());
    attend_tile(q, k, v, stride, lo, hi, scale, cw, s, out);
}

vmath::simd_fn! {
    fn attend_tile(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        stride: usize,
        lo: &[usize],
        hi: &[usize],
        scale: f32,
        cw: usize,
        s: &mut [f32],
        out: &mut [f32],
    ) {
        let mr = lo.len();
        assert!((1..=8).contains(&mr) && hi.len() == mr && q.len().is_multiple_of(mr));
        let hd = q.len() / mr;
        assert!(hd > 0 && k.len().is_multiple_of(hd * PANEL) && out.len() == mr * hd);
        let np = k.len() / (hd * PANEL);
        let nk = np * PANEL;
        assert!(lo.iter().zip(hi).all(|(&l, &h)| l < h && h <= nk) && s.len() >= mr * nk);
        let t0 = *lo.iter().min().unwrap();
        let t1 = *hi.iter().max().unwrap();
        assert!(v.len() >= (t1 - 1) * stride + hd);
        let s = &mut s[..mr * nk];
        for (p, kp) in k.chunks_exact(hd * PANEL).enumerate() {
            if (p + 1) * PANEL > t0 {
                qk_panel(mr, q, kp, hd, s, nk, p * PANEL);
            }
        }
        let mut inv = [0f32; 8];
        for m in 0..mr {
            let row = &mut s[m * nk..(m + 1) * nk];
            let (a, b) = (lo[m], hi[m]);
            for x in &mut row[a..b] {
                *x *= scale;
            }
            let mx = vmath::max(&row[a..b]);
            // Lane t mod 16 whatever the panel range: sums do not depend on the tile.
            let mut acc = [0f32; PANEL];
            for (c, ch) in row.chunks_exact_mut(PANEL).enumerate().skip(t0 / PANEL) {
                for l in 0..PANEL {
                    let t = c * PANEL + l;
                    let e = vmath::exp(ch[l] - mx);
                    let e = if t >= a && t < b { e } else { 0.0 };
                    ch[l] = e;
                    acc[l] += e;
                }
            }
            inv[m] = 1.0 / vmath::hsum(&acc);
        }
        let mut c0 = 0;
        while c0 + cw <= hd {
            pv_cols(mr, cw, s, nk, v, stride, t0, t1, c0, &inv, out, hd);
            c0 += cw;
        }
        while c0 < hd {
            pv_cols(mr, 1, s, nk, v, stride, t0, t1, c0, &inv, out, hd);
            c0 += 1;
        }
    }
}

/// The scores of `mr` vectors against one panel, into `s[m·nk + t0 ..][..PANEL]`.
#[inline(always)]
fn qk_panel(mr: usize, q: &[f32], kp: &[f32], hd: usize, s: &mut [f32], nk: usize, t0: usize) {
    macro_rules! go {
        ($m:literal) => {{
            let acc = qk::<$m>(q, kp, hd);
            for (m, acc) in acc.iter().enumerate() {
                s[m * nk + t0..m * nk + t0 + PANEL].copy_from_slice(acc);
            }
        }};
    }
    match mr {
        1 => go!(1),
        2 => go!(2),
        3 => go!(3),
        4 => go!(4),
        5 => go!(5),
        6 => go!(6),
        7 => go!(7),
        _ => go!(8),
    }
}

/// `acc[m][l] = Σ_d q[m][d]·kp[d][l]`, `d` in order.
#[inline(always)]
fn qk<const M: usize>(q: &[f32], kp: &[f32], hd: usize) -> [[f32; PANEL]; M] {
    let qs: [&[f32]; M] = std::array::from_fn(|m| &q[m * hd..(m + 1) * hd]);
    let mut acc = [[0f32; PANEL]; M];
    for (d, kr) in kp.chunks_exact(PANEL).enumerate() {
        let kr: &[f32; PANEL] = kr.try_into().unwrap();
        for m in 0..M {
            let x = qs[m][d];
            for l in 0..PANEL {
                acc[m][l] += x * kr[l];
            }
        }
    }
    acc
}

/// Columns `c0..c0 + cw` of `out[m] = inv[m] · Σ_{t0 ≤ t < t1} p[m][t]·v[t]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pv_cols(
    mr: usize,
    cw: usize,
    p: &[f32],
    nk: usize,
    v: &[f32],
    stride: usize,
    t0: usize,
    t1: usize,
    c0: usize,
    inv: &[f32; 8],
    out: &mut [f32],
    hd: usize,
) {
    macro_rules! go {
        ($m:literal, $c:literal) => {
            pv::<$m, $c>(p, nk, v, stride, t0, t1, c0, inv, out, hd)
        };
    }
    macro_rules! by_m {
        ($c:literal) => {
            match mr {
                1 => go!(1, $c),
                2 => go!(2, $c),
                3 => go!(3, $c),
                4 => go!(4, $c),
                5 => go!(5, $c),
                6 => go!(6, $c),
                7 => go!(7, $c),
                _ => go!(8, $c),
            }
        };
    }
    match cw {
        32 => by_m!(32),
        16 => by_m!(16),
        _ => by_m!(1),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pv<const M: usize, const C: usize>(
    p: &[f32],
    nk: usize,
    v: &[f32],
    stride: usize,
    t0: usize,
    t1: usize,
    c0: usize,
    inv: &[f32; 8],
    out: &mut [f32],
    hd: usize,
) {
    let ps: [&[f32]; M] = std::array::from_fn(|m| &p[m * nk + t0..m * nk + t1]);
    let mut acc = [[0f32; C]; M];
    for (j, t) in (t0..t1).enumerate() {
        let vr: &[f32; C] = v[t * stride + c0..t * stride + c0 + C].try_into().unwrap();
        for m in 0..M {
            let x = ps[m][j];
            for l in 0..C {
                acc[m][l] += x * vr[l];
            }
        }
    }
    for (m, acc) in acc.iter().enumerate() {
        for (o, a) in out[m * hd + c0..m * hd + c0 + C].iter_mut().zip(acc) {
            *o = a * inv[m];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// `positions × hd` keys as panels (unused lanes of the last panel hold `fill`).
    fn panels(keys: &[f32], hd: usize, fill: f32) -> Vec<f32> {
        let n = keys.len() / hd;
        let np = n.div_ceil(PANEL);
        let mut k = vec![fill; np * hd * PANEL];
        for t in 0..n {
            for d in 0..hd {
                k[(t / PANEL) * hd * PANEL + d * PANEL + t % PANEL] = keys[t * hd + d];
            }
        }
        k
    }

    /// Softmax attention in f64 over keys and values `hd` wide, rows `lo..hi`.
    fn reference(
        q: &[f32],
        keys: &[f32],
        vals: &[f32],
        lo: usize,
        hi: usize,
        scale: f32,
    ) -> Vec<f64> {
        let hd = q.len();
        let s: Vec<f64> = (lo..hi)
            .map(|t| {
                let d: f64 = (0..hd).map(|i| q[i] as f64 * keys[t * hd + i] as f64).sum();
                d * scale as f64
            })
            .collect();
        let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..hd)
            .map(|c| {
                (lo..hi)
                    .map(|t| e[t - lo] * vals[t * hd + c] as f64)
                    .sum::<f64>()
                    / sum
            })
            .collect()
    }

    /// Against the f64 reference, for tiles of 1..8 vectors with different ranges, head sizes
    /// with and without a column tail; and each vector's bits equal to the same vector alone
    /// (tile invariance: what keeps prompt passes batch-invariant) on every ISA, which all agree.
    #[test]
    fn tiles_match_the_reference_and_each_vector_alone() {
        let mut rng = Rng::new(7);
        for hd in [64usize, 256, 40] {
            let n = 75;
            let keys = random(n * hd, &mut rng);
            let vals = random(n * hd, &mut rng);
            // Unused lanes hold garbage (a stale cache): it must not leak in.
            let k = panels(&keys, hd, 1e30);
            let scale = 1.0 / (hd as f32).sqrt();
            for isa in vmath::supported() {
                for mr in 1..=8usize {
                    let q = random(mr * hd, &mut rng);
                    // Causal rows ending near the end, one with a sliding window.
                    let hi: Vec<usize> = (0..mr).map(|m| n - 8 + m).collect();
                    let lo: Vec<usize> = (0..mr).map(|m| if m == 1 { 30 } else { 0 }).collect();
                    let mut s = vec![0f32; mr * k.len() / hd];
                    let mut out = vec![0f32; mr * hd];
                    vmath::with_isa(isa, || {
                        attend(&q, &k, &vals, hd, &lo, &hi, scale, &mut s, &mut out)
                    });
                    for m in 0..mr {
                        let qm = &q[m * hd..(m + 1) * hd];
                        let want = reference(qm, &keys, &vals, lo[m], hi[m], scale);
                        for c in 0..hd {
                            let g = out[m * hd + c] as f64;
                            assert!(
                                (g - want[c]).abs() < 1e-5,
                                "{isa:?} hd {hd} tile {mr} vector {m} col {c}: {g} vs {}",
                                want[c]
                            );
                        }
                        // Alone, with a key range starting at its own panel.
                        let p0 = lo[m] / PANEL;
                        let np = hi[m].div_ceil(PANEL);
                        let mut s1 = vec![0f32; (np - p0) * PANEL];
                        let mut one = vec![0f32; hd];
                        vmath::with_isa(isa, || {
                            attend(
                                qm,
                                &k[p0 * hd * PANEL..np * hd * PANEL],
                                &vals[p0 * PANEL * hd..],
                                hd,
                                &[lo[m] - p0 * PANEL],
                                &[hi[m] - p0 * PANEL],
                                scale,
                                &mut s1,
                                &mut one,
                            )
                        });
                        let a: Vec<u32> = out[m * hd..(m + 1) * hd]
                            .iter()
                            .map(|x| x.to_bits())
                            .collect();
                        let b: Vec<u32> = one.iter().map(|x| x.to_bits()).collect();
                        assert_eq!(a, b, "{isa:?} hd {hd} tile {mr} vector {m}: alone differs");
                    }
                }
            }
            // The versions agree bit for bit on the same inputs.
            let q = random(8 * hd, &mut rng);
            let lo = [0usize; 8];
            let hi: Vec<usize> = (0..8).map(|m| n - 8 + m).collect();
            let run = |isa| {
                let mut s = vec![0f32; 8 * k.len() / hd];
                let mut out = vec![0f32; 8 * hd];
                vmath::with_isa(isa, || {
                    attend(&q, &k, &vals, hd, &lo, &hi, scale, &mut s, &mut out)
                });
                out.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
            };
            let want = run(Isa::Scalar);
            for isa in vmath::supported() {
                assert_eq!(run(isa), want, "{isa:?} differs from the scalar version");
            }
        }
    }
}
