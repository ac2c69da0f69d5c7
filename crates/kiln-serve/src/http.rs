//! The HTTP side: routes, API-key check, body → validated request → prompt ids → a [`Job`] on the
//! scheduler's queue, and the scheduler's events → an OpenAI response (one JSON object, or SSE
//! chunks ending with `data: [DONE]`). Nothing here touches the model's weights: rendering and
//! tokenizing run on tokio's blocking pool so a long prompt never stalls other connections.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{self, Endpoint, GenRequest, Limits, Prompt};
use crate::error::ApiError;
use crate::metrics::{Metrics, Outcome};
use crate::model::ServedModel;
use crate::scheduler::{fresh_seed, Event, FinishReason, Job, Queue, TokenLogprob};

/// The web chat page: one self-contained file (no CDN, no build step).
const PAGE: &str = include_str!("page.html");

pub(crate) struct App {
    pub model: Arc<ServedModel>,
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub name: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
    /// Unix time the server started (`created` of the model).
    pub created: u64,
}

pub(crate) fn router(app: Arc<App>, body_limit: usize) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        // A wildcard: served names may contain slashes (`org/model`).
        .route("/v1/models/{*id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(cors))
        .with_state(app)
}

/// CORS for browser clients (a page on another origin calling the API): any origin may call,
/// since this is a local server whose protection is `--api-key`, not the caller's origin. A
/// preflight is answered here, before routing and the key check (browsers send preflights
/// without credentials); every other response gets `Access-Control-Allow-Origin`.
async fn cors(req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS {
        // The headers a preflight asks for are allowed as asked: browser SDKs send their own
        // (openai-node's `x-stainless-*`) besides Authorization and Content-Type.
        let asked = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or(HeaderValue::from_static("authorization, content-type"));
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        h.insert(
            header::ALLOW,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        return resp;
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    // So a browser client can read how long to wait after a 503.
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after"),
    );
    resp
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": app.name,
        "slots": app.queue.slots(),
        "slots_busy": app.metrics.busy_slots.load(Relaxed),
        "queue_depth": app.metrics.queue_depth.load(Relaxed),
    }))
}

fn check_key(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &app.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // The scheme is case-insensitive (RFC 7235): `bearer <key>` is as good as `Bearer <key>`.
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim_start_matches(' '));
    // Compare without an early exit so the time taken does not tell how much of a guess was right.
    let ok = given.is_some_and(|g| {
        g.len() == key.len()
            && g.bytes()
                .zip(key.bytes())
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_key(&app, &headers) {
        return e.into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_key(&app, &headers) {
        return e.into_response();
    }
    Json(json!({"object": "list", "data": [model_object(&app)]})).into_response()
}

/// `/v1/models/{id}`: the served model, or 404 for any other id.
async fn model(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = check_key(&app, &headers) {
        return e.into_response();
    }
    if id != app.name {
        let mut e = ApiError::model_not_found(&id, &app.name);
        // The id is in the path, not a body field.
        e.param = None;
        return e.into_response();
    }
    Json(model_object(&app)).into_response()
}

fn model_object(app: &App) -> Value {
    let mut m = json!({
        "id": app.name,
        "object": "model",
        "created": app.created,
        "owned_by": "kiln",
        "context_length": app.queue.capacity(),
    });
    if let Some(t) = app.model.tools() {
        // kiln's extension: the tools chat replies may call (the page shows them).
        m["kiln_tools"] = json!(t.names());
    }
    m
}

async fn chat(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(app, headers, body, Endpoint::Chat).await
}

async fn completions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(app, headers, body, Endpoint::Completions).await
}

async fn generate(
    app: Arc<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Response {
    let accepted = Instant::now();
    let (req, rx) = match admit(&app, &headers, body, endpoint, accepted).await {
        Ok(x) => x,
        Err(e) => {
            let outcome = if e.status == StatusCode::SERVICE_UNAVAILABLE {
                Outcome::QueueFull
            } else {
                Outcome::Invalid
            };
            app.metrics.count(outcome);
            return e.into_response();
        }
    };
    let meta = Meta {
        id: format!(
            "{}-{:016x}",
            match endpoint {
                Endpoint::Chat => "chatcmpl",
                Endpoint::Completions => "cmpl",
            },
            fresh_seed()
        ),
        created: unix_now(),
        model: app.name.clone(),
        endpoint,
        logprobs: req.logprobs.is_some(),
    };
    if req.stream {
        sse(meta, req.n, req.include_usage, rx).into_response()
    } else {
        whole(meta, req.n, rx).await
    }
}

/// Everything between the raw body and a queued job; any error is the client's answer.
async fn admit(
    app: &Arc<App>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
    accepted: Instant,
) -> Result<(GenRequest, UnboundedReceiver<Event>), ApiError> {
    check_key(app, headers)?;
    let body = body.map_err(|rej| ApiError {
        status: rej.status(),
        message: rej.body_text(),
        kind: "invalid_request_error",
        param: None,
        code: Some(if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "bad_body"
        }),
        retry_after: None,
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| ApiError::body(format!("the request body is not valid UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::body(format!("the request body is not valid JSON: {e}")))?;
    let capacity = app.queue.capacity();
    let limits = Limits {
        max_n: app.queue.slots(),
        context: capacity,
        vocab: app.model.vocab(),
    };
    let req = api::parse(endpoint, &value, &limits)?;
    if let Some(m) = &req.model {
        if *m != app.name {
            return Err(ApiError::model_not_found(m, &app.name));
        }
    }
    // Templates and tokenizers are CPU work proportional to the prompt: off the async threads.
    let model = app.model.clone();
    let prompt = req.prompt.clone();
    let (ids, stop_ids) = tokio::task::spawn_blocking(move || match &prompt {
        Prompt::Messages(m) => model
            .chat_prompt(m)
            .map(|ids| (ids, model.chat_stop_ids()))
            .map_err(|e| ApiError::invalid(&e.param, e.message)),
        Prompt::Text(t) => Ok((model.completion_prompt(t), model.completion_stop_ids())),
    })
    .await
    .map_err(|e| ApiError::internal(format!("rendering the prompt: {e}")))??;
    let param = match endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Completions => "prompt",
    };
    if ids.is_empty() {
        return Err(ApiError::invalid(param, "the prompt is empty"));
    }
    if ids.len() >= capacity {
        return Err(ApiError::invalid(
            param,
            format!(
                "the prompt is {} tokens; this server's context is {capacity} tokens per request (prompt + reply)",
                ids.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let (tx, rx) = unbounded_channel();
    app.queue.submit(Job {
        prompt: ids,
        max_tokens: req.max_tokens.unwrap_or(usize::MAX),
        sampling: req.sampling.clone(),
        stop_ids,
        stop: req.stop.clone(),
        seed: req.seed.unwrap_or_else(fresh_seed),
        n: req.n,
        logprobs: req.logprobs,
        penalties: req.penalties.clone(),
        tools: endpoint == Endpoint::Chat && app.model.tools().is_some(),
        events: tx,
        accepted,
        deadline: accepted + app.timeout,
    })?;
    Ok((req, rx))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What every chunk and response repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    endpoint: Endpoint,
    logprobs: bool,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    fn wrap(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion})
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Chat's `logprobs.content` entries.
fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    let entry = |b: &[u8], lp: f32| json!({"token": lossy(b), "logprob": lp, "bytes": b});
    json!({"content": lps.iter().map(|t| {
        let mut e = entry(&t.bytes, t.logprob);
        e["top_logprobs"] = t.top.iter().map(|(b, lp)| entry(b, *lp)).collect();
        e
    }).collect::<Vec<_>>()})
}

/// Legacy completions' parallel arrays; `offset` is where the first token's text starts.
fn completion_logprobs(lps: &[TokenLogprob], mut offset: usize) -> Value {
    let mut offsets = Vec::with_capacity(lps.len());
    for t in lps {
        offsets.push(offset);
        if !t.control {
            offset += lossy(&t.bytes).chars().count();
        }
    }
    json!({
        "tokens": lps.iter().map(|t| lossy(&t.bytes)).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|t| {
            t.top.iter().map(|(b, lp)| (lossy(b), json!(lp))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// A non-streaming response: wait for every choice, answer once.
async fn whole(meta: Meta, n: usize, mut rx: UnboundedReceiver<Event>) -> Response {
    let mut text = vec![String::new(); n];
    let mut lps: Vec<Vec<TokenLogprob>> = (0..n).map(|_| Vec::new()).collect();
    let mut reasons = vec![FinishReason::Length; n];
    // Per choice, its tool calls: (tool, input, output).
    let mut calls: Vec<Vec<(&str, String, Option<String>)>> = vec![Vec::new(); n];
    let (prompt_tokens, completion_tokens) = loop {
        match rx.recv().await {
            Some(Event::ToolInput {
                index,
                call,
                tool,
                input,
            }) => {
                let list = &mut calls[index];
                if list.len() <= call {
                    list.push((tool, String::new(), None));
                }
                list[call].1.push_str(&input);
            }
            Some(Event::ToolOutput {
                index,
                call,
                output,
            }) => {
                if let Some(c) = calls[index].get_mut(call) {
                    c.2 = Some(output);
                }
            }
            Some(Event::Delta {
                index,
                text: t,
                logprobs,
            }) => {
                text[index].push_str(&t);
                lps[index].extend(logprobs);
            }
            Some(Event::Finish { index, reason }) => reasons[index] = reason,
            Some(Event::Done {
                prompt_tokens,
                completion_tokens,
            }) => break (prompt_tokens, completion_tokens),
            Some(Event::Failed(e)) => return e.into_response(),
            None => return ApiError::internal("the scheduler dropped the request").into_response(),
        }
    };
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            let reason = reasons[i].as_str();
            match meta.endpoint {
                Endpoint::Chat => {
                    let mut message = json!({"role": "assistant", "content": text[i]});
                    if !calls[i].is_empty() {
                        // kiln's extension, apart from OpenAI's `tool_calls` (which ask the
                        // client to run a function): calls the server ran, with their outputs.
                        message["kiln_tool_calls"] = calls[i]
                            .iter()
                            .map(|(tool, input, output)| {
                                json!({"tool": tool, "input": input, "output": output})
                            })
                            .collect();
                    }
                    json!({
                        "index": i,
                        "message": message,
                        "logprobs": meta.logprobs.then(|| chat_logprobs(&lps[i])),
                        "finish_reason": reason,
                    })
                }
                Endpoint::Completions => json!({
                    "index": i,
                    "text": text[i],
                    "logprobs": meta.logprobs.then(|| completion_logprobs(&lps[i], 0)),
                    "finish_reason": reason,
                }),
            }
        })
        .collect();
    let mut body = meta.wrap(false, Value::Array(choices));
    body["usage"] = usage(prompt_tokens, completion_tokens);
    Json(body).into_response()
}

/// State of one SSE stream.
struct Streaming {
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
    /// Per choice: whether its first chunk (with the role) went out, and the characters sent.
    started: Vec<bool>,
    offsets: Vec<usize>,
    over: bool,
}

impl Streaming {
    fn chunk(&self, choice: Value) -> SseEvent {
        let mut c = self.meta.wrap(true, json!([choice]));
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        SseEvent::default().data(c.to_string())
    }

    /// A chunk whose delta is kiln's `kiln_tool_call` extension (the first chunk of a choice also
    /// says who speaks).
    fn tool_chunk(&mut self, index: usize, call: Value) -> SseEvent {
        let mut delta = json!({"kiln_tool_call": call});
        if !self.started[index] {
            self.started[index] = true;
            delta["role"] = json!("assistant");
            delta["content"] = json!("");
        }
        self.chunk(json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": null}))
    }

    /// The SSE events for one scheduler event (none, one or several).
    fn events(&mut self, ev: Option<Event>) -> Vec<SseEvent> {
        match ev {
            Some(Event::Delta {
                index,
                text,
                logprobs,
            }) => {
                let first = !self.started[index];
                if text.is_empty() && logprobs.is_none() && !first {
                    return vec![];
                }
                self.started[index] = true;
                let lps: Vec<TokenLogprob> = logprobs.into_iter().collect();
                let choice = match self.meta.endpoint {
                    Endpoint::Chat => {
                        let delta = if first {
                            json!({"role": "assistant", "content": text})
                        } else {
                            json!({"content": text})
                        };
                        json!({"index": index, "delta": delta,
                               "logprobs": self.meta.logprobs.then(|| chat_logprobs(&lps)),
                               "finish_reason": null})
                    }
                    Endpoint::Completions => {
                        let lp = self
                            .meta
                            .logprobs
                            .then(|| completion_logprobs(&lps, self.offsets[index]));
                        json!({"index": index, "text": text, "logprobs": lp, "finish_reason": null})
                    }
                };
                self.offsets[index] += text.chars().count();
                vec![self.chunk(choice)]
            }
            Some(Event::ToolInput {
                index,
                call,
                tool,
                input,
            }) => {
                // The first piece of a call names its tool; later ones add to its input.
                let call = if input.is_empty() {
                    json!({"index": call, "tool": tool, "input": ""})
                } else {
                    json!({"index": call, "input": input})
                };
                vec![self.tool_chunk(index, call)]
            }
            Some(Event::ToolOutput {
                index,
                call,
                output,
            }) => vec![self.tool_chunk(index, json!({"index": call, "output": output}))],
            Some(Event::Finish { index, reason }) => {
                let mut out = Vec::new();
                // A reply that ends before its first token still says who speaks: clients build
                // the message from the deltas and would otherwise have no role.
                if self.meta.endpoint == Endpoint::Chat && !self.started[index] {
                    self.started[index] = true;
                    out.push(self.chunk(json!({"index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": null, "finish_reason": null})));
                }
                let choice = match self.meta.endpoint {
                    Endpoint::Chat => json!({"index": index, "delta": {}, "logprobs": null,
                                             "finish_reason": reason.as_str()}),
                    Endpoint::Completions => json!({"index": index, "text": "", "logprobs": null,
                                                    "finish_reason": reason.as_str()}),
                };
                out.push(self.chunk(choice));
                out
            }
            Some(Event::Done {
                prompt_tokens,
                completion_tokens,
            }) => {
                self.over = true;
                let mut out = Vec::new();
                if self.include_usage {
                    let mut c = self.meta.wrap(true, json!([]));
                    c["usage"] = usage(prompt_tokens, completion_tokens);
                    out.push(SseEvent::default().data(c.to_string()));
                }
                out.push(SseEvent::default().data("[DONE]"));
                out
            }
            Some(Event::Failed(e)) => {
                self.over = true;
                vec![SseEvent::default().data(e.json().to_string())]
            }
            None => {
                self.over = true;
                let e = ApiError::internal("the scheduler dropped the request");
                vec![SseEvent::default().data(e.json().to_string())]
            }
        }
    }
}

/// A streaming response. Dropping it (the client went away) drops the receiver, which the
/// scheduler sees before its next step and frees the request's slots.
fn sse(
    meta: Meta,
    n: usize,
    include_usage: bool,
    rx: UnboundedReceiver<Event>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let st = Streaming {
        meta,
        rx,
        include_usage,
        started: vec![false; n],
        offsets: vec![0; n],
        over: false,
    };
    let s = stream::unfold(st, |mut st| async move {
        if st.over {
            return None;
        }
        let ev = st.rx.recv().await;
        let out = st.events(ev);
        Some((stream::iter(out.into_iter().map(Ok)), st))
    })
    .flatten();
    Sse::new(s)
}
