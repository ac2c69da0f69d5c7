//! Q4_0, Q4_1 and Q8_0 matrices repacked eight rows at a time for decode.
//!
//! In a GGUF file each row is a run of 32-value blocks (`[d, (m,) 16 code bytes]`). Dotting one
//! row with one activation row costs, per block, an integer dot of 32 products and then float
//! work: one int→float conversion, one FMA with the block's scale, and the scale itself (an
//! f16 in the block, converted and multiplied by the activations' scale). On an AMD Zen 4 core
//! that float work held the fused kernel to ~1 ns per block for Q4_1, Q4_0 and Q8_0 alike
//! (`qmatvec_bench`, hot): 19–20 GB/s for the 4-bit types against a ~34 GB/s read probe, so a
//! 4-bit model's decode was bound by arithmetic, not by memory.
//!
//! Repacked, the same bytes hold eight rows' block `b` together: their eight scales (and Q4_1's
//! eight minimums) as one 16-byte vector, then their code bytes in chunks of 32 (four for the
//! 4-bit types, eight for Q8_0), chunk `k` holding bytes `4k..4k+4` of each row's block in row
//! order. A 32-byte load of a chunk then has row `r`'s codes for values `4k..4k+4` (Q8_0's
//! bytes, or the low nibbles; the high nibbles are values `16+4k..16+4k+4`) in lane `r`, so
//! `vpdpbusd` against the activations' four bytes broadcast to every lane sums each row's
//! products in its own lane. Eight such dots finish block `b` for all eight rows, and one
//! conversion and one FMA with the eight scales do the float work of eight blocks. No
//! horizontal sums: lane `r` is row `r`'s result.
//!
//! The repacked matrix is the same size as the file's (the weights are already copied out of the
//! file map at load), so memory use is unchanged. Prompt passes read it through
//! [`row_of_group`], which restores a row's blocks, as does the embedding lookup.

use crate::gguf::GgmlType;

/// Rows per repacked group.
pub const GROUP: usize = 8;

/// Whether a `ty` matrix of `rows × cols` can be repacked: Q4_0, Q4_1 or Q8_0, whole groups of
/// rows.
pub fn repackable(ty: GgmlType, rows: usize, cols: usize) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
        && rows.is_multiple_of(GROUP)
        && cols.is_multiple_of(32)
        && rows > 0
}

/// Bytes of the scale header of one block of a group: `d` ×8 (and Q4_1's `m` ×8), f16.
fn head_bytes(ty: GgmlType) -> usize {
    if ty == GgmlType::Q4_1 {
        32
    } else {
        16
    }
}

/// Chunks of 32 bytes (four code bytes of each row) per group block: Q8_0's 32 code bytes make
/// eight, the 4-bit types' 16 four.
fn chunks(ty: GgmlType) -> usize {
    if ty == GgmlType::Q8_0 {
        8
    } else {
        4
    }
}

/// Where a block's fields sit in the file's layout: (scale offset, minimum offset, codes).
fn file_fields(ty: GgmlType) -> (usize, Option<usize>, usize) {
    if ty == GgmlType::Q4_1 {
        (0, Some(2), 4)
    } else {
        (0, None, 2)
    }
}

/// Repack `w` (`rows × cols` of `ty` in the file's layout) in place into groups of eight rows.
/// `scratch` is reused between calls (one group's bytes).
pub fn repack(ty: GgmlType, w: &mut [u8], rows: usize, cols: usize, scratch: &mut Vec<u8>) {
    assert!(repackable(ty, rows, cols));
    let bb = ty.block_bytes();
    let nb = cols / 32;
    let rb = nb * bb;
    assert_eq!(w.len(), rows * rb);
    let (sd, sm, sc) = file_fields(ty);
    let hb = head_bytes(ty);
    scratch.resize(GROUP * rb, 0);
    for group in w.chunks_exact_mut(GROUP * rb) {
        scratch.copy_from_slice(group);
        for b in 0..nb {
            let dst = &mut group[b * GROUP * bb..(b + 1) * GROUP * bb];
            for r in 0..GROUP {
                let blk = &scratch[r * rb + b * bb..][..bb];
                dst[2 * r..2 * r + 2].copy_from_slice(&blk[sd..sd + 2]);
                if let Some(sm) = sm {
                    dst[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&blk[sm..sm + 2]);
                }
                for k in 0..chunks(ty) {
                    dst[hb + 32 * k + 4 * r..][..4].copy_from_slice(&blk[sc + 4 * k..][..4]);
                }
            }
        }
    }
}

/// Row `lane` of a repacked group (`group`: its `GROUP` rows' bytes) in the file's layout.
pub fn row_of_group(ty: GgmlType, group: &[u8], lane: usize, cols: usize, out: &mut [u8]) {
    let bb = ty.block_bytes();
    let nb = cols / 32;
    assert!(lane < GROUP && group.len() == GROUP * nb * bb && out.len() == nb * bb);
    let (sd, sm, sc) = file_fields(ty);
    let hb = head_bytes(ty);
    for b in 0..nb {
        let src = &group[b * GROUP * bb..(b + 1) * GROUP * bb];
        let blk = &mut out[b * bb..(b + 1) * bb];
        blk[sd..sd + 2].copy_from_slice(&src[2 * lane..2 * lane + 2]);
        if let Some(sm) = sm {
            blk[sm..sm + 2].copy_from_slice(&src[16 + 2 * lane..16 + 2 * lane + 2]);
        }
        for k in 0..chunks(ty) {
            blk[sc + 4 * k..][..4].copy_from_slice(&src[hb + 32 * k + 4 * lane..][..4]);
        }
    }
}

/// `out[t·stride + r] = W[r] · xs[t]` for every row `r` of the repacked `w` (`n` rows, whole
/// groups) and activation row `t`: the scalar form (the reference the vector forms are tested
/// against, and what runs without AVX2), lane by lane, the same sums in the same order.
pub(super) fn rows_scalar(
    ty: GgmlType,
    w: &[u8],
    n: usize,
    xs: &super::QActs,
    out: &mut [f32],
    stride: usize,
) {
    let bb = ty.block_bytes();
    let hb = head_bytes(ty);
    for t in 0..xs.rows {
        let x = xs.row(t);
        let nb = x.q.len() / 32;
        let gb = GROUP * nb * bb;
        for g in 0..n / GROUP {
            let group = &w[g * gb..(g + 1) * gb];
            // Two accumulators alternating by block and the minimums' sum, as the vector forms.
            let mut acc = [[0f32; GROUP]; 2];
            let mut macc = [0f32; GROUP];
            for b in 0..nb {
                let src = &group[b * GROUP * bb..(b + 1) * GROUP * bb];
                let q = &x.q[32 * b..32 * b + 32];
                let qsum: i32 = q.iter().map(|&v| v as i32).sum();
                for r in 0..GROUP {
                    let d = half::f16::from_le_bytes([src[2 * r], src[2 * r + 1]]).to_f32();
                    let mut i = 0i32;
                    for k in 0..chunks(ty) {
                        for e in 0..4 {
                            let c = src[hb + 32 * k + 4 * r + e];
                            if ty == GgmlType::Q8_0 {
                                i += c as i8 as i32 * q[4 * k + e] as i32;
                            } else {
                                i += (c & 15) as i32 * q[4 * k + e] as i32;
                                i += (c >> 4) as i32 * q[16 + 4 * k + e] as i32;
                            }
                        }
                    }
                    if ty == GgmlType::Q4_0 {
                        i -= 8 * qsum;
                    }
                    acc[b % 2][r] = (i as f32).mul_add(d * x.d32[b], acc[b % 2][r]);
                    if ty == GgmlType::Q4_1 {
                        let m =
                            half::f16::from_le_bytes([src[16 + 2 * r], src[17 + 2 * r]]).to_f32();
                        macc[r] = m.mul_add(x.m32[b], macc[r]);
                    }
                }
            }
            for r in 0..GROUP {
                out[t * stride + g * GROUP + r] = (acc[0][r] + acc[1][r]) + macc[r];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::super::QActs;
    use super::GROUP;
    use crate::gguf::GgmlType;
    use std::arch::x86_64::*;

    const K_Q4_0: u8 = 0;
    const K_Q4_1: u8 = 1;
    const K_Q8_0: u8 = 3;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(in super::super) unsafe fn rows_vnni(
        ty: GgmlType,
        w: &[u8],
        n: usize,
        xs: &QActs,
        out: &mut [f32],
        stride: usize,
    ) {
        match ty {
            GgmlType::Q4_1 => rows::<true, K_Q4_1>(w, n, xs, out, stride),
            GgmlType::Q8_0 => rows::<true, K_Q8_0>(w, n, xs, out, stride),
            _ => rows::<true, K_Q4_0>(w, n, xs, out, stride),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in super::super) unsafe fn rows_avx2(
        ty: GgmlType,
        w: &[u8],
        n: usize,
        xs: &QActs,
        out: &mut [f32],
        stride: usize,
    ) {
        match ty {
            GgmlType::Q4_1 => rows::<false, K_Q4_1>(w, n, xs, out, stride),
            GgmlType::Q8_0 => rows::<false, K_Q8_0>(w, n, xs, out, stride),
            _ => rows::<false, K_Q4_0>(w, n, xs, out, stride),
        }
    }

    /// [`super::rows_scalar`]'s products with vectors of eight lanes, one per row of a group,
    /// for the type `K`. Q4_0's and Q8_0's code offsets (8; VNNI's unsigned Q8_0 codes, 128) are
    /// folded into the integer dot's start; Q4_1's minimums are one FMA per block for the group.
    /// The activation rows are the inner loop, so a group's weights are read from memory once
    /// for all of them. (No software prefetch: one sequential stream per group, which the
    /// hardware follows; 512 or 4,096 bytes ahead read 29–31 GB/s cold on Zen 4, 1,024 26–27,
    /// none 31.)
    #[inline(always)]
    unsafe fn rows<const VNNI: bool, const K: u8>(
        w: &[u8],
        n: usize,
        xs: &QActs,
        out: &mut [f32],
        stride: usize,
    ) {
        let nb = xs.cols / 32;
        let (bb, hb) = match K {
            K_Q4_1 => (20, 32),
            K_Q8_0 => (34, 16),
            _ => (18, 16),
        };
        let gb = GROUP * nb * bb;
        let m4 = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let dot = |acc: __m256i, u: __m256i, q: __m256i| {
            if VNNI {
                _mm256_dpbusd_epi32(acc, u, q)
            } else {
                _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), ones))
            }
        };
        for g in 0..n / GROUP {
            let gp = w.as_ptr().add(g * gb);
            for t in 0..xs.rows {
                let x = xs.row(t);
                let qp = x.q.as_ptr();
                let mut acc = [_mm256_setzero_ps(); 2];
                let mut macc = _mm256_setzero_ps();
                for b in 0..nb {
                    let p = gp.add(b * GROUP * bb);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
                    let s = _mm256_mul_ps(d, _mm256_broadcast_ss(x.d32.get_unchecked(b)));
                    if K == K_Q4_1 {
                        let m = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i));
                        macc =
                            _mm256_fmadd_ps(m, _mm256_broadcast_ss(x.m32.get_unchecked(b)), macc);
                    }
                    // Two chains of dots, so each waits on half of them. Σ(u − c)·q = Σu·q −
                    // c·Σq (`nq32` holds −Σq per block).
                    let mut i = [_mm256_setzero_si256(); 2];
                    let nq = *x.nq32.get_unchecked(b);
                    if K == K_Q4_0 {
                        i[0] = _mm256_set1_epi32(8 * nq);
                    } else if K == K_Q8_0 && VNNI {
                        i[0] = _mm256_set1_epi32(128 * nq);
                    }
                    let qb = qp.add(32 * b) as *const i32;
                    if K == K_Q8_0 {
                        for k in 0..8 {
                            let c = _mm256_loadu_si256(p.add(hb + 32 * k) as *const __m256i);
                            let q = _mm256_set1_epi32(qb.add(k).read_unaligned());
                            i[k % 2] = if VNNI {
                                // Signed codes as unsigned ones plus 128.
                                let u = _mm256_xor_si256(c, _mm256_set1_epi8(-128));
                                _mm256_dpbusd_epi32(i[k % 2], u, q)
                            } else {
                                // |c| · (q with c's sign): pmaddubsw's pairs stay within i16.
                                let (ac, sq) = (_mm256_sign_epi8(c, c), _mm256_sign_epi8(q, c));
                                dot(i[k % 2], ac, sq)
                            };
                        }
                    } else {
                        for k in 0..4 {
                            let c = _mm256_loadu_si256(p.add(hb + 32 * k) as *const __m256i);
                            let lo = _mm256_and_si256(c, m4);
                            let hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), m4);
                            let ql = _mm256_set1_epi32(qb.add(k).read_unaligned());
                            let qh = _mm256_set1_epi32(qb.add(4 + k).read_unaligned());
                            i[0] = dot(i[0], lo, ql);
                            i[1] = dot(i[1], hi, qh);
                        }
                    }
                    let iv = _mm256_add_epi32(i[0], i[1]);
                    acc[b % 2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iv), s, acc[b % 2]);
                }
                let y = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), macc);
                _mm256_storeu_ps(out.as_mut_ptr().add(t * stride + g * GROUP), y);
            }
        }
    }
}
