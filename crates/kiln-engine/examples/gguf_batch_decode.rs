//! Decode throughput of a GGUF model with several sequences per step ([`LlamaBatch`]), the
//! shape `kiln serve` runs at 8 clients: `ROWS` slots prefilled with different short prompts,
//! then `STEPS` steps of all of them. Prints `N tokens/s` (generated tokens, all rows) for
//! `scripts/ab_binaries.py`, which interleaves two builds of it.
//!
//! usage: cargo run --release -p kiln-engine --example gguf_batch_decode -- MODEL.gguf THREADS [ROWS=8] [STEPS=64] [LAYOUT=repacked|file]
//!
//! `LAYOUT`: the model as `kiln serve` loads it (`LlamaModel::load`: in memory, Q4_0/Q4_1
//! matrices repacked), or read into memory the same way with every matrix in the file's layout.

use std::sync::Arc;
use std::time::Instant;

use kiln_engine::gguf::GgufFile;
use kiln_engine::llama::{LlamaBatch, LlamaModel};
use kiln_engine::BatchDecoder;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: gguf_batch_decode MODEL.gguf THREADS [ROWS=8] [STEPS=64] [LAYOUT]");
        std::process::exit(2);
    }
    let arg = |i: usize, d: usize| args.get(i).map_or(d, |v| v.parse().expect("a number"));
    let (threads, rows, steps) = (arg(2, 2), arg(3, 8), arg(4, 64));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let path = std::path::Path::new(&args[1]);
        let m = match args.get(5).map_or("repacked", |s| s.as_str()) {
            "repacked" => LlamaModel::load(path).expect("load"),
            "file" => LlamaModel::new(Arc::new(GgufFile::load(path).expect("open"))).expect("load"),
            other => panic!("LAYOUT {other}: repacked or file"),
        };
        let vocab = m.config.vocab as u64;
        let mut rng = kiln_engine::Rng::new(1);
        // The longest prompt (16 + 4·(rows − 1) tokens) plus every step must fit a slot.
        let mut dec = LlamaBatch::new(&m, rows, 16 + 4 * rows + steps);
        let slots: Vec<usize> = (0..rows).collect();
        for &s in &slots {
            let prompt: Vec<u32> = (0..16 + 4 * s).map(|_| rng.below(vocab) as u32).collect();
            dec.prefill(s, &prompt).expect("prefill");
        }
        let mut tokens: Vec<u32> = (0..rows).map(|_| rng.below(vocab) as u32).collect();
        let t = Instant::now();
        for _ in 0..steps {
            let logits = dec.step(&slots, &tokens).expect("step");
            // Greedy, so the work is the same in every build.
            for (r, tok) in tokens.iter_mut().enumerate() {
                let row = &logits[r * vocab as usize..(r + 1) * vocab as usize];
                *tok = (0..row.len())
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap() as u32;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!("{:.1} tokens/s", (rows * steps) as f64 / secs);
    });
}
