//! Extraction quality per page set: word-level precision, recall and F1 of the text kiln's
//! extractor keeps against each page's gold text, and pages per CPU second; with `--peer
//! NAME=DIR` (folders written by scripts/bench-data-extract.py and dev/extract-peers: one
//! `<set>/<relative path>.txt` per page and `cpu.tsv`) the same figures for each peer on the same
//! pages, in the same table.
//!
//! Sets (each fetched by `kiln data fetch`; a set that is not fetched is skipped):
//! - `readability-pages` (`--set readability-pages`): Mozilla Readability's saved real pages
//!   (news, blogs, wikis with their navigation, comments, related links, share bars), gold = the
//!   text of Readability's expected article. Only real pages: source ≥ 10 kB and gold ≥ 50 words
//!   (the rest are few-line unit cases of Readability's own rules).
//! - `python-doc`: the Python docs' HTML, gold = the page's `_sources/*.rst.txt`.
//! - `linux-doc` (`--set full`): the kernel docs' HTML, gold = `Documentation/**/*.rst.gz`.
//!
//! Every page falls in `dev` or `held-out` by a fixed hash of its set and path (a third held
//! out). Rules are tuned on `dev` only; `held-out` is reported separately.
//!
//! `cargo run --release -p kiln-data --example extract_f1 -- [--sets a,b] [--limit N]
//!  [--list] [--peer NAME=DIR]... [--worst K] [--quick]` (`--quick`: dev pages only, untimed)

use kiln_data::{decode_entities, extract, token_f1, ExtractConfig};
use std::collections::HashMap;
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

/// The words of an HTML fragment (Readability's expected article): tags removed, entities
/// decoded. Only the words count for the F1, so no layout is kept.
fn html_words(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        out.push(' ');
        rest = rest[lt..].find('>').map_or("", |gt| &rest[lt + gt + 1..]);
    }
    out.push_str(rest);
    decode_entities(&out).into_owned()
}

/// One page of a set: where its HTML is, its path inside the set, and its gold text.
struct Page {
    html: PathBuf,
    rel: PathBuf,
    gold: String,
}

fn doc_pages(html_root: &Path, gold_of: impl Fn(&Path) -> PathBuf) -> Vec<Page> {
    let mut files = Vec::new();
    walk(html_root, &mut files);
    files
        .into_iter()
        .filter_map(|html| {
            let rel = html.strip_prefix(html_root).ok()?.to_path_buf();
            let gold = read_gold(&gold_of(&rel))?;
            Some(Page { html, rel, gold })
        })
        .collect()
}

fn readability_pages(root: &Path) -> Vec<Page> {
    let Some(crate_dir) = std::fs::read_dir(root).ok().and_then(|d| {
        d.filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.is_dir())
    }) else {
        return Vec::new();
    };
    let tests = crate_dir.join("tests/test-pages");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&tests)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter_map(|dir| {
            let html = dir.join("source.html");
            let size = std::fs::metadata(&html).ok()?.len();
            let gold = html_words(&std::fs::read_to_string(dir.join("expected.html")).ok()?);
            let words = gold.split_whitespace().count();
            let rel = html.strip_prefix(&tests).ok()?.to_path_buf();
            (size >= 10_000 && words >= 50).then_some(Page { html, rel, gold })
        })
        .collect()
}

fn sets(wanted: &[String]) -> Vec<(&'static str, Vec<Page>)> {
    let mut v = Vec::new();
    let want = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    if want("readability-pages") {
        if let Ok(root) = kiln_data::fetch::source_dir("readability-pages") {
            v.push(("readability-pages", readability_pages(&root)));
        }
    }
    if want("python-doc") {
        if let Ok(root) = kiln_data::fetch::source_dir("python-doc") {
            let html = root.join("usr/share/doc/python3.11/html");
            let sources = html.join("_sources");
            v.push((
                "python-doc",
                doc_pages(&html, |rel| sources.join(rel.with_extension("rst.txt"))),
            ));
        }
    }
    if want("linux-doc") {
        if let Ok(root) = kiln_data::fetch::source_dir("linux-doc") {
            let base = root.join("usr/share/doc/linux-doc-6.1");
            let docs = base.join("Documentation");
            v.push((
                "linux-doc",
                doc_pages(&base.join("html"), |rel| {
                    docs.join(rel.with_extension("rst.gz"))
                }),
            ));
        }
    }
    v
}

/// `dev` or `held-out`, fixed by an FNV-1a hash of the set and path (a third held out).
fn split_of(set: &str, rel: &Path) -> &'static str {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in set
        .bytes()
        .chain([b'/'])
        .chain(rel.to_string_lossy().bytes())
    {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    if h.is_multiple_of(3) {
        "held-out"
    } else {
        "dev"
    }
}

/// CPU seconds of this thread (utime + stime from /proc, 10 ms ticks): a busy machine does not
/// count against the extractor.
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

#[derive(Default, Clone, Copy)]
struct Sums {
    pages: usize,
    p: f64,
    r: f64,
    f: f64,
    cpu_s: f64,
    timed: usize,
}

impl Sums {
    fn add(&mut self, (p, r, f): (f64, f64, f64)) {
        self.pages += 1;
        self.p += p;
        self.r += r;
        self.f += f;
    }
    fn row(&self, name: &str) -> String {
        let k = self.pages.max(1) as f64;
        let rate = if self.timed > 0 {
            format!("{:.1}", self.timed as f64 / self.cpu_s.max(1e-9))
        } else {
            "–".into()
        };
        format!(
            "| {name} | {} | {:.3} | {:.3} | **{:.3}** | {rate} |",
            self.pages,
            self.p / k,
            self.r / k,
            self.f / k
        )
    }
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
    let worst: usize = flag("--worst").map_or(0, |s| s.parse().expect("--worst K"));
    let wanted: Vec<String> = flag("--sets")
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let peers: Vec<(String, PathBuf)> = args
        .windows(2)
        .filter(|w| w[0] == "--peer")
        .map(|w| {
            let (name, dir) = w[1].split_once('=').expect("--peer NAME=DIR");
            (name.to_string(), PathBuf::from(dir))
        })
        .collect();
    let peer_times: Vec<HashMap<(String, String), f64>> = peers
        .iter()
        .map(|(_, dir)| {
            std::fs::read_to_string(dir.join("cpu.tsv"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let mut it = l.split('\t');
                    let (s, r, t) = (it.next()?, it.next()?, it.next()?.parse().ok()?);
                    Some(((s.to_string(), r.to_string()), t))
                })
                .collect()
        })
        .collect();
    let list = args.iter().any(|a| a == "--list");
    // Tuning loop: dev pages only, each extracted once.
    let quick = args.iter().any(|a| a == "--quick");
    let config = ExtractConfig::default();
    for (set, mut pages) in sets(&wanted) {
        pages.truncate(limit);
        if list {
            for page in &pages {
                println!(
                    "{set}\t{}\t{}\t{}",
                    split_of(set, &page.rel),
                    page.html.display(),
                    page.rel.display()
                );
            }
            continue;
        }
        // Per split: kiln, then each peer.
        let mut sums: HashMap<&str, Vec<Sums>> = HashMap::new();
        let mut scored: Vec<(f64, f64, f64, String)> = Vec::new();
        for page in &pages {
            let split = split_of(set, &page.rel);
            if quick && split != "dev" {
                continue;
            }
            let row = sums
                .entry(split)
                .or_insert_with(|| vec![Sums::default(); 1 + peers.len()]);
            let bytes = std::fs::read(&page.html).expect("readable page");
            // Repeat small pages so the 10 ms clock resolves them.
            let t0 = thread_cpu_seconds();
            let mut reps = 0usize;
            let ours = loop {
                let text = kiln_data::decode_charset(&bytes, None).text;
                let ours = extract(&text, &config).unwrap_or_default();
                reps += 1;
                if quick || thread_cpu_seconds() - t0 >= 0.02 || reps >= 200 {
                    break ours;
                }
            };
            row[0].cpu_s += (thread_cpu_seconds() - t0) / reps as f64;
            row[0].timed += 1;
            let score = token_f1(&ours, &page.gold);
            row[0].add(score);
            if split == "dev" {
                scored.push((score.2, score.0, score.1, page.rel.display().to_string()));
            }
            for (k, (_, dir)) in peers.iter().enumerate() {
                let file = dir.join(set).join(page.rel.with_extension("txt"));
                if let Ok(theirs) = std::fs::read_to_string(&file) {
                    row[1 + k].add(token_f1(&theirs, &page.gold));
                    let key = (set.to_string(), page.rel.display().to_string());
                    if let Some(t) = peer_times[k].get(&key) {
                        row[1 + k].cpu_s += t;
                        row[1 + k].timed += 1;
                    }
                }
            }
        }
        for split in ["dev", "held-out"] {
            let Some(row) = sums.get(split) else { continue };
            println!("\n{set}, {split} ({} pages)\n", row[0].pages);
            println!("| extractor | pages | precision | recall | F1 | pages/CPU-s |");
            println!("|---|---:|---:|---:|---:|---:|");
            println!("{}", row[0].row("kiln"));
            for (k, (name, _)) in peers.iter().enumerate() {
                println!("{}", row[1 + k].row(name));
            }
            let kiln_rate = row[0].timed as f64 / row[0].cpu_s.max(1e-9);
            for (k, (name, _)) in peers.iter().enumerate() {
                if row[1 + k].timed > 0 {
                    let theirs = row[1 + k].timed as f64 / row[1 + k].cpu_s.max(1e-9);
                    print!(
                        "kiln/{name} pages per CPU second: {:.1}x  ",
                        kiln_rate / theirs
                    );
                }
            }
            println!();
        }
        if worst > 0 {
            scored.sort_by(|a, b| a.0.total_cmp(&b.0));
            println!("\nworst {worst} dev pages of {set} (F1 P R):");
            for (f, p, r, rel) in scored.iter().take(worst) {
                println!("  {f:.3} {p:.3} {r:.3}  {rel}");
            }
        }
    }
}
