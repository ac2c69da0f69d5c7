//! Runs `cpu-small` training steps (vocab 4096, ctx 256, 4 layers, 4 heads, width 256, batch 8)
//! and nothing else, for profilers: `perf record` over this sees only the training step, unlike
//! `kiln bench train`, which also decodes and probes. Prints the mean step time.
//!
//! `cargo run --release -p kiln-engine --example train_steps [threads] [steps]`

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
    let be = Arc::new(CpuBackend::new(threads));
    let cfg = ModelConfig::gpt2(vocab, 4, 4, 256, ctx);
    let model = Model::new(be, cfg, 0).expect("model");
    let oc = OptimizerConfig {
        lr: 1e-3,
        ..Default::default()
    };
    let mut tr = Trainer::new(model, batch, ctx, oc).expect("trainer");
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
    // AB_VAR=NAME: alternate steps with the env var NAME unset (A) and set to 1 (B), for
    // an interleaved comparison of a switchable code path.
    if let Ok(var) = std::env::var("AB_VAR") {
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        for s in 0..2 * steps {
            if s % 2 == 1 {
                std::env::set_var(&var, "1");
            }
            let t0 = Instant::now();
            tr.train_step(&x, &y, None, 1.0).expect("step");
            let dt = t0.elapsed().as_secs_f64();
            std::env::remove_var(&var);
            if s % 2 == 0 {
                ta.push(dt)
            } else {
                tb.push(dt)
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2] * 1e3
        };
        let (a, b) = (med(&mut ta), med(&mut tb));
        println!(
            "median step: {var} unset {a:.1} ms, {var}=1 {b:.1} ms, B/A {:.3}",
            b / a
        );
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
