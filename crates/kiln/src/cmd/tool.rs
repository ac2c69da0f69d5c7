//! `kiln tool …`: run one of the model's tools by hand and print exactly what the model would see.
//! Exit status 0 when the tool ran, 1 when it reported a failure to the model (Python raised, the
//! sandbox stopped the program) — the reason is on stdout, as the model sees it — and 2 when the
//! tool itself could not start (e.g. the interpreter is not fetched; the message is on stderr).
//! `kiln index build` makes the search tool's index from text shards.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kiln_chat::tools::search::SearchIndex;
use kiln_sandbox::{Limits, Sandbox, Status};

#[derive(Subcommand)]
pub enum ToolCommand {
    /// Run Python from stdin in the sandbox: `kiln tool code < prog.py`.
    Code(CodeArgs),
    /// Search an index built by `kiln index build`: the top passages with their source (exit 0
    /// also when nothing matched: "no results" is an answer the model reads).
    Search(SearchArgs),
}

#[derive(Args)]
pub struct SearchArgs {
    /// Index folder (from `kiln index build`).
    #[arg(long)]
    index: PathBuf,
    /// Passages returned.
    #[arg(long, short = 'k', default_value_t = 3)]
    top_k: usize,
    /// The query, as the model would write it.
    query: String,
}

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Index text shards (parquet from `kiln data process`, columns `text`, `id`, `url`).
    Build {
        /// A text shard, or a folder of them.
        #[arg(long)]
        input: PathBuf,
        /// Index folder to write (atomically).
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn index(cmd: IndexCommand) -> anyhow::Result<()> {
    let IndexCommand::Build { input, out } = cmd;
    let mut docs = Vec::new();
    for shard in kiln_data::list_shards(&input)? {
        docs.extend(kiln_data::read_text_shard(&shard)?);
    }
    let index = SearchIndex::build(docs.iter().map(|d| {
        let source = if d.url.is_empty() { &d.id } else { &d.url };
        (source.as_str(), d.text.as_str())
    }));
    index.save(&out)?;
    println!(
        "indexed {} documents as {} passages into {}",
        docs.len(),
        index.len(),
        out.display()
    );
    Ok(())
}

fn search(a: SearchArgs) -> anyhow::Result<ExitCode> {
    let index = SearchIndex::load(&a.index)?;
    print!("{}", index.answer(&a.query, a.top_k));
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct CodeArgs {
    /// CPU budget in wasmi fuel (interpreter start-up takes ~4.8 G of it).
    #[arg(long, default_value_t = Limits::default().fuel)]
    fuel: u64,
    /// Memory limit of the guest, MiB.
    #[arg(long, default_value_t = Limits::default().memory_bytes >> 20)]
    memory_mib: usize,
    /// Bytes of output kept; a program printing more is stopped there.
    #[arg(long, default_value_t = Limits::default().output_bytes)]
    output_bytes: usize,
    /// Wall-clock limit, seconds (fuel is a deterministic but loose clock).
    #[arg(long, default_value_t = Limits::default().wall.as_secs_f64())]
    time_limit_secs: f64,
    /// Print load and run times to stderr.
    #[arg(long)]
    timings: bool,
}

pub fn run(cmd: ToolCommand) -> ExitCode {
    let result = match cmd {
        ToolCommand::Code(a) => code(a),
        ToolCommand::Search(a) => search(a),
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::from(2)
    })
}

fn code(a: CodeArgs) -> anyhow::Result<ExitCode> {
    let mut source = Vec::new();
    std::io::stdin().read_to_end(&mut source)?;
    let wasm =
        kiln_data::fetch::source_dir(kiln_sandbox::SOURCE_NAME)?.join(kiln_sandbox::WASM_IN_SOURCE);
    let t = std::time::Instant::now();
    let sandbox = Sandbox::load(&wasm)?;
    let load = t.elapsed();
    let limits = Limits {
        fuel: a.fuel,
        memory_bytes: a.memory_mib.saturating_mul(1 << 20),
        output_bytes: a.output_bytes,
        wall: std::time::Duration::try_from_secs_f64(a.time_limit_secs)
            .map_err(|e| anyhow::anyhow!("--time-limit-secs {}: {e}", a.time_limit_secs))?,
    };
    let t = std::time::Instant::now();
    let out = sandbox.run(&source, &limits);
    if a.timings {
        eprintln!(
            "load {:.0} ms, run {:.0} ms, fuel {}",
            load.as_secs_f64() * 1e3,
            t.elapsed().as_secs_f64() * 1e3,
            out.fuel_used
        );
    }
    let mut stdout = std::io::stdout().lock();
    // Exactly what the model reads, except on a terminal, where control characters the program
    // printed are shown as escapes instead of acting on the terminal.
    if std::io::IsTerminal::is_terminal(&stdout) {
        stdout.write_all(super::for_terminal(&out.text).as_bytes())?;
    } else {
        stdout.write_all(out.text.as_bytes())?;
    }
    stdout.flush()?;
    Ok(match out.status {
        Status::Ok => ExitCode::SUCCESS,
        Status::PythonError | Status::Stopped(_) => ExitCode::FAILURE,
    })
}
