//! Runs `cpu-small` training steps (vocab 4096, ctx 256, 4 layers, 4 heads, width 256, batch 8)
//! and nothing else, for profilers: `perf record` over this sees only the training step, unlike
//! `kiln bench train`, which also decodes and probes. Prints the mean step time.
//!
//! `cargo run --release -p kiln-engine --example train_steps [threads] [steps]`
//!
//! A/B comparisons on this noisy shared host compare adjacent steps, not separate runs:
//! `AB_VAR=NAME` alternates steps with the env var NAME unset and set (a switch read per call),
//! `AB_ALLOC=NAME` alternates between two trainers, the second built with NAME set (a switch read
//! when buffers are allocated, e.g. a temporary switch under test).

use std::sync::Arc;
use std::time::Instant;

use kiln_engine::{CpuBackend, Model, ModelConfig, OptimizerConfig, Rng, Trainer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let (vocab, ctx, batch) = (4096, 256, 8);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");
    let make = || {
        let be = Arc::new(CpuBackend::new(threads));
        let cfg = ModelConfig::gpt2(vocab, 4, 4, 256, ctx);
        let model = Model::new(be, cfg, 0).expect("model");
        let oc = OptimizerConfig {
            lr: 1e-3,
            ..Default::default()
        };
        Trainer::new(model, batch, ctx, oc).expect("trainer")
    };
    let mut tr = make();
    // AB_ALLOC=NAME: a second trainer built (and first stepped) with the env var NAME=1, and
    // steps alternating between the two: an interleaved comparison of a switch read when
    // buffers are allocated.
    let mut tr_b = std::env::var("AB_ALLOC").ok().map(|var| {
        std::env::set_var(&var, "1");
        let t = make();
        (var, t)
    });
    let mut rng = Rng::new(0);
    let data: Vec<u32> = (0..batch * (ctx + 1))
        .map(|_| rng.below(vocab as u64) as u32)
        .collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for row in data.chunks(ctx + 1) {
        x.extend_from_slice(&row[..ctx]);
        y.extend_from_slice(&row[1..]);
    }
    for _ in 0..3 {
        tr.train_step(&x, &y, None, 1.0).expect("step");
    }
    if let Some((var, tb)) = tr_b.as_mut() {
        for _ in 0..3 {
            tb.train_step(&x, &y, None, 1.0).expect("step");
        }
        std::env::remove_var(var.as_str());
    }
    let timed = |tr: &mut kiln_engine::Trainer<CpuBackend>| {
        let t0 = Instant::now();
        tr.train_step(&x, &y, None, 1.0).expect("step");
        t0.elapsed().as_secs_f64()
    };
    if let Some((var, mut trb)) = tr_b {
        let (ta, tb) = (0..steps)
            .map(|_| (timed(&mut tr), timed(&mut trb)))
            .unzip();
        report(&var, ta, tb);
        return;
    }
    // AB_VAR=NAME: alternate steps with the env var NAME unset (A) and set to 1 (B), for
    // an interleaved comparison of a switchable code path.
    if let Ok(var) = std::env::var("AB_VAR") {
        let (ta, tb) = (0..steps)
            .map(|_| {
                let a = timed(&mut tr);
                std::env::set_var(&var, "1");
                let b = timed(&mut tr);
                std::env::remove_var(&var);
                (a, b)
            })
            .unzip();
        report(&var, ta, tb);
        return;
    }
    let t0 = Instant::now();
    let mut loss = 0.0;
    for _ in 0..steps {
        loss = tr.train_step(&x, &y, None, 1.0).expect("step").loss;
    }
    let dt = t0.elapsed().as_secs_f64() / steps as f64;
    println!(
        "{steps} steps, {threads} threads: {:.1} ms/step, {:.0} tokens/s, last loss {loss:.4}",
        dt * 1e3,
        (batch * ctx) as f64 / dt
    );
}

/// Median step times of A (switch unset) and B (set), and the median and quartiles of each B
/// step over the A step just before it: the host's slow and fast phases last seconds, so
/// adjacent pairs see the same machine and the pair ratio is robust.
fn report(var: &str, mut ta: Vec<f64>, mut tb: Vec<f64>) {
    let mut ratios: Vec<f64> = ta.iter().zip(&tb).map(|(a, b)| b / a).collect();
    for v in [&mut ta, &mut tb, &mut ratios] {
        v.sort_by(f64::total_cmp);
    }
    let (n, mid) = (ratios.len(), ratios.len() / 2);
    println!(
        "median step: {var} unset {:.1} ms, {var}=1 {:.1} ms; B/A median of adjacent pairs {:.3} (quartiles {:.3}..{:.3})",
        ta[mid] * 1e3,
        tb[mid] * 1e3,
        ratios[mid],
        ratios[n / 4],
        ratios[3 * n / 4]
    );
}
