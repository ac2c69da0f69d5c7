//! A released GGUF model as chat and sample use it: the file's `llama` weights (kiln-engine), its
//! tokenizer from `tokenizer.ggml.*` (kiln-tokenizer) and its Jinja chat template
//! (`tokenizer.chat_template`, rendered with minijinja), plus a streaming greedy/sampled decode
//! loop over the KV cache. Callers pass a path; resolving catalogue names is kiln-data's job.

use std::path::Path;

use kiln_engine::gguf::{GgufFile, Value};
use kiln_engine::llama::{Arch, LlamaModel};
use kiln_engine::{sample_token, EngineError, Rng, SamplingParams};
use kiln_tokenizer::{GgufTokenizer, GgufVocab, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum GgufChatError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("chat template (tokenizer.chat_template): {0}")]
    Template(String),
}

/// Gemma's turn format, for Gemma files that carry no `tokenizer.chat_template` (the fetched
/// Gemma-3-270M has none): `<start_of_turn>user|model`, `<end_of_turn>`, a system prompt folded
/// into the first user turn, turn contents trimmed. kiln's own template text; BOS comes from
/// `tokenizer.ggml.add_bos_token`.
const GEMMA_TEMPLATE: &str = "\
{%- if messages and messages[0].role == 'system' -%}
{%- set prefix = messages[0].content | trim ~ '\n\n' -%}{%- set turns = messages[1:] -%}
{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}
{%- for m in turns -%}
<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}
{{ (prefix if loop.first else '') ~ (m.content | trim) }}<end_of_turn>
{% endfor -%}
{%- if add_generation_prompt %}<start_of_turn>model
{% endif -%}";

/// Render a Jinja chat template as Hugging Face does: `messages`, `add_generation_prompt`,
/// `bos_token`, `eos_token`.
fn render_template(
    src: &str,
    messages: &[(String, String)],
    bos: &str,
    eos: &str,
) -> Result<String, GgufChatError> {
    let mut env = minijinja::Environment::new();
    // HF templates call Python string methods (`.strip()`, `.startswith()`).
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_template("chat", src)
        .map_err(|e| GgufChatError::Template(e.to_string()))?;
    let msgs: Vec<_> = messages
        .iter()
        .map(|(r, c)| minijinja::context! { role => r, content => c })
        .collect();
    env.get_template("chat")
        .and_then(|t| {
            t.render(minijinja::context! {
                messages => msgs,
                add_generation_prompt => true,
                bos_token => bos,
                eos_token => eos,
            })
        })
        .map_err(|e| GgufChatError::Template(e.to_string()))
}

/// Model, tokenizer and chat template of one GGUF file.
pub struct GgufChatModel {
    pub model: LlamaModel,
    pub tok: GgufTokenizer,
    pub template: Option<String>,
    /// Tokens that end a reply (EOS and the end-of-turn tokens the vocab has).
    pub stop: Vec<u32>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The `tokenizer.ggml.*` metadata of a GGUF file.
pub fn vocab_from(file: &GgufFile) -> Result<GgufVocab, GgufChatError> {
    let id = |k: &str| {
        file.get(k)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    Ok(GgufVocab {
        model: file
            .str("tokenizer.ggml.model")
            .map_err(EngineError::from)?
            .to_string(),
        pre: file
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .map(str::to_string),
        tokens: strings(file.get("tokenizer.ggml.tokens")),
        token_types: file
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(1.0) as i32).collect())
            .unwrap_or_default(),
        scores: file
            .get("tokenizer.ggml.scores")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect())
            .unwrap_or_default(),
        merges: strings(file.get("tokenizer.ggml.merges")),
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        unk: id("tokenizer.ggml.unknown_token_id"),
        add_bos: file
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool),
        add_space_prefix: file
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(Value::as_bool),
        name: file
            .get("general.name")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

impl GgufChatModel {
    pub fn load(path: &Path) -> Result<GgufChatModel, GgufChatError> {
        let model = LlamaModel::load(path)?;
        let file = model.file().clone();
        let vocab = vocab_from(&file)?;
        let tok = GgufTokenizer::new(&vocab)?;
        let template = file
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| (model.config.arch == Arch::Gemma3).then(|| GEMMA_TEMPLATE.to_string()));
        let mut stop: Vec<u32> = tok.eos.into_iter().collect();
        for t in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"] {
            if let Some(id) = tok.token_id(t) {
                if !stop.contains(&id) {
                    stop.push(id);
                }
            }
        }
        Ok(GgufChatModel {
            model,
            tok,
            template,
            stop,
        })
    }

    /// The prompt text of a conversation (`(role, content)` pairs) through the file's template,
    /// ending with the assistant's turn opened.
    pub fn render(&self, messages: &[(String, String)]) -> Result<String, GgufChatError> {
        let src = self
            .template
            .as_deref()
            .ok_or_else(|| GgufChatError::Template("the file has no chat template".into()))?;
        let tok_text = |id: Option<u32>| id.map(|i| self.tok.decode(&[i])).unwrap_or_default();
        render_template(
            src,
            messages,
            &tok_text(self.tok.bos),
            &tok_text(self.tok.eos),
        )
    }

    /// Prompt ids of `text`: BOS when the file asks for it (once: not when a rendered template
    /// already starts with it), special tokens parsed only when `parse_special` (rendered
    /// templates: yes; raw user prompts: no).
    pub fn encode_prompt(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let body = self.tok.encode(text, parse_special);
        let mut ids: Vec<u32> = match (self.tok.add_bos, self.tok.bos) {
            (true, Some(b)) if body.first() != Some(&b) => vec![b],
            _ => vec![],
        };
        ids.extend(body);
        ids
    }

    /// Prefill `prompt`, then sample up to `max_tokens`, calling `on_token` with each new id;
    /// stops at a stop token (not returned). Returns the new ids.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        sampling: &SamplingParams,
        seed: u64,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>, GgufChatError> {
        if prompt.is_empty() {
            return Err(GgufChatError::Engine(EngineError::Config(
                "empty prompt".into(),
            )));
        }
        let mut s = self.model.session(prompt.len() + max_tokens);
        let mut rng = Rng::new(seed);
        let mut logits = self.model.prefill(&mut s, prompt)?;
        let mut out = Vec::new();
        for i in 0..max_tokens {
            let next = sample_token(&logits, sampling, &mut rng);
            if self.stop.contains(&next) {
                break;
            }
            out.push(next);
            on_token(next);
            if i + 1 < max_tokens {
                logits = self.model.forward(&mut s, next)?.to_vec();
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_turn_format() {
        let m = |r: &str, c: &str| (r.to_string(), c.to_string());
        let text = render_template(
            GEMMA_TEMPLATE,
            &[
                m("system", "Be brief."),
                m("user", " Hi"),
                m("assistant", "Hello!"),
                m("user", "2+2?"),
            ],
            "<bos>",
            "<eos>",
        )
        .unwrap();
        assert_eq!(
            text,
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n\
             <start_of_turn>model\nHello!<end_of_turn>\n\
             <start_of_turn>user\n2+2?<end_of_turn>\n\
             <start_of_turn>model\n"
        );
        let text = render_template(GEMMA_TEMPLATE, &[m("user", "Hi")], "", "").unwrap();
        assert_eq!(
            text,
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }
}
