//! The model a server serves, whichever family it is: a kiln checkpoint (kiln's chat format, its
//! BPE tokenizer) or a released GGUF model (its own tokenizer and Jinja chat template). The HTTP
//! side uses it to turn requests into prompt ids and ids back into bytes; the scheduler uses it
//! only through [`make_decoder`].

use std::sync::Arc;

use kiln_chat::format::{render_for_completion, ChatTokens, Conversation, Message, Role};
use kiln_chat::gguf_model::GgufChatModel;
use kiln_chat::tools::lessons::TOOLS_SYSTEM;
use kiln_chat::tools::runtime::{ToolTokens, TurnLimits};
use kiln_chat::tools::toolbox::ToolBox;
use kiln_engine::llama::LlamaBatch;
use kiln_engine::{BatchDecoder, BatchedDecoder, CpuBackend, EngineError, Model};
use kiln_tokenizer::Tokenizer;

/// One message of a chat request, as the API gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Why a conversation cannot become a prompt: `param` is the request field to blame
/// (`messages`, or `messages[i]` with `i` the message's index in the request as sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptError {
    pub param: String,
    pub message: String,
}

impl PromptError {
    fn messages(message: impl Into<String>) -> PromptError {
        PromptError {
            param: "messages".into(),
            message: message.into(),
        }
    }

    fn at(index: usize, message: impl Into<String>) -> PromptError {
        PromptError {
            param: format!("messages[{index}]"),
            message: format!("messages[{index}]: {}", message.into()),
        }
    }
}

/// A loaded model with what it needs to talk.
// One value per server: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum ServedModel {
    /// A kiln checkpoint on the cpu and its tokenizer; `chat` is `None` when the tokenizer has no
    /// chat tokens (a base model: completions only); `tools` when chat replies may call tools.
    Kiln {
        model: Model<CpuBackend>,
        tok: Tokenizer,
        chat: Option<ChatTokens>,
        tools: Option<ServedTools>,
    },
    Gguf(GgufChatModel),
}

/// The tools a kiln checkpoint's chat replies may call (`kiln serve --tools`): the scheduler runs
/// a call when the model closes it and feeds the output back, as `kiln chat --tools` does.
pub struct ServedTools {
    /// Shared with the threads that run calls (the sandbox and the index are read-only).
    pub toolbox: Arc<ToolBox>,
    pub tokens: ToolTokens,
    /// Calls per reply, characters of one output, and the reply's time for tools
    /// (`max_new_tokens` is the request's `max_tokens` instead).
    pub limits: TurnLimits,
}

impl ServedTools {
    /// The tool names the server offers, as `/v1/models` lists them.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.toolbox.code.is_some() {
            names.push("code");
        }
        if self.toolbox.search.is_some() {
            names.push("search");
        }
        names
    }
}

impl ServedModel {
    /// A kiln checkpoint's model and tokenizer.
    pub fn kiln(model: Model<CpuBackend>, tok: Tokenizer) -> ServedModel {
        let chat = ChatTokens::from_codec(&tok).ok();
        ServedModel::Kiln {
            model,
            tok,
            chat,
            tools: None,
        }
    }

    /// This model with `toolbox`'s tools in its chat replies; the conversation's system text
    /// then starts with the line the tool lessons were trained under ([`TOOLS_SYSTEM`]). Fails
    /// for a model that was not trained on kiln's tool tokens (a GGUF model, a base checkpoint)
    /// or a tokenizer that lacks a tool the box enables.
    pub fn with_tools(self, toolbox: ToolBox) -> Result<ServedModel, String> {
        let ServedModel::Kiln {
            model,
            tok,
            chat,
            tools: _,
        } = self
        else {
            return Err(
                "released (GGUF) models were not trained on kiln's tool tokens; serve a kiln \
                 checkpoint to use tools"
                    .into(),
            );
        };
        let tokens = chat.as_ref().and_then(ToolTokens::from_chat).ok_or(
            "this checkpoint's tokenizer has no tool tokens (<|output_start|>, <|output_end|>): \
             a base model cannot call tools",
        )?;
        if toolbox.code.is_some() && tokens.python.is_none() {
            return Err(
                "the tokenizer has no <|python_start|>/<|python_end|>: no code tool".into(),
            );
        }
        if toolbox.search.is_some() && tokens.search.is_none() {
            return Err(
                "the tokenizer has no <|search_start|>/<|search_end|>: no search tool".into(),
            );
        }
        Ok(ServedModel::Kiln {
            model,
            tok,
            chat,
            tools: Some(ServedTools {
                toolbox: Arc::new(toolbox),
                tokens,
                limits: TurnLimits::default(),
            }),
        })
    }

    /// The tools chat replies may call, if any.
    pub fn tools(&self) -> Option<&ServedTools> {
        match self {
            ServedModel::Kiln { tools, .. } => tools.as_ref(),
            ServedModel::Gguf(_) => None,
        }
    }

    /// The text of a tool call's ids (what the model wrote between the call's tokens).
    pub fn call_text(&self, ids: &[u32]) -> String {
        match self {
            ServedModel::Kiln { tok, .. } => kiln_chat::format::Codec::decode_text(tok, ids),
            ServedModel::Gguf(m) => String::from_utf8_lossy(&m.tok.decode_bytes(ids)).into_owned(),
        }
    }

    /// The forced ids of a tool's output (`<|output_start|> output <|output_end|>`); empty for a
    /// model without tools.
    pub fn output_ids(&self, output: &str) -> Vec<u32> {
        match (self, self.tools()) {
            (ServedModel::Kiln { tok, .. }, Some(t)) => t.tokens.output_ids(tok, output),
            _ => Vec::new(),
        }
    }

    /// Longest sequence (prompt + reply) the model was built for.
    pub fn context(&self) -> usize {
        match self {
            ServedModel::Kiln { model, .. } => model.cfg.context,
            ServedModel::Gguf(m) => m.model.config.context,
        }
    }

    /// Logits per token (the vocabulary the sampler draws from).
    pub fn vocab(&self) -> usize {
        match self {
            ServedModel::Kiln { model, .. } => model.cfg.vocab_size,
            ServedModel::Gguf(m) => m.model.config.vocab,
        }
    }

    /// Bytes of KV cache one token takes in one slot: keys and values of every layer, f32 (what
    /// the sequential decoders allocate; a batched one may store less).
    pub fn kv_bytes_per_token(&self) -> usize {
        let (layers, kv) = match self {
            ServedModel::Kiln { model, .. } => (
                model.cfg.n_layer,
                model.cfg.n_kv_head * model.cfg.head_dim(),
            ),
            ServedModel::Gguf(m) => {
                let c = &m.model.config;
                (c.n_layer, c.n_kv_head * c.head_dim)
            }
        };
        2 * layers * kv * std::mem::size_of::<f32>()
    }

    /// Bytes of one token (a character may span tokens; the caller reassembles UTF-8). Control
    /// tokens give their own text (`<|python_start|>`): what logprobs show to name the token.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match self {
            ServedModel::Kiln { tok, .. } => tok.decode_bytes(&[id]),
            ServedModel::Gguf(m) => m.tok.decode_bytes(&[id]),
        }
    }

    /// Whether `id` is a control token: it marks structure (turns, tool calls, documents) and is
    /// no part of the reply's text, as `kiln chat` and other OpenAI-style servers treat them.
    pub fn is_control(&self, id: u32) -> bool {
        match self {
            // Every special token of a kiln tokenizer: the chat format's own (the set
            // `ChatTokens::is_format_token` names, which `kiln chat` hides) and a base
            // tokenizer's document markers.
            ServedModel::Kiln { tok, .. } => tok.is_special(id),
            ServedModel::Gguf(m) => gguf_is_control(m, id),
        }
    }

    /// What token `id` adds to a reply's text: its bytes, or nothing for a control token.
    pub fn text_bytes(&self, id: u32) -> Vec<u8> {
        if self.is_control(id) {
            Vec::new()
        } else {
            self.token_bytes(id)
        }
    }

    /// Tokens that end a chat reply.
    pub fn chat_stop_ids(&self) -> Vec<u32> {
        match self {
            ServedModel::Kiln { chat, .. } => chat.map(|c| c.stop_ids()).unwrap_or_default(),
            ServedModel::Gguf(m) => m.stop.clone(),
        }
    }

    /// Tokens that end a plain completion: the end of a document and, for a chat model, the end
    /// of a turn (a chat checkpoint continuing a prompt ends its turn the way it ends a reply).
    pub fn completion_stop_ids(&self) -> Vec<u32> {
        match self {
            ServedModel::Kiln { tok, chat, .. } => {
                let mut ids: Vec<u32> = bos_id(tok).into_iter().collect();
                for id in chat.map(|c| c.stop_ids()).unwrap_or_default() {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                ids
            }
            ServedModel::Gguf(m) => m.stop.clone(),
        }
    }

    /// Prompt ids of a raw completion prompt. Special-token text in it stays text.
    pub fn completion_prompt(&self, text: &str) -> Vec<u32> {
        match self {
            ServedModel::Kiln { tok, .. } => {
                let mut ids: Vec<u32> = bos_id(tok).into_iter().collect();
                ids.extend(tok.encode_ordinary(text));
                ids
            }
            ServedModel::Gguf(m) => m.encode_prompt(text, false),
        }
    }

    /// Prompt ids of a conversation, ending with the assistant's turn opened.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, PromptError> {
        match self {
            ServedModel::Kiln {
                tok, chat, tools, ..
            } => {
                let chat = chat.as_ref().ok_or_else(|| {
                    PromptError::messages(
                        "this model's tokenizer has no chat tokens (a base model): use /v1/completions",
                    )
                })?;
                let mut conv = kiln_conversation(messages)?;
                if tools.is_some() {
                    // As `kiln chat --tools`: the lessons' line first, the client's system text
                    // after it.
                    conv.system = Some(match conv.system.take() {
                        Some(s) => format!("{TOOLS_SYSTEM}\n{s}"),
                        None => TOOLS_SYSTEM.to_string(),
                    });
                }
                render_for_completion(&conv, tok, chat)
                    .map_err(|e| PromptError::messages(e.to_string()))
            }
            ServedModel::Gguf(m) => gguf_chat_prompt(m, messages),
        }
    }
}

/// An API conversation in kiln's format, which has one system text and then strictly alternating
/// turns, user first. Clients send looser conversations than that, and they are mapped rather
/// than refused:
/// - system and developer messages, wherever they are, join the system text;
/// - consecutive messages of one role are one turn, their texts joined by a blank line;
/// - an assistant message before the first user message (a UI's greeting) is dropped: the format
///   has no place for it, and folding it into the system text would present the assistant's own
///   words to the model as instructions;
/// - an assistant message with no text (`content: null`, as clients send for a turn that only
///   called tools) is dropped: it says nothing, and kiln's format has no empty turn.
///
/// What stays an error: no user message, and a conversation that ends with an assistant message
/// (this server writes a new assistant turn; it does not continue one).
fn kiln_conversation(messages: &[ChatMessage]) -> Result<Conversation, PromptError> {
    let mut system = Vec::new();
    // (role, text, index in the request of the turn's last message)
    let mut turns: Vec<(Role, String, usize)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => {
                system.push(m.content.as_str());
                continue;
            }
            "user" => Role::User,
            "assistant" => Role::Assistant,
            r => return Err(PromptError::at(i, format!("unsupported role {r:?}"))),
        };
        if role == Role::Assistant && (turns.is_empty() || m.content.trim().is_empty()) {
            continue;
        }
        match turns.last_mut() {
            Some((last, text, at)) if *last == role => {
                text.push_str("\n\n");
                text.push_str(&m.content);
                *at = i;
            }
            _ => turns.push((role, m.content.clone(), i)),
        }
    }
    match turns.last() {
        None => {
            return Err(PromptError::messages(
                "the conversation has no user message",
            ))
        }
        Some((Role::Assistant, _, at)) => {
            return Err(PromptError::at(
                *at,
                "the last message must be a user message: this server writes the next assistant \
                 turn and does not continue one",
            ))
        }
        Some(_) => {}
    }
    let mut conv = Conversation::new(
        turns
            .into_iter()
            .map(|(role, text, _)| match role {
                Role::User => Message::user(text),
                Role::Assistant => Message::assistant(text),
            })
            .collect(),
    );
    if !system.is_empty() {
        conv.system = Some(system.join("\n\n"));
    }
    Ok(conv)
}

/// A GGUF chat prompt whose special tokens come from the template only. The template is rendered
/// with a marker in place of each message's content; the template's text is encoded with special
/// tokens parsed, each content as plain text. So a user who types `<|im_end|>` gets those
/// characters, never the control token (kiln's rule: special tokens by id, never parsed out of
/// user text). The tokenizer already encodes the text between special tokens piece by piece, so
/// cutting at the markers changes nothing else. A template that rewrites contents (the markers do
/// not come back once each) is rendered the plain way.
///
/// `developer` (OpenAI's newer name for `system`) is given to the template as `system`: templates
/// know only the roles their model was trained on. A conversation without a user message is
/// refused: templates render it as nothing, or as a system text the model has nothing to answer.
fn gguf_chat_prompt(m: &GgufChatModel, messages: &[ChatMessage]) -> Result<Vec<u32>, PromptError> {
    if !messages.iter().any(|msg| msg.role == "user") {
        return Err(PromptError::messages(
            "the conversation has no user message",
        ));
    }
    let role = |msg: &ChatMessage| match msg.role.as_str() {
        "developer" => "system".to_string(),
        r => r.to_string(),
    };
    let marks: Vec<String> = (0..messages.len())
        .map(|i| format!("\u{E000}{i}\u{E001}"))
        .collect();
    let with_marks: Vec<(String, String)> = messages
        .iter()
        .zip(&marks)
        .map(|(msg, mark)| (role(msg), mark.clone()))
        .collect();
    let text = m
        .render(&with_marks)
        .map_err(|e| PromptError::messages(e.to_string()))?;
    if !marks.iter().all(|k| text.matches(k.as_str()).count() == 1) {
        let pairs: Vec<(String, String)> = messages
            .iter()
            .map(|msg| (role(msg), msg.content.clone()))
            .collect();
        let text = m
            .render(&pairs)
            .map_err(|e| PromptError::messages(e.to_string()))?;
        return Ok(m.encode_prompt(&text, true));
    }
    let mut ids = m.encode_prompt("", true); // BOS when the file asks for it
    let mut rest = text.as_str();
    while let Some(start) = rest.find('\u{E000}') {
        let after = &rest[start + '\u{E000}'.len_utf8()..];
        let (index, tail) = after
            .split_once('\u{E001}')
            .ok_or_else(|| PromptError::messages("chat template: a content marker was cut"))?;
        let msg = index
            .parse::<usize>()
            .ok()
            .and_then(|i| messages.get(i))
            .ok_or_else(|| PromptError::messages("chat template: a content marker was changed"))?;
        ids.extend(m.tok.encode(&rest[..start], true));
        ids.extend(m.tok.encode(&msg.content, false));
        rest = tail;
    }
    ids.extend(m.tok.encode(rest, true));
    Ok(ids)
}

/// GGUF token type 3 (`tokenizer.ggml.token_type`): a control token. User-defined tokens (type
/// 4) stay text, as llama.cpp prints them: some vocabularies use them for plain words or tags.
fn gguf_is_control(m: &GgufChatModel, id: u32) -> bool {
    const TYPE_CONTROL: u64 = 3;
    m.model
        .file()
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
        .and_then(|types| types.get(id as usize))
        .and_then(|t| t.as_u64())
        == Some(TYPE_CONTROL)
}

fn bos_id(tok: &Tokenizer) -> Option<u32> {
    tok.special_token_id("<|bos|>")
        .or_else(|| tok.special_token_id("<|endoftext|>"))
}

/// The decoder the scheduler drives: `slots` sequences of up to `capacity` tokens each.
///
/// This is the one place that chooses the [`BatchDecoder`] implementation: the engine's batched
/// decoders, one forward per step over every live slot (the weights are read once per step for
/// all of them, which is where continuous batching gains over one sequence at a time).
pub fn make_decoder(
    model: &ServedModel,
    slots: usize,
    capacity: usize,
) -> Result<Box<dyn BatchDecoder + '_>, EngineError> {
    Ok(match model {
        ServedModel::Kiln { model, .. } => Box::new(BatchedDecoder::new(model, slots, capacity)?),
        ServedModel::Gguf(m) => Box::new(LlamaBatch::new(&m.model, slots, capacity)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(list: &[(&str, &str)]) -> Vec<ChatMessage> {
        list.iter()
            .map(|(role, content)| ChatMessage {
                role: role.to_string(),
                content: content.to_string(),
            })
            .collect()
    }

    #[test]
    fn loose_conversations_become_kiln_turns() {
        let conv = kiln_conversation(&msgs(&[
            ("system", "S"),
            ("assistant", "Hello! How can I help?"),
            ("user", "a"),
            ("developer", "D"),
            ("user", "b"),
            ("assistant", ""),
            ("user", "c"),
            ("assistant", "x"),
            ("assistant", "y"),
            ("user", "d"),
        ]))
        .unwrap();
        assert_eq!(conv.system.as_deref(), Some("S\n\nD"));
        assert_eq!(
            conv.messages,
            vec![
                Message::user("a\n\nb\n\nc"),
                Message::assistant("x\n\ny"),
                Message::user("d"),
            ]
        );
        conv.validate(false).unwrap();
    }

    #[test]
    fn conversation_errors_name_the_message_as_sent() {
        let err = |list: &[(&str, &str)]| kiln_conversation(&msgs(list)).unwrap_err();
        let e = err(&[("system", "S"), ("user", "a"), ("assistant", "x")]);
        assert_eq!(e.param, "messages[2]");
        assert!(e.message.starts_with("messages[2]: "), "{}", e.message);
        let e = err(&[("system", "S"), ("assistant", "hi")]);
        assert_eq!(e.param, "messages");
        assert!(e.message.contains("no user message"), "{}", e.message);
        let e = err(&[("user", "a"), ("tool", "x")]);
        assert_eq!(e.param, "messages[1]");
    }
}
