//! Quantized matrix products for GGUF weights, the way llama.cpp does them: the activations are
//! quantized once per product to 8-bit blocks ([`QActs`]: 32 values share an f32 scale), and
//! every weight row is dotted in integers against them.
//!
//! One form serves every weight type. A row of Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K or Q6_K is
//! unpacked (in L1, a tile of [`TILE`] rows at a time) into unsigned 8-bit codes `u` and, per
//! group of 16 values, a scale `a` and an offset `b`, so that `w = a·u + b` exactly as the
//! dequantizer computes it (Q6_K's scales change every 16 values, hence groups of 16). With the
//! activations `x = dx·q` (q: i8), a row's product is
//!
//! `Σ_g a_g·dx_g·(Σ_{i∈g} u_i·q_i) + Σ_g b_g·(dx_g·Σ_{i∈g} q_i)`
//!
//! — an unsigned×signed byte dot product per group (AVX-512 VNNI `vpdpbusd`, or `pmaddubsw` +
//! `pmaddwd` on AVX-512BW / AVX2, or plain integer code) and a short f32 dot product with the
//! activations' group sums. The codes are at most 6 bits except Q8_0's (`w ^ 0x80`, 8 bits),
//! which `pmaddubsw` would saturate on; there the code is split into nibbles ("wide").
//!
//! Why unpack instead of llama.cpp's fused per-type kernels: one hand-written kernel per ISA
//! instead of seven, and in a matrix–matrix product (prefill, batched decode) the unpacking is
//! paid once per weight row for all activation rows. At one or two activation rows (decode)
//! it is not amortized, and the weight types released models use (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K,
//! Q6_K) take fused kernels that decode the blocks in registers ([`dot_fused`]).
//!
//! Products of many activation rows (prompts, batched decode) reorder each unpacked weight tile
//! into panels ([`interleave`]) so that one integer lane sums a whole group of 16: the float
//! work (conversion, scale, FMA) is then paid per 16 values of 16 (VNNI) or 8 (AVX2) groups.
//!
//! The ISA comes from the cpu backend's one switch (`vmath::isa`, `KILN_SIMD=avx2|scalar`);
//! VNNI is used when the AVX-512 version runs and the CPU has it. [`qmatmul`] reads the choice
//! once on the calling thread and hands it to its rayon workers, so tests can force each path.

use std::sync::LazyLock;

use rayon::prelude::*;

use super::vmath::{self, Isa};
use crate::gguf::quant::dequantize_into;
use crate::gguf::GgmlType;

/// Which version of the integer dot kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QIsa {
    Scalar,
    Avx2,
    /// AVX-512BW without VNNI (`pmaddubsw` on 64 bytes).
    Avx512,
    /// AVX-512 with VNNI (`vpdpbusd`).
    Vnni,
}

static HAS_VNNI: LazyLock<bool> = LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
});

impl QIsa {
    /// The version the cpu backend's switch selects on this thread.
    pub fn current() -> QIsa {
        match vmath::isa() {
            Isa::Avx512 if *HAS_VNNI => QIsa::Vnni,
            Isa::Avx512 => QIsa::Avx512,
            Isa::Avx2 => QIsa::Avx2,
            Isa::Scalar => QIsa::Scalar,
        }
    }

    /// Every version this CPU can run (tests compare them all).
    pub fn supported() -> Vec<QIsa> {
        let mut v = vec![QIsa::Scalar];
        let isas = vmath::supported();
        if isas.contains(&Isa::Avx2) {
            v.push(QIsa::Avx2);
        }
        if isas.contains(&Isa::Avx512) {
            v.push(QIsa::Avx512);
            if *HAS_VNNI {
                v.push(QIsa::Vnni);
            }
        }
        v
    }
}

#[path = "quant_x8.rs"]
pub mod x8;

/// Weight rows unpacked together; activation loads are shared by the tile's rows.
pub const TILE: usize = 4;

/// Activations quantized to 8-bit blocks of 32: `rows × cols` codes, per group of 16 the
/// block's scale `d16` and `s16 = d·Σq` over the group, and per block llama.cpp's q8_1 sum
/// (`s32`, in the first of the block's two groups). `x` keeps the f32 rows for weight types
/// that are not block-quantized (F32, F16, BF16).
#[derive(Default, Clone)]
pub struct QActs {
    pub rows: usize,
    pub cols: usize,
    /// Always take the tiled kernels, never the fused few-row ones: each row's result is then
    /// the same bits whatever number of rows it is multiplied with. Prompt passes set it, so a
    /// prompt whose prefix was cached (the last token alone recomputed) gives exactly the
    /// logits of the whole prompt run at once, and a seeded request repeats itself.
    pub batch_invariant: bool,
    q: Vec<i8>,
    d16: Vec<f32>,
    s16: Vec<f32>,
    s32: Vec<f32>,
    x: Vec<f32>,
    /// The codes in the panel layout of [`interleave`] (the many-row kernels), and per group
    /// of 16 the negated integer sum `-Σq`.
    qi: Vec<i8>,
    nq: Vec<i32>,
    /// Per four codes (one i32 lane of a byte dot product) the negated sum `-Σq`: the fused
    /// kernels start each block's integer dot from `c` times it, so a weight offset `-c`
    /// (Q4_0's 8, Q5_0's 16, Q8_0's 128 in its unsigned form) costs no float work.
    nq4: Vec<i32>,
    /// Per block of 32 the negated sum `-Σq` (the repacked Q4_0 kernel's offset term).
    nq32: Vec<i32>,
    /// Per block of 32 the scale (`d32`) and q8_1's f16 sum (`m32`, for Q4_1), each row padded
    /// with zeros to a whole number of eight-block groups ([`fused_groups`]): the fused kernels
    /// load eight of them at once, and a partial last group's extra lanes then add nothing.
    d32: Vec<f32>,
    m32: Vec<f32>,
}

impl QActs {
    pub fn new() -> QActs {
        QActs::default()
    }

    /// Quantize `x` (`rows × cols`, `cols` a multiple of 32), reusing this buffer's memory.
    pub fn quantize(&mut self, x: &[f32], rows: usize, cols: usize) {
        assert!(cols.is_multiple_of(32) && x.len() == rows * cols);
        self.rows = rows;
        self.cols = cols;
        self.q.resize(rows * cols, 0);
        self.d16.resize(rows * cols / 16, 0.0);
        self.s16.resize(rows * cols / 16, 0.0);
        self.s32.resize(rows * cols / 16, 0.0);
        self.qi.resize(rows * cols, 0);
        self.nq.resize(rows * cols / 16, 0);
        self.nq4.resize(rows * cols / 4, 0);
        self.x.clear();
        self.x.extend_from_slice(x);
        if rows < 8 {
            quantize_blocks(x, &mut self.q, &mut self.d16, &mut self.s16, &mut self.s32);
            panel_acts(&self.q, &mut self.qi, &mut self.nq, cols);
            lane_sums(&self.q, &mut self.nq4);
            self.block_scales();
            return;
        }
        // Prompts: split by rows over the pool (serial, it was ~4% of a 1-thread prefill,
        // twice that share at 2 threads). `simd_fn!` reads the ISA per thread, so the workers
        // take the process-wide choice.
        let isa = vmath::isa();
        let rc = 8;
        let g = cols / 16;
        x.par_chunks(rc * cols)
            .zip(self.q.par_chunks_mut(rc * cols))
            .zip(self.d16.par_chunks_mut(rc * g))
            .zip(self.s16.par_chunks_mut(rc * g))
            .zip(self.s32.par_chunks_mut(rc * g))
            .zip(self.qi.par_chunks_mut(rc * cols))
            .zip(self.nq.par_chunks_mut(rc * g))
            .zip(self.nq4.par_chunks_mut(rc * cols / 4))
            .for_each(|(((((((x, q), d16), s16), s32), qi), nq), nq4)| {
                vmath::with_isa_here(isa, || quantize_blocks(x, q, d16, s16, s32));
                panel_acts(q, qi, nq, cols);
                lane_sums(q, nq4);
            });
        self.block_scales();
    }

    /// `d32` and `m32` from the quantized rows.
    fn block_scales(&mut self) {
        self.nq32.clear();
        self.nq32
            .extend(self.nq4.chunks_exact(8).map(|l| l.iter().sum::<i32>()));
        let (rows, cols) = (self.rows, self.cols);
        let padded = fused_groups(cols) * 8;
        self.d32.clear();
        self.m32.clear();
        for t in 0..rows {
            let g = t * cols / 16..(t + 1) * cols / 16;
            self.d32.extend(self.d16[g.clone()].iter().step_by(2));
            self.d32.resize((t + 1) * padded, 0.0);
            self.m32.extend(self.s32[g].iter().step_by(2));
            self.m32.resize((t + 1) * padded, 0.0);
        }
    }

    fn row(&self, t: usize) -> ActRow<'_> {
        let (c, g) = (self.cols, self.cols / 16);
        ActRow {
            q: &self.q[t * c..(t + 1) * c],
            d16: &self.d16[t * g..(t + 1) * g],
            s16: &self.s16[t * g..(t + 1) * g],
            s32: &self.s32[t * g..(t + 1) * g],
            nq4: &self.nq4[t * c / 4..(t + 1) * c / 4],
            nq32: &self.nq32[t * c / 32..(t + 1) * c / 32],
            d32: &self.d32[t * fused_groups(c) * 8..(t + 1) * fused_groups(c) * 8],
            m32: &self.m32[t * fused_groups(c) * 8..(t + 1) * fused_groups(c) * 8],
        }
    }
}

#[derive(Clone, Copy)]
struct ActRow<'a> {
    q: &'a [i8],
    d16: &'a [f32],
    s16: &'a [f32],
    s32: &'a [f32],
    nq4: &'a [i32],
    nq32: &'a [i32],
    d32: &'a [f32],
    m32: &'a [f32],
}

/// Groups of eight blocks of 32 (the last one partial) in a row of `cols` values.
fn fused_groups(cols: usize) -> usize {
    cols.div_ceil(256)
}

/// Activation rows from which products that need not be batch-invariant take the panel kernel.
/// `gguf_batch_decode` Gemma-3-270M, 1 thread, tokens/s plain vs panels (2026-12-03): 4 rows
/// 39–40 vs 32, 8 rows 51–59 vs 51–56 (the tile's reordering is not amortized); prompts of
/// 512 rows gain ~45%. The AVX2 panels (AMD EPYC, 1 thread, 2 runs each, panels vs plain):
/// 4 rows 22 vs 31, 8 rows 36 vs 40, 12 rows 46 vs 46, 16 rows 54 vs 48, 32 rows 70 vs 52.
const PANEL_MIN_ROWS: usize = 16;

/// Groups of 16 values per panel of the many-row kernels (one i32 lane each in a zmm; AVX2
/// reads a panel as two halves of 8 lanes).
const PANEL: usize = 16;

/// Reorder rows of `cols` codes (groups of 16) into panels of [`PANEL`] groups: in the panel
/// starting at group `16p`, with `G` groups (16, or fewer in the last), bytes `4k..4k+4` of
/// group `j` go to `256p + 4G·k + 4j`. Four 64-byte loads then hold a whole panel with group
/// `j` in lane `j`, so four `vpdpbusd` sum each group's 16 products in one lane and one
/// int→float conversion, scale multiply and FMA serve 256 values — in the plain layout a lane
/// holds 4 values and the float work was per 64 values, the larger part of the product.
fn interleave<T: Copy>(src: &[T], dst: &mut [T], cols: usize) {
    for (s, d) in src.chunks_exact(cols).zip(dst.chunks_exact_mut(cols)) {
        for (s, d) in s.chunks(16 * PANEL).zip(d.chunks_mut(16 * PANEL)) {
            // Whole panels as fixed-size arrays: no bounds checks, so the copies compile to
            // shuffles (batched decode reorders a tile per step; slice copies cost more than
            // the dots there).
            if let (Ok(s), Ok(d)) = (
                <&[T; 16 * PANEL]>::try_from(s),
                <&mut [T; 16 * PANEL]>::try_from(&mut *d),
            ) {
                for k in 0..4 {
                    for j in 0..PANEL {
                        for e in 0..4 {
                            d[64 * k + 4 * j + e] = s[16 * j + 4 * k + e];
                        }
                    }
                }
                continue;
            }
            let gn = s.len() / 16;
            for j in 0..gn {
                for k in 0..4 {
                    d[4 * gn * k + 4 * j..][..4].copy_from_slice(&s[16 * j + 4 * k..][..4]);
                }
            }
        }
    }
}

/// The panel layout of activation rows and their negated group sums.
fn panel_acts(q: &[i8], qi: &mut [i8], nq: &mut [i32], cols: usize) {
    interleave(q, qi, cols);
    for (q, n) in q.chunks_exact(16).zip(nq.iter_mut()) {
        *n = -q.iter().map(|&v| v as i32).sum::<i32>();
    }
}

/// `nq4[k] = -(q[4k] + … + q[4k+3])` (see [`QActs::nq4`]).
fn lane_sums(q: &[i8], nq4: &mut [i32]) {
    for (q, n) in q.chunks_exact(4).zip(nq4.iter_mut()) {
        *n = -q.iter().map(|&v| v as i32).sum::<i32>();
    }
}

vmath::simd_fn! {
    /// Blocks of 32 as llama.cpp's AVX `quantize_row_q8_0`/`q8_1` make them, so that products
    /// round like llama.cpp's: `q = round_even(x·127/max|x|)`, the scale `d = max|x|/127` kept
    /// at f16 precision, and (q8_1, for Q4_1) `s32 = f16(d·Σq)` (stored per 16 as `[s32, 0]`,
    /// so the offset code serves both layouts). `s16` holds the exact
    /// `f16(d)·Σq` per 16 values for the offset terms that must cancel exactly.
    fn quantize_blocks(x: &[f32], q: &mut [i8], d16: &mut [f32], s16: &mut [f32], s32: &mut [f32]) {
        for ((((x, q), d16), s16), s32) in x
            .chunks_exact(32)
            .zip(q.chunks_exact_mut(32))
            .zip(d16.chunks_exact_mut(2))
            .zip(s16.chunks_exact_mut(2))
            .zip(s32.chunks_exact_mut(2))
        {
            let mut amax = 0f32;
            for &v in x {
                let a = v.abs();
                amax = if a > amax { a } else { amax };
            }
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut sums = [0i32; 2];
            for (h, (x, q)) in x.chunks_exact(16).zip(q.chunks_exact_mut(16)).enumerate() {
                for (x, q) in x.iter().zip(q.iter_mut()) {
                    *q = (x * id).round_ties_even() as i8;
                }
                sums[h] = q.iter().map(|&v| v as i32).sum();
            }
            let dh = half::f16::from_f32(d).to_f32();
            d16.fill(dh);
            s16[0] = dh * sums[0] as f32;
            s16[1] = dh * sums[1] as f32;
            s32[0] = half::f16::from_f32(d * (sums[0] + sums[1]) as f32).to_f32();
            s32[1] = 0.0;
        }
    }
}

/// Whether `ty` is block-quantized (goes through the integer kernels).
pub fn is_quantized(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// The little-endian f16 at `b[at]`, exactly. Written out (not `half`) so it inlines into the
/// unpack loops: `half`'s F16C path is an out-of-line call per block, measured at a quarter of
/// decode time.
#[inline(always)]
fn f16le(b: &[u8], at: usize) -> f32 {
    let h = u16::from_le_bytes([b[at], b[at + 1]]) as u32;
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1F;
    let man = h & 0x3FF;
    if exp == 0 {
        // Zero or subnormal: man · 2⁻²⁴ (exact in f32).
        let v = man as f32 * (1.0 / 16_777_216.0);
        f32::from_bits(v.to_bits() | sign)
    } else if exp == 31 {
        f32::from_bits(sign | 0x7F80_0000 | (man << 13))
    } else {
        f32::from_bits(sign | ((exp + 112) << 23) | (man << 13))
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K block (as `gguf::quant`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

vmath::simd_fn! {
    /// Unpack one quantized row into codes `u` (one per value), and per group of 16 the scale
    /// `a` and offset `b` with `w = a·u + b` (the products the dequantizer forms, in its order).
    /// One loop per type over fixed-size arrays, so each compiles to vector code for the ISA it
    /// is instantiated for (a per-block `match` and scalar bytes cost more than the dot itself
    /// at batch 1: measured 5× slower decode).
    fn unpack_row(ty: GgmlType, row: &[u8], u: &mut [u8], a: &mut [f32], b: &mut [f32]) {
        let bb = ty.block_bytes();
        let be = ty.block_elems();
        let g = be / 16;
        let blocks = row
            .chunks_exact(bb)
            .zip(u.chunks_exact_mut(be))
            .zip(a.chunks_exact_mut(g).zip(b.chunks_exact_mut(g)));
        match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let q4_0 = ty == GgmlType::Q4_0;
                let at = if q4_0 { 2 } else { 4 };
                for ((blk, u), (a, b)) in blocks {
                    let d = f16le(blk, 0);
                    let q: &[u8; 16] = blk[at..at + 16].try_into().unwrap();
                    let u: &mut [u8; 32] = u.try_into().unwrap();
                    for j in 0..16 {
                        u[j] = q[j] & 0xF;
                        u[j + 16] = q[j] >> 4;
                    }
                    a.fill(d);
                    b.fill(if q4_0 { -8.0 * d } else { f16le(blk, 2) });
                }
            }
            GgmlType::Q5_0 => {
                for ((blk, u), (a, b)) in blocks {
                    let d = f16le(blk, 0);
                    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                    let q: &[u8; 16] = blk[6..22].try_into().unwrap();
                    let u: &mut [u8; 32] = u.try_into().unwrap();
                    for j in 0..16 {
                        let h0 = (((qh >> j) << 4) & 0x10) as u8;
                        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                        u[j] = (q[j] & 0xF) | h0;
                        u[j + 16] = (q[j] >> 4) | h1;
                    }
                    a.fill(d);
                    b.fill(-16.0 * d);
                }
            }
            GgmlType::Q8_0 => {
                for ((blk, u), (a, b)) in blocks {
                    let d = f16le(blk, 0);
                    let q: &[u8; 32] = blk[2..34].try_into().unwrap();
                    let u: &mut [u8; 32] = u.try_into().unwrap();
                    for j in 0..32 {
                        u[j] = q[j] ^ 0x80;
                    }
                    a.fill(d);
                    b.fill(-128.0 * d);
                }
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                let q5 = ty == GgmlType::Q5_K;
                for ((blk, u), (a, b)) in blocks {
                    let (d, dmin) = (f16le(blk, 0), f16le(blk, 2));
                    let scales = &blk[4..16];
                    let qs = if q5 { &blk[48..176] } else { &blk[16..144] };
                    for (c, q) in qs.chunks_exact(32).enumerate() {
                        let q: &[u8; 32] = q.try_into().unwrap();
                        let u: &mut [u8; 64] = (&mut u[64 * c..64 * c + 64]).try_into().unwrap();
                        for l in 0..32 {
                            u[l] = q[l] & 0xF;
                            u[l + 32] = q[l] >> 4;
                        }
                        if q5 {
                            let qh: &[u8; 32] = blk[16..48].try_into().unwrap();
                            for l in 0..32 {
                                u[l] |= ((qh[l] >> (2 * c)) & 1) << 4;
                                u[l + 32] |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                            }
                        }
                        for s in 0..2 {
                            let (sc, m) = scale_min_k4(2 * c + s, scales);
                            let at = 4 * c + 2 * s;
                            a[at..at + 2].fill(d * sc as f32);
                            b[at..at + 2].fill(-(dmin * m as f32));
                        }
                    }
                }
            }
            GgmlType::Q6_K => {
                for ((blk, u), (a, b)) in blocks {
                    let d = f16le(blk, 208);
                    for half in 0..2 {
                        let ql: &[u8; 64] = blk[64 * half..64 * half + 64].try_into().unwrap();
                        let qh: &[u8; 32] =
                            blk[128 + 32 * half..128 + 32 * half + 32].try_into().unwrap();
                        let u: &mut [u8; 128] =
                            (&mut u[128 * half..128 * half + 128]).try_into().unwrap();
                        for l in 0..32 {
                            u[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                            u[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                            u[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                            u[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                        }
                    }
                    for i in 0..16 {
                        a[i] = d * (blk[192 + i] as i8) as f32;
                        b[i] = -32.0 * a[i];
                    }
                }
            }
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                unreachable!("float rows are not unpacked")
            }
            GgmlType::Q4_0R8 | GgmlType::Q4_1R8 | GgmlType::Q8_0R8 => {
                unreachable!("repacked rows are restored to the file's layout first")
            }
        }
    }
}

/// `out[t·rows + r] = W[r] · x[t]` for the `rows × cols` matrix `w` of type `ty` and every
/// activation row `t`, with the kernel version `isa`. Rows are split over rayon's pool in chunks
/// of whole tiles; each weight row is read (and unpacked) once for all activation rows.
pub fn qmatmul(isa: QIsa, ty: GgmlType, w: &[u8], rows: usize, x: &QActs, out: &mut [f32]) {
    qmatmul_many(isa, &mut [QJob { ty, w, rows, out }], x);
}

/// One product of [`qmatmul_many`]: `out = W · x` for the `rows × x.cols` matrix `w` of type
/// `ty`.
pub struct QJob<'a> {
    pub ty: GgmlType,
    pub w: &'a [u8],
    pub rows: usize,
    pub out: &'a mut [f32],
}

/// Several products of the same activations (Q, K and V; gate and up) in one parallel region:
/// at batch 1 a product lasts tens of microseconds, so each fork-join of the pool counts
/// (211 per SmolLM2 token as single products).
pub fn qmatmul_many(isa: QIsa, jobs: &mut [QJob], x: &QActs) {
    let (cols, n) = (x.cols, x.rows);
    // Prompts and batches: enough chunks that a thread slowed by other load is covered by the
    // others (work stealing), few enough that each one amortizes its scratch. Decode (one or
    // two activation rows): one chunk per thread and matrix, each a single run of rows. At
    // batch 1 a product lasts microseconds, and eight chunks per thread cost more in tasks and
    // broken streams than balancing won (AMD Zen 4, 2 threads, tg128 tokens/s, 3 interleaved
    // rounds: SmolLM2 Q4_1 233–277 with eight, 256–267 with two, 287–308 with one; Gemma-3
    // 270M 106–111, 117–118, 119–126).
    let threads = rayon::current_num_threads();
    let per_thread = if n <= FUSED_MAX_ROWS { 1 } else { 8 };
    let mut tasks = Vec::new();
    let mut ptrs = Vec::with_capacity(jobs.len());
    for (j, job) in jobs.iter_mut().enumerate() {
        let rb = job.ty.row_bytes(cols);
        assert!(job.w.len() >= job.rows * rb && job.out.len() == n * job.rows);
        // Whole tiles, and whole groups of a repacked matrix.
        let unit = if job.ty.file_type() != job.ty {
            x8::GROUP
        } else {
            TILE
        };
        let chunk = job
            .rows
            .div_ceil(threads * per_thread)
            .div_ceil(unit)
            .max(4)
            * unit;
        for r0 in (0..job.rows).step_by(chunk) {
            tasks.push((j, r0, (r0 + chunk).min(job.rows)));
        }
        ptrs.push(SendPtr(job.out.as_mut_ptr()));
    }
    let jobs = &*jobs;
    tasks.into_par_iter().for_each(|(j, r0, r1)| {
        let QJob { ty, w, rows, .. } = jobs[j];
        let rb = ty.row_bytes(cols);
        // SAFETY: the tasks of a job cover disjoint row ranges, so the writes below never
        // overlap, and every `out` outlives the parallel loop (the jobs are borrowed mutably
        // for its whole duration; only these pointers write through them).
        let out = unsafe { std::slice::from_raw_parts_mut(ptrs[j].get(), n * rows) };
        if is_quantized(ty) {
            quant_rows(isa, ty, &w[r0 * rb..r1 * rb], r0, r1 - r0, rows, x, out);
        } else {
            float_rows(ty, &w[r0 * rb..r1 * rb], r0, r1 - r0, rows, x, out);
        }
    });
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only for disjoint writes inside `qmatmul`'s scope.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[allow(clippy::too_many_arguments)]
fn quant_rows(
    isa: QIsa,
    ty: GgmlType,
    w: &[u8],
    r0: usize,
    nr: usize,
    rows: usize,
    x: &QActs,
    out: &mut [f32],
) {
    if ty.file_type() != ty {
        repacked_rows(isa, ty.file_type(), w, r0, nr, rows, x, out);
        return;
    }
    let cols = x.cols;
    let rb = ty.row_bytes(cols);
    let g = cols / 16;
    let wide = ty == GgmlType::Q8_0;
    // Q4_1's offsets against q8_1's f16 block sums, as llama.cpp (and the fused kernel).
    let q8_1 = ty == GgmlType::Q4_1;
    // Few activation rows (decode): most types are dotted straight from their blocks,
    // since unpacking a row costs more than one dot with it; more rows amortize the unpacking.
    if x.rows <= FUSED_MAX_ROWS
        && !x.batch_invariant
        && fused_type(ty)
        && isa != QIsa::Scalar
        && *HAS_F16C
    {
        for t in 0..x.rows {
            dot_fused(
                isa,
                ty,
                &w[..nr * rb],
                x.row(t),
                &mut out[t * rows + r0..][..nr],
            );
        }
        return;
    }
    // Many activation rows on VNNI or AVX2: the panel kernel, whose weight tile is reordered once per
    // tile for all activation rows. Prompt passes always take it (batch invariance); other
    // products from `PANEL_MIN_ROWS` rows (batched decode of few slots keeps the plain layout).
    let panels = matches!(isa, QIsa::Vnni | QIsa::Avx2)
        && (x.batch_invariant || x.rows >= PANEL_MIN_ROWS)
        && (isa == QIsa::Vnni || *HAS_AVX2_PANELS);
    let mut u = vec![0u8; TILE * cols];
    let mut ui = if panels {
        vec![0u8; TILE * cols]
    } else {
        Vec::new()
    };
    let mut a = vec![0f32; TILE * g];
    let mut b = vec![0f32; TILE * g];
    let mut r = 0;
    while r < nr {
        let tr = (nr - r).min(TILE);
        for i in 0..tr {
            unpack_row(
                ty,
                &w[(r + i) * rb..(r + i + 1) * rb],
                &mut u[i * cols..(i + 1) * cols],
                &mut a[i * g..(i + 1) * g],
                &mut b[i * g..(i + 1) * g],
            );
        }
        let xr = |t: usize| {
            let mut xr = x.row(t);
            if q8_1 {
                xr.s16 = xr.s32;
            }
            xr
        };
        if panels {
            interleave(&u[..tr * cols], &mut ui[..tr * cols], cols);
            let acts = PanelActs {
                n: x.rows,
                qi: &x.qi,
                nq: &x.nq,
                d16: &x.d16,
                s16: if q8_1 { &x.s32 } else { &x.s16 },
            };
            let c = int_offset(ty);
            if tr == TILE {
                panel_rows::<TILE>(isa, &ui, &a, &b, cols, acts, c, &mut out[r0 + r..], rows);
            } else {
                for i in 0..tr {
                    let (ui, ai, bi) = (&ui[i * cols..], &a[i * g..], &b[i * g..]);
                    let o = &mut out[r0 + r + i..];
                    panel_rows::<1>(isa, ui, ai, bi, cols, acts, c, o, rows);
                }
            }
            r += tr;
            continue;
        }
        if isa == QIsa::Vnni {
            vnni_rows(
                isa,
                &u,
                &a,
                &b,
                cols,
                tr,
                x.rows,
                xr,
                int_offset(ty),
                |t, i, y| out[t * rows + r0 + r + i] = y,
            );
            r += tr;
            continue;
        }
        for t in 0..x.rows {
            let xr = xr(t);
            let mut y = [0f32; TILE];
            if tr == TILE {
                y = dot_tile(isa, &u, &a, &b, cols, xr, wide);
            } else {
                for i in 0..tr {
                    let ui = &u[i * cols..(i + 1) * cols];
                    let ai = &a[i * g..(i + 1) * g];
                    let bi = &b[i * g..(i + 1) * g];
                    y[i] = dot_tile::<1>(isa, ui, ai, bi, cols, xr, wide)[0];
                }
            }
            for i in 0..tr {
                out[t * rows + r0 + r + i] = y[i];
            }
        }
        r += tr;
    }
}

/// [`quant_rows`] for a matrix repacked by [`x8::repack`] (`ty` its file type; `w` whole groups,
/// `r0` a group's first row). Decode steps, however many rows, take the repacked kernel, which
/// reads each group once for all of them: `gguf_batch_decode` SmolLM2 Q4_1 at 2 threads
/// (AMD Zen 4, tokens/s, file layout vs repacked): 1 row 260–270 vs 305–321, 4 rows 186–189
/// vs 382–415, 8 rows 199–237 vs 451–466, 16 rows 257 vs 510, 64 rows 449 vs 548. Prompts
/// (batch-invariant) restore each group's rows to the file's layout and take the file type's
/// panel kernel, so their results are exactly those of the file's matrix.
#[allow(clippy::too_many_arguments)]
fn repacked_rows(
    isa: QIsa,
    ty: GgmlType,
    w: &[u8],
    r0: usize,
    nr: usize,
    rows: usize,
    x: &QActs,
    out: &mut [f32],
) {
    let cols = x.cols;
    let rb = ty.row_bytes(cols);
    assert!(x8::repackable(ty, nr, cols) && r0.is_multiple_of(x8::GROUP));
    assert!(w.len() >= nr * rb);
    if !x.batch_invariant {
        let out = &mut out[r0..];
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the ISA is one this CPU runs (F16C checked here); `w` holds `nr` rows of
            // whole groups (asserted above), and `out` holds every activation row's `rows`
            // outputs with `r0 + nr <= rows` (asserted by `qmatmul_many`, which makes the tasks).
            QIsa::Vnni if *HAS_F16C => unsafe { x8::x86::rows_vnni(ty, w, nr, x, out, rows) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            QIsa::Avx512 | QIsa::Avx2 if *HAS_F16C => unsafe {
                x8::x86::rows_avx2(ty, w, nr, x, out, rows)
            },
            _ => x8::rows_scalar(ty, w, nr, x, out, rows),
        }
        return;
    }
    let gb = x8::GROUP * rb;
    let mut restored = vec![0u8; gb];
    for (g, group) in w[..nr * rb].chunks_exact(gb).enumerate() {
        for (lane, row) in restored.chunks_exact_mut(rb).enumerate() {
            x8::row_of_group(ty, group, lane, cols, row);
        }
        let r = r0 + g * x8::GROUP;
        quant_rows(isa, ty, &restored, r, x8::GROUP, rows, x, out);
    }
}

/// `C` when the unpacked codes of `ty` are the weights plus `C` (`b = -C·a` per group): the
/// offset term is then `-C·Σq` in integers, folded into the dot's accumulator; 0 when `b` is
/// free (Q4_1, Q4_K, Q5_K: a float offset term per group).
fn int_offset(ty: GgmlType) -> u8 {
    match ty {
        GgmlType::Q4_0 => 8,
        GgmlType::Q5_0 => 16,
        GgmlType::Q6_K => 32,
        GgmlType::Q8_0 => 128,
        _ => 0,
    }
}

/// Activation rows per VNNI tile call: the unpacked weight rows and their scales are loaded once
/// for both, and the activations' offsets and scales once for the tile's weight rows.
const VNNI_ACTS: usize = 2;

/// The VNNI version of the unpacked product for a tile of `tr` weight rows (`u`, `a`, `b` as
/// `unpack_row` fills them) and every activation row, two at a time: `put(t, i, y)` receives
/// row `i`'s product with activation row `t`. Each output is formed by the same operations
/// whatever the tile's shape (batch-invariant, as [`QActs::batch_invariant`] needs).
#[allow(clippy::too_many_arguments)]
fn vnni_rows<'x>(
    isa: QIsa,
    u: &[u8],
    a: &[f32],
    b: &[f32],
    cols: usize,
    tr: usize,
    n: usize,
    xr: impl Fn(usize) -> ActRow<'x>,
    c: u8,
    mut put: impl FnMut(usize, usize, f32),
) {
    let g = cols / 16;
    let row = |i: usize| (&u[i * cols..], &a[i * g..], &b[i * g..]);
    let mut t = 0;
    while t < n {
        let ta = (n - t).min(VNNI_ACTS);
        if ta == VNNI_ACTS {
            let xs = [xr(t), xr(t + 1)];
            if tr == TILE {
                let y = dot_vnni::<TILE, VNNI_ACTS>(isa, u, a, b, cols, xs, c);
                for (k, y) in y.iter().enumerate() {
                    for (i, &y) in y.iter().enumerate() {
                        put(t + k, i, y);
                    }
                }
            } else {
                for i in 0..tr {
                    let (ui, ai, bi) = row(i);
                    let y = dot_vnni::<1, VNNI_ACTS>(isa, ui, ai, bi, cols, xs, c);
                    for (k, y) in y.iter().enumerate() {
                        put(t + k, i, y[0]);
                    }
                }
            }
        } else {
            let xs = [xr(t)];
            if tr == TILE {
                let y = dot_vnni::<TILE, 1>(isa, u, a, b, cols, xs, c);
                for (i, &y) in y[0].iter().enumerate() {
                    put(t, i, y);
                }
            } else {
                for i in 0..tr {
                    let (ui, ai, bi) = row(i);
                    put(t, i, dot_vnni::<1, 1>(isa, ui, ai, bi, cols, xs, c)[0][0]);
                }
            }
        }
        t += ta;
    }
}

/// `R` unpacked rows · `T` activation rows with VNNI (see [`vnni_rows`]); `c`: [`int_offset`].
fn dot_vnni<const R: usize, const T: usize>(
    isa: QIsa,
    u: &[u8],
    a: &[f32],
    b: &[f32],
    cols: usize,
    xs: [ActRow; T],
    c: u8,
) -> [[f32; R]; T] {
    assert!(
        u.len() >= R * cols && a.len() >= R * cols / 16 && b.len() >= R * cols / 16,
        "tile shapes"
    );
    for x in &xs {
        assert!(x.q.len() == cols && x.d16.len() == cols / 16 && x.s16.len() == cols / 16);
    }
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(isa, QIsa::Vnni);
        // SAFETY: `QIsa::current`/`supported` only name versions this CPU runs; the slices hold
        // `R` rows of `cols` codes and `cols/16` scales and offsets, and `T` activation rows of
        // `cols` (asserted above).
        unsafe { x86::dot_vnni_tile::<R, T>(u, a, b, cols, xs, c) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("VNNI is x86")
}

/// Every activation row in [`interleave`]'s panel layout, for [`panel_rows`].
#[derive(Clone, Copy)]
struct PanelActs<'a> {
    n: usize,
    qi: &'a [i8],
    nq: &'a [i32],
    d16: &'a [f32],
    /// `s16`, or `s32` for Q4_1 (as `quant_rows`).
    s16: &'a [f32],
}

/// `out[t·stride + i] = W[i] · x[t]` for `R` weight rows in the panel layout (`u`: `R × cols`,
/// `a`, `b`: `R × cols/16`) and every activation row, with the VNNI or AVX2 panel kernel. One
/// call per weight tile: the loop over activation rows is inside the kernel, since at 640
/// columns a tile × row pair is only three panels and per-call work (slices, reductions) was
/// as large.
#[allow(clippy::too_many_arguments)]
fn panel_rows<const R: usize>(
    isa: QIsa,
    u: &[u8],
    a: &[f32],
    b: &[f32],
    cols: usize,
    x: PanelActs,
    c: u8,
    out: &mut [f32],
    stride: usize,
) {
    let (g, n) = (cols / 16, x.n);
    assert!(
        u.len() >= R * cols && a.len() >= R * g && b.len() >= R * g,
        "tile shapes"
    );
    assert!(x.qi.len() >= n * cols && x.nq.len() >= n * g);
    assert!(x.d16.len() >= n * g && x.s16.len() >= n * g);
    assert!(n == 0 || out.len() >= (n - 1) * stride + R);
    assert!(c == 0 || c.is_power_of_two());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `QIsa::current`/`supported` only name versions this CPU runs; the slices hold
        // `R` weight rows and `n` activation rows of `cols` codes and `cols/16` scales, and
        // `out` every `t·stride + i` (asserted above).
        QIsa::Vnni => unsafe { x86::dot_vnni_panels::<R>(u, a, b, cols, x, c, out, stride) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        QIsa::Avx2 => unsafe { x86::dot_avx2_panels::<R>(u, a, b, cols, x, c, out, stride) },
        _ => unreachable!("the panel kernel is VNNI or AVX2"),
    }
}

/// Up to this many activation rows, Q4_0/Q4_1/Q5_0/Q8_0/Q4_K/Q6_K rows take the fused kernels.
const FUSED_MAX_ROWS: usize = 2;
/// Weight rows per fused call. Decode tokens per CPU-second on SmolLM2 (1 thread, loaded
/// machine, 2026-12-03): 1 row 46, 2 rows 50–53, 4 rows 40–47 (register pressure). Again with
/// the row loop inside the kernel (`qmatvec_bench`, 640 columns, 1 thread, AMD Zen 4, GB/s over
/// three interleaved rounds, 2026-12-04): cold Q8_0 2 rows 18–21, 4 rows 9–13 (more streams
/// than the prefetchers follow), 1 row 18–21; hot Q4_1 2 rows 15–21, 1 row 13–14. With a
/// pass's rows `span` apart (separate streams, `fused_rows`), 4 rows against 2 (3 interleaved
/// rounds): cold Q8_0 23.9–24.6 vs 22.9–25.9, Q6_K (2048 columns) 23.4–23.7 vs 26.1–26.4, hot Q8_0
/// 32.1–32.8 vs 30.7–36.5: 2 stays.
const FUSED_TILE: usize = 2;

/// The AVX2 panel kernel also needs FMA (every AVX2 CPU kiln has met has it, but the ISA switch
/// only checks AVX2 and FMA for the f32 code).
static HAS_AVX2_PANELS: LazyLock<bool> = LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
});

static HAS_F16C: LazyLock<bool> = LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
});

fn fused_type(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q8_0
            | GgmlType::Q4_K
            | GgmlType::Q6_K
    )
}

/// `out[r] = W[r] · x` for the `out.len()` Q4_0/Q4_1/Q5_0/Q8_0/Q4_K/Q6_K rows of `w`,
/// decoding the blocks in registers.
fn dot_fused(isa: QIsa, ty: GgmlType, w: &[u8], x: ActRow, out: &mut [f32]) {
    let cols = x.q.len();
    assert!(fused_type(ty) && w.len() >= out.len() * ty.row_bytes(cols));
    assert!(x.nq4.len() == cols / 4);
    assert!(x.d32.len() == fused_groups(cols) * 8 && x.m32.len() == x.d32.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the ISA is one this CPU runs (and F16C was checked by the caller); `w` holds
        // whole blocks for `cols` values in each of `out.len()` rows, and the activations' block
        // arrays cover the row's eight-block groups (asserted above).
        QIsa::Vnni => unsafe { x86::fused_vnni(ty, w, x, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        QIsa::Avx512 | QIsa::Avx2 => unsafe { x86::fused_avx2(ty, w, x, out) },
        _ => unreachable!("the scalar version unpacks"),
    }
}

/// F32/F16/BF16 weights: dequantize a row, dot it with the f32 activations.
fn float_rows(
    ty: GgmlType,
    w: &[u8],
    r0: usize,
    nr: usize,
    rows: usize,
    x: &QActs,
    out: &mut [f32],
) {
    let cols = x.cols;
    let rb = ty.row_bytes(cols);
    let mut row = vec![0f32; cols];
    for r in 0..nr {
        dequantize_into(ty, &w[r * rb..(r + 1) * rb], &mut row).expect("row bytes checked");
        for t in 0..x.rows {
            let xr = &x.x[t * cols..(t + 1) * cols];
            out[t * rows + r0 + r] = dot_f32(&row, xr);
        }
    }
}

vmath::simd_fn! {
    /// f32 dot product over 16 lanes.
    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; vmath::LANES];
        let n = a.len().min(b.len()) / vmath::LANES * vmath::LANES;
        for (x, y) in a[..n].chunks_exact(vmath::LANES).zip(b[..n].chunks_exact(vmath::LANES)) {
            for k in 0..vmath::LANES {
                acc[k] += x[k] * y[k];
            }
        }
        let tail: f32 = a[n..].iter().zip(&b[n..]).map(|(x, y)| x * y).sum();
        vmath::hsum(&acc) + tail
    }
}

/// `Σ_g a_g·dx_g·(u·q over g) + b_g·s_g` for `R` unpacked rows (`u`: `R × cols`, `a`, `b`:
/// `R × cols/16`).
fn dot_tile<const R: usize>(
    isa: QIsa,
    u: &[u8],
    a: &[f32],
    b: &[f32],
    cols: usize,
    x: ActRow,
    wide: bool,
) -> [f32; R] {
    assert!(
        u.len() >= R * cols && a.len() >= R * cols / 16 && b.len() >= R * cols / 16,
        "tile shapes"
    );
    assert!(x.q.len() == cols && x.d16.len() == cols / 16 && x.s16.len() == cols / 16);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `QIsa::current`/`supported` only name versions this CPU runs; the slices hold
        // `R` rows of `cols` codes and `cols/16` scales and offsets (asserted above).
        QIsa::Vnni => unsafe { x86::dot_512_vnni::<R>(u, a, b, cols, x, wide) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        QIsa::Avx512 => unsafe { x86::dot_512_bw::<R>(u, a, b, cols, x, wide) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        QIsa::Avx2 => unsafe { x86::dot_256::<R>(u, a, b, cols, x, wide) },
        _ => dot_scalar::<R>(u, a, b, cols, x),
    }
}

/// The portable version, and the reference the SIMD versions are tested against.
fn dot_scalar<const R: usize>(u: &[u8], a: &[f32], b: &[f32], cols: usize, x: ActRow) -> [f32; R] {
    let g = cols / 16;
    let mut y = [0f32; R];
    for (r, y) in y.iter_mut().enumerate() {
        let u = &u[r * cols..(r + 1) * cols];
        let a = &a[r * g..(r + 1) * g];
        let b = &b[r * g..(r + 1) * g];
        let mut acc = 0f32;
        for (h, (u, q)) in u.chunks_exact(16).zip(x.q.chunks_exact(16)).enumerate() {
            let i: i32 = u.iter().zip(q).map(|(&u, &q)| u as i32 * q as i32).sum();
            acc += a[h] * x.d16[h] * i as f32 + b[h] * x.s16[h];
        }
        *y = acc;
    }
    y
}

#[cfg(target_arch = "x86_64")]
// `r` indexes the tile's rows in several arrays and pointer offsets at once.
#[allow(clippy::needless_range_loop)]
mod x86 {
    //! Hand-written with intrinsics: LLVM does not form `pmaddubsw`/`vpdpbusd` from the scalar
    //! loop (it widens to 16 bits and uses `pmaddwd`, about half the rate).
    use super::ActRow;
    use crate::gguf::GgmlType;
    use std::arch::x86_64::*;

    /// Integer dot of 32 unsigned codes with 32 signed activations: 8 i32 lanes, lanes 0–3 from
    /// the first 16 values. `wide`: codes may exceed 127 (`pmaddubsw` would saturate), so they
    /// are split into nibbles.
    #[inline(always)]
    unsafe fn idot_256(u: __m256i, q: __m256i, wide: bool) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        if wide {
            let m = _mm256_set1_epi8(0x0F);
            let lo = _mm256_and_si256(u, m);
            let hi = _mm256_and_si256(_mm256_srli_epi16(u, 4), m);
            let lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, q), ones);
            let hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, q), ones);
            _mm256_add_epi32(lo, _mm256_slli_epi32(hi, 4))
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), ones)
        }
    }

    /// `[a0·d0 ×4, a1·d1 ×4]`: the lane scales of one 32-value chunk.
    #[inline(always)]
    unsafe fn scales_256(a: *const f32, d: *const f32) -> __m256 {
        let a2 = _mm_castpd_ps(_mm_load_sd(a as *const f64));
        let d2 = _mm_castpd_ps(_mm_load_sd(d as *const f64));
        let s = _mm256_castps128_ps256(_mm_mul_ps(a2, d2));
        _mm256_permutevar8x32_ps(s, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))
    }

    use crate::cpu::vmath::hsum256 as hsum_256;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_256<const R: usize>(
        u: &[u8],
        a: &[f32],
        b: &[f32],
        cols: usize,
        x: ActRow,
        wide: bool,
    ) -> [f32; R] {
        let g = cols / 16;
        let mut acc = [_mm256_setzero_ps(); R];
        let (up, ap) = (u.as_ptr(), a.as_ptr());
        let (qp, dp) = (x.q.as_ptr(), x.d16.as_ptr());
        for c in 0..cols / 32 {
            let q = _mm256_loadu_si256(qp.add(32 * c) as *const __m256i);
            for r in 0..R {
                let uv = _mm256_loadu_si256(up.add(r * cols + 32 * c) as *const __m256i);
                let i = idot_256(uv, q, wide);
                let s = scales_256(ap.add(r * g + 2 * c), dp.add(2 * c));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), s, acc[r]);
            }
        }
        let mut y = [0f32; R];
        for r in 0..R {
            y[r] = hsum_256(acc[r]) + offsets(&b[r * g..(r + 1) * g], x.s16);
        }
        y
    }

    /// The fused kernels' weight types, as const parameters (each type gets its own loop, with
    /// no type tests inside it).
    pub(super) const K_Q4_0: u8 = 0;
    pub(super) const K_Q4_1: u8 = 1;
    pub(super) const K_Q5_0: u8 = 2;
    pub(super) const K_Q8_0: u8 = 3;
    pub(super) const K_Q4_K: u8 = 4;
    pub(super) const K_Q6_K: u8 = 5;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn fused_vnni(ty: GgmlType, w: &[u8], x: ActRow, out: &mut [f32]) {
        match ty {
            GgmlType::Q4_0 => fused_rows::<true, K_Q4_0>(w, x, out),
            GgmlType::Q4_1 => fused_rows::<true, K_Q4_1>(w, x, out),
            GgmlType::Q5_0 => fused_rows::<true, K_Q5_0>(w, x, out),
            GgmlType::Q4_K => fused_rows::<true, K_Q4_K>(w, x, out),
            GgmlType::Q6_K => fused_rows::<true, K_Q6_K>(w, x, out),
            _ => fused_rows::<true, K_Q8_0>(w, x, out),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn fused_avx2(ty: GgmlType, w: &[u8], x: ActRow, out: &mut [f32]) {
        match ty {
            GgmlType::Q4_0 => fused_rows::<false, K_Q4_0>(w, x, out),
            GgmlType::Q4_1 => fused_rows::<false, K_Q4_1>(w, x, out),
            GgmlType::Q5_0 => fused_rows::<false, K_Q5_0>(w, x, out),
            GgmlType::Q4_K => fused_rows::<false, K_Q4_K>(w, x, out),
            GgmlType::Q6_K => fused_rows::<false, K_Q6_K>(w, x, out),
            _ => fused_rows::<false, K_Q8_0>(w, x, out),
        }
    }

    /// Every row of `w` (`out.len()` of them), [`super::FUSED_TILE`] at a time. The loop over
    /// rows is here, inside the type's own instantiation: one call per product, not per row
    /// pair (at 640 columns the per-call work was a third of the time per row).
    #[inline(always)]
    unsafe fn fused_rows<const VNNI: bool, const K: u8>(w: &[u8], x: ActRow, out: &mut [f32]) {
        const T: usize = super::FUSED_TILE;
        let rb = match K {
            K_Q4_K => x.q.len() / 256 * 144,
            K_Q6_K => x.q.len() / 256 * 210,
            _ => x.q.len() / 32 * block_layout(K).0,
        };
        let wp = w.as_ptr();
        let nr = out.len();
        // The T rows of a pass are `span` rows apart, not neighbours: T separate streams through
        // the matrix keep more reads in flight than one stream of T adjacent rows (AMD Zen 4,
        // `qmatvec_bench` cold, one thread, interleaved: Q8_0 640 columns 16.6–20.2 → 20.1–23.2
        // GB/s in 6 of 6 pairs, Q6_K 2048 columns 9.3–10.4 → 24.0–25.7, Q4_K 10.3–11.6 →
        // 21.3–22.9; Q4_1, bound by its arithmetic, unchanged within noise). Each row's sum does
        // not depend on its partner, so the results are the same.
        let mut r = 0;
        let span = nr / T;
        while r < span {
            let rows = std::array::from_fn(|i| wp.add((r + i * span) * rb));
            let y = if K == K_Q4_K || K == K_Q6_K {
                fused_k::<VNNI, T, K>(rows, x)
            } else {
                fused::<VNNI, T, K>(rows, x)
            };
            for (i, v) in y.into_iter().enumerate() {
                out[r + i * span] = v;
            }
            r += 1;
        }
        r = span * T;
        while r < nr {
            let row = [wp.add(r * rb)];
            out[r] = if K == K_Q4_K || K == K_Q6_K {
                fused_k::<VNNI, 1, K>(row, x)[0]
            } else {
                fused::<VNNI, 1, K>(row, x)[0]
            };
            r += 1;
        }
    }

    /// Blocks ahead to prefetch in the fused kernels' AVX2 form. On an AMD EPYC AVX2 host (idle,
    /// 3 interleaved rounds, tokens/s): SmolLM2 1 thread 8 blocks 61–62, 16: 66–67, 32: 69–71,
    /// 64: 70–72, 128: 71–73; 2 threads 105–106 vs 118–120 (32) and 118–121 (64);
    /// Gemma-3-270M (its Q8_0 head is most of the bytes) 1 thread 26–27 vs 31–32 (32) and
    /// 30–31 (64), 2 threads 50 vs 57–58 (32) and 56–57 (64).
    const PF_AVX2: usize = 32;
    /// The same for the VNNI form, which runs on AVX-512 hosts, where shorter is better. Intel
    /// (SmolLM2, 1 thread, tokens per CPU-second, under load, 2026-12-03): none 53–55, 8 blocks
    /// 60–82, 16 blocks 67–68. AMD Zen 4 (1 thread, interleaved medians of 6–8 pairs,
    /// 2026-12-04): Gemma 16 vs 32 blocks +9%, 8 vs 32 +22%, 16 vs 8 equal, 64 vs 32 −15%, 128
    /// vs 32 −21%; SmolLM2 16 vs 32 +5%, 16 vs 8 +7%. Since a pass's two rows are separate
    /// streams (`fused_rows`), 8 again (Zen 4, one thread, 3 interleaved rounds): `qmatvec_bench`
    /// cold Q8_0 4 blocks 25–31 GB/s, 8: 25–31, 12: 25–28, 16: 23–24, 32: 27–29 (Q5_0 at 4:
    /// 15–19, at 8: 18–20); `gguf_speed` decode, 8 vs 16, better in every pair: Gemma 1 thread
    /// 78–88 vs 66–76 tok/s, 2 threads 93–110 vs 85–97; SmolLM2 148–154 vs 101–137, 169–179 vs
    /// 129–175.
    const PF_VNNI: usize = 8;

    /// `R` rows of Q4_0, Q4_1, Q5_0 or Q8_0 blocks (`K`) · 8-bit activations, eight blocks
    /// (256 values) per group. Per group and row the eight weight scales are converted from f16
    /// at once and multiplied by the activations' scales in one vector op (Q4_1's minimums too,
    /// with one FMA against the activations' block sums for its offset term); per block and row
    /// the nibbles are split in registers (low nibbles are values 0–15, high 16–31, as the
    /// activations are laid out), one integer dot, one conversion and one FMA with the block's
    /// scale from a broadcast load. Several rows share the activation loads (see `FUSED_TILE`).
    ///
    /// Q4_0, Q5_0 and Q8_0 (VNNI) weights are their unsigned codes minus `c` = 8, 16, 128: the
    /// integer dot starts from `c·nq4` (the activations' negated sums per lane), so the offset is
    /// exact integer work and the float work per block is one conversion and one FMA.
    ///
    /// Two accumulators per row, alternating by block: with one, each block's FMA waited for
    /// the previous one's (4 cycles on Zen 4), which bounded a row pair to 2 cycles per block.
    #[inline(always)]
    unsafe fn fused<const VNNI: bool, const R: usize, const K: u8>(
        rows: [*const u8; R],
        x: ActRow,
    ) -> [f32; R] {
        let nb = x.q.len() / 32;
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let mut min_acc = [_mm256_setzero_ps(); R];
        let mut b0 = 0;
        while b0 + 8 <= nb {
            fused_group::<VNNI, R, K, true>(&rows, x, b0, 8, &mut acc, &mut min_acc);
            b0 += 8;
        }
        if b0 < nb {
            fused_group::<VNNI, R, K, false>(&rows, x, b0, nb - b0, &mut acc, &mut min_acc);
        }
        let mut y = [0f32; R];
        for r in 0..R {
            let sum = _mm256_add_ps(acc[r][0], acc[r][1]);
            y[r] = hsum_256(if K == K_Q4_1 {
                _mm256_add_ps(sum, min_acc[r])
            } else {
                sum
            });
        }
        y
    }

    /// `R` rows of Q4_K or Q6_K super-blocks (`K`) · 8-bit activations, one super-block (256
    /// values) per step. The activations' blocks of 32 line up with Q4_K's sub-blocks and with
    /// pairs of Q6_K's groups of 16, so each 32 values are one integer dot, one conversion and
    /// one FMA, as in [`fused`]; the scales are decoded once per super-block and row.
    ///
    /// Q4_K: `w = d·sc_j·u − dmin·m_j` per sub-block `j` of 32. The eight 6-bit scales and
    /// minimums are unpacked with 32-bit integer ops (llama.cpp's `utmp` shuffle); the minimums'
    /// term is one FMA per super-block against the activations' exact sums per 32.
    ///
    /// Q6_K: `w = d·sc_g·(u − 32)` per group `g` of 16. The `−32` is folded into the integer
    /// dot as in [`fused`]; the lanes of a 32-value dot are four per group, so its scales are a
    /// vector `[s_2c ×4, s_2c+1 ×4]`, one permute of the super-block's sixteen.
    ///
    /// Before these, decode took Gemma-3-270M's Q4_K and Q6_K rows (9% of its bytes) through
    /// `unpack_row` and the unpacked tile kernel: about a fifth of its 1-thread decode time.
    #[inline(always)]
    unsafe fn fused_k<const VNNI: bool, const R: usize, const K: u8>(
        rows: [*const u8; R],
        x: ActRow,
    ) -> [f32; R] {
        let bb = if K == K_Q4_K { 144 } else { 210 };
        let m4 = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let mut min_acc = [_mm256_setzero_ps(); R];
        // The integer dot of unsigned codes `u` with the activations' 32 codes `q`, starting
        // from `start` (the folded offset).
        let dot = |u: __m256i, q: __m256i, start: __m256i| {
            if VNNI {
                _mm256_dpbusd_epi32(start, u, q)
            } else {
                _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(u, q), ones), start)
            }
        };
        for sb in 0..x.q.len() / 256 {
            let qp = x.q.as_ptr().add(256 * sb);
            let pf = PF_K_BYTES;
            for r in 0..R {
                let ahead = rows[r].add(sb * bb).wrapping_add(pf);
                for line in 0..bb.div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line) as *const i8);
                }
            }
            if K == K_Q4_K {
                let dx = _mm256_loadu_ps(x.d32.as_ptr().add(8 * sb));
                // The exact `d·Σq` per 32: adjacent pairs of the per-16 sums.
                let s16 = x.s16.as_ptr().add(16 * sb);
                let pairs = _mm256_hadd_ps(_mm256_loadu_ps(s16), _mm256_loadu_ps(s16.add(8)));
                let sums = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(
                    _mm256_castps_pd(pairs),
                ));
                let mut scales = [[0f32; 8]; R];
                for r in 0..R {
                    let p = rows[r].add(sb * bb);
                    let dd = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
                    let d = _mm256_broadcastss_ps(dd);
                    let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
                    let s = p.add(4) as *const u32;
                    let (u0, u1, u2) = (
                        s.read_unaligned(),
                        s.add(1).read_unaligned(),
                        s.add(2).read_unaligned(),
                    );
                    const LOW6: u32 = 0x3f3f_3f3f;
                    const LOW4: u32 = 0x0f0f_0f0f;
                    const TOP2: u32 = 0x0303_0303;
                    let sc = (u0 & LOW6) as u64
                        | (((u2 & LOW4) | (((u0 >> 6) & TOP2) << 4)) as u64) << 32;
                    let mn = (u1 & LOW6) as u64
                        | ((((u2 >> 4) & LOW4) | (((u1 >> 6) & TOP2) << 4)) as u64) << 32;
                    let bytes_f32 = |v: u64| {
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64)))
                    };
                    let scale = _mm256_mul_ps(_mm256_mul_ps(bytes_f32(sc), d), dx);
                    _mm256_storeu_ps(scales[r].as_mut_ptr(), scale);
                    let mins = _mm256_mul_ps(bytes_f32(mn), dmin);
                    min_acc[r] = _mm256_fmadd_ps(mins, sums, min_acc[r]);
                }
                // Broadcast loads folded into the FMAs (see `fused_group`).
                let scales = std::hint::black_box(&scales);
                for c in 0..4 {
                    let q0 = _mm256_loadu_si256(qp.add(64 * c) as *const __m256i);
                    let q1 = _mm256_loadu_si256(qp.add(64 * c + 32) as *const __m256i);
                    for r in 0..R {
                        let p = rows[r].add(sb * bb + 16 + 32 * c);
                        let v = _mm256_loadu_si256(p as *const __m256i);
                        let lo = _mm256_and_si256(v, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                        let zero = _mm256_setzero_si256();
                        let (i0, i1) = (dot(lo, q0, zero), dot(hi, q1, zero));
                        let s0 = _mm256_broadcast_ss(&scales[r][2 * c]);
                        let s1 = _mm256_broadcast_ss(&scales[r][2 * c + 1]);
                        acc[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), s0, acc[r][0]);
                        acc[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), s1, acc[r][1]);
                    }
                }
            } else {
                let d16 = x.d16.as_ptr().add(16 * sb);
                let (dx_lo, dx_hi) = (_mm256_loadu_ps(d16), _mm256_loadu_ps(d16.add(8)));
                // Per row the sixteen group scales `d·sc_g·dx`, groups 0–7 and 8–15.
                let mut scales = [[_mm256_setzero_ps(); 2]; R];
                for r in 0..R {
                    let p = rows[r].add(sb * bb);
                    let d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                        i32::from((p.add(208) as *const u16).read_unaligned()),
                    ))));
                    let sc = _mm_loadu_si128(p.add(192) as *const __m128i);
                    let lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc));
                    let hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(sc, sc)));
                    scales[r][0] = _mm256_mul_ps(_mm256_mul_ps(lo, d), dx_lo);
                    scales[r][1] = _mm256_mul_ps(_mm256_mul_ps(hi, d), dx_hi);
                }
                for h in 0..2 {
                    let c0 = 4 * h;
                    let q: [__m256i; 4] = std::array::from_fn(|k| {
                        _mm256_loadu_si256(qp.add(32 * (c0 + k)) as *const __m256i)
                    });
                    // −32·Σq per lane: Q6_K's codes are the weights plus 32.
                    let start: [__m256i; 4] = std::array::from_fn(|k| {
                        let nq = x.nq4.as_ptr().add(64 * sb + 8 * (c0 + k));
                        _mm256_slli_epi32::<5>(_mm256_loadu_si256(nq as *const __m256i))
                    });
                    for r in 0..R {
                        let p = rows[r].add(sb * bb);
                        let ql0 = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
                        let ql1 = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
                        let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
                        // Values 32k + l of the half: low or high nibble of ql, bits 2k, 2k+1
                        // of qh as bits 4 and 5 (16-bit shifts: the masks drop what crosses
                        // bytes).
                        let u = [
                            _mm256_or_si256(
                                _mm256_and_si256(ql0, m4),
                                _mm256_slli_epi16::<4>(_mm256_and_si256(qh, _mm256_set1_epi8(3))),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(ql1, m4),
                                _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(12))),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                                _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                                _mm256_srli_epi16::<2>(_mm256_and_si256(
                                    qh,
                                    _mm256_set1_epi8(0xC0u8 as i8),
                                )),
                            ),
                        ];
                        for k in 0..4 {
                            // Chunk c0 + k: groups 2(c0 + k) and 2(c0 + k) + 1, four lanes each.
                            let g = 2 * k as i32;
                            let pick = _mm256_setr_epi32(g, g, g, g, g + 1, g + 1, g + 1, g + 1);
                            let s = _mm256_permutevar8x32_ps(scales[r][h], pick);
                            let i = dot(u[k], q[k], start[k]);
                            acc[r][k % 2] =
                                _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), s, acc[r][k % 2]);
                        }
                    }
                }
            }
        }
        let mut y = [0f32; R];
        for r in 0..R {
            let sum = _mm256_add_ps(acc[r][0], acc[r][1]);
            y[r] = hsum_256(if K == K_Q4_K {
                _mm256_sub_ps(sum, min_acc[r])
            } else {
                sum
            });
        }
        y
    }

    /// Bytes ahead to prefetch in the Q4_K/Q6_K kernels. Cold 192 MB matrices of 2048
    /// columns, one thread, AMD Zen 4, GB/s over three interleaved rounds (2026-12-04): Q6_K
    /// 512 bytes 6.6–7.1, 1024: 6.5–7.6, 2048: 8.8–10.6, 4096: 8.8–10.6; Q4_K 8.9–9.4,
    /// 9.0–10.5, 10.2–11.3, 9.9–10.7.
    const PF_K_BYTES: usize = 2048;

    /// Bytes per block of the fused kernels' types, and where its codes start.
    const fn block_layout(k: u8) -> (usize, usize) {
        match k {
            K_Q4_0 => (18, 2),
            K_Q4_1 => (20, 4),
            K_Q5_0 => (22, 6),
            _ => (34, 2),
        }
    }

    /// Blocks `b0..b0 + n` (`n ≤ 8`; `FULL`: `n == 8`, so the loops unroll with constant
    /// offsets) of [`fused`].
    #[inline(always)]
    unsafe fn fused_group<const VNNI: bool, const R: usize, const K: u8, const FULL: bool>(
        rows: &[*const u8; R],
        x: ActRow,
        b0: usize,
        n: usize,
        acc: &mut [[__m256; 2]; R],
        min_acc: &mut [__m256; R],
    ) {
        let n = if FULL { 8 } else { n };
        let (bb, at) = block_layout(K);
        // log2 of the code offset folded into the integer dot (0: none).
        let offset_shift = match K {
            K_Q4_0 => 3,
            K_Q5_0 => 4,
            K_Q8_0 if VNNI => 7,
            _ => 0,
        };
        // Q5_0's mask bit j → byte j without AVX-512 (llama.cpp's bytes_from_bits_32):
        // broadcast, pick the mask byte holding bit j into byte j, set every other bit,
        // compare with all-ones.
        let bit_shuffle = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let bit_others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
        let m4 = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        // High nibbles to the upper 128 bits: the 16 code bytes are loaded into both halves and
        // the upper half shifted (a 64-bit shift drags the next byte's low bits into each byte's
        // high nibble, which the mask clears).
        let nibble_shift = _mm256_setr_epi64x(0, 0, 4, 4);
        let dx = _mm256_loadu_ps(x.d32.as_ptr().add(b0));
        let mut scales = [[0f32; 8]; R];
        for r in 0..R {
            let p = rows[r].add(b0 * bb);
            if K == K_Q4_1 {
                let (d, m) = f16_pairs8(p, bb, n);
                _mm256_storeu_ps(scales[r].as_mut_ptr(), _mm256_mul_ps(d, dx));
                // Σ_b m_b·s_b with q8_1's f16 block sums, as llama.cpp.
                let s = _mm256_loadu_ps(x.m32.as_ptr().add(b0));
                min_acc[r] = _mm256_fmadd_ps(m, s, min_acc[r]);
            } else {
                let d = f16x8(p, bb, n);
                _mm256_storeu_ps(scales[r].as_mut_ptr(), _mm256_mul_ps(d, dx));
            }
            // The lines `PF` blocks ahead, every 64 bytes over the group's length.
            let ahead = p.wrapping_add(if VNNI { PF_VNNI } else { PF_AVX2 } * bb);
            for line in 0..(8 * bb).div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line) as *const i8);
            }
        }
        // Read back from memory: each block's scale is then a broadcast load folded into its
        // FMA. LLVM otherwise keeps the eight scales in a register and broadcasts each with
        // two shuffles, on the pipes the dot products need.
        let scales = std::hint::black_box(&scales);
        let qp = x.q.as_ptr();
        for j in 0..n {
            let b = b0 + j;
            let q = _mm256_loadu_si256(qp.add(32 * b) as *const __m256i);
            let start = if offset_shift > 0 {
                let nq = _mm256_loadu_si256(x.nq4.as_ptr().add(8 * b) as *const __m256i);
                _mm256_sll_epi32(nq, _mm_cvtsi32_si128(offset_shift))
            } else {
                _mm256_setzero_si256()
            };
            for r in 0..R {
                let p = rows[r].add(b * bb);
                let i = if K == K_Q8_0 {
                    let w = _mm256_loadu_si256(p.add(at) as *const __m256i);
                    if VNNI {
                        let u = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
                        _mm256_dpbusd_epi32(start, u, q)
                    } else {
                        // |w| · (q with w's sign): pmaddubsw's pairs stay within i16.
                        let aw = _mm256_sign_epi8(w, w);
                        let sq = _mm256_sign_epi8(q, w);
                        _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sq), ones)
                    }
                } else {
                    let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(at) as *const _));
                    let mut u = _mm256_and_si256(_mm256_srlv_epi64(v, nibble_shift), m4);
                    if K == K_Q5_0 {
                        let qh = (p.add(2) as *const u32).read_unaligned();
                        if VNNI {
                            // Mask bit j sets bit 4 of byte j.
                            u = _mm256_mask_add_epi8(u, qh, u, _mm256_set1_epi8(0x10));
                        } else {
                            let bytes =
                                _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), bit_shuffle);
                            let set = _mm256_cmpeq_epi8(
                                _mm256_or_si256(bytes, bit_others),
                                _mm256_set1_epi64x(-1),
                            );
                            u = _mm256_or_si256(u, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
                        }
                    }
                    if VNNI {
                        _mm256_dpbusd_epi32(start, u, q)
                    } else {
                        let i = _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), ones);
                        if offset_shift > 0 {
                            _mm256_add_epi32(i, start)
                        } else {
                            i
                        }
                    }
                };
                let s = _mm256_broadcast_ss(scales[r].get_unchecked(j));
                // A runtime index (the partial group's loop) would keep the accumulators in
                // memory: that group uses the first alone.
                let slot = if FULL { j % 2 } else { 0 };
                acc[r][slot] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), s, acc[r][slot]);
            }
        }
    }

    /// The `n` (≤ 8) f16 values `stride` bytes apart from `p`, as f32, zero from lane `n` on.
    /// Inserted in registers (eight 2-byte stores read back as one 16-byte load would miss
    /// store forwarding), only the `n` that exist: a partial group (the last of every row of
    /// 576 or 640 columns) converted eight clamped copies before, as many inserts as a whole
    /// group for two or four blocks.
    #[inline(always)]
    unsafe fn f16x8(p: *const u8, stride: usize, n: usize) -> __m256 {
        let at = |k: usize| i32::from((p.add(k * stride) as *const u16).read_unaligned());
        let mut v = _mm_cvtsi32_si128(at(0));
        macro_rules! lane {
            ($k:literal) => {
                if n > $k {
                    v = _mm_insert_epi16::<$k>(v, at($k));
                }
            };
        }
        lane!(1);
        lane!(2);
        lane!(3);
        lane!(4);
        lane!(5);
        lane!(6);
        lane!(7);
        _mm256_cvtph_ps(v)
    }

    /// Q4_1's `(d, m)` of `n` (≤ 8) blocks `stride` bytes apart from `p` (the two f16 at the
    /// start of each block), as two f32 vectors, zero from lane `n` on: one 32-bit insert per
    /// block instead of two 16-bit ones, then the pairs converted and split.
    #[inline(always)]
    unsafe fn f16_pairs8(p: *const u8, stride: usize, n: usize) -> (__m256, __m256) {
        let at = |k: usize| (p.add(k * stride) as *const i32).read_unaligned();
        let mut lo = _mm_cvtsi32_si128(at(0));
        let mut hi = _mm_setzero_si128();
        macro_rules! lane {
            ($v:ident, $k:literal, $i:literal) => {
                if n > $k {
                    $v = _mm_insert_epi32::<$i>($v, at($k));
                }
            };
        }
        lane!(lo, 1, 1);
        lane!(lo, 2, 2);
        lane!(lo, 3, 3);
        lane!(hi, 4, 0);
        lane!(hi, 5, 1);
        lane!(hi, 6, 2);
        lane!(hi, 7, 3);
        // [d0 m0 … d3 m3] and [d4 m4 … d7 m7]: the even lanes of both, then the odd, come
        // out as blocks 0 1 4 5 | 2 3 6 7; the 64-bit permute puts them in order.
        let (a, b) = (_mm256_cvtph_ps(lo), _mm256_cvtph_ps(hi));
        let order = |v: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
        };
        (
            order(_mm256_shuffle_ps::<0b10_00_10_00>(a, b)),
            order(_mm256_shuffle_ps::<0b11_01_11_01>(a, b)),
        )
    }

    /// `Σ_g b_g·s_g`, 8 lanes.
    #[inline(always)]
    unsafe fn offsets(b: &[f32], s: &[f32]) -> f32 {
        let n = b.len() / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        for i in (0..n).step_by(8) {
            let bv = _mm256_loadu_ps(b.as_ptr().add(i));
            acc = _mm256_fmadd_ps(bv, _mm256_loadu_ps(s.as_ptr().add(i)), acc);
        }
        let mut t = hsum_256(acc);
        for i in n..b.len() {
            t += b[i] * s[i];
        }
        t
    }

    /// 64 values per step (4 groups of 16: lanes 4k..4k+3 belong to group k). `VNNI`:
    /// `vpdpbusd` (no saturation, so Q8_0's 8-bit codes need no split).
    #[inline(always)]
    unsafe fn chunk_512<const VNNI: bool>(u: __m512i, q: __m512i, wide: bool) -> __m512i {
        if VNNI {
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, q)
        } else {
            let ones = _mm512_set1_epi16(1);
            if wide {
                let m = _mm512_set1_epi8(0x0F);
                let lo = _mm512_and_si512(u, m);
                let hi = _mm512_and_si512(_mm512_srli_epi16(u, 4), m);
                let lo = _mm512_madd_epi16(_mm512_maddubs_epi16(lo, q), ones);
                let hi = _mm512_madd_epi16(_mm512_maddubs_epi16(hi, q), ones);
                _mm512_add_epi32(lo, _mm512_slli_epi32(hi, 4))
            } else {
                _mm512_madd_epi16(_mm512_maddubs_epi16(u, q), ones)
            }
        }
    }

    // Two instantiations with their own feature sets: with `avx512vnni` enabled LLVM may fuse
    // `pmaddwd`+add into VNNI instructions, which must not reach AVX-512 CPUs without VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    pub(super) unsafe fn dot_512_vnni<const R: usize>(
        u: &[u8],
        a: &[f32],
        b: &[f32],
        cols: usize,
        x: ActRow,
        wide: bool,
    ) -> [f32; R] {
        dot_512::<R, true>(u, a, b, cols, x, wide)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn dot_512_bw<const R: usize>(
        u: &[u8],
        a: &[f32],
        b: &[f32],
        cols: usize,
        x: ActRow,
        wide: bool,
    ) -> [f32; R] {
        dot_512::<R, false>(u, a, b, cols, x, wide)
    }

    /// `R` unpacked rows · `T` activation rows, 64 values per step: each weight row's codes and
    /// lane scales are loaded once for the `T` activation rows, each activation row's codes, lane
    /// scales and offset once for the `R` weight rows. `c` ≠ 0 ([`super::int_offset`]): the
    /// dot's accumulator starts at `-c·Σq` per lane, so the weights' offset needs no float term
    /// per group (the 16 four-value lanes of `vpdpbusd` sum within a group).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    pub(super) unsafe fn dot_vnni_tile<const R: usize, const T: usize>(
        u: &[u8],
        a: &[f32],
        b: &[f32],
        cols: usize,
        xs: [ActRow; T],
        c: u8,
    ) -> [[f32; R]; T] {
        let g = cols / 16;
        let mut acc = [[_mm512_setzero_ps(); R]; T];
        let (up, ap) = (u.as_ptr(), a.as_ptr());
        let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        let cv = _mm512_set1_epi8(c as i8);
        let zero = _mm512_setzero_si512();
        let n64 = cols / 64;
        for ch in 0..n64 {
            let mut q = [zero; T];
            let mut off = [zero; T];
            let mut dx = [_mm512_setzero_ps(); T];
            for t in 0..T {
                q[t] = _mm512_loadu_si512(xs[t].q.as_ptr().add(64 * ch) as *const __m512i);
                if c != 0 {
                    off[t] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, cv, q[t]));
                }
                let d = _mm_loadu_ps(xs[t].d16.as_ptr().add(4 * ch));
                dx[t] = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(d));
            }
            for r in 0..R {
                let uv = _mm512_loadu_si512(up.add(r * cols + 64 * ch) as *const __m512i);
                let av = _mm_loadu_ps(ap.add(r * g + 4 * ch));
                let av = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(av));
                for t in 0..T {
                    let i = _mm512_dpbusd_epi32(off[t], uv, q[t]);
                    let s = _mm512_mul_ps(av, dx[t]);
                    acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), s, acc[t][r]);
                }
            }
        }
        let mut y = [[0f32; R]; T];
        for t in 0..T {
            for r in 0..R {
                y[t][r] = _mm512_reduce_add_ps(acc[t][r]);
                if c == 0 {
                    y[t][r] += offsets(&b[r * g..(r + 1) * g], xs[t].s16);
                }
            }
        }
        if !cols.is_multiple_of(64) {
            let ch = n64 * 2; // the one 32-value chunk left
            let cv = _mm256_set1_epi8(c as i8);
            let zero = _mm256_setzero_si256();
            for t in 0..T {
                let q = _mm256_loadu_si256(xs[t].q.as_ptr().add(32 * ch) as *const __m256i);
                let off = if c != 0 {
                    _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, cv, q))
                } else {
                    zero
                };
                for r in 0..R {
                    let uv = _mm256_loadu_si256(up.add(r * cols + 32 * ch) as *const __m256i);
                    let i = _mm256_dpbusd_epi32(off, uv, q);
                    let s = scales_256(ap.add(r * g + 2 * ch), xs[t].d16.as_ptr().add(2 * ch));
                    y[t][r] += hsum_256(_mm256_mul_ps(_mm256_cvtepi32_ps(i), s));
                }
            }
        }
        y
    }

    /// [`super::panel_rows`]: per panel of 16 groups (256 values) and (weight row, activation
    /// row) pair, four `vpdpbusd` into one accumulator whose lane `j` is group `j`'s integer
    /// dot, then one conversion, one scale multiply (weight group scale × activation group
    /// scale, both loaded straight as 16 lanes) and one FMA — a quarter of the plain layout's
    /// float work, and no lane permutes. The integer accumulator starts at `-c·Σq` per group
    /// from the activations' precomputed sums (`c` a power of two: a shift); with `c = 0` the
    /// float offsets `b·s16` are one more FMA per panel. A last panel of fewer groups is read
    /// with masked loads (zero lanes add nothing). Activation rows go two at a time, a last one
    /// alone; every output takes the same steps (and [`reduce8`]) whatever `R` and the pairing,
    /// so prompt rows are batch-invariant.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dot_vnni_panels<const R: usize>(
        u: &[u8],
        a: &[f32],
        b: &[f32],
        cols: usize,
        x: super::PanelActs,
        c: u8,
        out: &mut [f32],
        stride: usize,
    ) {
        let mut t = 0;
        while t < x.n {
            if t + 2 <= x.n {
                let y = panels_step::<R, 2>(u, a, b, cols, x, t, c);
                for k in 0..2 {
                    for r in 0..R {
                        *out.get_unchecked_mut((t + k) * stride + r) = y[k * R + r];
                    }
                }
                t += 2;
            } else {
                let y = panels_step::<R, 1>(u, a, b, cols, x, t, c);
                for r in 0..R {
                    *out.get_unchecked_mut(t * stride + r) = y[r];
                }
                t += 1;
            }
        }
    }

    /// Outputs `[t][r]` (flattened, `T·R ≤ 8`) of activation rows `t0..t0+T`.
    #[inline(always)]
    unsafe fn panels_step<const R: usize, const T: usize>(
        u: &[u8],
        a: &[f32],
        b: &[f32],
        cols: usize,
        x: super::PanelActs,
        t0: usize,
        c: u8,
    ) -> [f32; 8] {
        let g = cols / 16;
        let mut acc = [_mm512_setzero_ps(); 8];
        let (up, ap, bp) = (u.as_ptr(), a.as_ptr(), b.as_ptr());
        let qp = x.qi.as_ptr().add(t0 * cols);
        let (np, dp, sp) = (
            x.nq.as_ptr().add(t0 * g),
            x.d16.as_ptr().add(t0 * g),
            x.s16.as_ptr().add(t0 * g),
        );
        let shift = _mm_cvtsi32_si128(c.trailing_zeros() as i32);
        let zero = _mm512_setzero_si512();
        for p in 0..g.div_ceil(16) {
            let gn = (g - 16 * p).min(16);
            let m: __mmask16 = if gn == 16 { 0xFFFF } else { (1u16 << gn) - 1 };
            let base = 256 * p;
            let mut q = [[zero; 4]; T];
            let mut off = [zero; T];
            let mut dx = [_mm512_setzero_ps(); T];
            let mut sx = [_mm512_setzero_ps(); T];
            for t in 0..T {
                for k in 0..4 {
                    let at = qp.add(t * cols + base + 4 * gn * k);
                    q[t][k] = _mm512_maskz_loadu_epi32(m, at as *const i32);
                }
                if c != 0 {
                    let n = _mm512_maskz_loadu_epi32(m, np.add(t * g + 16 * p));
                    off[t] = _mm512_sll_epi32(n, shift);
                } else {
                    sx[t] = _mm512_maskz_loadu_ps(m, sp.add(t * g + 16 * p));
                }
                dx[t] = _mm512_maskz_loadu_ps(m, dp.add(t * g + 16 * p));
            }
            for r in 0..R {
                let rp = up.add(r * cols + base);
                let mut uv = [zero; 4];
                for k in 0..4 {
                    uv[k] = _mm512_maskz_loadu_epi32(m, rp.add(4 * gn * k) as *const i32);
                }
                let av = _mm512_maskz_loadu_ps(m, ap.add(r * g + 16 * p));
                let bv = if c == 0 {
                    _mm512_maskz_loadu_ps(m, bp.add(r * g + 16 * p))
                } else {
                    _mm512_setzero_ps()
                };
                for t in 0..T {
                    let mut i = _mm512_dpbusd_epi32(off[t], uv[0], q[t][0]);
                    i = _mm512_dpbusd_epi32(i, uv[1], q[t][1]);
                    i = _mm512_dpbusd_epi32(i, uv[2], q[t][2]);
                    i = _mm512_dpbusd_epi32(i, uv[3], q[t][3]);
                    let s = _mm512_mul_ps(av, dx[t]);
                    let o = t * R + r;
                    acc[o] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), s, acc[o]);
                    if c == 0 {
                        acc[o] = _mm512_fmadd_ps(bv, sx[t], acc[o]);
                    }
                }
            }
        }
        reduce8(acc)
    }

    /// The 16-lane sums of 8 vectors by a transpose-and-add tree (lanes `i`+`i+8`, then `+4`,
    /// `+2`, `+1` within each vector's own lanes): about 3 operations per vector instead of
    /// `_mm512_reduce_add_ps`'s 8, and each sum formed the same way whichever vectors share
    /// the call (unused ones are zero).
    #[inline(always)]
    unsafe fn reduce8(v: [__m512; 8]) -> [f32; 8] {
        // [v0 lanes i+8 | v1 lanes i+8] (8 lanes each), and so on.
        let h = |x: __m512, y: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y),
            )
        };
        let (a01, a23, a45, a67) = (h(v[0], v[1]), h(v[2], v[3]), h(v[4], v[5]), h(v[6], v[7]));
        // [v0 +4 | v1 +4 | v2 +4 | v3 +4] (4 lanes each).
        let f = |x: __m512, y: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
            )
        };
        let (b0, b1) = (f(a01, a23), f(a45, a67));
        // Per 128-bit block k: [vk +2 (2 lanes), v(k+4) +2 (2 lanes)].
        let s = _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(b0, b1),
            _mm512_shuffle_ps::<0b11_10_11_10>(b0, b1),
        );
        // Lanes 4k (vk) and 4k+2 (v(k+4)).
        let s = _mm512_add_ps(s, _mm512_movehdup_ps(s));
        let mut l = [0f32; 16];
        _mm512_storeu_ps(l.as_mut_ptr(), s);
        [l[0], l[4], l[8], l[12], l[2], l[6], l[10], l[14]]
    }

    /// The AVX2 form of [`dot_vnni_panels`], on the same layout: a panel of 16 groups is two
    /// halves of 8, and in each half four 32-byte loads put bytes `4k..4k+4` of group `j` in
    /// lane `j`. `pmaddubsw` sums products in pairs to 16 bits; for codes of at most 6 bits
    /// (every type but Q8_0) two such vectors add without overflow (2·2·63·127 < 2¹⁵), so one
    /// `pmaddwd` per two loads widens to each group's 32-bit sum; Q8_0's 8-bit codes are split
    /// into nibbles. Then one conversion, scale multiply and FMA per 128 values (the plain
    /// kernel paid them per 32, with a lane permute of the scales). Batch-invariant as the VNNI
    /// one: every output takes the same steps whatever `R` (one activation row per pass).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dot_avx2_panels<const R: usize>(
        u: &[u8],
        a: &[f32],
        b: &[f32],
        cols: usize,
        x: super::PanelActs,
        c: u8,
        out: &mut [f32],
        stride: usize,
    ) {
        // The type's form as constants, so the inner loops hold no branches.
        match c {
            0 => panels_256::<R, false, false>(u, a, b, cols, x, c, out, stride),
            128 => panels_256::<R, true, true>(u, a, b, cols, x, c, out, stride),
            _ => panels_256::<R, false, true>(u, a, b, cols, x, c, out, stride),
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn panels_256<const R: usize, const WIDE: bool, const INT: bool>(
        u: &[u8],
        a: &[f32],
        b: &[f32],
        cols: usize,
        x: super::PanelActs,
        c: u8,
        out: &mut [f32],
        stride: usize,
    ) {
        let g = cols / 16;
        let shift = _mm_cvtsi32_si128(c.trailing_zeros() as i32);
        for t in 0..x.n {
            let mut acc = [_mm256_setzero_ps(); R];
            let at = Half {
                u: u.as_ptr(),
                a: a.as_ptr(),
                b: b.as_ptr(),
                q: x.qi.as_ptr().add(t * cols),
                nq: x.nq.as_ptr().add(t * g),
                d: x.d16.as_ptr().add(t * g),
                s: x.s16.as_ptr().add(t * g),
                cols,
                g,
                shift,
            };
            for p in 0..g / 16 {
                for h in 0..2 {
                    half_256::<R, WIDE, INT, true>(
                        &mut acc,
                        at,
                        16,
                        256 * p + 32 * h,
                        16 * p + 8 * h,
                        8,
                    );
                }
            }
            let (p, gn) = (g / 16, g % 16);
            for h in 0..gn.div_ceil(8) {
                let lanes = (gn - 8 * h).min(8);
                let (base, sc) = (256 * p + 32 * h, 16 * p + 8 * h);
                if lanes == 8 {
                    half_256::<R, WIDE, INT, true>(&mut acc, at, gn, base, sc, 8);
                } else {
                    half_256::<R, WIDE, INT, false>(&mut acc, at, gn, base, sc, lanes);
                }
            }
            let z = _mm256_setzero_ps();
            let y = reduce4_256(std::array::from_fn(|r| if r < R { acc[r] } else { z }));
            for r in 0..R {
                *out.get_unchecked_mut(t * stride + r) = y[r];
            }
        }
    }

    /// Where one activation row's half panels are read from (see [`half_256`]).
    #[derive(Clone, Copy)]
    struct Half {
        u: *const u8,
        a: *const f32,
        b: *const f32,
        q: *const i8,
        nq: *const i32,
        d: *const f32,
        s: *const f32,
        cols: usize,
        g: usize,
        shift: __m128i,
    }

    /// One half panel (8 groups of a panel of `gn`, at code offset `base` and group `sc`) of
    /// `R` weight rows against one activation row, into `acc`. `FULL`: all 8 lanes; otherwise
    /// the first `lanes`, read with masked loads (the others are zero and add nothing).
    #[inline(always)]
    unsafe fn half_256<const R: usize, const WIDE: bool, const INT: bool, const FULL: bool>(
        acc: &mut [__m256; R],
        at: Half,
        gn: usize,
        base: usize,
        sc: usize,
        lanes: usize,
    ) {
        let m = if FULL {
            _mm256_set1_epi32(-1)
        } else {
            lane_mask(lanes)
        };
        let qv =
            [0, 1, 2, 3].map(|k| load_i_256::<FULL>(at.q.add(base + 4 * gn * k) as *const i32, m));
        let dx = load_f_256::<FULL>(at.d.add(sc), m);
        let off = if INT {
            _mm256_sll_epi32(load_i_256::<FULL>(at.nq.add(sc), m), at.shift)
        } else {
            _mm256_setzero_si256()
        };
        let sx = if INT {
            _mm256_setzero_ps()
        } else {
            load_f_256::<FULL>(at.s.add(sc), m)
        };
        for r in 0..R {
            let rp = at.u.add(r * at.cols + base);
            let uv = [0, 1, 2, 3].map(|k| load_i_256::<FULL>(rp.add(4 * gn * k) as *const i32, m));
            let mut i = group_sums_256::<WIDE>(&uv, &qv);
            if INT {
                i = _mm256_add_epi32(i, off);
            }
            let s = _mm256_mul_ps(load_f_256::<FULL>(at.a.add(r * at.g + sc), m), dx);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), s, acc[r]);
            if !INT {
                let bv = load_f_256::<FULL>(at.b.add(r * at.g + sc), m);
                acc[r] = _mm256_fmadd_ps(bv, sx, acc[r]);
            }
        }
    }

    /// Lanes `0..n` of a 256-bit mask (`n` ≤ 8).
    #[inline(always)]
    unsafe fn lane_mask(n: usize) -> __m256i {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx)
    }

    #[inline(always)]
    unsafe fn load_i_256<const FULL: bool>(ptr: *const i32, m: __m256i) -> __m256i {
        if FULL {
            _mm256_loadu_si256(ptr as *const __m256i)
        } else {
            _mm256_maskload_epi32(ptr, m)
        }
    }

    #[inline(always)]
    unsafe fn load_f_256<const FULL: bool>(ptr: *const f32, m: __m256i) -> __m256 {
        if FULL {
            _mm256_loadu_ps(ptr)
        } else {
            _mm256_maskload_ps(ptr, m)
        }
    }

    /// The 32-bit sums of each lane's 16 products of one half panel (`u`, `q`: the four
    /// vectors `k`). `WIDE`: 8-bit codes, split into nibbles (each nibble's four pair sums fit
    /// 16 bits: 4·2·15·127 < 2¹⁵).
    #[inline(always)]
    unsafe fn group_sums_256<const WIDE: bool>(u: &[__m256i; 4], q: &[__m256i; 4]) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        if WIDE {
            let m = _mm256_set1_epi8(0x0F);
            let mut lo = _mm256_setzero_si256();
            let mut hi = _mm256_setzero_si256();
            for k in 0..4 {
                let l = _mm256_and_si256(u[k], m);
                let h = _mm256_and_si256(_mm256_srli_epi16(u[k], 4), m);
                lo = _mm256_add_epi16(lo, _mm256_maddubs_epi16(l, q[k]));
                hi = _mm256_add_epi16(hi, _mm256_maddubs_epi16(h, q[k]));
            }
            let lo = _mm256_madd_epi16(lo, ones);
            let hi = _mm256_madd_epi16(hi, ones);
            _mm256_add_epi32(lo, _mm256_slli_epi32(hi, 4))
        } else {
            let s01 = _mm256_add_epi16(
                _mm256_maddubs_epi16(u[0], q[0]),
                _mm256_maddubs_epi16(u[1], q[1]),
            );
            let s23 = _mm256_add_epi16(
                _mm256_maddubs_epi16(u[2], q[2]),
                _mm256_maddubs_epi16(u[3], q[3]),
            );
            _mm256_add_epi32(_mm256_madd_epi16(s01, ones), _mm256_madd_epi16(s23, ones))
        }
    }

    /// The 8-lane sums of 4 vectors: pairwise `hadd`s keep each vector's lanes apart, so each
    /// sum is formed the same way whichever vectors share the call.
    #[inline(always)]
    unsafe fn reduce4_256(v: [__m256; 4]) -> [f32; 4] {
        let s = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let mut l = [0f32; 4];
        _mm_storeu_ps(l.as_mut_ptr(), s);
        l
    }

    /// A 32-value tail goes through the 256-bit code.
    #[inline(always)]
    unsafe fn dot_512<const R: usize, const VNNI: bool>(
        u: &[u8],
        a: &[f32],
        b: &[f32],
        cols: usize,
        x: ActRow,
        wide: bool,
    ) -> [f32; R] {
        let g = cols / 16;
        let mut acc = [_mm512_setzero_ps(); R];
        let (up, ap) = (u.as_ptr(), a.as_ptr());
        let (qp, dp) = (x.q.as_ptr(), x.d16.as_ptr());
        let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        let n64 = cols / 64;
        for c in 0..n64 {
            let q = _mm512_loadu_si512(qp.add(64 * c) as *const __m512i);
            let d = _mm_loadu_ps(dp.add(4 * c));
            for r in 0..R {
                let uv = _mm512_loadu_si512(up.add(r * cols + 64 * c) as *const __m512i);
                let i = chunk_512::<VNNI>(uv, q, wide);
                let s = _mm_mul_ps(_mm_loadu_ps(ap.add(r * g + 4 * c)), d);
                let s = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(s));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), s, acc[r]);
            }
        }
        let mut y = [0f32; R];
        for r in 0..R {
            y[r] = _mm512_reduce_add_ps(acc[r]) + offsets(&b[r * g..(r + 1) * g], x.s16);
        }
        if !cols.is_multiple_of(64) {
            let c = n64 * 2; // the one 32-value chunk left
            let q = _mm256_loadu_si256(qp.add(32 * c) as *const __m256i);
            for r in 0..R {
                let uv = _mm256_loadu_si256(up.add(r * cols + 32 * c) as *const __m256i);
                let i = if VNNI {
                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), uv, q)
                } else {
                    idot_256(uv, q, wide)
                };
                let s = scales_256(ap.add(r * g + 2 * c), dp.add(2 * c));
                y[r] += hsum_256(_mm256_mul_ps(_mm256_cvtepi32_ps(i), s));
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::quant::dequantize;
    use crate::Rng;

    /// Random but valid blocks of `ty`: f16 scales are set to small normal values (random bits
    /// would give NaN/inf), code bytes are random.
    fn random_row(ty: GgmlType, cols: usize, rng: &mut Rng) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..ty.row_bytes(cols))
            .map(|_| (rng.next_u64() & 0xFF) as u8)
            .collect();
        let f16at = |v: &mut Vec<u8>, at: usize, x: f32| {
            v[at..at + 2].copy_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes())
        };
        let bb = ty.block_bytes();
        for blk in 0..bytes.len() / bb {
            let o = blk * bb;
            let s = 0.01 + (rng.next_u64() % 100) as f32 * 1e-3;
            match ty {
                GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => f16at(&mut bytes, o, s),
                GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => {
                    f16at(&mut bytes, o, s);
                    f16at(&mut bytes, o + 2, -s * 0.5);
                }
                GgmlType::Q6_K => f16at(&mut bytes, o + 208, s * 0.1),
                _ => {}
            }
        }
        bytes
    }

    fn random_acts(rows: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
        (0..rows * cols)
            .map(|_| (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    const TYPES: [GgmlType; 7] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    #[test]
    fn unpacked_rows_reproduce_the_dequantizer() {
        let mut rng = Rng::new(3);
        for ty in TYPES {
            let cols = 512;
            let row = random_row(ty, cols, &mut rng);
            let want = dequantize(ty, &row, cols).unwrap();
            let (mut u, mut a, mut b) = (vec![0u8; cols], vec![0f32; 32], vec![0f32; 32]);
            unpack_row(ty, &row, &mut u, &mut a, &mut b);
            for i in 0..cols {
                let got = a[i / 16] * u[i] as f32 + b[i / 16];
                assert!(
                    (got - want[i]).abs() <= 1e-6 * (1.0 + want[i].abs()),
                    "{ty:?} [{i}]: {got} vs {want}",
                    want = want[i]
                );
            }
        }
    }

    /// Every kernel version against the f32 product with the dequantized weights (the only
    /// difference is the activations' 8-bit rounding), and against the scalar version (the
    /// integer sums are exact, so only f32 summation order differs).
    #[test]
    fn every_isa_matches_the_dequantized_product() {
        let mut rng = Rng::new(5);
        // 9 rows: two full tiles and a remainder; 544 columns: a 32-value tail after 64-chunks.
        // 1 activation row: the fused kernels (Q4_0/Q4_1/Q8_0); 3: the unpacked tiles.
        // Batch-invariant (prompt) activations on VNNI: the panel kernel, where 544 and 640
        // columns end in a partial panel and 1280 is whole ones.
        let shapes = [
            (512usize, 3),
            (544, 3),
            (512, 1),
            (544, 1),
            (640, 4),
            (1280, 3),
        ];
        for (inv, (cols, n)) in [false, true]
            .into_iter()
            .flat_map(|inv| shapes.map(|s| (inv, s)))
        {
            let rows = 9;
            let xf = random_acts(n, cols, &mut rng);
            let mut x = QActs::new();
            x.batch_invariant = inv;
            x.quantize(&xf, n, cols);
            for ty in TYPES {
                if ty.block_elems() > 32 && !cols.is_multiple_of(256) {
                    continue;
                }
                let w: Vec<u8> = (0..rows)
                    .flat_map(|_| random_row(ty, cols, &mut rng))
                    .collect();
                let wf = dequantize(ty, &w, rows * cols).unwrap();
                let mut want = vec![0f32; n * rows];
                let mut norm = 0f32;
                for t in 0..n {
                    for r in 0..rows {
                        let xr = &xf[t * cols..(t + 1) * cols];
                        let wr = &wf[r * cols..(r + 1) * cols];
                        want[t * rows + r] = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
                        norm += wr.iter().map(|v| v.abs()).sum::<f32>() / (n * rows) as f32;
                    }
                }
                let mut reference = vec![0f32; n * rows];
                qmatmul(QIsa::Scalar, ty, &w, rows, &x, &mut reference);
                for isa in QIsa::supported() {
                    let mut got = vec![0f32; n * rows];
                    qmatmul(isa, ty, &w, rows, &x, &mut got);
                    for i in 0..n * rows {
                        // 8-bit activations: error ≈ Σ|w|·(d/2) with d = max|x|/127.
                        let tol = norm * (1.0 / 127.0);
                        assert!(
                            (got[i] - want[i]).abs() <= tol,
                            "{ty:?} {isa:?} cols {cols} [{i}]: {} vs f32 {}",
                            got[i],
                            want[i]
                        );
                        assert!(
                            (got[i] - reference[i]).abs() <= 1e-4 * (1.0 + want[i].abs()),
                            "{ty:?} {isa:?} cols {cols} [{i}]: {} vs scalar {}",
                            got[i],
                            reference[i]
                        );
                    }
                }
            }
        }
    }

    /// With `batch_invariant` activations, each row's products are the same bits whether it is
    /// multiplied alone or among others, on every kernel version (odd row counts: the VNNI
    /// version's pairs of activation rows and its single rows; 9 weight rows: a partial tile).
    #[test]
    fn batch_invariant_rows_do_not_depend_on_the_batch() {
        let mut rng = Rng::new(13);
        for cols in [768, 544] {
            batch_invariant_case(&mut rng, cols);
        }
    }

    fn batch_invariant_case(rng: &mut Rng, cols: usize) {
        let (rows, n) = (9, 5);
        let xf = random_acts(n, cols, rng);
        for ty in TYPES {
            if ty.block_elems() > 32 && !cols.is_multiple_of(256) {
                continue;
            }
            let w: Vec<u8> = (0..rows).flat_map(|_| random_row(ty, cols, rng)).collect();
            for isa in QIsa::supported() {
                let mut x = QActs::new();
                x.batch_invariant = true;
                x.quantize(&xf, n, cols);
                let mut all = vec![0f32; n * rows];
                qmatmul(isa, ty, &w, rows, &x, &mut all);
                for t in 0..n {
                    x.quantize(&xf[t * cols..(t + 1) * cols], 1, cols);
                    let mut one = vec![0f32; rows];
                    qmatmul(isa, ty, &w, rows, &x, &mut one);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&all[t * rows..(t + 1) * rows]),
                        bits(&one),
                        "{ty:?} {isa:?} row {t}"
                    );
                }
            }
        }
    }

    /// The panel layout puts bytes `4k..4k+4` of group `j` at lane `j` of 64-byte vector `k`,
    /// a partial last panel packed to its own width.
    #[test]
    fn interleave_puts_each_group_in_its_lane() {
        let cols = 544; // 34 groups: panels of 16, 16 and 2
        let src: Vec<u16> = (0..2 * cols as u16).collect();
        let mut dst = vec![0u16; 2 * cols];
        interleave(&src, &mut dst, cols);
        for row in 0..2 {
            for grp in 0..cols / 16 {
                let (p, j) = (grp / 16, grp % 16);
                let gn = (cols / 16 - 16 * p).min(16);
                for v in 0..16 {
                    let (k, e) = (v / 4, v % 4);
                    let at = row * cols + 256 * p + 4 * gn * k + 4 * j + e;
                    assert_eq!(dst[at] as usize, row * cols + 16 * grp + v);
                }
            }
        }
    }

    #[test]
    fn fused_kernels_match_the_scalar_version() {
        if !*HAS_F16C {
            return;
        }
        let mut rng = Rng::new(11);
        // Block counts 8, 17, 18, 20 and 23: whole groups of eight and every kind of last group;
        // Q4_K and Q6_K at 1, 2 and 3 super-blocks.
        for cols in [256, 544, 576, 640, 736, 512, 768] {
            let xf = random_acts(1, cols, &mut rng);
            let mut x = QActs::new();
            x.quantize(&xf, 1, cols);
            for ty in [
                GgmlType::Q4_0,
                GgmlType::Q4_1,
                GgmlType::Q5_0,
                GgmlType::Q8_0,
                GgmlType::Q4_K,
                GgmlType::Q6_K,
            ] {
                if !cols.is_multiple_of(ty.block_elems()) {
                    continue;
                }
                // 5 rows: two whole tiles and a single row.
                let rows = 5;
                let w: Vec<u8> = (0..rows)
                    .flat_map(|_| random_row(ty, cols, &mut rng))
                    .collect();
                // Two activation rows would also fuse; the scalar version always unpacks.
                let mut want = vec![0f32; rows];
                qmatmul(QIsa::Scalar, ty, &w, rows, &x, &mut want);
                for isa in QIsa::supported().into_iter().filter(|&i| i != QIsa::Scalar) {
                    for n in [1, 2, rows] {
                        let mut got = vec![0f32; n];
                        dot_fused(isa, ty, &w, x.row(0), &mut got);
                        for (got, want) in got.iter().zip(&want) {
                            assert!(
                                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                "{ty:?} {isa:?} cols {cols} rows {n}: {got} vs scalar {want}"
                            );
                        }
                    }
                    // A row's sum does not depend on the row it is paired with in a pass.
                    let mut all = vec![0f32; rows];
                    dot_fused(isa, ty, &w, x.row(0), &mut all);
                    let rb = ty.row_bytes(cols);
                    for (r, &v) in all.iter().enumerate() {
                        let mut one = [0f32];
                        dot_fused(isa, ty, &w[r * rb..(r + 1) * rb], x.row(0), &mut one);
                        assert_eq!(v.to_bits(), one[0].to_bits(), "{ty:?} {isa:?} row {r}");
                    }
                }
            }
        }
    }

    /// Repacking eight rows at a time keeps every byte: each row comes back exactly.
    #[test]
    fn repacked_groups_restore_every_row() {
        let mut rng = Rng::new(21);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let (rows, cols) = (16, 576);
            let file: Vec<u8> = (0..rows)
                .flat_map(|_| random_row(ty, cols, &mut rng))
                .collect();
            let mut w = file.clone();
            x8::repack(ty, &mut w, rows, cols, &mut Vec::new());
            assert_ne!(w, file, "{ty:?}: the layout changed");
            let rb = ty.row_bytes(cols);
            let mut row = vec![0u8; rb];
            for r in 0..rows {
                let group = &w[r / 8 * 8 * rb..(r / 8 + 1) * 8 * rb];
                x8::row_of_group(ty, group, r % 8, cols, &mut row);
                assert_eq!(row, file[r * rb..(r + 1) * rb], "{ty:?} row {r}");
            }
        }
        assert!(!x8::repackable(GgmlType::Q4_1, 12, 576), "not whole groups");
        assert!(!x8::repackable(GgmlType::Q5_0, 16, 576), "no repacked Q5_0");
    }

    /// The repacked matrices' products: decode (activation rows that need not be
    /// batch-invariant, 1 to 16 here) takes the repacked kernel, whose vector versions give the
    /// scalar version's bits and agree with the file layout's kernels to f32 rounding; prompts
    /// (batch-invariant) restore the rows and give exactly the file layout's bits.
    #[test]
    fn repacked_products_match_the_file_layout() {
        let mut rng = Rng::new(23);
        // 24 rows: three groups, split over two chunks by qmatmul's tasks at 2+ threads.
        let rows = 24;
        for (cols, n, inv) in [
            (576, 1, false),
            (544, 2, false),
            (1536, 3, false),
            (576, 16, false),
            (544, 3, true),
        ] {
            let xf = random_acts(n, cols, &mut rng);
            let mut x = QActs::new();
            x.batch_invariant = inv;
            x.quantize(&xf, n, cols);
            for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
                let file: Vec<u8> = (0..rows)
                    .flat_map(|_| random_row(ty, cols, &mut rng))
                    .collect();
                let mut w = file.clone();
                x8::repack(ty, &mut w, rows, cols, &mut Vec::new());
                let r8 = ty.rows8().unwrap();
                let mut scalar = vec![0f32; n * rows];
                qmatmul(QIsa::Scalar, r8, &w, rows, &x, &mut scalar);
                for isa in QIsa::supported() {
                    let mut want = vec![0f32; n * rows];
                    qmatmul(isa, ty, &file, rows, &x, &mut want);
                    let mut got = vec![0f32; n * rows];
                    qmatmul(isa, r8, &w, rows, &x, &mut got);
                    let what = format!("{ty:?} {isa:?} cols {cols} rows {n} invariant {inv}");
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    if inv {
                        assert_eq!(bits(&got), bits(&want), "{what}: restored rows");
                        continue;
                    }
                    if *HAS_F16C || isa == QIsa::Scalar {
                        assert_eq!(bits(&got), bits(&scalar), "{what}: against scalar");
                    }
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{what}: {g} vs the file layout's {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn float_weights_use_the_f32_rows() {
        let mut rng = Rng::new(9);
        let (rows, cols) = (5, 64);
        let wf = random_acts(rows, cols, &mut rng);
        let w: Vec<u8> = wf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let xf = random_acts(2, cols, &mut rng);
        let mut x = QActs::new();
        x.quantize(&xf, 2, cols);
        let mut got = vec![0f32; 2 * rows];
        qmatmul(QIsa::current(), GgmlType::F32, &w, rows, &x, &mut got);
        for t in 0..2 {
            for r in 0..rows {
                let want: f32 = (0..cols).map(|i| wf[r * cols + i] * xf[t * cols + i]).sum();
                assert!((got[t * rows + r] - want).abs() < 1e-4);
            }
        }
    }
}
