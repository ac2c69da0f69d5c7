//! What the server tests share: a random tiny kiln model with a freshly trained tokenizer, a
//! server on 127.0.0.1:0, a decoder wrapper that slows steps down, and a small HTTP/1.1 client
//! over raw sockets (so a test can read half a stream and hang up).
// Each test file uses its own part of this module.
#![allow(dead_code)]

pub use std::collections::HashMap;
pub use std::io::{BufRead, BufReader, Read, Write};
pub use std::net::{SocketAddr, TcpListener, TcpStream};
pub use std::sync::Arc;
pub use std::time::{Duration, Instant};

pub use kiln_engine::{BatchDecoder, CpuBackend, EngineError, Model, ModelConfig};
pub use kiln_serve::{make_decoder, DecoderFactory, ServeOptions, ServedModel, Server};
pub use kiln_tokenizer::{train_from_texts, Tokenizer, TrainConfig, CHAT_SPECIAL_TOKENS};
pub use serde_json::{json, Value};

// ---------------------------------------------------------------- models and servers

/// A tokenizer of 300 ids, with kiln's chat tokens (`chat`) or with no special token at all (then
/// a completion never meets a stop token and runs to its length: what the slot tests need).
pub fn tokenizer(chat: bool) -> Tokenizer {
    let specials: Vec<String> = if chat {
        CHAT_SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect()
    } else {
        vec![]
    };
    let cfg = TrainConfig {
        vocab_size: 300,
        special_tokens: specials,
        ..Default::default()
    };
    let text = "The quick brown fox jumps over the lazy dog. Hello world, hello kiln! ".repeat(20);
    train_from_texts(&[text], &cfg).unwrap()
}

pub fn served(chat: bool, ctx: usize) -> ServedModel {
    let tok = tokenizer(chat);
    let cfg = ModelConfig::gpt2(tok.vocab_size(), 1, 2, 32, ctx);
    let model = Model::new(Arc::new(CpuBackend::new(1)), cfg, 3).unwrap();
    ServedModel::kiln(model, tok)
}

pub fn opts(parallel: usize) -> ServeOptions {
    ServeOptions {
        name: "tiny".into(),
        parallel,
        ..ServeOptions::default()
    }
}

pub fn start(model: ServedModel, o: ServeOptions, make: DecoderFactory) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    kiln_serve::start_with(l, model, o, make).unwrap()
}

/// Every decode step (and prefill) takes at least 20 ms: requests stay running long enough to
/// be disconnected, queued behind, or timed out.
pub struct Slow<'m>(pub Box<dyn BatchDecoder + 'm>);

pub const SLOW_STEP: Duration = Duration::from_millis(20);

impl BatchDecoder for Slow<'_> {
    fn slots(&self) -> usize {
        self.0.slots()
    }
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
    fn vocab(&self) -> usize {
        self.0.vocab()
    }
    fn len(&self, slot: usize) -> usize {
        self.0.len(slot)
    }
    fn prefill(&mut self, slot: usize, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        std::thread::sleep(SLOW_STEP);
        self.0.prefill(slot, prompt)
    }
    fn prefill_reusing(
        &mut self,
        slot: usize,
        keep: usize,
        prompt: &[u32],
    ) -> Result<Vec<f32>, EngineError> {
        std::thread::sleep(SLOW_STEP);
        self.0.prefill_reusing(slot, keep, prompt)
    }
    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        std::thread::sleep(SLOW_STEP);
        self.0.step(slots, tokens)
    }
    fn fork(&mut self, src: usize, dst: usize) -> Result<(), EngineError> {
        self.0.fork(src, dst)
    }
    fn clear(&mut self, slot: usize) {
        self.0.clear(slot)
    }
}

pub fn slow_decoder(
    m: &ServedModel,
    slots: usize,
    cap: usize,
) -> Result<Box<dyn BatchDecoder + '_>, EngineError> {
    Ok(Box::new(Slow(make_decoder(m, slots, cap)?)))
}

// ---------------------------------------------------------------- a small HTTP/1.1 client

pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads the body of a `Transfer-Encoding: chunked` response as a plain byte stream.
pub struct Chunked<R: BufRead> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                // the CRLF after the previous chunk
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n;
        Ok(n)
    }
}

/// Sends a request and returns the status, headers and a reader over the body.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, HashMap<String, String>, Box<dyn BufRead>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body and close; that is fine.
    let _ = s.write_all(body);
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
        .parse()
        .unwrap();
    let mut hs = HashMap::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        hs.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let body: Box<dyn BufRead> =
        if hs.get("transfer-encoding").map(String::as_str) == Some("chunked") {
            Box::new(BufReader::new(Chunked {
                inner: r,
                left: 0,
                done: false,
            }))
        } else {
            Box::new(r)
        };
    (status, hs, body)
}

pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let (status, headers, mut r) = send(addr, method, path, headers, body);
    let mut b = Vec::new();
    r.read_to_end(&mut b).unwrap();
    Resp {
        status,
        headers,
        body: b,
    }
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    call(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    call(addr, "GET", path, &[], b"")
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_events(r: &mut dyn BufRead, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    while out.len() < limit {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(d) = line.trim_end().strip_prefix("data: ") {
            out.push(d.to_string());
        }
    }
    out
}

/// Streams `body`; returns (per-choice text, finish reasons, the usage chunk, saw [DONE]).
pub fn stream(
    addr: SocketAddr,
    path: &str,
    body: &Value,
) -> (Vec<String>, Vec<String>, Option<Value>, bool) {
    let (status, headers, mut r) = send(addr, "POST", path, &[], body.to_string().as_bytes());
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("text/event-stream"));
    let events = sse_events(r.as_mut(), usize::MAX);
    let mut text = Vec::new();
    let mut reasons = Vec::new();
    let mut usage = None;
    let mut done = false;
    for e in events {
        if e == "[DONE]" {
            done = true;
            continue;
        }
        assert!(!done, "data after [DONE]");
        let v: Value = serde_json::from_str(&e).unwrap();
        assert!(v.get("error").is_none(), "{v}");
        if !v["usage"].is_null() {
            usage = Some(v["usage"].clone());
        }
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if text.len() <= i {
                text.resize(i + 1, String::new());
                reasons.resize(i + 1, String::new());
            }
            let piece = c["delta"]["content"]
                .as_str()
                .or(c["text"].as_str())
                .unwrap_or("");
            text[i].push_str(piece);
            if let Some(f) = c["finish_reason"].as_str() {
                reasons[i] = f.to_string();
            }
        }
    }
    (text, reasons, usage, done)
}

pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let m = get(addr, "/metrics").text();
    m.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{m}"))
        .parse()
        .unwrap()
}

pub fn chat_body(extra: Value) -> Value {
    let mut b = json!({"model": "tiny", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there, fox!"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}
