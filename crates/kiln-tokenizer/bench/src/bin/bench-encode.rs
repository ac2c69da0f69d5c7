//! Encode throughput: kiln-tokenizer vs tiktoken-rs vs bpe-openai on the fetched corpora, one
//! thread and all threads, same documents, runs interleaved; ids are checked identical first.
//!
//! `cargo run --release --bin bench-encode -- [--mb 20] [--reps 5]`

use kiln_tokenizer::Tokenizer;
use kiln_tokenizer_bench::{documents, median};
use rayon::prelude::*;
use std::time::Instant;

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|k| args.get(k + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn main() {
    let mb = arg("--mb", 20.0);
    let reps = arg("--reps", 5.0) as usize;
    // A mix across sources: every 5th document of a 5x larger pool.
    let pool = documents((mb * 5e6) as usize);
    let docs: Vec<String> = pool.into_iter().step_by(5).collect();
    let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let bytes: usize = docs.iter().map(|d| d.len()).sum();
    let threads = rayon::current_num_threads();
    println!(
        "corpus: {} documents, {:.1} MB (linux/python/perl docs, shakespeare, evals texts); {threads} threads",
        docs.len(),
        bytes as f64 / 1e6
    );
    for name in ["cl100k_base", "o200k_base"] {
        let ours = Tokenizer::from_pretrained(name).unwrap();
        let (tt, bp) = match name {
            "cl100k_base" => (
                tiktoken_rs::cl100k_base().unwrap(),
                bpe_openai::cl100k_base(),
            ),
            _ => (tiktoken_rs::o200k_base().unwrap(), bpe_openai::o200k_base()),
        };
        // Identical ids (kiln must match tiktoken exactly; bpe-openai's mismatches are reported).
        let mut tokens = 0usize;
        let mut bpe_diff = 0usize;
        for d in &docs {
            let a = ours.encode_ordinary(d);
            let b = tt.encode_ordinary(d);
            assert_eq!(a, b, "{name}: kiln and tiktoken-rs differ on a document");
            if bp.encode(*d) != b {
                bpe_diff += 1;
            }
            tokens += a.len();
        }
        println!(
            "\n{name}: {tokens} tokens, ids identical kiln = tiktoken-rs; bpe-openai differs on {bpe_diff} of {} documents",
            docs.len()
        );
        type Run<'a> = Box<dyn Fn(&str) -> usize + Sync + 'a>;
        let impls: Vec<(&str, Run)> = vec![
            ("kiln", Box::new(|d: &str| ours.encode_ordinary(d).len())),
            (
                "tiktoken-rs",
                Box::new(|d: &str| tt.encode_ordinary(d).len()),
            ),
            ("bpe-openai", Box::new(|d: &str| bp.encode(d).len())),
        ];
        for parallel in [false, true] {
            let mut times = vec![Vec::new(); impls.len()];
            for _ in 0..reps {
                for (k, (_, run)) in impls.iter().enumerate() {
                    let t = Instant::now();
                    let n: usize = if parallel {
                        docs.par_iter().map(|d| run(d)).sum()
                    } else {
                        docs.iter().map(|d| run(d)).sum()
                    };
                    times[k].push(t.elapsed().as_secs_f64());
                    assert!(n > 0);
                }
            }
            let med: Vec<f64> = times.into_iter().map(median).collect();
            let label = if parallel {
                format!("{threads} threads")
            } else {
                "1 thread".into()
            };
            let row: Vec<String> = impls
                .iter()
                .zip(&med)
                .map(|((n, _), t)| format!("{n} {:.1} MB/s", bytes as f64 / 1e6 / t))
                .collect();
            println!(
                "  {label:<10} {}   kiln/tiktoken-rs {:.2}x   kiln/bpe-openai {:.2}x",
                row.join("   "),
                med[1] / med[0],
                med[2] / med[0]
            );
        }
    }
}
