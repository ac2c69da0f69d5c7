//! The speedrun's first stage: web-like text from the fetched packages through kiln-data's
//! pipeline (`kiln data process`: URL filter, extraction, language, Gopher/C4/FineWeb quality
//! filters, MinHash dedup, PII), the kept documents split into training and held-out validation
//! text, and a summary for the report card (documents per source and per stage, three example
//! documents with what was removed).
//!
//! Layout under `<run>/web/`: `input/` (the evals package's samples as JSONL the pipeline reads),
//! `pipeline/` (the pipeline's own output folder: text shards, `stats.json`, rejects; `kiln data
//! explain --out <run>/web/pipeline ID` works on it), `train.parquet` and `val.parquet` (text
//! shards), `summary.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_data::{PipelineConfig, ProcessOptions, Reject, StageStats, Step, TextDoc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::TrainError;

/// Where the web-like text sits inside each fetched package (all in `kiln data fetch`'s default
/// set). The WARC folder also holds pywb's test records (revisits, requests, a bad file): the
/// read stage counts and skips them, as it would in a real crawl.
const WARC_DIR: (&str, &str) = ("pywb", "pywb-2.10.0/sample_archive/warcs");
/// Documentation as HTML, (package, folder inside it): the Python 3.11 docs (530 pages) and the
/// Linux kernel's (3,185 pages). Pages are named `<folder name>/<path>` by the pipeline.
/// The smoke preset reads the first only (the kernel's pages take a few seconds to filter).
const DOC_HTML: &[(&str, &str)] = &[
    ("python-doc", "usr/share/doc/python3.11"),
    ("linux-doc", "usr/share/doc/linux-doc-6.1"),
];
/// Samples in the OpenAI evals registry. In the Schelling-point files each line holds a passage
/// under `"0"` and sentence-shuffled copies of it under `"1"`…`"10"` (made for that eval, not text
/// to learn from): only `"0"` is read. The text-compression samples mix 8 kinds of text, 50 each
/// (quotes, C4, OpenWebText, OSCAR, Wikipedia, GitHub code, random characters, random words): the
/// filters' job is to drop the ones that are not prose.
const EVALS_SAMPLES: &[(&str, &str, &str)] = &[
    (
        "owt",
        "evals/registry/data/schelling_point/owt_5.jsonl",
        "0",
    ),
    (
        "wikipedia",
        "evals/registry/data/schelling_point/wikipedia_5.jsonl",
        "0",
    ),
    (
        "text_compression",
        "evals/registry/data/text_compression/samples.jsonl",
        "text",
    ),
];

/// The packages the web stage reads (`all_docs`: the kernel documentation too).
pub fn sources(all_docs: bool) -> Vec<&'static str> {
    let docs = DOC_HTML
        .iter()
        .take(if all_docs { DOC_HTML.len() } else { 1 });
    [WARC_DIR.0, "evals"]
        .into_iter()
        .chain(docs.map(|d| d.0))
        .collect()
}

/// One source's documents in the report's table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SourceCount {
    pub source: String,
    pub docs_in: u64,
    pub kept: u64,
    pub kept_bytes: u64,
}

/// One document shown on the report card with what the pipeline removed from it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub source: String,
    /// What happened, in words (`kept`, or `dropped at <stage>: <reason>`).
    pub outcome: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// A short excerpt of the document as it came in (for HTML pages: its text with the markup
    /// stripped, every line).
    pub before: String,
    /// The same place in the kept text (empty when dropped).
    pub after: String,
    /// Lines (or spans) that were in the input and are not in the kept text.
    pub removed: Vec<String>,
    /// How many there were in all.
    pub removed_count: usize,
}

/// What the web stage did, for the report card (`<run>/web/summary.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WebSummary {
    pub sources: Vec<SourceCount>,
    /// The pipeline's per-stage counts (`stats.json`).
    pub stages: Vec<StageStats>,
    pub kept_docs: usize,
    pub kept_bytes: usize,
    pub train_docs: usize,
    pub train_bytes: usize,
    /// Held out from the tokenizer and from training: the validation bits-per-byte text.
    pub val_docs: usize,
    pub val_bytes: usize,
    pub examples: Vec<Example>,
    pub seconds: f64,
}

/// Paths of the web stage's outputs under a run folder.
pub struct WebPaths {
    pub root: PathBuf,
}

impl WebPaths {
    pub fn new(run: &Path) -> Self {
        WebPaths {
            root: run.join("web"),
        }
    }
    fn input(&self) -> PathBuf {
        self.root.join("input")
    }
    pub fn pipeline(&self) -> PathBuf {
        self.root.join("pipeline")
    }
    pub fn train(&self) -> PathBuf {
        self.root.join("train.parquet")
    }
    pub fn val(&self) -> PathBuf {
        self.root.join("val.parquet")
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }
}

/// How the kept text is split and capped.
pub struct SplitPlan {
    /// Share of the kept web bytes held out for validation…
    pub val_frac: f64,
    /// …but at least this many bytes (enough for the evals' batches).
    pub min_val_bytes: usize,
    /// Cap on the training text (the smoke preset trains on a slice).
    pub max_train_bytes: usize,
}

/// A documentation folder the pipeline reads: its package and the name its pages' ids start with.
struct DocRoot {
    package: &'static str,
    dir: PathBuf,
    id_prefix: String,
}

/// Run the web stage: gather the inputs, run the pipeline (it resumes by itself), split the kept
/// documents and write the summary. `config` is the pipeline's configuration (`<run>/configs/
/// pipeline.toml`); `all_docs` adds the kernel documentation.
pub fn run(
    data_dir: &Path,
    paths: &WebPaths,
    config: &PipelineConfig,
    all_docs: bool,
    split: &SplitPlan,
    progress: bool,
) -> Result<WebSummary, TrainError> {
    let t0 = Instant::now();
    let input = paths.input();
    std::fs::create_dir_all(&input).map_err(|e| TrainError::io(&input, e))?;
    let originals = gather_samples(data_dir, &input)?;
    let warcs = kiln_data::fetch::source_dir_in(data_dir, WARC_DIR.0)?.join(WARC_DIR.1);
    let mut doc_roots = Vec::new();
    for (package, sub) in DOC_HTML
        .iter()
        .take(if all_docs { DOC_HTML.len() } else { 1 })
    {
        let dir = kiln_data::fetch::source_dir_in(data_dir, package)?.join(sub);
        let id_prefix = format!(
            "{}/",
            dir.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        );
        doc_roots.push(DocRoot {
            package,
            dir,
            id_prefix,
        });
    }
    let out = paths.pipeline();
    let mut inputs = vec![input.clone(), warcs];
    inputs.extend(doc_roots.iter().map(|d| d.dir.clone()));
    let summary = kiln_data::process(&ProcessOptions {
        inputs,
        out: out.clone(),
        config: config.clone(),
        task: 0,
        tasks: 1,
        step: Step::All,
        barrier_timeout: Duration::from_secs(60),
        progress,
    })
    .map_err(|e| TrainError::Data(format!("the web pipeline: {e}")))?;

    let mut kept = Vec::new();
    let text_dir = out.join("text");
    for shard in kiln_data::list_shards(&text_dir)? {
        kept.extend(
            kiln_data::read_text_shard(&shard)
                .map_err(|e| TrainError::Data(format!("{}: {e}", shard.display())))?,
        );
    }
    let rejects = read_rejects(&out.join("rejects"))?;
    let source_of = |id: &str, url: &str| source_name(id, url, &doc_roots);

    let mut sources: BTreeMap<String, SourceCount> = BTreeMap::new();
    for d in &kept {
        let s = sources.entry(source_of(&d.id, &d.url)).or_default();
        s.docs_in += 1;
        s.kept += 1;
        s.kept_bytes += d.text.len() as u64;
    }
    for r in &rejects {
        sources.entry(source_of(&r.id, &r.url)).or_default().docs_in += 1;
    }

    let (train, val) = split_docs(&kept, split, &|d: &TextDoc| source_of(&d.id, &d.url));
    let bytes = |ds: &[TextDoc]| ds.iter().map(|d| d.text.len()).sum::<usize>();
    kiln_data::write_text_shard(&paths.train(), &train)
        .map_err(|e| TrainError::Data(e.to_string()))?;
    kiln_data::write_text_shard(&paths.val(), &val).map_err(|e| TrainError::Data(e.to_string()))?;

    let examples = pick_examples(&kept, &rejects, &originals, &doc_roots, &source_of);
    let s = WebSummary {
        sources: sources
            .into_iter()
            .map(|(source, c)| SourceCount { source, ..c })
            .collect(),
        stages: summary.stats.stages.clone(),
        kept_docs: kept.len(),
        kept_bytes: bytes(&kept),
        train_docs: train.len(),
        train_bytes: bytes(&train),
        val_docs: val.len(),
        val_bytes: bytes(&val),
        examples,
        seconds: t0.elapsed().as_secs_f64(),
    };
    crate::checkpoint::write_json(&paths.summary(), &s)?;
    Ok(s)
}

/// The report's name for a document's source, from its id (the JSONL ids are written by
/// [`gather_samples`]; HTML files are `<folder>/<path>`; everything else came from the WARCs).
fn source_name(id: &str, url: &str, doc_roots: &[DocRoot]) -> String {
    for (name, _, _) in EVALS_SAMPLES {
        if id.starts_with(&format!("{name}/")) {
            return format!("evals: {name}");
        }
    }
    if let Some(d) = doc_roots
        .iter()
        .find(|d| id.starts_with(&d.id_prefix) && url.starts_with("file://"))
    {
        return format!("{}: HTML pages", d.package);
    }
    "web crawl (WARC)".to_string()
}

/// Write the evals package's samples as `{"id", "url", "text"}` JSONL into `input/` (kept if
/// already there) and return the original texts by id.
fn gather_samples(data_dir: &Path, input: &Path) -> Result<HashMap<String, String>, TrainError> {
    let root = kiln_data::fetch::source_dir_in(data_dir, "evals")?;
    let mut originals = HashMap::new();
    for (name, rel, field) in EVALS_SAMPLES {
        let path = root.join(rel);
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        let mut out = String::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).map_err(|e| {
                TrainError::Data(format!("{}: line {}: {e}", path.display(), n + 1))
            })?;
            let Some(body) = v[*field].as_str() else {
                return Err(TrainError::Data(format!(
                    "{}: line {}: no string field `{field}`",
                    path.display(),
                    n + 1
                )));
            };
            // The text-compression samples name their origin (`c4`, `RandomWordsDataset`…).
            let id = match v["type"].as_str() {
                Some(kind) => format!("{name}/{kind}/{}", n + 1),
                None => format!("{name}/{}", n + 1),
            };
            out.push_str(&serde_json::json!({"id": id, "url": "", "text": body}).to_string());
            out.push('\n');
            originals.insert(id, body.to_string());
        }
        let dest = input.join(format!("{name}.jsonl"));
        if !dest.exists() {
            kiln_data::write_atomic(&dest, out.as_bytes()).map_err(|e| TrainError::io(&dest, e))?;
        }
    }
    Ok(originals)
}

fn read_rejects(dir: &Path) -> Result<Vec<Reject>, TrainError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| TrainError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| TrainError::io(&f, e))?;
        for (n, line) in text.lines().enumerate() {
            out.push(
                serde_json::from_str(line).map_err(|e| {
                    TrainError::Data(format!("{}: line {}: {e}", f.display(), n + 1))
                })?,
            );
        }
    }
    Ok(out)
}

/// A stable, well-mixed hash of a document id (FNV-1a, then splitmix64's finalizer: FNV alone
/// leaves the high bits of short, similar ids correlated), so the split does not depend on
/// document order.
fn id_hash(id: &str) -> u64 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Held-out validation documents, drawn from every source in proportion to its kept bytes
/// (lowest id hashes first) until `val_frac` of the bytes (at least `min_val_bytes`), in hash
/// order so that any prefix the evals read mixes the sources; the rest train, in pipeline order,
/// up to `max_train_bytes`.
fn split_docs(
    kept: &[TextDoc],
    p: &SplitPlan,
    source_of: &dyn Fn(&TextDoc) -> String,
) -> (Vec<TextDoc>, Vec<TextDoc>) {
    let total: usize = kept.iter().map(|d| d.text.len()).sum();
    let want = ((total as f64 * p.val_frac) as usize).max(p.min_val_bytes) as f64;
    let mut by_source: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, d) in kept.iter().enumerate() {
        by_source.entry(source_of(d)).or_default().push(i);
    }
    let mut val_idx = Vec::new();
    for docs in by_source.values_mut() {
        let bytes: usize = docs.iter().map(|&i| kept[i].text.len()).sum();
        let target = want * bytes as f64 / total.max(1) as f64;
        docs.sort_by_key(|&i| (id_hash(&kept[i].id), i));
        let mut got = 0usize;
        // Never more than half a source's documents: a tiny corpus still trains.
        for &i in docs.iter().take(docs.len() / 2) {
            if got as f64 >= target {
                break;
            }
            got += kept[i].text.len();
            val_idx.push(i);
        }
    }
    val_idx.sort_by_key(|&i| (id_hash(&kept[i].id), i));
    let mut is_val = vec![false; kept.len()];
    for &i in &val_idx {
        is_val[i] = true;
    }
    let val = val_idx.iter().map(|&i| kept[i].clone()).collect();
    let mut train = Vec::new();
    let mut train_bytes = 0;
    for (d, v) in kept.iter().zip(is_val) {
        if !v && train_bytes < p.max_train_bytes {
            train_bytes += d.text.len();
            train.push(d.clone());
        }
    }
    (train, val)
}

/// Three documents for the report card: the documentation page the extractor removed the most
/// lines from, a sample the pipeline changed (a line filter removed a line, or PII was replaced;
/// else a second page), and a sample a filter dropped.
fn pick_examples(
    kept: &[TextDoc],
    rejects: &[Reject],
    originals: &HashMap<String, String>,
    doc_roots: &[DocRoot],
    source_of: &dyn Fn(&str, &str) -> String,
) -> Vec<Example> {
    let mut pages: Vec<Example> = kept
        .iter()
        .filter(|d| d.url.starts_with("file://"))
        .filter_map(|d| {
            let root = doc_roots.iter().find(|r| d.id.starts_with(&r.id_prefix))?;
            let rel = d.id.strip_prefix(&root.id_prefix)?;
            let html = std::fs::read(root.dir.join(rel)).ok()?;
            Some(page_example(d, &html, source_of(&d.id, &d.url)))
        })
        .collect();
    // Most removed lines first; the id breaks ties so the choice is stable.
    pages.sort_by(|a, b| {
        b.removed_count
            .cmp(&a.removed_count)
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut out = Vec::new();
    let mut pages = pages.into_iter();
    out.extend(pages.next());
    // Changed beyond whitespace (the pipeline also normalises blank lines).
    let pii = kept.iter().find_map(|d| {
        let orig = originals.get(&d.id)?;
        (squash(orig) != squash(&d.text))
            .then(|| changed_example(d, orig, source_of(&d.id, &d.url)))
    });
    out.extend(pii.or_else(|| pages.next()));
    // A dropped sample whose text we have: first one of the text-compression samples (they are
    // labelled with their kind, random words or code among them) that a quality filter dropped.
    let dropped = |prefix: &str, quality_only: bool| {
        rejects.iter().find(|r| {
            originals.contains_key(&r.id)
                && r.id.starts_with(prefix)
                && (!quality_only
                    || matches!(
                        r.stage.as_str(),
                        "gopher_repetition" | "gopher_quality" | "c4" | "fineweb"
                    ))
        })
    };
    let chosen = dropped("text_compression/", true)
        .or_else(|| dropped("", true))
        .or_else(|| dropped("", false));
    if let Some(r) = chosen {
        let text = &originals[&r.id];
        let detail = if r.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.detail)
        };
        out.push(Example {
            id: r.id.clone(),
            source: source_of(&r.id, &r.url),
            outcome: format!("dropped at {}: {}{detail}", r.stage, r.reason),
            bytes_in: text.len() as u64,
            bytes_out: 0,
            before: excerpt(text, 0, 300),
            after: String::new(),
            removed: vec!["the whole document".into()],
            removed_count: 1,
        });
    }
    out
}

/// A kept HTML page: its text lines (markup stripped) that are not in the kept text.
fn page_example(d: &TextDoc, html: &[u8], source: String) -> Example {
    let lines = visible_lines(&String::from_utf8_lossy(html));
    let kept = squash(&d.text);
    let removed: Vec<String> = lines
        .iter()
        .filter(|l| !kept.contains(l.as_str()))
        .cloned()
        .collect();
    Example {
        id: d.id.clone(),
        source,
        outcome: "kept".into(),
        bytes_in: html.len() as u64,
        bytes_out: d.text.len() as u64,
        before: excerpt(&lines.join("\n"), 0, 400),
        after: excerpt(&d.text, 0, 300),
        removed_count: removed.len(),
        removed: removed
            .into_iter()
            .take(8)
            .map(|l| excerpt(&l, 0, 80))
            .collect(),
    }
}

/// A kept text document that the pipeline changed: the first changed place, both
/// texts with whitespace runs as one space (the pipeline also normalises blank lines).
fn changed_example(d: &TextDoc, orig: &str, source: String) -> Example {
    let (a, b) = (squash(orig), squash(&d.text));
    let prefix = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i);
    // The common suffix, in whole chars.
    let suffix: usize = a
        .chars()
        .rev()
        .zip(b.chars().rev())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x.len_utf8())
        .sum();
    let removed_end = a.len().saturating_sub(suffix).max(prefix);
    let start = prefix.saturating_sub(120);
    Example {
        id: d.id.clone(),
        source,
        outcome: "kept, text changed".into(),
        bytes_in: orig.len() as u64,
        bytes_out: d.text.len() as u64,
        before: excerpt(&a, start, 240),
        after: excerpt(&b, start, 240),
        removed: vec![excerpt(&a[prefix..removed_end], 0, 120)],
        removed_count: 1,
    }
}

/// Up to `max` bytes of `s` from byte `start` (both moved to char boundaries), one line.
fn excerpt(s: &str, start: usize, max: usize) -> String {
    let mut a = start.min(s.len());
    while !s.is_char_boundary(a) {
        a -= 1;
    }
    let mut b = (a + max).min(s.len());
    while !s.is_char_boundary(b) {
        b -= 1;
    }
    let mut out = s[a..b].replace('\n', " ⏎ ");
    if a > 0 {
        out.insert(0, '…');
    }
    if b < s.len() {
        out.push('…');
    }
    out
}

/// Whitespace runs as one space, trimmed.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every line of text in a page with its markup stripped: what a tag stripper keeps, shown beside
/// what the extractor kept. Deliberately naive (no boilerplate detection, the common entities
/// only): it is the "before" of the report's example, not an extractor.
fn visible_lines(html: &str) -> Vec<String> {
    const SKIP: &[&str] = &["script", "style", "head", "noscript", "template", "svg"];
    const BLOCK: &[&str] = &[
        "p",
        "div",
        "br",
        "li",
        "ul",
        "ol",
        "dl",
        "dt",
        "dd",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "tr",
        "td",
        "th",
        "table",
        "pre",
        "section",
        "article",
        "nav",
        "header",
        "footer",
        "aside",
        "main",
        "form",
        "blockquote",
        "hr",
        "body",
        "title",
        "figure",
        "figcaption",
    ];
    let mut text = String::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        text.push_str(&decode_entities(&rest[..lt]));
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |e| &after[e + 3..]);
            continue;
        }
        let end = rest.find('>').map_or(rest.len(), |e| e + 1);
        let tag = rest[1..end].trim_end_matches('>');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        rest = &rest[end..];
        if !tag.starts_with('/') && SKIP.contains(&name.as_str()) {
            let close = format!("</{name}");
            let lower = rest.to_ascii_lowercase();
            rest = lower.find(&close).map_or("", |i| &rest[i..]);
            continue;
        }
        if BLOCK.contains(&name.as_str()) {
            text.push('\n');
        } else {
            text.push(' ');
        }
    }
    text.push_str(&decode_entities(rest));
    text.lines().map(squash).filter(|l| !l.is_empty()).collect()
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        // `;` is ASCII: its byte position is a char boundary.
        let Some(semi) = rest.as_bytes()[..rest.len().min(12)]
            .iter()
            .position(|&b| b == b';')
        else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let name = &rest[1..semi];
        let c = match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some(' '),
            _ => name
                .strip_prefix("#x")
                .or_else(|| name.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| name.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, text: &str) -> TextDoc {
        TextDoc {
            text: text.into(),
            id: id.into(),
            url: String::new(),
            language: "en".into(),
            language_score: 1.0,
        }
    }

    #[test]
    fn visible_lines_strip_markup_and_skip_scripts() {
        let html = "<html><head><title>T</title><script>var x = '<p>';</script></head><body>\
            <nav><a href=x>Home</a> | <a>Next</a></nav><p>Caf&eacute; &amp; tea &#8212; \
            <b>bold</b> text.</p><!-- note --><STYLE>p{}</STYLE><div>Last&nbsp;line</div></body></html>";
        assert_eq!(
            visible_lines(html),
            ["Home | Next", "Caf&eacute; & tea — bold text.", "Last line"]
        );
    }

    #[test]
    fn split_holds_out_by_id_and_caps_training() {
        let kept: Vec<TextDoc> = (0..100)
            .map(|i| doc(&format!("d{i}"), &"x".repeat(100)))
            .collect();
        let plan = SplitPlan {
            val_frac: 0.05,
            min_val_bytes: 0,
            max_train_bytes: usize::MAX,
        };
        let one_source = |_: &TextDoc| String::new();
        let (train, val) = split_docs(&kept, &plan, &one_source);
        assert_eq!((train.len(), val.len()), (95, 5));
        let val_ids: Vec<&str> = val.iter().map(|d| d.id.as_str()).collect();
        assert!(train.iter().all(|d| !val_ids.contains(&d.id.as_str())));
        // The same ids are held out whatever the order.
        let mut rev = kept.clone();
        rev.reverse();
        let (_, val2) = split_docs(&rev, &plan, &one_source);
        let mut a: Vec<_> = val.iter().map(|d| &d.id).collect();
        let mut b: Vec<_> = val2.iter().map(|d| &d.id).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        let capped = SplitPlan {
            max_train_bytes: 1000,
            min_val_bytes: 2000,
            ..plan
        };
        let (train, val) = split_docs(&kept, &capped, &one_source);
        assert_eq!((train.len(), val.len()), (10, 20));
        // Two sources, one nine times the other's bytes: the held-out share follows.
        let two = |d: &TextDoc| (d.id[1..].parse::<usize>().unwrap() % 10 == 0).to_string();
        let plan = SplitPlan {
            val_frac: 0.1,
            ..plan
        };
        let (_, val) = split_docs(&kept, &plan, &two);
        let small = val.iter().filter(|d| two(d) == "true").count();
        assert_eq!((val.len(), small), (10, 1), "{val:?}");
    }

    #[test]
    fn changed_example_shows_the_replaced_span() {
        let d = doc("owt/1", "Write to email@example.com today.");
        let e = changed_example(&d, "Write to jane.doe@mail.org today.", "evals: owt".into());
        assert_eq!(e.removed, ["jane.doe@mail.org"]);
        assert!(e.after.contains("email@example.com"));
    }

    #[test]
    fn sources_are_named_from_ids() {
        let roots = [DocRoot {
            package: "python-doc",
            dir: PathBuf::from("/d/python3.11"),
            id_prefix: "python3.11/".into(),
        }];
        assert_eq!(source_name("owt/3", "", &roots), "evals: owt");
        assert_eq!(
            source_name("text_compression/c4/9", "", &roots),
            "evals: text_compression"
        );
        assert_eq!(
            source_name("python3.11/html/a.html", "file:///html/a.html", &roots),
            "python-doc: HTML pages"
        );
        assert_eq!(
            source_name("urn:uuid:1", "http://example.com/", &roots),
            "web crawl (WARC)"
        );
    }
}
