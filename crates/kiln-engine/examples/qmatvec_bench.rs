//! One quantized matrix–vector product (batch-1 decode's shape) on one thread: its weight read
//! rate against a read-bandwidth probe, for a matrix far larger than the caches ("cold", how
//! decode reads its weights) and for one that stays in L2 ("hot", the kernel's arithmetic
//! alone). Rows of random valid blocks; the figures do not depend on the values.
//!
//! usage: cargo run --release -p kiln-engine --example qmatvec_bench -- [TYPES=q8_0,q4_1,q4_k,q6_k,q5_0] [COLS=640] [REPS=20]

use std::time::Instant;

use kiln_engine::cpu::quant::{qmatmul, QActs, QIsa};
use kiln_engine::gguf::GgmlType;
use kiln_engine::hugemem::HugeMem;
use kiln_engine::Rng;

fn ty_of(name: &str) -> GgmlType {
    match name {
        "q4_0" => GgmlType::Q4_0,
        "q4_1" => GgmlType::Q4_1,
        "q5_0" => GgmlType::Q5_0,
        "q8_0" => GgmlType::Q8_0,
        "q4_k" => GgmlType::Q4_K,
        "q5_k" => GgmlType::Q5_K,
        "q6_k" => GgmlType::Q6_K,
        _ => panic!("unknown type {name}"),
    }
}

/// Random blocks with small normal f16 scales where `ty` keeps them (random bits would give
/// NaN and infinities).
fn fill(ty: GgmlType, bytes: &mut [u8], rng: &mut Rng) {
    for b in bytes.iter_mut() {
        *b = rng.next_u64() as u8;
    }
    let bb = ty.block_bytes();
    let scale_at: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    let h = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    for blk in bytes.chunks_exact_mut(bb) {
        for &at in scale_at {
            blk[at..at + 2].copy_from_slice(&h);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let types = args
        .get(1)
        .map_or("q8_0,q4_1,q4_k,q6_k,q5_0", |s| s.as_str());
    let cols: usize = args.get(2).map_or(640, |s| s.parse().unwrap());
    let reps: usize = args.get(3).map_or(20, |s| s.parse().unwrap());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut rng = Rng::new(1);
    let xf: Vec<f32> = (0..cols).map(|_| rng.uniform() as f32 - 0.5).collect();
    let mut x = QActs::new();
    x.quantize(&xf, 1, cols);
    let isa = QIsa::current();
    // Probe: sum 256 MB of u64 on this thread, best of 3.
    let probe = {
        let mut mem = HugeMem::new(256 << 20).unwrap();
        // SAFETY: every bit pattern is a u64.
        let (_, v, _) = unsafe { mem.bytes_mut().align_to_mut::<u64>() };
        v.iter_mut().enumerate().for_each(|(i, x)| *x = i as u64);
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let s: u64 = v.iter().fold(0u64, |a, &b| a.wrapping_add(b));
                std::hint::black_box(s);
                (v.len() * 8) as f64 / t.elapsed().as_secs_f64()
            })
            .fold(0f64, f64::max)
    };
    println!("isa {isa:?}, probe {:.1} GB/s, {cols} columns", probe / 1e9);
    for name in types.split(',') {
        let ty = ty_of(name);
        if !cols.is_multiple_of(ty.block_elems()) {
            continue;
        }
        let rb = ty.row_bytes(cols);
        for (what, bytes) in [("cold", 192usize << 20), ("hot", 256 << 10)] {
            let rows = (bytes / rb / 8 * 8).max(8);
            let mut w = HugeMem::new(rows * rb).unwrap();
            fill(ty, w.bytes_mut(), &mut rng);
            let mut out = vec![0f32; rows];
            let n = if what == "hot" { reps * 200 } else { reps };
            let mut best = f64::MAX;
            pool.install(|| {
                for _ in 0..3 {
                    let t = Instant::now();
                    for _ in 0..n {
                        qmatmul(isa, ty, w.bytes(), rows, &x, &mut out);
                    }
                    best = best.min(t.elapsed().as_secs_f64() / n as f64);
                }
            });
            let blocks = (rows * cols / 32) as f64;
            println!(
                "{name:>5} {what:>4}: {:7.2} GB/s  ({:.2} of probe)  {:5.2} ns per 32 weights",
                (rows * rb) as f64 / best / 1e9,
                (rows * rb) as f64 / best / probe,
                best / blocks * 1e9
            );
            if kiln_engine::cpu::quant::x8::repackable(ty, rows, cols) {
                let plain = out.clone();
                kiln_engine::cpu::quant::x8::repack(ty, w.bytes_mut(), rows, cols, &mut Vec::new());
                let mut best = f64::MAX;
                pool.install(|| {
                    for _ in 0..3 {
                        let t = Instant::now();
                        for _ in 0..n {
                            qmatmul(isa, ty.rows8().unwrap(), w.bytes(), rows, &x, &mut out);
                        }
                        best = best.min(t.elapsed().as_secs_f64() / n as f64);
                    }
                });
                let err = plain
                    .iter()
                    .zip(&out)
                    .map(|(a, b)| (a - b).abs() / (a.abs() + 1e-3))
                    .fold(0f32, f32::max);
                println!(
                    "{:>5} {what:>4}: {:7.2} GB/s  ({:.2} of probe)  {:5.2} ns per 32 weights (repacked x8; max rel diff {err:.1e})",
                    format!("{name}r8"),
                    (rows * rb) as f64 / best / 1e9,
                    (rows * rb) as f64 / best / probe,
                    best / blocks * 1e9
                );
            }
        }
    }
}
