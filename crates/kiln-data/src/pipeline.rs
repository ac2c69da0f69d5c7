//! `kiln data process`: the FineWeb pipeline as task `i` of `N` over a shared output folder.
//!
//! Steps (each runs for this task's share and is skipped where its outputs already exist):
//! 1. `filter` — per input unit `u` (units `u ≡ i mod N`): read → URL filter → extraction →
//!    language → Gopher repetition → Gopher quality → C4 → FineWeb; writes the kept documents
//!    (`filtered/unit-u.parquet`), their MinHash band hashes (`minhash/sigs/unit-u.bin`), the
//!    rejects (`rejects/filter-unit-u.jsonl`) and, last, `stats/filter-unit-u.json`.
//! 2. `buckets` — per band `b ≡ i mod N`: candidate pairs from all units' signatures.
//! 3. `clusters` — task 0: union-find over all pairs → `minhash/remove.bin`.
//! 4. `final` — per unit: drop duplicates (kept: the first document of each cluster in input
//!    order), replace PII, write `text/shard-u.parquet`, rejects and stats.
//! 5. `report` — task 0: merge every stats file into `stats.json`.
//!
//! `all` runs the five in order, waiting between them for every task's `done/<step>.<i>-of-<N>`
//! marker (a barrier on the shared folder), so N copies of one command — a Slurm array or a
//! Kubernetes indexed Job — finish the whole run. Since each unit's output depends only on its
//! input and the global duplicate clusters, N tasks produce the same files as one.

use crate::config::PipelineConfig;
use crate::extract::ExtractError;
use crate::input::{plan_units, read_unit, Payload, RawDoc, ReadItem, Unit};
use crate::minhash::{self, Minhasher, Signatures};
use crate::stats::Stats;
use crate::textshard::{read_text_shard, write_text_shard, TextDoc};
use crate::url_filter::UrlFilter;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    #[error(transparent)]
    Shard(#[from] crate::shards::ShardError),
    #[error(transparent)]
    Minhash(#[from] minhash::MinhashError),
    #[error(transparent)]
    List(#[from] crate::url_filter::ListError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("task {task} is not below the task count {tasks}")]
    BadTask { task: usize, tasks: usize },
    #[error("waited {secs} s for {missing} (another task failed or is still running?)")]
    Barrier { secs: u64, missing: String },
    #[error("unknown step `{0}` (steps: filter, buckets, clusters, final, report, all)")]
    UnknownStep(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PipelineError + '_ {
    move |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which steps to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Filter,
    Buckets,
    Clusters,
    Final,
    Report,
    All,
}

impl std::str::FromStr for Step {
    type Err = PipelineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "filter" => Step::Filter,
            "buckets" => Step::Buckets,
            "clusters" => Step::Clusters,
            "final" => Step::Final,
            "report" => Step::Report,
            "all" => Step::All,
            _ => return Err(PipelineError::UnknownStep(s.to_string())),
        })
    }
}

/// Options of one `kiln data process` invocation.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub config: PipelineConfig,
    pub task: usize,
    pub tasks: usize,
    pub step: Step,
    /// How long `all` waits for other tasks at a barrier.
    pub barrier_timeout: Duration,
    pub progress: bool,
}

/// What this invocation did.
#[derive(Debug, Clone)]
pub struct ProcessSummary {
    /// Merged stats of the whole run (task 0 after `report`), else this task's own.
    pub stats: Stats,
    pub merged: bool,
    pub units_done: usize,
    pub units_skipped: usize,
    pub seconds: f64,
    /// Documents read by this task's filter step (for throughput).
    pub docs_read: u64,
}

/// A dropped document, one JSON line of a rejects log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    pub id: String,
    pub url: String,
    pub stage: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub unit: usize,
}

struct Ctx<'a> {
    cfg: &'a PipelineConfig,
    url: UrlFilter,
    hasher: Minhasher,
}

enum Outcome {
    Kept(TextDoc),
    Dropped {
        stage: &'static str,
        reason: String,
        detail: String,
    },
}

/// Per document: the outcome and the stages it went through (stage, bytes in, bytes out
/// when passed), plus notes.
struct Traced {
    outcome: Outcome,
    trace: Vec<(&'static str, u64, Option<u64>)>,
    notes: Vec<(&'static str, &'static str)>,
    bands: Option<Vec<u64>>,
    id: String,
    url: String,
}

fn process_doc(raw: RawDoc, ctx: &Ctx) -> Traced {
    let RawDoc { id, url, payload } = raw;
    let mut t = process_payload(&url, payload, ctx);
    if let Outcome::Kept(doc) = &mut t.outcome {
        doc.id.clone_from(&id);
        doc.url.clone_from(&url);
    }
    t.id = id;
    t.url = url;
    t
}

fn process_payload(url: &str, payload: Payload, ctx: &Ctx) -> Traced {
    let cfg = ctx.cfg;
    let mut trace = Vec::with_capacity(8);
    let mut notes = Vec::new();
    let drop = |stage: &'static str,
                reason: &str,
                detail: String,
                bytes: u64,
                mut trace: Vec<(&'static str, u64, Option<u64>)>,
                notes| {
        trace.push((stage, bytes, None));
        Traced {
            outcome: Outcome::Dropped {
                stage,
                reason: reason.to_string(),
                detail,
            },
            trace,
            notes,
            bands: None,
            id: String::new(),
            url: String::new(),
        }
    };
    let raw_bytes = match &payload {
        Payload::Html { bytes, .. } => bytes.len(),
        Payload::Text(t) => t.len(),
    } as u64;
    // URL filter.
    if cfg.url_filter.enabled {
        if let Some(reason) = ctx.url.check(url) {
            return drop("url_filter", reason, String::new(), raw_bytes, trace, notes);
        }
        trace.push(("url_filter", raw_bytes, Some(raw_bytes)));
    }
    // Extraction.
    let text = match payload {
        Payload::Html {
            bytes,
            content_type,
        } => match extract_page(&bytes, content_type.as_deref(), cfg) {
            Ok(page) => {
                if page.charset_corrected {
                    notes.push(("extract", "charset_corrected"));
                }
                page.text
            }
            Err(d) => return drop("extract", d.reason, d.detail, raw_bytes, trace, notes),
        },
        Payload::Text(t) => t,
    };
    if text.trim().is_empty() {
        return drop("extract", "no_text", String::new(), raw_bytes, trace, notes);
    }
    let tb = text.len() as u64;
    trace.push(("extract", raw_bytes, Some(tb)));
    // Language.
    let (language, score) = if cfg.language.enabled {
        let (reason, lang, score) = crate::lang::check(&text, &cfg.language);
        if let Some(reason) = reason {
            return drop(
                "language",
                reason,
                format!("{lang} {score:.3}"),
                tb,
                trace,
                notes,
            );
        }
        trace.push(("language", tb, Some(tb)));
        (lang, score)
    } else {
        let (lang, score) = crate::lang::identify(&text, cfg.language.max_chars);
        (lang, score)
    };
    if cfg.gopher_repetition.enabled {
        if let Err(r) = crate::quality::gopher_repetition(&text, &cfg.gopher_repetition) {
            return drop("gopher_repetition", r, String::new(), tb, trace, notes);
        }
        trace.push(("gopher_repetition", tb, Some(tb)));
    }
    if cfg.gopher_quality.enabled {
        if let Err(r) = crate::quality::gopher_quality(&text, &cfg.gopher_quality) {
            return drop("gopher_quality", r, String::new(), tb, trace, notes);
        }
        trace.push(("gopher_quality", tb, Some(tb)));
    }
    let text = if cfg.c4.enabled {
        match crate::quality::c4(&text, &cfg.c4) {
            Ok(t) => {
                trace.push(("c4", tb, Some(t.len() as u64)));
                t
            }
            Err(r) => return drop("c4", r, String::new(), tb, trace, notes),
        }
    } else {
        text
    };
    let tb = text.len() as u64;
    if cfg.fineweb.enabled {
        if let Err(r) = crate::quality::fineweb(&text, &cfg.fineweb) {
            return drop("fineweb", r, String::new(), tb, trace, notes);
        }
        trace.push(("fineweb", tb, Some(tb)));
    }
    let bands = if cfg.minhash.enabled {
        ctx.hasher.band_hashes(&text)
    } else {
        None
    };
    Traced {
        outcome: Outcome::Kept(TextDoc {
            text,
            id: String::new(),
            url: String::new(),
            language,
            language_score: score,
        }),
        trace,
        notes,
        bands,
        id: String::new(),
        url: String::new(),
    }
}

/// The output folder's layout.
struct Layout {
    out: PathBuf,
}

impl Layout {
    fn filtered(&self, u: usize) -> PathBuf {
        self.out.join(format!("filtered/unit-{u:05}.parquet"))
    }
    fn sigs(&self, u: usize) -> PathBuf {
        self.out.join(format!("minhash/sigs/unit-{u:05}.bin"))
    }
    fn pairs(&self, b: usize) -> PathBuf {
        self.out.join(format!("minhash/pairs/band-{b:02}.bin"))
    }
    fn remove(&self) -> PathBuf {
        self.out.join("minhash/remove.bin")
    }
    fn text(&self, u: usize) -> PathBuf {
        self.out.join(format!("text/shard-{u:05}.parquet"))
    }
    fn rejects(&self, step: &str, u: usize) -> PathBuf {
        self.out.join(format!("rejects/{step}-unit-{u:05}.jsonl"))
    }
    fn stats(&self, step: &str, u: usize) -> PathBuf {
        self.out.join(format!("stats/{step}-unit-{u:05}.json"))
    }
    fn marker(&self, step: &str, i: usize, n: usize) -> PathBuf {
        self.out.join(format!("done/{step}.{i}-of-{n}"))
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), PipelineError> {
    let bytes = serde_json::to_vec_pretty(value).expect("serialisable");
    crate::write_atomic(path, &bytes).map_err(io_err(path))
}

fn read_stats(path: &Path) -> Result<Stats, PipelineError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|e| PipelineError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn write_rejects(path: &Path, rejects: &[Reject]) -> Result<(), PipelineError> {
    let mut bytes = Vec::new();
    for r in rejects {
        serde_json::to_writer(&mut bytes, r).expect("serialisable");
        bytes.push(b'\n');
    }
    crate::write_atomic(path, &bytes).map_err(io_err(path))
}

struct Bars {
    bars: Vec<(&'static str, ProgressBar)>,
}

impl Bars {
    fn new(enabled: bool, stages: &[&'static str]) -> Self {
        let multi = MultiProgress::new();
        if !enabled {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let style = ProgressStyle::with_template("{prefix:>18} {pos:>9} docs in  {msg}")
            .expect("valid template");
        let bars = stages
            .iter()
            .map(|&s| {
                let b = multi.add(ProgressBar::new_spinner());
                b.set_style(style.clone());
                b.set_prefix(s);
                (s, b)
            })
            .collect();
        Self { bars }
    }
    fn update(&self, stats: &Stats) {
        for (name, bar) in &self.bars {
            if let Some(s) = stats.stages.iter().find(|s| s.stage == *name) {
                bar.set_position(s.docs_in);
                bar.set_message(format!("{} kept", s.docs_out));
            }
        }
    }
    fn finish(&self) {
        for (_, b) in &self.bars {
            b.finish();
        }
    }
}

/// Step 1 for one unit. Returns the docs read.
fn filter_unit(
    unit: &Unit,
    ctx: &Ctx,
    layout: &Layout,
    total: &mut Stats,
    bars: &Bars,
) -> Result<u64, PipelineError> {
    let mut stats = Stats::default();
    let mut rejects = Vec::new();
    let mut docs = Vec::new();
    read_unit(unit, &ctx.cfg.input, &mut |item| match item {
        ReadItem::Doc(d) => {
            let b = match &d.payload {
                Payload::Html { bytes, .. } => bytes.len(),
                Payload::Text(t) => t.len(),
            } as u64;
            stats.pass("read", b, b);
            docs.push(d);
        }
        ReadItem::Skip {
            id,
            url,
            reason,
            detail,
            bytes,
        } => {
            stats.drop("read", reason, bytes as u64);
            rejects.push(Reject {
                id,
                url,
                stage: "read".into(),
                reason: reason.into(),
                detail,
                unit: unit.index,
            });
        }
        ReadItem::Note(n) => stats.note("read", &n, 1),
    })?;
    let n_read = stats.stage("read").docs_in;
    let mut kept = Vec::new();
    let mut sigs = Signatures {
        keys: vec![],
        bands: vec![
            vec![];
            if ctx.cfg.minhash.enabled {
                ctx.hasher.bands()
            } else {
                0
            }
        ],
    };
    // Chunks keep the progress bars moving on big units.
    let mut docs = docs.into_iter();
    loop {
        let chunk: Vec<RawDoc> = docs.by_ref().take(2048).collect();
        if chunk.is_empty() {
            break;
        }
        let results: Vec<Traced> = chunk.into_par_iter().map(|d| process_doc(d, ctx)).collect();
        let mut chunk_stats = Stats::default();
        for t in results {
            for (stage, bin, bout) in &t.trace {
                match (bout, &t.outcome) {
                    (Some(bout), _) => chunk_stats.pass(stage, *bin, *bout),
                    (None, Outcome::Dropped { reason, .. }) => {
                        chunk_stats.drop(stage, reason, *bin)
                    }
                    (None, Outcome::Kept(_)) => unreachable!("kept documents pass every stage"),
                }
            }
            for (stage, note) in &t.notes {
                chunk_stats.note(stage, note, 1);
            }
            match t.outcome {
                Outcome::Kept(doc) => {
                    if let Some(bands) = t.bands {
                        sigs.keys
                            .push(((unit.index as u64) << 32) | kept.len() as u64);
                        for (b, h) in bands.into_iter().enumerate() {
                            sigs.bands[b].push(h);
                        }
                    }
                    kept.push(doc);
                }
                Outcome::Dropped {
                    stage,
                    reason,
                    detail,
                } => {
                    rejects.push(Reject {
                        id: t.id,
                        url: t.url,
                        stage: stage.into(),
                        reason,
                        detail,
                        unit: unit.index,
                    });
                }
            }
        }
        stats.merge(&chunk_stats);
        let mut shown = total.clone();
        shown.merge(&stats);
        bars.update(&shown);
    }
    write_text_shard(&layout.filtered(unit.index), &kept)?;
    if ctx.cfg.minhash.enabled {
        sigs.write(&layout.sigs(unit.index))?;
    }
    write_rejects(&layout.rejects("filter", unit.index), &rejects)?;
    write_json(&layout.stats("filter", unit.index), &stats)?;
    total.merge(&stats);
    Ok(n_read)
}

fn wait_for(paths: &[PathBuf], timeout: Duration) -> Result<(), PipelineError> {
    let start = Instant::now();
    loop {
        let missing: Vec<&PathBuf> = paths.iter().filter(|p| !p.exists()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(PipelineError::Barrier {
                secs: timeout.as_secs(),
                missing: missing
                    .iter()
                    .take(3)
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run `kiln data process` for one task.
pub fn process(opts: &ProcessOptions) -> Result<ProcessSummary, PipelineError> {
    let start = Instant::now();
    let (i, n) = (opts.task, opts.tasks.max(1));
    if i >= n {
        return Err(PipelineError::BadTask { task: i, tasks: n });
    }
    let cfg = &opts.config;
    let layout = Layout {
        out: opts.out.clone(),
    };
    std::fs::create_dir_all(&opts.out).map_err(io_err(&opts.out))?;
    let units = plan_units(&opts.inputs, &cfg.input)?;
    let mine: Vec<&Unit> = units.iter().filter(|u| u.index % n == i).collect();
    let ctx = Ctx {
        cfg,
        url: UrlFilter::new(&cfg.url_filter)?,
        hasher: Minhasher::new(&cfg.minhash),
    };
    let all = opts.step == Step::All;
    let barrier = |step: &str| -> Result<(), PipelineError> {
        crate::write_atomic(&layout.marker(step, i, n), b"").map_err(io_err(&layout.out))?;
        if all {
            let markers: Vec<PathBuf> = (0..n).map(|t| layout.marker(step, t, n)).collect();
            wait_for(&markers, opts.barrier_timeout)?;
        }
        Ok(())
    };
    let mut summary = ProcessSummary {
        stats: Stats::default(),
        merged: false,
        units_done: 0,
        units_skipped: 0,
        seconds: 0.0,
        docs_read: 0,
    };

    if all || opts.step == Step::Filter {
        let bars = Bars::new(opts.progress, &crate::stats::STAGES[..8]);
        for unit in &mine {
            let done = layout.stats("filter", unit.index);
            if done.exists() {
                summary.units_skipped += 1;
                summary.stats.merge(&read_stats(&done)?);
                continue;
            }
            tracing::debug!(unit = unit.index, "filter {}", unit.describe());
            summary.docs_read += filter_unit(unit, &ctx, &layout, &mut summary.stats, &bars)?;
            summary.units_done += 1;
        }
        bars.finish();
        barrier("filter")?;
    }

    if cfg.minhash.enabled && (all || opts.step == Step::Buckets) {
        let bands = cfg.minhash.num_buckets;
        let my_bands: Vec<usize> = (0..bands).filter(|b| b % n == i).collect();
        let todo: Vec<usize> = my_bands
            .into_iter()
            .filter(|&b| !layout.pairs(b).exists())
            .collect();
        if !todo.is_empty() {
            let sigs: Vec<Signatures> = units
                .iter()
                .map(|u| Signatures::read(&layout.sigs(u.index)))
                .collect::<Result<_, _>>()?;
            for b in todo {
                let mut entries: Vec<(u64, u64)> = sigs
                    .iter()
                    .flat_map(|s| s.bands[b].iter().copied().zip(s.keys.iter().copied()))
                    .collect();
                let pairs = minhash::band_pairs(&mut entries);
                minhash::write_pairs(&layout.pairs(b), &pairs)?;
            }
        }
        barrier("buckets")?;
    }

    if cfg.minhash.enabled && (all || opts.step == Step::Clusters) {
        if i == 0 && !layout.remove().exists() {
            let mut pairs = Vec::new();
            for b in 0..cfg.minhash.num_buckets {
                pairs.extend(minhash::read_pairs(&layout.pairs(b))?);
            }
            let removed = minhash::clusters(pairs);
            minhash::write_remove(&layout.remove(), &removed)?;
        }
        barrier("clusters")?;
    }

    if all || opts.step == Step::Final {
        let removed: HashMap<u64, u64> = if cfg.minhash.enabled {
            minhash::read_remove(&layout.remove())?
                .into_iter()
                .collect()
        } else {
            HashMap::new()
        };
        let mut id_cache: HashMap<usize, Vec<String>> = HashMap::new();
        let bars = Bars::new(opts.progress, &["minhash", "pii"]);
        let mut final_stats = Stats::default();
        for unit in &mine {
            let done = layout.stats("final", unit.index);
            if done.exists() {
                final_stats.merge(&read_stats(&done)?);
                continue;
            }
            let docs = read_text_shard(&layout.filtered(unit.index))?;
            let mut stats = Stats::default();
            let mut rejects = Vec::new();
            let mut kept_docs = Vec::new();
            for (row, doc) in docs.into_iter().enumerate() {
                let key = ((unit.index as u64) << 32) | row as u64;
                let b = doc.text.len() as u64;
                if cfg.minhash.enabled {
                    if let Some(&keeper) = removed.get(&key) {
                        let ku = (keeper >> 32) as usize;
                        let kr = (keeper & 0xffff_ffff) as usize;
                        if let std::collections::hash_map::Entry::Vacant(e) = id_cache.entry(ku) {
                            e.insert(crate::shards::read_text_column(&layout.filtered(ku), "id")?);
                        }
                        let keeper_id = id_cache[&ku].get(kr).cloned().unwrap_or_default();
                        stats.drop("minhash", "duplicate", b);
                        rejects.push(Reject {
                            id: doc.id,
                            url: doc.url,
                            stage: "minhash".into(),
                            reason: "duplicate".into(),
                            detail: format!("near-duplicate of {keeper_id}"),
                            unit: unit.index,
                        });
                        continue;
                    }
                    stats.pass("minhash", b, b);
                }
                let mut doc = doc;
                if cfg.pii.enabled {
                    let (text, emails, ips) = crate::pii::redact(&doc.text, &cfg.pii);
                    stats.pass("pii", b, text.len() as u64);
                    stats.note("pii", "emails_replaced", emails as u64);
                    stats.note("pii", "ipv4_replaced", ips as u64);
                    doc.text = text;
                }
                kept_docs.push(doc);
            }
            write_text_shard(&layout.text(unit.index), &kept_docs)?;
            write_rejects(&layout.rejects("final", unit.index), &rejects)?;
            write_json(&done, &stats)?;
            final_stats.merge(&stats);
            bars.update(&final_stats);
        }
        bars.finish();
        summary.stats.merge(&final_stats);
        barrier("final")?;
    }

    if (all || opts.step == Step::Report) && i == 0 {
        let mut merged = Stats::default();
        for u in &units {
            for step in ["filter", "final"] {
                let p = layout.stats(step, u.index);
                if p.exists() {
                    merged.merge(&read_stats(&p)?);
                }
            }
        }
        write_json(&layout.out.join("stats.json"), &merged)?;
        summary.stats = merged;
        summary.merged = true;
    }
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// What `kiln data explain` found for a document id.
#[derive(Debug, Clone, PartialEq)]
pub enum Explanation {
    Dropped(Reject),
    Kept {
        shard: PathBuf,
        row: usize,
        language: String,
        language_score: f64,
        chars: usize,
    },
    NotFound,
}

/// Look a document id up in a finished (or partial) output folder.
pub fn explain(out: &Path, id: &str) -> Result<Explanation, PipelineError> {
    let rejects_dir = out.join("rejects");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&rejects_dir)
        .map_err(io_err(&rejects_dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let needle = serde_json::to_string(id).expect("string");
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(io_err(f))?;
        for (n, line) in text.lines().enumerate() {
            if !line.contains(&needle) {
                continue;
            }
            let r: Reject = serde_json::from_str(line).map_err(|e| PipelineError::Format {
                path: f.clone(),
                message: format!("line {}: {e}", n + 1),
            })?;
            if r.id == id {
                return Ok(Explanation::Dropped(r));
            }
        }
    }
    let text_dir = out.join("text");
    if text_dir.exists() {
        for shard in crate::shards::list_shards(&text_dir)? {
            let ids = crate::shards::read_text_column(&shard, "id")?;
            if let Some(row) = ids.iter().position(|x| x == id) {
                let doc = read_text_shard(&shard)?.swap_remove(row);
                return Ok(Explanation::Kept {
                    shard,
                    row,
                    language: doc.language,
                    language_score: doc.language_score,
                    chars: doc.text.chars().count(),
                });
            }
        }
    }
    Ok(Explanation::NotFound)
}

/// One page's main text as the extraction stage keeps it: size check, charset (BOM, HTTP header,
/// `<meta>`, corrected by detection), the undecodable-page check, then [`crate::extract::extract`].
/// `kiln data extract` prints exactly this, so a user can see what happens to one page.
pub fn extract_page(
    bytes: &[u8],
    content_type: Option<&str>,
    cfg: &PipelineConfig,
) -> Result<PageText, PageDrop> {
    let dropped = |reason, detail| Err(PageDrop { reason, detail });
    if bytes.len() > cfg.extract.max_html_bytes {
        return dropped("html_too_large", format!("{} bytes", bytes.len()));
    }
    let decoded = crate::charset::decode(bytes, content_type);
    let chars = decoded.text.len().max(1);
    if decoded.replacements as f64 / chars as f64 > cfg.input.max_replacement_ratio {
        return dropped(
            "undecodable",
            format!(
                "{} replacement characters as {}",
                decoded.replacements, decoded.encoding
            ),
        );
    }
    match crate::extract::extract(&decoded.text, &cfg.extract) {
        Ok(text) => Ok(PageText {
            text,
            charset_corrected: decoded.detected,
        }),
        Err(ExtractError::TooDeep(d)) => dropped("html_too_deep", format!("depth > {d}")),
        Err(ExtractError::TooLarge(n)) => dropped("html_too_large", format!("> {n} bytes")),
    }
}

/// The URL filter stage for one page, as the pipeline runs it before extraction: `None` when the
/// page's URL passes (or the stage is disabled), else the reject reason (`blocked_domain`,
/// `banned_word`, …). `kiln data extract --url` runs it first.
pub fn check_url(url: &str, cfg: &PipelineConfig) -> Result<Option<&'static str>, PipelineError> {
    if !cfg.url_filter.enabled {
        return Ok(None);
    }
    Ok(UrlFilter::new(&cfg.url_filter)?.check(url))
}

/// The text [`extract_page`] kept.
#[derive(Debug, Clone, PartialEq)]
pub struct PageText {
    pub text: String,
    /// The declared charset was wrong and detection chose another.
    pub charset_corrected: bool,
}

/// Why [`extract_page`] dropped a page (the pipeline's reject reason and its detail).
#[derive(Debug, Clone, PartialEq)]
pub struct PageDrop {
    pub reason: &'static str,
    pub detail: String,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A paragraph-rich English article; `seed` varies its words so articles differ.
    pub(crate) fn article(seed: usize) -> String {
        let towns = [
            "Ashford", "Bramley", "Corwen", "Dunmore", "Elstow", "Fairlie", "Glenrock", "Hexham",
        ];
        let town = towns[seed % towns.len()];
        let sentences = [
            "The town of {T} grew beside the river in the year {N}, when farmers began to trade grain with the boats that passed.",
            "Its first bridge was made of timber, and a flood carried it away before the masons of the valley built the stone one that stands today.",
            "Merchants who settled there built tall houses along the quay, with cellars deep enough to keep wine and wool dry through the winter.",
            "A market has been held in the square every Saturday since a royal charter granted the right, and it still draws people from the hills.",
            "The church has a tower that can be seen from far across the marshes, which made it a landmark for sailors coming up the estuary.",
            "During the last century the mills closed one by one, yet several were restored by volunteers who now open them to visitors in summer.",
            "Walkers like to follow the towpath to the next village, where a small ferry carries them back across the water before dusk.",
            "The local museum keeps letters, maps and tools that show how families in {T} lived, worked and argued about the price of bread.",
            "Children at the school learn the old songs of the boatmen, and a festival in autumn brings bands and dancers into every street.",
            "Historians still debate why the harbour silted up so quickly, though most agree that cutting the forests upstream played a part.",
            "A railway reached {T} late, and with it came visitors from the cities who wrote about the quiet lanes and the light on the river.",
            "Today the council tries to balance new housing with the wish to keep the character that drew so many people here in the first place.",
        ];
        let mut s = String::new();
        for p in 0..6 {
            s.push_str("<p>");
            for k in 0..2 {
                let line = sentences[(p * 2 + k + seed) % sentences.len()]
                    .replace("{T}", town)
                    .replace("{N}", &(1200 + seed * 7 + p).to_string());
                s.push_str(&line);
                s.push(' ');
            }
            s.push_str(&format!("Record {seed}-{p} of the archive.</p>\n"));
        }
        s
    }

    pub(crate) fn page(body: &str) -> String {
        format!("<html><head><title>t</title><script>var x=1;</script></head><body><nav><a href='/'>Home</a></nav><main>{body}</main><footer>Footer links</footer></body></html>")
    }

    pub(crate) fn warc_record(uri: &str, id: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
        let mut http = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        http.extend_from_slice(body);
        let mut rec = format!(
            "WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {uri}\r\nWARC-Record-ID: <urn:uuid:{id}>\r\nContent-Type: application/http; msgtype=response\r\nContent-Length: {}\r\n\r\n",
            http.len()
        )
        .into_bytes();
        rec.extend_from_slice(&http);
        rec.extend_from_slice(b"\r\n\r\n");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&rec).unwrap();
        e.finish().unwrap()
    }

    /// A WARC exercising every stage: (file bytes, expected fate per id).
    pub(crate) fn fixture_warc(tag: usize) -> Vec<u8> {
        let mut w = Vec::new();
        let html = |b: &str| page(b).into_bytes();
        let t = tag * 100;
        w.extend(warc_record(
            "http://good.example/a",
            &format!("good-{t}"),
            "text/html; charset=utf-8",
            &html(&article(t)),
        ));
        // A near-duplicate of the previous one (one word changed).
        w.extend(warc_record(
            "http://mirror.example/a",
            &format!("dup-{t}"),
            "text/html",
            &html(&article(t).replacen("timber", "wood", 1)),
        ));
        w.extend(warc_record(
            "http://www.pornhub.com/x",
            &format!("blocked-{t}"),
            "text/html",
            &html(&article(t + 1)),
        ));
        w.extend(warc_record(
            "http://img.example/x.png",
            &format!("png-{t}"),
            "image/png",
            b"\x89PNG\r\n\x1a\n....",
        ));
        let de = "<p>Der schnelle braune Fuchs springt über den faulen Hund, während der Bauer von der Veranda aus zusieht und seinen Kaffee trinkt. Die Stadt liegt am Fluss und hat eine lange Geschichte.</p>".repeat(4);
        w.extend(warc_record(
            "http://de.example/",
            &format!("german-{t}"),
            "text/html",
            &html(&de),
        ));
        w.extend(warc_record("http://short.example/", &format!("short-{t}"), "text/html", &html("<p>Too short to keep, although written in plain English with a handful of different words that never repeat anywhere else inside this small paragraph.</p>")));
        let pii = format!("{}<p>Contact the town clerk at clerk.office@town-{t}.example or the server at 8.8.4.4 for the archive of the old mill records and their history.</p>", article(t + 2));
        w.extend(warc_record(
            "http://pii.example/",
            &format!("pii-{t}"),
            "text/html",
            &html(&pii),
        ));
        w.extend(warc_record(
            "http://deep.example/",
            &format!("deep-{t}"),
            "text/html",
            "<div>".repeat(2000).as_bytes(),
        ));
        let latin1: Vec<u8> = html(&article(t + 3))
            .into_iter()
            .map(|b| if b == b'q' { 0xe9 } else { b })
            .collect();
        w.extend(warc_record(
            "http://latin.example/",
            &format!("latin-{t}"),
            "text/html; charset=utf-8",
            &latin1,
        ));
        w
    }

    fn run(
        inputs: Vec<PathBuf>,
        out: &Path,
        task: usize,
        tasks: usize,
        step: Step,
    ) -> ProcessSummary {
        process(&ProcessOptions {
            inputs,
            out: out.to_path_buf(),
            config: PipelineConfig::default(),
            task,
            tasks,
            step,
            barrier_timeout: Duration::from_secs(60),
            progress: false,
        })
        .unwrap()
    }

    fn fate(out: &Path, id: &str) -> String {
        match explain(out, id).unwrap() {
            Explanation::Dropped(r) => format!("{}:{}", r.stage, r.reason),
            Explanation::Kept { .. } => "kept".into(),
            Explanation::NotFound => "missing".into(),
        }
    }

    #[test]
    fn every_stage_drops_what_it_should_and_explain_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let warc = dir.path().join("in.warc.gz");
        let mut bytes = fixture_warc(0);
        // A truncated last member: counted, the run goes on.
        let extra = warc_record(
            "http://cut.example/",
            "cut",
            "text/html",
            &page(&article(9)).into_bytes(),
        );
        bytes.extend_from_slice(&extra[..extra.len() / 2]);
        std::fs::write(&warc, bytes).unwrap();
        let out = dir.path().join("out");
        let s = run(vec![warc.clone()], &out, 0, 1, Step::All);
        assert!(s.merged);
        let expect = [
            ("urn:uuid:good-0", "kept"),
            ("urn:uuid:dup-0", "minhash:duplicate"),
            ("urn:uuid:blocked-0", "url_filter:blocked_domain"),
            ("urn:uuid:png-0", "read:non_html"),
            ("urn:uuid:german-0", "language:language_not_kept"),
            ("urn:uuid:short-0", "gopher_quality:gopher_short_doc"),
            ("urn:uuid:pii-0", "kept"),
            ("urn:uuid:deep-0", "extract:html_too_deep"),
            ("urn:uuid:latin-0", "kept"),
            ("in.warc.gz#record10", "read:truncated_gzip"),
        ];
        for (id, want) in expect {
            assert_eq!(fate(&out, id), want, "{id}");
        }
        let docs = read_text_shard(&out.join("text/shard-00000.parquet")).unwrap();
        let pii = docs.iter().find(|d| d.id == "urn:uuid:pii-0").unwrap();
        assert!(
            pii.text.contains("email@example.com")
                && !pii.text.contains("clerk.office")
                && !pii.text.contains("8.8.4.4")
        );
        assert!(docs
            .iter()
            .all(|d| d.language == "en" && d.language_score > 0.65));
        assert!(!docs[0].text.contains("Footer") && !docs[0].text.contains("Home"));
        let latin = docs.iter().find(|d| d.id == "urn:uuid:latin-0").unwrap();
        assert!(latin.text.contains('é'), "charset fallback decoded latin-1");
        let stats: Stats =
            serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
        let read = &stats.stages[0];
        assert_eq!((read.docs_in, read.docs_out), (10, 8));
        let mh = stats.stages.iter().find(|s| s.stage == "minhash").unwrap();
        assert_eq!((mh.docs_in, mh.docs_out), (4, 3));
        assert_eq!(
            stats
                .stages
                .iter()
                .find(|s| s.stage == "pii")
                .unwrap()
                .notes["emails_replaced"],
            1
        );
        // A rerun skips every finished unit and gives the same files.
        let before = std::fs::read(out.join("text/shard-00000.parquet")).unwrap();
        let again = run(vec![warc], &out, 0, 1, Step::All);
        assert_eq!((again.units_done, again.units_skipped), (0, 1));
        assert_eq!(
            std::fs::read(out.join("text/shard-00000.parquet")).unwrap(),
            before
        );
        assert_eq!(again.stats, s.stats);
    }

    #[test]
    fn steps_run_separately_by_several_tasks_match_one_task() {
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = Vec::new();
        for k in 0..3 {
            let p = dir.path().join(format!("in-{k}.warc.gz"));
            let mut bytes = fixture_warc(k);
            // A cross-file duplicate: unit 2 repeats unit 0's good article.
            if k == 2 {
                bytes.extend(warc_record(
                    "http://copy.example/",
                    "xdup",
                    "text/html",
                    page(&article(0)).as_bytes(),
                ));
            }
            std::fs::write(&p, bytes).unwrap();
            inputs.push(p);
        }
        let one = dir.path().join("one");
        run(inputs.clone(), &one, 0, 1, Step::All);
        let many = dir.path().join("many");
        for step in [
            Step::Filter,
            Step::Buckets,
            Step::Clusters,
            Step::Final,
            Step::Report,
        ] {
            for t in 0..2 {
                run(inputs.clone(), &many, t, 2, step);
            }
        }
        for u in 0..3 {
            let name = format!("text/shard-{u:05}.parquet");
            assert_eq!(
                read_text_shard(&one.join(&name)).unwrap(),
                read_text_shard(&many.join(&name)).unwrap(),
                "{name}"
            );
        }
        assert_eq!(
            std::fs::read(one.join("stats.json")).unwrap(),
            std::fs::read(many.join("stats.json")).unwrap()
        );
        assert_eq!(fate(&many, "urn:uuid:xdup"), "minhash:duplicate");
        match explain(&many, "urn:uuid:xdup").unwrap() {
            Explanation::Dropped(r) => assert_eq!(r.detail, "near-duplicate of urn:uuid:good-0"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn html_folder_and_jsonl_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site");
        std::fs::create_dir_all(site.join("docs")).unwrap();
        std::fs::write(site.join("docs/a.html"), page(&article(5))).unwrap();
        std::fs::write(
            site.join("b.html"),
            b"<p>\xff\xfe invalid \xff bytes everywhere \xfe\xff</p>",
        )
        .unwrap();
        let jsonl = dir.path().join("d.jsonl");
        let text = crate::quality::tests::good_text();
        std::fs::write(
            &jsonl,
            format!(
                "{}\n{{broken\n",
                serde_json::json!({"text": text, "id": "j1", "url": "http://j.example/"})
            ),
        )
        .unwrap();
        let out = dir.path().join("out");
        run(vec![site, jsonl], &out, 0, 1, Step::All);
        assert_eq!(fate(&out, "site/docs/a.html"), "kept");
        assert_eq!(fate(&out, "j1"), "kept");
        assert_eq!(fate(&out, "d.jsonl:2"), "read:malformed_json");
        // Undecodable bytes: dropped by a filter, never fatal.
        let b = fate(&out, "site/b.html");
        assert!(b != "kept" && b != "missing", "{b}");
    }
}
