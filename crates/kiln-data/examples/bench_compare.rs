//! Agreement between kiln's output and datatrove's on the same input (scripts/bench-data.sh):
//! which documents each keeps, and how similar the texts are where both keep one (word-level F1,
//! the measure of `extract_f1`).
//!
//! `cargo run --release -p kiln-data --example bench_compare -- --kiln OUT --datatrove DIR`

use kiln_data::token_f1;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;

fn norm(id: &str) -> String {
    id.trim_matches(['<', '>']).to_string()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{name} DIR is required"))
    };
    let (kiln_dir, dt_dir) = (flag("--kiln"), flag("--datatrove"));
    let mut kiln: HashMap<String, String> = HashMap::new();
    for shard in kiln_data::list_shards(&kiln_dir.join("text")).expect("kiln text shards") {
        for d in kiln_data::read_text_shard(&shard).expect("readable shard") {
            kiln.insert(norm(&d.id), d.text);
        }
    }
    let mut all: HashSet<String> = kiln.keys().cloned().collect();
    for e in std::fs::read_dir(kiln_dir.join("rejects")).expect("kiln rejects") {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for line in text.lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            all.insert(norm(r["id"].as_str().unwrap()));
        }
    }
    let mut dt: HashMap<String, String> = HashMap::new();
    for e in std::fs::read_dir(&dt_dir).expect("datatrove output") {
        let p = e.unwrap().path();
        if !p.to_string_lossy().ends_with(".jsonl.gz") {
            continue;
        }
        let mut s = String::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(&p).unwrap())
            .read_to_string(&mut s)
            .unwrap();
        for line in s.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            dt.insert(
                norm(v["id"].as_str().unwrap()),
                v["text"].as_str().unwrap().to_string(),
            );
        }
    }
    all.extend(dt.keys().cloned());
    let both: Vec<&String> = kiln.keys().filter(|k| dt.contains_key(*k)).collect();
    let either = kiln.len() + dt.len() - both.len();
    let both_drop = all.len() - either;
    let f1s: Vec<f64> = both
        .iter()
        .map(|k| token_f1(&kiln[*k], &dt[*k]).2)
        .collect();
    let mean_f1 = f1s.iter().sum::<f64>() / f1s.len().max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "documents": all.len(),
            "kiln_kept": kiln.len(),
            "datatrove_kept": dt.len(),
            "both_kept": both.len(),
            "both_dropped": both_drop,
            "agreement": (both.len() + both_drop) as f64 / all.len().max(1) as f64,
            "kept_jaccard": both.len() as f64 / either.max(1) as f64,
            "text_f1_where_both_kept": mean_f1,
        })
    );
}
