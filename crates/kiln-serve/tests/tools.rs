//! `kiln serve --tools`: chat replies whose model calls the code or search tool, through the real
//! server, the real sandbox (the fetched CPython WASI build) and a real search index.
//!
//! A random model does not call tools, so the model here is a scripted decoder: for each slot it
//! "predicts" the next token of a script chosen by a marker word in the prompt (one-hot logits,
//! sampled greedily), and it records what it is fed. The server cannot tell it from a model: it
//! samples the call's tokens, runs the call, and must feed `<|output_start|> output
//! <|output_end|>` back before the script goes on. The script advances by the tokens the server
//! steps in and by the call's closing token, which the server feeds with the output.

mod common;

use std::sync::{Mutex, OnceLock};

use common::*;
use kiln_chat::tools::lessons::TOOLS_SYSTEM;
use kiln_chat::tools::search::SearchIndex;
use kiln_chat::tools::toolbox::ToolBox;

/// (marker text in the prompt, the script's tokens).
static SCRIPTS: Mutex<Vec<(String, Vec<u32>)>> = Mutex::new(Vec::new());
/// Every context the decoder was given by `prefill`/`prefill_reusing`: (prompt, kept). Tests
/// run at once, so each finds its own entries by its marker.
static FED: Mutex<Vec<(Vec<u32>, usize)>> = Mutex::new(Vec::new());

/// The served model's tokenizer (training is deterministic: the same as `served`'s).
fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| tokenizer(true))
}

fn special(name: &str) -> u32 {
    tok().special_token_id(name).unwrap()
}

fn text(s: &str) -> Vec<u32> {
    tok().encode_ordinary(s)
}

struct Scripted {
    vocab: usize,
    capacity: usize,
    /// Per slot: the tokens in its "cache", its script and how far the script has gone.
    held: Vec<Vec<u32>>,
    script: Vec<Vec<u32>>,
    at: Vec<usize>,
}

impl Scripted {
    fn logits(&self, slot: usize) -> Vec<f32> {
        let end = special("<|assistant_end|>");
        let next = self.script[slot].get(self.at[slot]).copied().unwrap_or(end);
        let mut l = vec![0.0; self.vocab];
        l[next as usize] = 50.0;
        l
    }

    fn start(&mut self, slot: usize, prompt: &[u32]) -> Vec<f32> {
        let decoded = tok().decode(prompt);
        let script = SCRIPTS
            .lock()
            .unwrap()
            .iter()
            .find(|(marker, _)| decoded.contains(marker.as_str()))
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        self.held[slot] = prompt.to_vec();
        self.script[slot] = script;
        self.at[slot] = 0;
        self.logits(slot)
    }
}

impl BatchDecoder for Scripted {
    fn slots(&self) -> usize {
        self.held.len()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn len(&self, slot: usize) -> usize {
        self.held[slot].len()
    }
    fn prefill(&mut self, slot: usize, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        FED.lock().unwrap().push((prompt.to_vec(), 0));
        Ok(self.start(slot, prompt))
    }
    fn prefill_reusing(
        &mut self,
        slot: usize,
        keep: usize,
        prompt: &[u32],
    ) -> Result<Vec<f32>, EngineError> {
        assert!(keep <= self.held[slot].len() && keep < prompt.len());
        assert_eq!(
            prompt[..keep],
            self.held[slot][..keep],
            "kept tokens differ"
        );
        FED.lock().unwrap().push((prompt.to_vec(), keep));
        // A tool's output fed on top of the whole slot, starting with the call's closing token
        // the script was at: the script goes on after it. Anything else is a new prompt.
        let expected = self.script[slot].get(self.at[slot]).copied();
        if keep == self.held[slot].len() && Some(prompt[keep]) == expected {
            self.held[slot] = prompt.to_vec();
            self.at[slot] += 1;
            Ok(self.logits(slot))
        } else {
            Ok(self.start(slot, prompt))
        }
    }
    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let mut out = Vec::new();
        for (&s, &t) in slots.iter().zip(tokens) {
            assert_eq!(
                self.script[s].get(self.at[s]),
                Some(&t),
                "stepped off script"
            );
            self.held[s].push(t);
            self.at[s] += 1;
            out.extend(self.logits(s));
        }
        Ok(out)
    }
    fn fork(&mut self, src: usize, dst: usize) -> Result<(), EngineError> {
        self.held[dst] = self.held[src].clone();
        self.script[dst] = self.script[src].clone();
        self.at[dst] = self.at[src];
        Ok(())
    }
    fn clear(&mut self, slot: usize) {
        self.held[slot].clear();
    }
}

fn scripted(
    m: &ServedModel,
    slots: usize,
    capacity: usize,
) -> Result<Box<dyn BatchDecoder + '_>, EngineError> {
    Ok(Box::new(Scripted {
        vocab: m.vocab(),
        capacity,
        held: vec![Vec::new(); slots],
        script: vec![Vec::new(); slots],
        at: vec![0; slots],
    }))
}

/// Registers the script of replies to prompts containing `marker`.
fn script(marker: &str, parts: &[&[u32]]) {
    SCRIPTS
        .lock()
        .unwrap()
        .push((marker.to_string(), parts.concat()));
}

fn code_call(src: &str) -> Vec<u32> {
    [
        &[special("<|python_start|>")][..],
        &text(src),
        &[special("<|python_end|>")],
    ]
    .concat()
}

fn search_call(q: &str) -> Vec<u32> {
    [
        &[special("<|search_start|>")][..],
        &text(q),
        &[special("<|search_end|>")],
    ]
    .concat()
}

fn sandbox() -> (kiln_sandbox::Sandbox, kiln_sandbox::Limits) {
    let dir = kiln_data::fetch::source_dir(kiln_sandbox::SOURCE_NAME)
        .unwrap_or_else(|e| panic!("the code tool needs `kiln data fetch`: {e}"));
    let sb = kiln_sandbox::Sandbox::load(&dir.join(kiln_sandbox::WASM_IN_SOURCE)).unwrap();
    (sb, kiln_sandbox::Limits::default())
}

fn tools_server(parallel: usize) -> Server {
    let toolbox = ToolBox {
        code: Some(sandbox()),
        search: Some(SearchIndex::build([
            (
                "atlas/velmora",
                "Velmora is a river town whose bridge has 17 arches.",
            ),
            ("atlas/quenby", "Quenby grows pears on terraced hills."),
        ])),
    };
    let model = served(true, 2048).with_tools(toolbox).unwrap();
    start(model, opts(parallel), scripted)
}

fn ask(a: SocketAddr, user: &str, extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": user}], "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = post(a, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The contexts of requests whose prompt holds `marker`, decoded: (whole context, the part fed
/// on top of what the slot kept).
fn fed(marker: &str) -> Vec<(String, String)> {
    FED.lock()
        .unwrap()
        .iter()
        .map(|(p, keep)| (tok().decode(p), tok().decode(&p[*keep..])))
        .filter(|(all, _)| all.contains(marker))
        .collect()
}

/// What was fed on top of a slot after a call closed (the tools' outputs), for `marker`'s
/// requests.
fn fed_outputs(marker: &str) -> Vec<String> {
    fed(marker)
        .into_iter()
        .map(|(_, added)| added)
        .filter(|added| added.starts_with("<|python_end|>") || added.starts_with("<|search_end|>"))
        .collect()
}

#[test]
fn a_code_call_runs_in_the_sandbox_and_the_model_reads_its_output() {
    script(
        "powerful",
        &[
            &text("Let me compute. "),
            &code_call("print(2**100)"),
            &text("It is 2 to the 100."),
        ],
    );
    let srv = tools_server(2);
    let a = srv.addr();
    let models = get(a, "/v1/models").json();
    assert_eq!(models["data"][0]["kiln_tools"], json!(["code", "search"]));

    let v = ask(a, "How powerful is two?", json!({}));
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(
        c["message"]["content"],
        "Let me compute. It is 2 to the 100."
    );
    let big = "1267650600228229401496703205376\n";
    assert_eq!(
        c["message"]["kiln_tool_calls"],
        json!([{"tool": "code", "input": "print(2**100)", "output": big}])
    );
    // The prompt offered the tools as the lessons did, and the model read the output: the
    // closing token and `<|output_start|> output <|output_end|>`, fed on top of the slot.
    let contexts = fed("powerful");
    assert!(contexts[0].0.contains(TOOLS_SYSTEM), "{contexts:?}");
    assert_eq!(
        fed_outputs("powerful"),
        vec![format!("<|python_end|><|output_start|>{big}<|output_end|>")]
    );
    // Usage counts the sampled tokens, not the tool's output.
    let sampled = text("Let me compute. ").len()
        + code_call("print(2**100)").len()
        + text("It is 2 to the 100.").len();
    assert_eq!(v["usage"]["completion_tokens"], sampled);

    // Streamed: the call's pieces and output in `kiln_tool_call` deltas, the text in `content`,
    // and the first chunk says who speaks.
    let body = json!({"messages": [{"role": "user", "content": "How powerful is two?"}],
                      "temperature": 0, "stream": true});
    let (status, _, mut r) = send(
        a,
        "POST",
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let events = sse_events(r.as_mut(), usize::MAX);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (mut content, mut input, mut output, mut tool) = (String::new(), String::new(), None, None);
    for ch in &chunks {
        let d = &ch["choices"][0]["delta"];
        content.push_str(d["content"].as_str().unwrap_or(""));
        let call = &d["kiln_tool_call"];
        if !call.is_null() {
            assert_eq!(call["index"], 0);
            tool = tool.or(call["tool"].as_str().map(str::to_string));
            input.push_str(call["input"].as_str().unwrap_or(""));
            output = output.or(call["output"].as_str().map(str::to_string));
        }
    }
    assert_eq!(content, "Let me compute. It is 2 to the 100.");
    assert_eq!(tool.as_deref(), Some("code"));
    assert_eq!(input, "print(2**100)");
    assert_eq!(output.as_deref(), Some(big));
    assert!(metric(a, "kiln_tool_calls_total") >= 2.0);
}

#[test]
fn bad_calls_get_outputs_the_model_can_read() {
    script(
        "troublesome",
        &[
            &code_call("print(1 +"),
            &search_call("velmora bridge arches"),
            &search_call("zzzz qqqq"),
            &code_call("while True: pass"),
            &text("Done."),
        ],
    );
    script(
        "unclosed",
        &[
            &text("Here: "),
            &[special("<|python_start|>")],
            &text("print("),
        ],
    );
    let srv = tools_server(2);
    let a = srv.addr();
    let v = ask(a, "A troublesome question", json!({}));
    let c = &v["choices"][0];
    assert_eq!(c["message"]["content"], "Done.");
    let calls = c["message"]["kiln_tool_calls"].as_array().unwrap();
    let out = |i: usize| calls[i]["output"].as_str().unwrap().to_string();
    assert!(out(0).contains("SyntaxError"), "{}", out(0));
    assert_eq!(calls[1]["tool"], "search");
    assert!(
        out(1).contains("atlas/velmora") && out(1).contains("17 arches"),
        "{}",
        out(1)
    );
    assert_eq!(out(2), "no results for: zzzz qqqq\n");
    // The sandbox stops the endless loop (its CPU limit; its clock on a loaded machine): a line
    // the model reads, and the reply goes on.
    assert!(out(3).starts_with("stopped: "), "{}", out(3));

    // A reply that ends inside a call: the call is reported, never run.
    let v = ask(a, "unclosed", json!({}));
    let c = &v["choices"][0];
    assert_eq!(c["message"]["content"], "Here: ");
    assert_eq!(
        c["message"]["kiln_tool_calls"],
        json!([{"tool": "code", "input": "print(", "output": "error: the tool call was not closed\n"}])
    );
}

#[test]
fn calls_past_the_limit_are_refused_readably() {
    let five: Vec<Vec<u32>> = (0..5).map(|i| code_call(&format!("print({i})"))).collect();
    let parts: Vec<&[u32]> = five.iter().map(Vec::as_slice).collect();
    script("chatty", &parts);
    let srv = tools_server(1);
    let v = ask(srv.addr(), "a chatty one", json!({}));
    let calls = v["choices"][0]["message"]["kiln_tool_calls"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(calls.len(), 5);
    for (i, c) in calls.iter().enumerate().take(4) {
        assert_eq!(c["output"], format!("{i}\n"));
    }
    assert_eq!(
        calls[4]["output"],
        "error: tool call limit reached (4 per turn)\n"
    );
}

#[test]
fn a_running_tool_does_not_hold_up_the_other_requests() {
    script("slowpoke", &[&code_call("while True: pass"), &text("ok")]);
    script("quick", &[&text("fast answer")]);
    let srv = tools_server(2);
    let a = srv.addr();
    let t0 = Instant::now();
    let slow = std::thread::spawn(move || {
        let v = ask(a, "slowpoke", json!({}));
        (v, t0.elapsed())
    });
    // Ask while the endless loop runs in the sandbox (it is stopped after about a second of
    // Python, more on a loaded machine).
    std::thread::sleep(Duration::from_millis(100));
    let v = ask(a, "quick", json!({}));
    let quick_done = t0.elapsed();
    assert_eq!(v["choices"][0]["message"]["content"], "fast answer");
    let (sv, slow_done) = slow.join().unwrap();
    assert_eq!(sv["choices"][0]["message"]["content"], "ok");
    assert!(
        quick_done < slow_done,
        "the quick request ({quick_done:?}) waited for the tool ({slow_done:?})"
    );
}

#[test]
fn models_without_tool_tokens_refuse_tools() {
    let err = served(false, 64).with_tools(ToolBox::none()).err().unwrap();
    assert!(err.contains("no tool tokens"), "{err}");
}
