//! `kiln serve`: the OpenAI-compatible server and web chat page (kiln-serve) for a kiln
//! checkpoint, a GGUF file or a released model's catalogue name. Parsing and loading only.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kiln_chat::gguf_model::GgufChatModel;
use kiln_chat::load::load_model;
use kiln_serve::{ServeOptions, ServedModel};

#[derive(Args)]
pub struct ServeArgs {
    /// Checkpoint folder (or a run folder with ckpt/latest), a GGUF file or a released model's
    /// name (`kiln models list`).
    #[arg(long, alias = "ckpt")]
    pub model: PathBuf,
    /// Tokenizer folder or name for a kiln checkpoint [default: the one the run recorded].
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Address to listen on (loopback unless you mean otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences decoded together (KV-cache slots); also the most `n` per request.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Tokens per slot, prompt + reply [default: the model's context, at most 4096].
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Requests that may wait for a free slot; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Seconds a request may take, waiting included (504 after).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Require `Authorization: Bearer <key>` on the API (the page asks for it).
    #[arg(long, env = "KILN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The model's id in the API [default: the catalogue name or the file/folder name].
    #[arg(long)]
    pub name: Option<String>,
    /// Most MiB the KV cache (--parallel × --ctx tokens) may take [default: 3/4 of the memory
    /// available at start].
    #[arg(long)]
    pub kv_memory: Option<u64>,
    /// CPU threads for the model [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Tools chat replies may call, run by the server as `kiln chat --tools` runs them: `code`
    /// (sandboxed Python), `search`, both (`code,search`) or `none`. A kiln chat checkpoint only.
    /// Calls and outputs come back in kiln's `kiln_tool_calls` field (see docs/cli.md).
    #[arg(long, value_delimiter = ',', default_value = "none")]
    pub tools: Vec<super::chat::ToolName>,
    /// Search index folder (`kiln index build`) [default: the generated world of places the
    /// `tool_search` SFT lessons teach on].
    #[arg(long)]
    pub index: Option<PathBuf>,
}

/// `MemAvailable` from /proc/meminfo, in bytes (None where there is no such file).
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

pub fn run(a: ServeArgs, threads: usize) -> anyhow::Result<()> {
    let value = a.model.to_string_lossy().to_string();
    let t0 = std::time::Instant::now();
    let (model, default_name) = match kiln_data::models::resolve_model(&value)? {
        Some(path) => {
            let m = GgufChatModel::load(&path)
                .with_context(|| format!("loading {}", path.display()))?;
            // A catalogue name is the id; a file is known by its name without `.gguf`.
            let name = if a.model.is_file() {
                path.file_stem()
                    .map_or(value.clone(), |s| s.to_string_lossy().into())
            } else {
                value.clone()
            };
            (ServedModel::Gguf(m), name)
        }
        None => {
            let l = load_model(&a.model, a.tokenizer.as_deref(), threads)?;
            let name = a
                .model
                .file_name()
                .map_or(value.clone(), |s| s.to_string_lossy().into());
            (ServedModel::kiln(l.model, l.tok), name)
        }
    };
    let model = match super::chat::toolbox(&a.tools, a.index.as_deref())? {
        Some(tb) => model
            .with_tools(tb)
            .map_err(|e| anyhow::anyhow!("--tools: {e}"))?,
        None => model,
    };
    tracing::info!("loaded {value} in {:.2}s", t0.elapsed().as_secs_f64());
    let opts = ServeOptions {
        name: a.name.unwrap_or(default_name),
        parallel: a.parallel,
        ctx: a.ctx,
        queue: a.queue,
        api_key: a.api_key,
        timeout: Duration::from_secs(a.timeout),
        kv_memory: a
            .kv_memory
            .map(|mib| mib << 20)
            .or_else(|| available_memory().map(|b| b / 4 * 3)),
        ..ServeOptions::default()
    };
    let listener = std::net::TcpListener::bind((a.host.as_str(), a.port))
        .with_context(|| format!("binding {}:{}", a.host, a.port))?;
    let name = opts.name.clone();
    let server = kiln_serve::start(listener, model, opts)?;
    tracing::info!(
        "serving {name:?} on http://{} ({} slots); the chat page is at /",
        server.addr(),
        a.parallel
    );
    server.wait()?;
    Ok(())
}
