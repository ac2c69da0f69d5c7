//! Shared corpus loading for the tokenizer benchmarks: documents from the fetched corpora under
//! data/raw (see the main README's data table), read once into memory so every peer sees the
//! same text.

use std::io::Read;
use std::path::{Path, PathBuf};

/// `$KILN_DATA_DIR/raw`, else the nearest `data/raw` above the current directory.
pub fn data_raw() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_DATA_DIR") {
        return PathBuf::from(dir).join("raw");
    }
    let here = std::env::current_dir().expect("cwd");
    for dir in here.ancestors() {
        if dir.join("data/raw").is_dir() {
            return dir.join("data/raw");
        }
    }
    panic!(
        "no data/raw above {}: run `kiln data fetch --set full`",
        here.display()
    );
}

fn files_under(dir: &Path, suffixes: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        eprintln!(
            "warning: {} is missing (run `kiln data fetch --set full`)",
            dir.display()
        );
        return;
    };
    let mut entries: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files_under(&path, suffixes, out);
        } else if suffixes.iter().any(|s| path.to_string_lossy().ends_with(s)) {
            out.push(path);
        }
    }
}

fn read_text(path: &Path) -> Option<String> {
    let mut bytes = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(std::fs::File::open(path).ok()?)
            .read_to_end(&mut bytes)
            .ok()?;
    } else {
        bytes = std::fs::read(path).ok()?;
    }
    String::from_utf8(bytes).ok()
}

/// The string values of a JSON-lines file's objects (prompts, texts, answers…), one document each.
fn jsonl_texts(path: &Path, out: &mut Vec<String>) {
    let Some(text) = read_text(path) else { return };
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) if s.len() > 20 => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            walk(&v, out);
        }
    }
}

/// Documents from (in order) Linux and Python doc sources, Perl pod, Shakespeare, then evals'
/// OpenWebText/Wikipedia samples and the other evals JSONL texts, until `min_bytes` is reached.
pub fn documents(min_bytes: usize) -> Vec<String> {
    let raw = data_raw();
    let mut docs: Vec<String> = Vec::new();
    let mut total = 0usize;
    let mut add = |docs: &mut Vec<String>, d: String| -> bool {
        total += d.len();
        docs.push(d);
        total >= min_bytes
    };
    let mut files = Vec::new();
    files_under(&raw.join("linux-doc"), &[".rst.txt"], &mut files);
    files_under(&raw.join("python-doc"), &[".rst.txt"], &mut files);
    files_under(&raw.join("perl-doc"), &[".pod", ".pod.gz"], &mut files);
    files_under(&raw.join("shakespeare"), &[".txt"], &mut files);
    for f in &files {
        if let Some(t) = read_text(f) {
            if add(&mut docs, t) {
                return docs;
            }
        }
    }
    let evals = raw.join("evals/evals/registry/data");
    let mut jsonl = vec![
        evals.join("schelling_point/owt_5.jsonl"),
        evals.join("schelling_point/wikipedia_5.jsonl"),
    ];
    let mut rest = Vec::new();
    files_under(&evals, &[".jsonl"], &mut rest);
    rest.retain(|p| !jsonl.contains(p) && !p.to_string_lossy().contains("schelling_point/mix"));
    jsonl.extend(rest);
    for f in &jsonl {
        let mut texts = Vec::new();
        jsonl_texts(f, &mut texts);
        for t in texts {
            if add(&mut docs, t) {
                return docs;
            }
        }
    }
    docs
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Median of a few timings.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}
