//! kiln-serve: an OpenAI-compatible HTTP server for kiln checkpoints and GGUF models, with
//! continuous batching and a web chat page.
//!
//! Layout: [`model`] (the served model: prompts in, token bytes out, and the one function that
//! picks the [`kiln_engine::BatchDecoder`]) → [`scheduler`] (one thread owning the model: admit,
//! sample, step) → `http` (axum routes, SSE) with [`api`] (request validation) and [`error`]
//! (OpenAI's error shape); [`metrics`] for `/metrics`. [`start`] puts them together on a listener
//! the caller bound, so tests can bind `127.0.0.1:0`.

pub mod api;
pub mod error;
mod http;
pub mod metrics;
pub mod model;
pub mod scheduler;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use model::{make_decoder, ChatMessage, PromptError, ServedModel};
pub use scheduler::DecoderFactory;

/// Settings of a server (the `kiln serve` flags).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model's id in the API (`model` in requests and `/v1/models`).
    pub name: String,
    /// KV-cache slots: sequences decoded together.
    pub parallel: usize,
    /// Tokens per slot (prompt + reply); `None`: the model's context, at most [`DEFAULT_CTX`].
    pub ctx: Option<usize>,
    /// Requests that may wait for a slot; more get 503.
    pub queue: usize,
    /// Requests must send `Authorization: Bearer <key>` (all but `/`, `/health`).
    pub api_key: Option<String>,
    /// A request still running (or waiting) this long after it came fails with 504.
    pub timeout: Duration,
    /// Largest request body in bytes (413 above).
    pub body_limit: usize,
    /// Threads for HTTP (the model has its own thread and the engine's pool).
    pub http_threads: usize,
    /// Most bytes the KV cache may take (`parallel` × `ctx` tokens); `None`: no limit. The
    /// cache is allocated up front, so a server that starts has the memory for every slot.
    pub kv_memory: Option<u64>,
}

/// Default tokens per slot: enough for a chat, small enough that many slots fit in memory.
pub const DEFAULT_CTX: usize = 4096;

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            name: "kiln".into(),
            parallel: 4,
            ctx: None,
            queue: 64,
            api_key: None,
            timeout: Duration::from_secs(600),
            body_limit: 1 << 20,
            http_threads: 2,
            kv_memory: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Engine(#[from] kiln_engine::EngineError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server stops (it runs until the process ends or [`Server::shutdown`]).
    pub fn wait(mut self) -> Result<(), ServeError> {
        self.join()
    }

    /// Stops accepting, lets open responses finish, and waits.
    pub fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.join()
    }

    fn join(&mut self) -> Result<(), ServeError> {
        match self.http.take().map(|h| h.join()) {
            Some(Ok(r)) => Ok(r?),
            Some(Err(_)) => Err(ServeError::Config("the HTTP thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves `model` on `listener` with the default decoder.
pub fn start(
    listener: std::net::TcpListener,
    model: ServedModel,
    opts: ServeOptions,
) -> Result<Server, ServeError> {
    start_with(listener, model, opts, make_decoder)
}

/// [`start`] with the decoder built by `make` (tests wrap the real one).
pub fn start_with(
    listener: std::net::TcpListener,
    model: ServedModel,
    opts: ServeOptions,
    make: DecoderFactory,
) -> Result<Server, ServeError> {
    if opts.parallel == 0 {
        return Err(ServeError::Config("--parallel must be at least 1".into()));
    }
    let model_ctx = model.context();
    let ctx = opts.ctx.unwrap_or(model_ctx.min(DEFAULT_CTX));
    if ctx < 2 || ctx > model_ctx {
        return Err(ServeError::Config(format!(
            "--ctx {ctx}: must be between 2 and the model's context, {model_ctx}"
        )));
    }
    let kv = (opts.parallel * ctx * model.kv_bytes_per_token()) as u64;
    if let Some(limit) = opts.kv_memory {
        if kv > limit {
            return Err(ServeError::Config(format!(
                "the KV cache for {} slots × {ctx} tokens needs {} MiB, over the limit of {} MiB: \
                 lower --parallel or --ctx (or raise --kv-memory)",
                opts.parallel,
                kv >> 20,
                limit >> 20
            )));
        }
    }
    tracing::info!(
        "KV cache: {} slots × {ctx} tokens = {} MiB",
        opts.parallel,
        kv >> 20
    );
    let metrics = Arc::new(metrics::Metrics::default());
    let model = Arc::new(model);
    let (queue, _thread) = scheduler::spawn(
        model.clone(),
        make,
        opts.parallel,
        ctx,
        opts.queue,
        metrics.clone(),
    )?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let app = Arc::new(http::App {
        model,
        queue,
        metrics,
        name: opts.name.clone(),
        api_key: opts.api_key.clone(),
        timeout: opts.timeout,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    let router = http::router(app, opts.body_limit);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.http_threads.max(1))
        .thread_name("kiln-http")
        .enable_all()
        .build()?;
    let http = std::thread::Builder::new()
        .name("kiln-http-main".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
            })
        })?;
    Ok(Server {
        addr,
        shutdown: Some(tx),
        http: Some(http),
    })
}
