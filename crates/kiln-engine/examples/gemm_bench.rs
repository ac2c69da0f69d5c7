//! Benchmarks kiln's AVX-512 sgemm against the `gemm` crate (the peer kiln used before, and the
//! fallback without AVX-512) on the matmul shapes of a training step of the `cpu-small` preset
//! (8×256 tokens, width 256, vocab 4096), interleaved, and prints GFLOP/s and the ratio.
//!
//! `cargo run --release -p kiln-engine --example gemm_bench [threads] [reps]`

/// Seconds: this thread's CPU time for one thread (immune to being preempted on a loaded
/// machine), wall time for more (or, with `GEMM_BENCH_CPU_CLOCK=1`, process CPU time / threads).
fn now(threads: usize) -> f64 {
    if threads == 1 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: plain syscall writing into `ts`.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else if std::env::var_os("GEMM_BENCH_CPU_CLOCK").is_some() {
        // Process CPU time shared out over the threads: "wall time if nothing else ran". Work
        // done twice or spent spinning at a join shows up; other processes do not.
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: plain syscall writing into `ts`.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        (ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9) / threads as f64
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }
}

use kiln_engine::cpu::sgemm::{self, StridedRef};

/// FMA throughput of one core with AVX-512 (28 independent accumulator chains, no memory):
/// the ceiling any f32 GEMM on this core can reach.
#[target_feature(enable = "avx512f")]
fn fma_peak_gflops() -> f64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 28];
    let x = _mm512_set1_ps(0.999_999);
    let y = _mm512_set1_ps(1e-7);
    let iters = 20_000_000usize;
    let t0 = now(1);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, x, y);
        }
    }
    let dt = now(1) - t0;
    let mut sink = 0f32;
    for a in acc {
        sink += _mm512_reduce_add_ps(a);
    }
    std::hint::black_box(sink);
    (iters * 28 * 32) as f64 / dt / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    // `only=kiln` / `only=gemm` runs one side (for `perf stat -e cycles:u`, which measures flops
    // per cycle even on a loaded machine).
    let only = args.get(3).map(String::as_str).unwrap_or("both");
    if !sgemm::available() {
        eprintln!("this CPU has no AVX-512: kiln uses the gemm crate here, nothing to compare");
        return;
    }
    // (name, m, n, k, trans_a, trans_b) as the model issues them: forward x @ Wᵀ, dx = dy @ W,
    // dW = dyᵀ @ x.
    let t = 2048;
    // (name, m, n, k, trans_a, trans_b, calls per step): every matmul of one training step outside
    // attention (4 layers), as the model issues them.
    let shapes = [
        ("fwd qkv", t, 768, 256, false, true, 4),
        ("fwd proj", t, 256, 256, false, true, 4),
        ("fwd fc", t, 1024, 256, false, true, 4),
        ("fwd fcproj", t, 256, 1024, false, true, 4),
        ("fwd head", t, 4096, 256, false, true, 1),
        ("dx qkv", t, 256, 768, false, false, 4),
        ("dx proj", t, 256, 256, false, false, 4),
        ("dx fc", t, 256, 1024, false, false, 4),
        ("dx fcproj", t, 1024, 256, false, false, 4),
        ("dx head", t, 256, 4096, false, false, 1),
        ("dW qkv", 768, 256, t, true, false, 4),
        ("dW proj", 256, 256, t, true, false, 4),
        ("dW fc", 1024, 256, t, true, false, 4),
        ("dW fcproj", 256, 1024, t, true, false, 4),
        ("dW head", 4096, 256, t, true, false, 1),
        ("attn qk", 256, 256, 64, false, true, 0),
        ("attn pv", 256, 64, 256, false, false, 0),
    ];
    // SAFETY: AVX-512 checked above.
    let peak = unsafe { fma_peak_gflops() };
    println!("threads {threads}, best of {reps}; one core's AVX-512 FMA peak {peak:.1} GFLOP/s");
    println!(
        "{:<10} {:>16} {:>10} {:>10} {:>7}",
        "shape", "m×n×k", "kiln GF/s", "gemm GF/s", "ratio"
    );
    let (mut tk, mut tg) = (0f64, 0f64);
    let (mut step_k, mut step_g, mut step_flops) = (0f64, 0f64, 0f64);
    for (name, m, n, k, ta, tb, calls) in shapes {
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
        let mut c = vec![0f32; m * n];
        let (ars, acs) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (brs, bcs) = if tb { (1, k as isize) } else { (n as isize, 1) };
        let flops = 2.0 * (m * n * k) as f64;
        let run_kiln = |c: &mut [f32]| unsafe {
            sgemm::sgemm(
                m,
                n,
                k,
                1.0,
                StridedRef {
                    ptr: a.as_ptr(),
                    rs: ars,
                    cs: acs,
                },
                StridedRef {
                    ptr: b.as_ptr(),
                    rs: brs,
                    cs: bcs,
                },
                0.0,
                c.as_mut_ptr(),
                n,
                threads,
            )
        };
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        let run_gemm = |c: &mut [f32]| unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                acs,
                ars,
                b.as_ptr(),
                bcs,
                brs,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        };
        let (mut best_k, mut best_g) = (f64::MAX, f64::MAX);
        for _ in 0..reps {
            if only != "gemm" {
                let t0 = now(threads);
                run_kiln(&mut c);
                best_k = best_k.min(now(threads) - t0);
            }
            if only != "kiln" {
                let t0 = now(threads);
                run_gemm(&mut c);
                best_g = best_g.min(now(threads) - t0);
            }
        }
        tk += best_k;
        tg += best_g;
        step_k += calls as f64 * best_k;
        step_g += calls as f64 * best_g;
        step_flops += calls as f64 * flops;
        println!(
            "{name:<10} {:>16} {:>10.1} {:>10.1} {:>6.2}×",
            format!("{m}×{n}×{k}"),
            flops / best_k / 1e9,
            flops / best_g / 1e9,
            best_g / best_k
        );
    }
    println!(
        "one step's matmuls ({:.1} GFLOP): kiln {:.1} ms ({:.0} GFLOP/s), gemm {:.1} ms ({:.0} GFLOP/s), ratio {:.2}×",
        step_flops / 1e9,
        step_k * 1e3,
        step_flops / step_k / 1e9,
        step_g * 1e3,
        step_flops / step_g / 1e9,
        step_g / step_k
    );
    println!(
        "all shapes: kiln {:.2} ms, gemm {:.2} ms, ratio {:.2}×",
        tk * 1e3,
        tg * 1e3,
        tg / tk
    );
}
