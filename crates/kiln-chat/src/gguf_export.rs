//! A kiln checkpoint as one GGUF file that llama.cpp (and LM Studio, ollama) load and run: the
//! weights under llama.cpp's architecture names (`kiln_engine::gguf::export`), the tokenizer as a
//! `gpt2` byte-level BPE vocabulary (`kiln_tokenizer::gguf_export`), and kiln's chat format as a
//! Jinja `tokenizer.chat_template` ([`CHAT_TEMPLATE`]).

use std::path::{Path, PathBuf};

use kiln_engine::gguf::export::{add_model, llama_cpp_arch, ExportSummary, ExportType};
use kiln_engine::gguf::{GgmlType, GgufError, GgufWriter, Value};
use kiln_tokenizer::{gguf_bpe_vocab, Tokenizer, TokenizerError};

use crate::format::ChatTokens;
use crate::load::{load_model, LoadError};

/// kiln's chat format (format.rs) in Jinja: `<|bos|>`, then per turn `<|user_start|>` text
/// `<|user_end|>` or `<|assistant_start|>` text `<|assistant_end|>`; a non-blank system message
/// goes before the first user turn's text, followed by a blank line; the generation prompt is
/// `<|assistant_start|>`. llama.cpp parses the special-token text back into the control tokens.
pub const CHAT_TEMPLATE: &str = "{{- bos_token -}}\
{%- set ns = namespace(system='') -%}\
{%- for message in messages -%}\
{%- if message['role'] == 'system' -%}\
{%- if message['content'] | trim -%}{%- set ns.system = message['content'] -%}{%- endif -%}\
{%- elif message['role'] == 'user' -%}\
<|user_start|>\
{%- if ns.system -%}{{- ns.system ~ '\\n\\n' -}}{%- set ns.system = '' -%}{%- endif -%}\
{{- message['content'] -}}<|user_end|>\
{%- elif message['role'] == 'assistant' -%}\
<|assistant_start|>{{- message['content'] -}}<|assistant_end|>\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}<|assistant_start|>{%- endif -%}";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// What [`export_gguf`] wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub checkpoint: PathBuf,
    /// llama.cpp architecture (`gpt2`).
    pub arch: &'static str,
    /// llama.cpp pre-tokenizer (`llama-bpe` for kiln's default split pattern).
    pub pre: &'static str,
    pub n_vocab: usize,
    pub tensors: ExportSummary,
    pub has_chat_template: bool,
    pub bytes: u64,
}

impl ExportReport {
    /// Tensors per type, e.g. `Q8_0 ×16, F32 ×27`.
    pub fn type_counts(&self) -> String {
        let mut counts: Vec<(GgmlType, usize)> = Vec::new();
        for (_, t) in &self.tensors.tensors {
            match counts.iter_mut().find(|c| c.0 == *t) {
                Some(c) => c.1 += 1,
                None => counts.push((*t, 1)),
            }
        }
        counts
            .iter()
            .map(|(t, n)| format!("{t:?} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The tokenizer's `tokenizer.*` keys for a model of `n_vocab` ids; returns the pre-tokenizer and
/// whether a chat template was written (the tokenizer has kiln's chat tokens).
pub fn add_tokenizer(
    w: &mut GgufWriter,
    tok: &Tokenizer,
    n_vocab: usize,
) -> Result<(&'static str, bool), ExportError> {
    let v = gguf_bpe_vocab(tok, n_vocab)?;
    let strs = |v: Vec<String>| Value::Array(v.into_iter().map(Value::Str).collect());
    w.set_str("tokenizer.ggml.model", "gpt2")?;
    w.set_str("tokenizer.ggml.pre", v.pre)?;
    w.set("tokenizer.ggml.tokens", strs(v.tokens))?;
    w.set(
        "tokenizer.ggml.token_type",
        Value::Array(v.token_types.into_iter().map(Value::I32).collect()),
    )?;
    w.set("tokenizer.ggml.merges", strs(v.merges))?;
    let chat = ChatTokens::from_codec(tok).ok();
    // BOS starts every document and prompt (kiln sample prepends it); the end of an assistant turn
    // is the end of generation for chat. Tokenizers without kiln's chat tokens (GPT-2's) use
    // `<|endoftext|>` for both.
    let bos = tok
        .special_token_id("<|bos|>")
        .or_else(|| tok.special_token_id("<|endoftext|>"));
    if let Some(bos) = bos {
        w.set_u32("tokenizer.ggml.bos_token_id", bos)?;
        w.set("tokenizer.ggml.add_bos_token", Value::Bool(true))?;
    }
    if let Some(eos) = chat.map(|c| c.assistant_end).or(bos) {
        w.set_u32("tokenizer.ggml.eos_token_id", eos)?;
    }
    w.set("tokenizer.ggml.add_eos_token", Value::Bool(false))?;
    if let Some(c) = chat {
        w.set_u32("tokenizer.ggml.eot_token_id", c.assistant_end)?;
        w.set_str("tokenizer.chat_template", CHAT_TEMPLATE)?;
    }
    Ok((v.pre, chat.is_some()))
}

/// Export the checkpoint `ckpt` (a checkpoint folder, or a run folder with `ckpt/latest`) with
/// `tokenizer` (default: the one its run recorded) to `out`, matrices as `ty`. Atomic.
pub fn export_gguf(
    ckpt: &Path,
    tokenizer: Option<&str>,
    out: &Path,
    ty: ExportType,
) -> Result<ExportReport, ExportError> {
    let m = load_model(ckpt, tokenizer, 1)?;
    let cfg = &m.model.cfg;
    let arch = llama_cpp_arch(cfg.arch)?;
    let mut w = GgufWriter::new();
    // `general.architecture` comes first (add_model writes it), as gguf-py's GGUFWriter does.
    let tensors = add_model(&mut w, cfg, &m.model.params_host(), ty)?;
    let name = m
        .dir
        .components()
        .rev()
        .take(3)
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("/");
    w.set_str("general.name", &format!("kiln {name}"))?;
    let (pre, has_chat_template) = add_tokenizer(&mut w, &m.tok, cfg.vocab_size)?;
    w.write(out)?;
    let bytes = std::fs::metadata(out).map(|md| md.len()).unwrap_or(0);
    Ok(ExportReport {
        checkpoint: m.dir,
        arch,
        pre,
        n_vocab: cfg.vocab_size,
        tensors,
        has_chat_template,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{render_for_completion, Conversation, Message};
    use kiln_tokenizer::{train_from_texts, TrainConfig, CHAT_SPECIAL_TOKENS};

    fn render(template: &str, messages: &[(&str, &str)], bos: &str) -> String {
        let mut env = minijinja::Environment::new();
        env.add_template("t", template).unwrap();
        let msgs: Vec<_> = messages
            .iter()
            .map(|(r, c)| minijinja::context! { role => r, content => c })
            .collect();
        env.get_template("t")
            .unwrap()
            .render(minijinja::context! {
                messages => msgs, bos_token => bos, add_generation_prompt => true
            })
            .unwrap()
    }

    #[test]
    fn chat_template_renders_kiln_s_format() {
        let cfg = TrainConfig {
            vocab_size: 256 + 40 + CHAT_SPECIAL_TOKENS.len(),
            ..Default::default()
        };
        let tok =
            train_from_texts(&["hello there, how are you? fine thanks.\n\n"; 5], &cfg).unwrap();
        let all: std::collections::HashSet<&str> = CHAT_SPECIAL_TOKENS.iter().copied().collect();
        let tokens = ChatTokens::from_codec(&tok).unwrap();
        for system in [None, Some("Be brief."), Some("  ")] {
            let mut conv = Conversation::new(vec![
                Message::user("hello there"),
                Message::assistant("fine, thanks."),
                Message::user("how are you?\n"),
            ]);
            conv.system = system.map(str::to_string);
            let want = render_for_completion(&conv, &tok, &tokens).unwrap();
            let mut msgs = vec![];
            if let Some(s) = system {
                msgs.push(("system", s));
            }
            msgs.extend([
                ("user", "hello there"),
                ("assistant", "fine, thanks."),
                ("user", "how are you?\n"),
            ]);
            let text = render(CHAT_TEMPLATE, &msgs, "<|bos|>");
            // llama.cpp tokenizes the rendered prompt with the special-token text parsed.
            assert_eq!(tok.encode(&text, &all), want, "{system:?}: {text:?}");
        }
    }
}
