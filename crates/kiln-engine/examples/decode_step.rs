//! Time one [`BatchedDecoder`] step at several row counts on a random model of the speedrun's
//! default shape (gpt2, vocab 4096, 4 layers × 256, 2 threads): milliseconds per step and
//! generated tokens/s per row count, rounds interleaved. The engine-only view of what
//! `kiln bench decode` measures end to end (no sampling).
//!
//! `cargo run --release -p kiln-engine --example decode_step [threads=N] [rows...]`
//! (`threads=1` with `perf stat -e cycles:u` gives a load-independent count on a busy machine.)

use std::sync::Arc;
use std::time::Instant;

use kiln_engine::{BatchDecoder, BatchedDecoder, CpuBackend, Model, ModelConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut threads = 2;
    let mut rows = Vec::new();
    for a in std::env::args().skip(1) {
        match a.strip_prefix("threads=") {
            Some(t) => threads = t.parse()?,
            None => rows.push(a.parse()?),
        }
    }
    let rows = if rows.is_empty() {
        vec![1, 8, 32]
    } else {
        rows
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    // On a pool thread, as `kiln` runs its commands: from outside the pool every parallel op
    // would hand over to a worker and back (two context switches per op; 20% in perf).
    rayon::scope(|_| run(&rows, threads)).map_err(|e| e.to_string().into())
}

fn run(rows: &[usize], threads: usize) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let be = Arc::new(CpuBackend::new(threads));
    let model = Model::new(be, ModelConfig::gpt2(4096, 4, 4, 256, 256), 1)?;
    let steps = 40;
    let mut decs: Vec<BatchedDecoder<_>> = rows
        .iter()
        .map(|&n| BatchedDecoder::new(&model, n, 32 + steps + 8))
        .collect::<Result<_, _>>()?;
    let mut best = vec![f64::INFINITY; rows.len()];
    let mut cpu = vec![0f64; rows.len()];
    for _round in 0..4 {
        for (i, (d, &n)) in decs.iter_mut().zip(rows).enumerate() {
            // ragged: slot s starts at a prompt of 20 + s % 13 tokens
            for s in 0..n {
                let p: Vec<u32> = (0..20 + s % 13)
                    .map(|j| (j * 31 + s) as u32 % 4096)
                    .collect();
                d.prefill(s, &p)?;
            }
            let slots: Vec<usize> = (0..n).collect();
            let toks: Vec<u32> = (0..n as u32).collect();
            let (t0, c0) = (Instant::now(), cpu_seconds());
            for _ in 0..steps {
                d.step(&slots, &toks)?;
            }
            best[i] = best[i].min(t0.elapsed().as_secs_f64() / steps as f64);
            cpu[i] += (cpu_seconds() - c0) / (4 * steps) as f64;
        }
    }
    for ((&n, &b), &c) in rows.iter().zip(&best).zip(&cpu) {
        println!(
            "{n:>3} rows: {:.2} ms/step (best), {:.0} tok/s, {:.2}× the first; process cpu {:.2} ms/step, {:.2}× the first per token",
            b * 1e3,
            n as f64 / b,
            n as f64 / b / (rows[0] as f64 / best[0]),
            c * 1e3,
            n as f64 / c / (rows[0] as f64 / cpu[0]),
        );
    }
    Ok(())
}

/// User + system cpu seconds of this process (/proc, clock ticks of 10 ms): on a loaded machine
/// the cpu time a step took is steadier than its wall time.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}
