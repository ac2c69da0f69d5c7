//! Request parsing and validation for `/v1/chat/completions` and `/v1/completions`.
//!
//! The body is read as a JSON object and each field is taken by hand rather than through a
//! derived `Deserialize`: serde's messages name a line and column, a client needs the *field*
//! (`param` in OpenAI's error shape) and a reason it can act on. Fields that would change what
//! the model writes but that kiln does not implement (tools, response formats, audio, echo,
//! suffix, best_of, ...) are rejected by name instead of silently ignored; harmless bookkeeping
//! fields (`user`, `metadata`, `store`) are ignored. Presence and frequency penalties and
//! `logit_bias` are implemented (applied by the scheduler).

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::model::ChatMessage;
use crate::scheduler::Penalties;
use kiln_engine::SamplingParams;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Messages(Vec<ChatMessage>),
    Text(String),
}

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub endpoint: Endpoint,
    pub model: Option<String>,
    pub prompt: Prompt,
    /// `None`: until a stop token, a stop string or the end of the context (chat); 16 for
    /// completions, as OpenAI.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// `Some(k)`: return each token's log-probability and its `k` most likely alternatives.
    pub logprobs: Option<usize>,
    pub penalties: Penalties,
}

/// What a request may ask for on this server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most choices per request (each needs a slot of its own).
    pub max_n: usize,
    /// Tokens per slot: no reply can be longer.
    pub context: usize,
    /// The model's vocabulary size (`logit_bias` ids must be below it).
    pub vocab: usize,
}

/// Most stop strings (as OpenAI).
const MAX_STOP: usize = 4;
/// Most `top_logprobs` (OpenAI: 20 for chat, 5 for completions).
const MAX_TOP_LOGPROBS_CHAT: i64 = 20;
const MAX_TOP_LOGPROBS_COMPLETIONS: i64 = 5;

struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    /// The field's value; JSON `null` counts as absent (OpenAI's clients send nulls).
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.get(name)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be a boolean")))
            })
            .transpose()
    }

    fn number(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let x = v
            .as_f64()
            .ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be a number")))?;
        if !(lo..=hi).contains(&x) {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` must be between {lo} and {hi}, got {x}"),
            ));
        }
        Ok(Some(x))
    }

    fn int(&self, name: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let x = match v {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_u64().map(|_| i64::MAX))
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
            _ => None,
        }
        .ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be an integer")))?;
        if !(lo..=hi).contains(&x) {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` must be between {lo} and {hi}, got {v}"),
            ));
        }
        Ok(Some(x))
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        self.get(name)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be a string")))
            })
            .transpose()
    }

    /// Fields kiln does not implement are an error only when they would change the output.
    fn unsupported(&self, name: &str, harmless: impl Fn(&Value) -> bool) -> Result<(), ApiError> {
        match self.get(name) {
            Some(v) if !harmless(v) => Err(ApiError::invalid(
                name,
                format!("`{name}` is not supported by this server"),
            )
            .with_code("unsupported_parameter")),
            _ => Ok(()),
        }
    }
}

/// Message content: a string, or an array of `{"type": "text", "text": ...}` parts, joined by
/// newlines (parts are separate pieces of text; run together, words at their edges would merge).
fn content(v: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                let text = (p.get("type").and_then(Value::as_str) == Some("text"))
                    .then(|| p.get("text").and_then(Value::as_str))
                    .flatten()
                    .ok_or_else(|| {
                        ApiError::invalid(
                            &format!("{param}[{j}]"),
                            "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                        )
                    })?;
                if j > 0 {
                    out.push('\n');
                }
                out.push_str(text);
            }
            Ok(out)
        }
        Some(_) => Err(ApiError::invalid(
            param,
            "`content` must be a string or an array of text parts",
        )),
    }
}

fn messages(f: &Fields) -> Result<Vec<ChatMessage>, ApiError> {
    let arr = f
        .get("messages")
        .ok_or_else(|| ApiError::invalid("messages", "`messages` is required"))?
        .as_array()
        .ok_or_else(|| ApiError::invalid("messages", "`messages` must be an array"))?;
    if arr.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(arr.len());
    for (i, m) in arr.iter().enumerate() {
        let p = format!("messages[{i}]");
        let obj = m
            .as_object()
            .ok_or_else(|| ApiError::invalid(&p, "each message must be an object"))?;
        let role = obj
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid(&format!("{p}.role"), "`role` must be a string"))?;
        if !matches!(role, "system" | "developer" | "user" | "assistant") {
            return Err(ApiError::invalid(
                &format!("{p}.role"),
                format!("role {role:?} is not supported (system, developer, user, assistant)"),
            ));
        }
        // Clients send `tool_calls: []` on a plain assistant turn: only actual calls are refused.
        let no_calls = |v: &Value| v.is_null() || v.as_array().is_some_and(|a| a.is_empty());
        if obj.get("tool_calls").is_some_and(|v| !no_calls(v)) {
            return Err(ApiError::invalid(
                &format!("{p}.tool_calls"),
                "tool calls are not supported by this server",
            ));
        }
        out.push(ChatMessage {
            role: role.to_string(),
            content: content(obj.get("content"), &format!("{p}.content"))?,
        });
    }
    Ok(out)
}

/// `stop`: a string or an array of up to four non-empty strings.
fn stop(f: &Fields) -> Result<Vec<String>, ApiError> {
    let list: Vec<String> = match f.get("stop") {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                ApiError::invalid("stop", "`stop` must be a string or an array of strings")
            })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "`stop` must be a string or an array of strings",
            ))
        }
    };
    if list.len() > MAX_STOP {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOP} stop sequences"),
        ));
    }
    if list.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "stop sequences must not be empty",
        ));
    }
    Ok(list)
}

/// Parses and validates a request body for `endpoint`.
pub fn parse(endpoint: Endpoint, body: &Value, limits: &Limits) -> Result<GenRequest, ApiError> {
    let map = body
        .as_object()
        .ok_or_else(|| ApiError::body("the request body must be a JSON object"))?;
    let f = Fields(map);

    // What kiln does not do, by name.
    for name in [
        "tools",
        "functions",
        "tool_choice",
        "function_call",
        "audio",
        "prediction",
    ] {
        f.unsupported(name, |v| v.as_str() == Some("none"))?;
    }
    f.unsupported("response_format", |v| {
        v.get("type").and_then(Value::as_str) == Some("text")
    })?;
    f.unsupported("modalities", |v| {
        v.as_array()
            .is_some_and(|a| a.iter().all(|m| m.as_str() == Some("text")))
    })?;
    f.unsupported("echo", |v| v.as_bool() == Some(false))?;
    f.unsupported("suffix", |v| v.as_str() == Some(""))?;
    f.unsupported("best_of", |v| v.as_u64() == Some(1))?;

    let model = f.string("model")?.map(str::to_string);
    let prompt = match endpoint {
        Endpoint::Chat => Prompt::Messages(messages(&f)?),
        Endpoint::Completions => Prompt::Text(match f.get("prompt") {
            None => return Err(ApiError::invalid("prompt", "`prompt` is required")),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().unwrap_or_default().to_string()
            }
            Some(Value::Array(_)) => {
                return Err(ApiError::invalid(
                    "prompt",
                    "one prompt per request: a string or an array of one string",
                ))
            }
            Some(_) => return Err(ApiError::invalid("prompt", "`prompt` must be a string")),
        }),
    };

    let ctx = limits.context as i64;
    let max_tokens = match (
        f.int("max_completion_tokens", 1, ctx)?,
        f.int("max_tokens", 1, ctx)?,
    ) {
        (Some(a), _) | (None, Some(a)) => Some(a as usize),
        (None, None) if endpoint == Endpoint::Completions => Some(16),
        (None, None) => None,
    };
    // OpenAI's defaults: temperature 1, top_p 1; kiln's extras off unless asked for.
    let sampling = SamplingParams {
        temperature: f.number("temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
        top_p: f.number("top_p", 0.0, 1.0)?.unwrap_or(1.0) as f32,
        top_k: f.int("top_k", 0, i64::from(u32::MAX))?.unwrap_or(0) as usize,
        min_p: f.number("min_p", 0.0, 1.0)?.unwrap_or(0.0) as f32,
    };
    if sampling.top_p == 0.0 {
        return Err(ApiError::invalid("top_p", "`top_p` must be above 0"));
    }
    let n = f.int("n", 1, limits.max_n as i64)?.unwrap_or(1) as usize;
    // Any 64-bit integer; a negative seed is as good a seed as a positive one.
    let seed = match f.get("seed") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|s| s as u64))
                .ok_or_else(|| ApiError::invalid("seed", "`seed` must be a 64-bit integer"))?,
        ),
    };
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Fields(o)
            .bool("include_usage")
            .map_err(|_| {
                ApiError::invalid(
                    "stream_options.include_usage",
                    "`include_usage` must be a boolean",
                )
            })?
            .unwrap_or(false),
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` must be an object",
            ))
        }
    };
    let logprobs = match endpoint {
        Endpoint::Chat => {
            let on = f.bool("logprobs")?.unwrap_or(false);
            let top = f.int("top_logprobs", 0, MAX_TOP_LOGPROBS_CHAT)?;
            if top.is_some() && !on {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs: true`",
                ));
            }
            on.then_some(top.unwrap_or(0) as usize)
        }
        Endpoint::Completions => f
            .int("logprobs", 0, MAX_TOP_LOGPROBS_COMPLETIONS)?
            .map(|k| k as usize),
    };
    let penalties = Penalties {
        presence: f.number("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        frequency: f.number("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        bias: logit_bias(&f, limits.vocab)?,
    };
    Ok(GenRequest {
        endpoint,
        model,
        prompt,
        max_tokens,
        sampling,
        stop: stop(&f)?,
        seed,
        n,
        stream,
        include_usage,
        logprobs,
        penalties,
    })
}

/// `logit_bias`: an object from token ids (as strings, OpenAI's form) to biases in -100..=100.
fn logit_bias(f: &Fields, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let map = match f.get("logit_bias") {
        None => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::invalid(
                "logit_bias",
                "`logit_bias` must be an object from token ids to numbers",
            ))
        }
    };
    let mut bias = Vec::with_capacity(map.len());
    for (k, v) in map {
        let id = k
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&id| (id as usize) < vocab)
            .ok_or_else(|| {
                ApiError::invalid(
                    "logit_bias",
                    format!("`logit_bias` key {k:?} is not a token id of this model (0..{vocab})"),
                )
            })?;
        let b = v
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| {
                ApiError::invalid(
                    "logit_bias",
                    format!("`logit_bias` for token {id} must be a number between -100 and 100, got {v}"),
                )
            })?;
        bias.push((id, b as f32));
    }
    Ok(bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const L: Limits = Limits {
        max_n: 4,
        context: 100,
        vocab: 50,
    };

    fn err(endpoint: Endpoint, body: Value) -> ApiError {
        parse(endpoint, &body, &L).unwrap_err()
    }

    #[test]
    fn good_requests_parse_with_openai_defaults() {
        let r = parse(
            Endpoint::Chat,
            &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_k": 5,
                    "stream": true, "stream_options": {"include_usage": true}, "user": "ignored",
                    "logprobs": true, "top_logprobs": 3, "stop": "x", "seed": -1}),
            &L,
        )
        .unwrap();
        assert_eq!(r.sampling.temperature, 1.0);
        assert_eq!(r.sampling.top_k, 5);
        assert_eq!((r.n, r.max_tokens, r.logprobs), (1, None, Some(3)));
        assert_eq!(r.stop, vec!["x".to_string()]);
        assert_eq!(r.seed, Some(u64::MAX));
        assert!(r.stream && r.include_usage);
        let big = json!({"prompt": "a", "seed": u64::MAX - 1});
        let r = parse(Endpoint::Completions, &big, &L).unwrap();
        assert_eq!(r.seed, Some(u64::MAX - 1));
        let r = parse(
            Endpoint::Completions,
            &json!({"prompt": ["a b"], "logprobs": 2}),
            &L,
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Text("a b".into()));
        assert_eq!((r.max_tokens, r.logprobs), (Some(16), Some(2)));
    }

    #[test]
    fn every_bad_field_is_named() {
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (json!({"messages": msgs, "max_tokens": -1}), "max_tokens"),
            (
                json!({"messages": msgs, "max_tokens": 1_000_000_000_000i64}),
                "max_tokens",
            ),
            (
                json!({"messages": msgs, "max_completion_tokens": "5"}),
                "max_completion_tokens",
            ),
            (
                json!({"messages": msgs, "temperature": "hot"}),
                "temperature",
            ),
            (json!({"messages": msgs, "temperature": 3}), "temperature"),
            (json!({"messages": msgs, "n": 5}), "n"),
            (json!({"messages": msgs, "n": 0}), "n"),
            (json!({"messages": msgs, "stop": 7}), "stop"),
            (
                json!({"messages": msgs, "stop": ["a", "b", "c", "d", "e"]}),
                "stop",
            ),
            (json!({"messages": msgs, "tools": []}), "tools"),
            (
                json!({"messages": msgs, "logit_bias": {"50": 5}}),
                "logit_bias",
            ),
            (
                json!({"messages": msgs, "logit_bias": {"one": 5}}),
                "logit_bias",
            ),
            (
                json!({"messages": msgs, "logit_bias": {"1": 101}}),
                "logit_bias",
            ),
            (json!({"messages": msgs, "logit_bias": [1]}), "logit_bias"),
            (
                json!({"messages": msgs, "presence_penalty": 2.5}),
                "presence_penalty",
            ),
            (
                json!({"messages": msgs, "frequency_penalty": "x"}),
                "frequency_penalty",
            ),
            (json!({"messages": msgs, "top_logprobs": 2}), "top_logprobs"),
            (json!({"messages": msgs, "stream": "yes"}), "stream"),
            (json!({"messages": msgs, "model": 3}), "model"),
            (json!({"messages": msgs, "seed": 1.5}), "seed"),
            (json!({"messages": []}), "messages"),
            (json!({}), "messages"),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
        ];
        for (body, param) in cases {
            let e = err(Endpoint::Chat, body.clone());
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert_eq!(e.status, 400);
        }
        let e = err(Endpoint::Completions, json!({"prompt": ["a", "b"]}));
        assert_eq!(e.param.as_deref(), Some("prompt"));
        let e = err(Endpoint::Completions, json!({"prompt": "a", "logprobs": 9}));
        assert_eq!(e.param.as_deref(), Some("logprobs"));
        let e = err(Endpoint::Completions, json!({"prompt": "a", "echo": true}));
        assert_eq!(e.param.as_deref(), Some("echo"));
        assert_eq!(err(Endpoint::Chat, json!([1])).param, None);
    }

    #[test]
    fn text_parts_are_joined_by_newlines_and_empty_tool_calls_are_no_calls() {
        let body = json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"},
                                         {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "x", "tool_calls": []},
            {"role": "user", "content": "c"}]});
        let r = parse(Endpoint::Chat, &body, &L).unwrap();
        let Prompt::Messages(m) = r.prompt else {
            panic!("not messages")
        };
        assert_eq!(m[0].content, "a\nb");
        assert_eq!(m[1].content, "x");
        let calls = json!({"messages": [{"role": "assistant", "content": null,
                                         "tool_calls": [{"id": "1", "type": "function"}]}]});
        assert_eq!(
            err(Endpoint::Chat, calls).param.as_deref(),
            Some("messages[0].tool_calls")
        );
    }

    #[test]
    fn penalties_and_logit_bias_parse() {
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let r = parse(
            Endpoint::Chat,
            &json!({"messages": msgs, "presence_penalty": 0.5, "frequency_penalty": -1,
                    "logit_bias": {"3": -100, " 49": 2.5}}),
            &L,
        )
        .unwrap();
        assert_eq!(r.penalties.presence, 0.5);
        assert_eq!(r.penalties.frequency, -1.0);
        let mut bias = r.penalties.bias.clone();
        bias.sort_by_key(|b| b.0);
        assert_eq!(bias, vec![(3, -100.0), (49, 2.5)]);
        let r = parse(Endpoint::Chat, &json!({"messages": msgs}), &L).unwrap();
        assert!(r.penalties.is_off());
    }
}
