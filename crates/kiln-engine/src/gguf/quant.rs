//! GGUF weight types and their dequantization to f32, bit-exact with llama.cpp's reference
//! (`dequantize_row_*` in ggml-quants.c; block layouts from ggml-common.h) and gguf-py's
//! `quants.dequantize` (tests/gguf_dequant.rs checks this on the fetched models' tensors).
//!
//! Every function works on whole blocks; the arithmetic order follows the reference exactly
//! (`d * q` with `d` already a product like `d * scale`), since f32 rounding depends on it.

use half::f16;

/// The tensor types kiln reads (GGML type ids in the GGUF tensor table).
// GGML's own names (Q4_K, …), so errors and logs read like llama.cpp's.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
    BF16,
    /// Q4_0, Q4_1 and Q8_0 rows repacked eight at a time in memory for batch-1 decode
    /// ([`crate::cpu::quant::x8`]): kiln's own layout of the same bytes, never read from or
    /// written to a file, and not addressable row by row.
    Q4_0R8,
    Q4_1R8,
    Q8_0R8,
}

const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K";

impl GgmlType {
    /// The type with GGML id `id`, or a message listing the supported ones.
    pub fn from_id(id: u32) -> Result<GgmlType, String> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            _ => {
                return Err(format!(
                    "unsupported GGML type id {id} (supported: {SUPPORTED})"
                ))
            }
        })
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 => 32,
            GgmlType::Q4_0R8 | GgmlType::Q4_1R8 | GgmlType::Q8_0R8 => 32,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 | GgmlType::Q4_0R8 => 18, // d: f16, qs: 16 × two 4-bit
            GgmlType::Q4_1 | GgmlType::Q4_1R8 => 20, // d, m: f16, qs: 16
            GgmlType::Q5_0 => 22,                    // d: f16, qh: u32 (5th bits), qs: 16
            GgmlType::Q8_0 | GgmlType::Q8_0R8 => 34, // d: f16, qs: 32 × i8
            GgmlType::Q4_K => 144, // d, dmin: f16, scales: 12 (6-bit packed), qs: 128
            GgmlType::Q5_K => 176, // d, dmin, scales: 12, qh: 32, qs: 128
            GgmlType::Q6_K => 210, // ql: 128, qh: 64, scales: 16 × i8, d: f16
        }
    }

    /// The repacked in-memory form of a file type, where kiln has one.
    pub fn rows8(self) -> Option<GgmlType> {
        match self {
            GgmlType::Q4_0 => Some(GgmlType::Q4_0R8),
            GgmlType::Q4_1 => Some(GgmlType::Q4_1R8),
            GgmlType::Q8_0 => Some(GgmlType::Q8_0R8),
            _ => None,
        }
    }

    /// The file type whose blocks a repacked type holds (`self` for file types).
    pub fn file_type(self) -> GgmlType {
        match self {
            GgmlType::Q4_0R8 => GgmlType::Q4_0,
            GgmlType::Q4_1R8 => GgmlType::Q4_1,
            GgmlType::Q8_0R8 => GgmlType::Q8_0,
            t => t,
        }
    }

    /// Bytes taken by `n` elements (`n` a multiple of the block size).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_elems() * self.block_bytes()
    }
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Dequantize `n` elements of type `ty` from `src`.
pub fn dequantize(ty: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let mut out = vec![0f32; n];
    dequantize_into(ty, src, &mut out)?;
    Ok(out)
}

/// Dequantize `out.len()` elements of type `ty` from the start of `src` into `out`.
pub fn dequantize_into(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<(), String> {
    let n = out.len();
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    if !n.is_multiple_of(be) || src.len() < n / be * bb {
        return Err(format!(
            "{ty:?}: {n} elements need whole blocks of {be} and {} bytes, got {}",
            n / be * bb,
            src.len()
        ));
    }
    if ty.file_type() != ty {
        return Err(format!(
            "{ty:?}: rows repacked eight at a time are read by the matrix kernels only"
        ));
    }
    let blocks = src[..n / be * bb]
        .chunks_exact(bb)
        .zip(out.chunks_exact_mut(be));
    match ty {
        GgmlType::F32 => {
            blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = h(b, 0)),
        GgmlType::BF16 => blocks.for_each(|(b, y)| {
            y[0] = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
        }),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| {
            let d = h(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
                y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| {
            let (d, m) = (h(b, 0), h(b, 2));
            for j in 0..16 {
                let q = b[4 + j];
                y[j] = (q & 0xF) as f32 * d + m;
                y[j + 16] = (q >> 4) as f32 * d + m;
            }
        }),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| {
            let d = h(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                let q = b[6 + j];
                let h0 = (((qh >> j) << 4) & 0x10) as u8;
                let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                y[j] = (((q & 0xF) | h0) as i32 - 16) as f32 * d;
                y[j + 16] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
            }
        }),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| {
            let d = h(b, 0);
            for j in 0..32 {
                y[j] = (b[2 + j] as i8) as f32 * d;
            }
        }),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| {
            let (d, dmin) = (h(b, 0), h(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            for (g, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * g, scales);
                let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
                let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                for l in 0..32 {
                    y[l] = d1 * (q[l] & 0xF) as f32 - m1;
                    y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| {
            let (d, dmin) = (h(b, 0), h(b, 2));
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for (g, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * g, scales);
                let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
                let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
                for l in 0..32 {
                    let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                    let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                    y[l] = d1 * ((q[l] & 0xF) + hi1) as f32 - m1;
                    y[l + 32] = d2 * ((q[l] >> 4) + hi2) as f32 - m2;
                }
            }
        }),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| {
            let d = h(b, 208);
            for half in 0..2 {
                let ql = &b[64 * half..64 * half + 64];
                let qh = &b[128 + 32 * half..128 + 32 * half + 32];
                let sc = &b[192 + 8 * half..192 + 8 * half + 8];
                let y = &mut y[128 * half..128 * half + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }),
        GgmlType::Q4_0R8 | GgmlType::Q4_1R8 | GgmlType::Q8_0R8 => unreachable!("refused above"),
    }
    Ok(())
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block (`get_scale_min_k4`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_and_q4_0_by_hand() {
        let mut b = f16::from_f32(0.5).to_bits().to_le_bytes().to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(y[0], -8.0);
        assert_eq!(y[31], 7.5);
        let mut b = f16::from_f32(2.0).to_bits().to_le_bytes().to_vec();
        b.extend([0x91u8; 16]); // low nibble 1 → -7, high 9 → 1
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!((y[0], y[16]), (-14.0, 2.0));
    }

    #[test]
    fn short_input_is_an_error() {
        assert!(dequantize(GgmlType::Q6_K, &[0; 100], 256).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0; 34], 31).is_err());
        assert!(GgmlType::from_id(7).unwrap_err().contains("Q6_K"));
    }
}
