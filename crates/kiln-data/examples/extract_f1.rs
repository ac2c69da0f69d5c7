//! Extraction quality on the doc packages' HTML/source pairs: precision, recall and F1 of the
//! words kiln's extractor keeps against the page's own source text (`_sources/*.rst.txt` for the
//! Python docs, `Documentation/**/*.rst.gz` for the Linux docs), and — with `--peer DIR` holding
//! `<relative path>.txt` files written by trafilatura (scripts/bench-data-extract.py) — the same
//! figures for the peer on the same pages.
//!
//! `cargo run --release -p kiln-data --example extract_f1 -- [--limit N] [--peer DIR]`

use kiln_data::{extract, token_f1, ExtractConfig};
use std::io::Read;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if !p.ends_with("_sources") && !p.ends_with("_static") {
                walk(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "html") {
            out.push(p);
        }
    }
}

fn read_gold(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    if path.extension().is_some_and(|x| x == "gz") {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .ok()?;
        Some(s)
    } else {
        String::from_utf8(bytes).ok()
    }
}

/// (corpus name, html root, function from relative html path to gold path)
type Corpus = (&'static str, PathBuf, Box<dyn Fn(&Path) -> PathBuf>);

fn corpora() -> Vec<Corpus> {
    let mut v: Vec<Corpus> = Vec::new();
    if let Ok(root) = kiln_data::fetch::source_dir("python-doc") {
        let html = root.join("usr/share/doc/python3.11/html");
        let h2 = html.clone();
        v.push((
            "python-doc",
            html,
            Box::new(move |rel: &Path| h2.join("_sources").join(rel.with_extension("rst.txt"))),
        ));
    }
    if let Ok(root) = kiln_data::fetch::source_dir("linux-doc") {
        let base = root.join("usr/share/doc/linux-doc-6.1");
        let docs = base.join("Documentation");
        v.push((
            "linux-doc",
            base.join("html"),
            Box::new(move |rel: &Path| docs.join(rel.with_extension("rst.gz"))),
        ));
    }
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let limit: usize = flag("--limit").map_or(usize::MAX, |s| s.parse().expect("--limit N"));
    let peer = flag("--peer").map(PathBuf::from);
    let list = args.iter().any(|a| a == "--list");
    let config = ExtractConfig::default();
    let mut report = Vec::new();
    for (name, html_root, gold_of) in corpora() {
        let mut pages = Vec::new();
        walk(&html_root, &mut pages);
        let mut sums = [[0f64; 3]; 2];
        let mut n = 0usize;
        let mut n_peer = 0usize;
        let mut secs = 0f64;
        for page in pages {
            if n >= limit {
                break;
            }
            let rel = page
                .strip_prefix(&html_root)
                .expect("under root")
                .to_path_buf();
            let Some(gold) = read_gold(&gold_of(&rel)) else {
                continue;
            };
            if list {
                println!("{name}\t{}\t{}", html_root.display(), rel.display());
            }
            let bytes = std::fs::read(&page).expect("readable page");
            let t0 = std::time::Instant::now();
            let text = kiln_data::decode_charset(&bytes, None).text;
            let ours = extract(&text, &config).unwrap_or_default();
            secs += t0.elapsed().as_secs_f64();
            let (p, r, f) = token_f1(&ours, &gold);
            sums[0][0] += p;
            sums[0][1] += r;
            sums[0][2] += f;
            n += 1;
            if let Some(peer) = &peer {
                let peer_file = peer.join(name).join(rel.with_extension("txt"));
                if let Ok(theirs) = std::fs::read_to_string(&peer_file) {
                    let (p, r, f) = token_f1(&theirs, &gold);
                    sums[1][0] += p;
                    sums[1][1] += r;
                    sums[1][2] += f;
                    n_peer += 1;
                }
            }
        }
        if list {
            continue;
        }
        let mean = |s: [f64; 3], k: usize| {
            let k = k.max(1) as f64;
            serde_json::json!({"precision": s[0] / k, "recall": s[1] / k, "f1": s[2] / k})
        };
        report.push(serde_json::json!({
            "corpus": name,
            "pages": n,
            "kiln": mean(sums[0], n),
            "kiln_pages_per_s": n as f64 / secs.max(1e-9),
            "peer_pages": n_peer,
            "peer": if n_peer > 0 { mean(sums[1], n_peer) } else { serde_json::Value::Null },
        }));
    }
    if !list {
        println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    }
}
