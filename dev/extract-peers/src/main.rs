//! Runs one maintained Rust extractor over the pages `extract_f1 --list` names and writes what it
//! keeps, for `extract_f1 --peer NAME=DIR` to score against the same gold as kiln.
//!
//! `extract_f1 --list | extract-peers (trafilatura|rs-trafilatura|dom_smoothie) OUT`
//! writes OUT/<set>/<relative path>.txt per page and OUT/cpu.tsv (`set\trel\tCPU seconds`).
//! Settings follow FineWeb's trafilatura call: favour precision, no comments.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// CPU seconds of this thread (the extractors are single-threaded), so a busy machine does not
/// count against them.
fn thread_cpu_seconds() -> f64 {
    // utime + stime of this thread, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn run(which: &str, html: &str) -> String {
    match which {
        "trafilatura" => {
            let opts = trafilatura::Options::default()
                .with_focus(trafilatura::ExtractionFocus::FavorPrecision)
                .with_exclude_comments(true);
            trafilatura::extract(html, &opts)
                .map(|r| r.content_text)
                .unwrap_or_default()
        }
        "rs-trafilatura" => {
            let opts = rs_trafilatura::Options {
                favor_precision: true,
                include_comments: false,
                ..Default::default()
            };
            rs_trafilatura::extract_with_options(html, &opts)
                .map(|r| r.content_text)
                .unwrap_or_default()
        }
        "dom_smoothie" => dom_smoothie::Readability::new(html, None, None)
            .and_then(|mut r| r.parse())
            .map(|a| a.text_content.to_string())
            .unwrap_or_default(),
        other => panic!("unknown extractor {other} (trafilatura, rs-trafilatura, dom_smoothie)"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (which, out) = match &args[..] {
        [_, w, o] => (w.clone(), PathBuf::from(o)),
        _ => panic!("usage: extract_f1 --list | extract-peers EXTRACTOR OUT"),
    };
    std::fs::create_dir_all(&out).expect("create OUT");
    let mut times = std::fs::File::create(out.join("cpu.tsv")).expect("cpu.tsv");
    let mut pages = 0usize;
    let mut total = 0f64;
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let parts: Vec<&str> = line.split('\t').collect();
        let [set, _split, path, rel] = parts[..] else {
            panic!("bad list line: {line}");
        };
        let bytes = std::fs::read(path).expect("page");
        let html = String::from_utf8_lossy(&bytes).into_owned();
        // Repeat small pages so the 10 ms clock resolves them.
        let t0 = thread_cpu_seconds();
        let mut reps = 0;
        let mut text;
        loop {
            text = std::panic::catch_unwind(|| run(&which, &html)).unwrap_or_default();
            reps += 1;
            let dt = thread_cpu_seconds() - t0;
            if dt >= 0.05 || reps >= 20 {
                break;
            }
        }
        let secs = (thread_cpu_seconds() - t0) / reps as f64;
        total += secs;
        pages += 1;
        let dest = out.join(set).join(Path::new(rel).with_extension("txt"));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::write(&dest, text).expect("write");
        writeln!(times, "{set}\t{rel}\t{secs:.6}").expect("cpu.tsv");
    }
    eprintln!(
        "{which}: {pages} pages, {:.1} pages per CPU second",
        pages as f64 / total.max(1e-9)
    );
}
