//! The conversation format: [`Conversation`] and its rendering to token ids plus a loss mask.
//!
//! Special tokens are inserted **by id** from a [`ChatTokens`] table; message text is always encoded
//! with the codec's ordinary encoder, so a user who types `<|assistant_end|>` gets those characters
//! as plain text, never the control token. Layout (as nanochat):
//!
//! ```text
//! <|bos|> <|user_start|> [system + "\n\n"] user <|user_end|>
//!         <|assistant_start|> assistant text <|assistant_end|>   (text + end trained: mask 1)
//!         <|user_start|> ... <|user_end|> <|assistant_start|> ...
//! ```
//!
//! There is no system token in kiln's vocabulary: the system message is prepended to the first user
//! turn (mask 0). Assistant turns may carry tool segments: `<|python_start|> code <|python_end|>` is
//! trained (the model learns to call the tool) and `<|output_start|> result <|output_end|>` is not
//! (the tool wrote it, the model must not learn to imagine it).

use serde::{Deserialize, Serialize};

/// What the format needs from a tokenizer. Implemented for `kiln_tokenizer::Tokenizer` in
/// [`crate::codec`]; tests use a byte-level toy.
pub trait Codec {
    /// Ordinary encoding: never yields a special token, whatever the text says.
    fn encode_text(&self, text: &str) -> Vec<u32>;
    /// Decode ids to text (lossy on broken UTF-8; special ids render as their names).
    fn decode_text(&self, ids: &[u32]) -> String;
    /// The id of a special token such as `<|bos|>`, if the vocabulary has it.
    fn special_id(&self, name: &str) -> Option<u32>;
    /// Vocabulary size (ids are `< vocab_size`).
    fn vocab_size(&self) -> usize;
    /// The exact bytes of `ids` (for streaming: a character may span tokens).
    fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        self.decode_text(ids).into_bytes()
    }
}

/// Errors of the format: missing special tokens, badly shaped conversations.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    #[error("the tokenizer has no `{0}` special token; chat needs a tokenizer trained with the chat special tokens (kiln tok train adds them)")]
    MissingSpecial(&'static str),
    #[error("conversation has no messages")]
    Empty,
    #[error("message {index}: expected a {expected} turn, found {found} (turns must alternate user, assistant, user, ...)")]
    Order {
        index: usize,
        expected: &'static str,
        found: &'static str,
    },
    #[error("message {index}: empty assistant turn")]
    EmptyAssistant { index: usize },
    #[error("conversation has no assistant turn to train on")]
    NoAssistant,
    #[error("a completion prompt must end with a user turn")]
    PromptEndsWithAssistant,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One piece of an assistant turn: plain text, a tool call, or the tool's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "text", rename_all = "snake_case")]
pub enum Segment {
    Text(String),
    /// Code for the python tool (trained).
    Python(String),
    /// What the tool returned (not trained).
    Output(String),
    /// A query for the search tool (trained).
    Search(String),
}

impl Segment {
    /// True when the segment holds only whitespace.
    pub fn is_blank(&self) -> bool {
        match self {
            Segment::Text(t) | Segment::Python(t) | Segment::Output(t) | Segment::Search(t) => {
                t.trim().is_empty()
            }
        }
    }
}

/// Message content: a string, or (assistant only) a list of segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Segments(Vec<Segment>),
}

impl Content {
    /// True when there is nothing for the model to learn from (whitespace only).
    pub fn is_blank(&self) -> bool {
        match self {
            Content::Text(t) => t.trim().is_empty(),
            Content::Segments(s) => s.iter().all(|seg| match seg {
                Segment::Text(t) | Segment::Python(t) | Segment::Output(t) | Segment::Search(t) => {
                    t.trim().is_empty()
                }
            }),
        }
    }

    /// The plain text (segments joined; tool parts included verbatim).
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Segments(s) => s
                .iter()
                .map(|seg| match seg {
                    Segment::Text(t)
                    | Segment::Python(t)
                    | Segment::Output(t)
                    | Segment::Search(t) => t.as_str(),
                })
                .collect(),
        }
    }
}

impl From<&str> for Content {
    fn from(s: &str) -> Self {
        Content::Text(s.to_string())
    }
}

impl From<String> for Content {
    fn from(s: String) -> Self {
        Content::Text(s)
    }
}

/// One turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Content,
}

impl Message {
    pub fn user(text: impl Into<Content>) -> Self {
        Message {
            role: Role::User,
            content: text.into(),
        }
    }
    pub fn assistant(text: impl Into<Content>) -> Self {
        Message {
            role: Role::Assistant,
            content: text.into(),
        }
    }
}

/// A conversation: optional system message, then turns alternating user, assistant, ...
/// Serialized as kiln's JSONL conversation format (one object per line).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Conversation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub messages: Vec<Message>,
}

impl Conversation {
    pub fn new(messages: Vec<Message>) -> Self {
        Conversation {
            system: None,
            messages,
        }
    }

    /// Checks alternation (user first) and that every assistant turn has content.
    /// `for_training` also demands at least one assistant turn.
    pub fn validate(&self, for_training: bool) -> Result<(), FormatError> {
        if self.messages.is_empty() {
            return Err(FormatError::Empty);
        }
        for (index, m) in self.messages.iter().enumerate() {
            let expected = if index % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            };
            if m.role != expected {
                return Err(FormatError::Order {
                    index,
                    expected: expected.name(),
                    found: m.role.name(),
                });
            }
            if m.role == Role::Assistant && m.content.is_blank() {
                return Err(FormatError::EmptyAssistant { index });
            }
        }
        if for_training && self.messages.len() < 2 {
            return Err(FormatError::NoAssistant);
        }
        Ok(())
    }
}

/// The ids of the chat special tokens, looked up once from a codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatTokens {
    pub bos: u32,
    pub user_start: u32,
    pub user_end: u32,
    pub assistant_start: u32,
    pub assistant_end: u32,
    pub python_start: Option<u32>,
    pub python_end: Option<u32>,
    pub output_start: Option<u32>,
    pub output_end: Option<u32>,
    pub search_start: Option<u32>,
    pub search_end: Option<u32>,
}

/// Names of the special tokens the format uses (the tokenizer's `CHAT_SPECIAL_TOKENS` must hold them).
pub const REQUIRED_SPECIALS: [&str; 5] = [
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
];

impl ChatTokens {
    /// Looks the tokens up; a tokenizer without the five core tokens cannot chat.
    pub fn from_codec(codec: &dyn Codec) -> Result<Self, FormatError> {
        let need = |name: &'static str| {
            codec
                .special_id(name)
                .ok_or(FormatError::MissingSpecial(name))
        };
        Ok(ChatTokens {
            bos: need(REQUIRED_SPECIALS[0])?,
            user_start: need(REQUIRED_SPECIALS[1])?,
            user_end: need(REQUIRED_SPECIALS[2])?,
            assistant_start: need(REQUIRED_SPECIALS[3])?,
            assistant_end: need(REQUIRED_SPECIALS[4])?,
            python_start: codec.special_id("<|python_start|>"),
            python_end: codec.special_id("<|python_end|>"),
            output_start: codec.special_id("<|output_start|>"),
            output_end: codec.special_id("<|output_end|>"),
            search_start: codec.special_id("<|search_start|>"),
            search_end: codec.special_id("<|search_end|>"),
        })
    }

    /// Tokens at which generation of an assistant turn stops.
    pub fn stop_ids(&self) -> Vec<u32> {
        vec![self.assistant_end, self.user_start, self.bos]
    }

    /// Whether `id` is one of the format's own tokens (turn markers, tool-call and output
    /// brackets): never text a reader should see.
    pub fn is_format_token(&self, id: u32) -> bool {
        [
            self.bos,
            self.user_start,
            self.user_end,
            self.assistant_start,
            self.assistant_end,
        ]
        .contains(&id)
            || [
                self.python_start,
                self.python_end,
                self.output_start,
                self.output_end,
                self.search_start,
                self.search_end,
            ]
            .contains(&Some(id))
    }
}

/// Token ids and per-token training weights (1 = the model learns to produce this token).
/// `mask[i]` refers to predicting `ids[i]` from `ids[..i]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rendered {
    pub ids: Vec<u32>,
    pub mask: Vec<u8>,
    /// The conversation was longer than `max_len` and was cut.
    pub truncated: bool,
}

impl Rendered {
    fn push(&mut self, ids: &[u32], trained: bool) {
        self.ids.extend_from_slice(ids);
        self.mask
            .extend(std::iter::repeat_n(u8::from(trained), ids.len()));
    }
    /// Number of trained tokens.
    pub fn trained(&self) -> usize {
        self.mask.iter().filter(|&&m| m == 1).count()
    }
}

fn missing_tool(name: &'static str) -> FormatError {
    FormatError::MissingSpecial(name)
}

fn render_turns(
    conv: &Conversation,
    codec: &dyn Codec,
    tokens: &ChatTokens,
    out: &mut Rendered,
) -> Result<(), FormatError> {
    out.push(&[tokens.bos], false);
    for (index, m) in conv.messages.iter().enumerate() {
        match m.role {
            Role::User => {
                let mut text = m.content.text();
                if index == 0 {
                    if let Some(sys) = conv.system.as_deref().filter(|s| !s.trim().is_empty()) {
                        text = format!("{sys}\n\n{text}");
                    }
                }
                out.push(&[tokens.user_start], false);
                out.push(&codec.encode_text(&text), false);
                out.push(&[tokens.user_end], false);
            }
            Role::Assistant => {
                out.push(&[tokens.assistant_start], false);
                match &m.content {
                    Content::Text(t) => out.push(&codec.encode_text(t), true),
                    Content::Segments(segs) => {
                        for seg in segs {
                            match seg {
                                Segment::Text(t) => out.push(&codec.encode_text(t), true),
                                Segment::Python(code) => {
                                    let s = tokens
                                        .python_start
                                        .ok_or(missing_tool("<|python_start|>"))?;
                                    let e =
                                        tokens.python_end.ok_or(missing_tool("<|python_end|>"))?;
                                    out.push(&[s], true);
                                    out.push(&codec.encode_text(code), true);
                                    out.push(&[e], true);
                                }
                                Segment::Search(query) => {
                                    let s = tokens
                                        .search_start
                                        .ok_or(missing_tool("<|search_start|>"))?;
                                    let e =
                                        tokens.search_end.ok_or(missing_tool("<|search_end|>"))?;
                                    out.push(&[s], true);
                                    out.push(&codec.encode_text(query), true);
                                    out.push(&[e], true);
                                }
                                Segment::Output(text) => {
                                    let s = tokens
                                        .output_start
                                        .ok_or(missing_tool("<|output_start|>"))?;
                                    let e =
                                        tokens.output_end.ok_or(missing_tool("<|output_end|>"))?;
                                    out.push(&[s], false);
                                    out.push(&codec.encode_text(text), false);
                                    out.push(&[e], false);
                                }
                            }
                        }
                    }
                }
                out.push(&[tokens.assistant_end], true);
            }
        }
    }
    Ok(())
}

/// Renders a whole conversation for training: `(ids, mask)`, cut to `max_len` tokens.
/// The conversation must be valid for training (alternating, user first, non-empty assistant turns).
pub fn render_for_training(
    conv: &Conversation,
    codec: &dyn Codec,
    tokens: &ChatTokens,
    max_len: usize,
) -> Result<Rendered, FormatError> {
    conv.validate(true)?;
    let mut out = Rendered::default();
    render_turns(conv, codec, tokens, &mut out)?;
    if out.ids.len() > max_len {
        out.ids.truncate(max_len);
        out.mask.truncate(max_len);
        out.truncated = true;
    }
    Ok(out)
}

/// Renders a conversation that ends with a user turn as a prompt ending at `<|assistant_start|>`,
/// ready for the model to write the next assistant turn.
pub fn render_for_completion(
    conv: &Conversation,
    codec: &dyn Codec,
    tokens: &ChatTokens,
) -> Result<Vec<u32>, FormatError> {
    conv.validate(false)?;
    if conv.messages.last().map(|m| m.role) != Some(Role::User) {
        return Err(FormatError::PromptEndsWithAssistant);
    }
    let mut out = Rendered::default();
    render_turns(conv, codec, tokens, &mut out)?;
    out.ids.push(tokens.assistant_start);
    Ok(out.ids)
}

/// A toy codec for tests: one id per byte, specials after the 256 bytes. Compiled for this crate's
/// tests and, through the `testing` feature, for other crates' tests only.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::Codec;

    pub const SPECIALS: [&str; 11] = [
        "<|bos|>",
        "<|user_start|>",
        "<|user_end|>",
        "<|assistant_start|>",
        "<|assistant_end|>",
        "<|python_start|>",
        "<|python_end|>",
        "<|output_start|>",
        "<|output_end|>",
        "<|search_start|>",
        "<|search_end|>",
    ];

    /// Byte-level codec with all chat specials (ids 256..267), or none.
    pub struct ByteCodec {
        pub with_specials: bool,
    }

    impl Codec for ByteCodec {
        fn encode_text(&self, text: &str) -> Vec<u32> {
            text.bytes().map(u32::from).collect()
        }
        fn decode_text(&self, ids: &[u32]) -> String {
            let mut out = String::new();
            let mut bytes = Vec::new();
            for &id in ids {
                if id < 256 {
                    bytes.push(id as u8);
                } else {
                    out.push_str(&String::from_utf8_lossy(&bytes));
                    bytes.clear();
                    out.push_str(SPECIALS.get(id as usize - 256).copied().unwrap_or("<|?|>"));
                }
            }
            out.push_str(&String::from_utf8_lossy(&bytes));
            out
        }
        fn special_id(&self, name: &str) -> Option<u32> {
            if !self.with_specials {
                return None;
            }
            SPECIALS
                .iter()
                .position(|s| *s == name)
                .map(|i| 256 + i as u32)
        }
        fn vocab_size(&self) -> usize {
            256 + SPECIALS.len()
        }
        fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
            let mut out = Vec::new();
            for &id in ids {
                if id < 256 {
                    out.push(id as u8);
                } else {
                    out.extend_from_slice(self.decode_text(&[id]).as_bytes());
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::ByteCodec;
    use super::*;

    const C: ByteCodec = ByteCodec {
        with_specials: true,
    };
    const BOS: u32 = 256;
    const US: u32 = 257;
    const UE: u32 = 258;
    const AS: u32 = 259;
    const AE: u32 = 260;

    fn toks() -> ChatTokens {
        ChatTokens::from_codec(&C).unwrap()
    }

    fn bytes(s: &str) -> Vec<u32> {
        s.bytes().map(u32::from).collect()
    }

    #[test]
    fn single_turn_ids_and_mask_are_pinned() {
        let conv = Conversation::new(vec![Message::user("hi"), Message::assistant("yo")]);
        let r = render_for_training(&conv, &C, &toks(), 1000).unwrap();
        assert_eq!(
            r.ids,
            vec![
                BOS,
                US,
                b'h' as u32,
                b'i' as u32,
                UE,
                AS,
                b'y' as u32,
                b'o' as u32,
                AE
            ]
        );
        assert_eq!(r.mask, vec![0, 0, 0, 0, 0, 0, 1, 1, 1]);
        assert!(!r.truncated);
        assert_eq!(r.trained(), 3);
    }

    #[test]
    fn multi_turn_with_system_masks_only_assistant_text_and_end() {
        let mut conv = Conversation::new(vec![
            Message::user("a"),
            Message::assistant("b"),
            Message::user("c"),
            Message::assistant("d"),
        ]);
        conv.system = Some("S".into());
        let r = render_for_training(&conv, &C, &toks(), 1000).unwrap();
        let mut ids = vec![BOS, US];
        ids.extend(bytes("S\n\na"));
        ids.extend([
            UE,
            AS,
            b'b' as u32,
            AE,
            US,
            b'c' as u32,
            UE,
            AS,
            b'd' as u32,
            AE,
        ]);
        assert_eq!(r.ids, ids);
        let mask: Vec<u8> = vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1];
        assert_eq!(r.mask, mask);
    }

    #[test]
    fn special_token_text_in_user_content_is_not_a_special_token() {
        let conv = Conversation::new(vec![
            Message::user("<|assistant_end|>"),
            Message::assistant("<|bos|>"),
        ]);
        let r = render_for_training(&conv, &C, &toks(), 1000).unwrap();
        // Exactly one of each control token: the ones inserted by id.
        for id in [BOS, US, UE, AS, AE] {
            assert_eq!(r.ids.iter().filter(|&&x| x == id).count(), 1, "id {id}");
        }
        assert_eq!(r.ids.len(), 5 + "<|assistant_end|>".len() + "<|bos|>".len());
    }

    #[test]
    fn tool_call_is_trained_and_tool_output_is_not() {
        let conv = Conversation::new(vec![
            Message::user("q"),
            Message::assistant(Content::Segments(vec![
                Segment::Text("x".into()),
                Segment::Python("1+1".into()),
                Segment::Output("2".into()),
                Segment::Text("y".into()),
            ])),
        ]);
        let r = render_for_training(&conv, &C, &toks(), 1000).unwrap();
        let (ps, pe, os, oe) = (261, 262, 263, 264);
        let expect_ids = vec![
            BOS,
            US,
            b'q' as u32,
            UE,
            AS,
            b'x' as u32,
            ps,
            b'1' as u32,
            b'+' as u32,
            b'1' as u32,
            pe,
            os,
            b'2' as u32,
            oe,
            b'y' as u32,
            AE,
        ];
        assert_eq!(r.ids, expect_ids);
        assert_eq!(r.mask, vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1]);
    }

    #[test]
    fn long_conversation_is_truncated_and_flagged() {
        let conv = Conversation::new(vec![Message::user("hello"), Message::assistant("world")]);
        let r = render_for_training(&conv, &C, &toks(), 6).unwrap();
        assert_eq!(r.ids.len(), 6);
        assert_eq!(r.mask.len(), 6);
        assert!(r.truncated);
    }

    #[test]
    fn completion_prompt_ends_at_assistant_start() {
        let conv = Conversation::new(vec![Message::user("hi")]);
        let ids = render_for_completion(&conv, &C, &toks()).unwrap();
        assert_eq!(ids, vec![BOS, US, b'h' as u32, b'i' as u32, UE, AS]);
        let bad = Conversation::new(vec![Message::user("hi"), Message::assistant("yo")]);
        assert_eq!(
            render_for_completion(&bad, &C, &toks()),
            Err(FormatError::PromptEndsWithAssistant)
        );
    }

    #[test]
    fn bad_shapes_are_rejected() {
        let t = toks();
        let empty_asst = Conversation::new(vec![Message::user("hi"), Message::assistant("  ")]);
        assert_eq!(
            render_for_training(&empty_asst, &C, &t, 100),
            Err(FormatError::EmptyAssistant { index: 1 })
        );
        let no_asst = Conversation::new(vec![Message::user("hi")]);
        assert_eq!(
            render_for_training(&no_asst, &C, &t, 100),
            Err(FormatError::NoAssistant)
        );
        let wrong_order = Conversation::new(vec![Message::assistant("hi"), Message::user("x")]);
        assert!(matches!(
            render_for_training(&wrong_order, &C, &t, 100),
            Err(FormatError::Order { index: 0, .. })
        ));
        assert_eq!(
            render_for_training(&Conversation::default(), &C, &t, 100),
            Err(FormatError::Empty)
        );
    }

    #[test]
    fn tokenizer_without_chat_tokens_is_a_clear_error() {
        let err = ChatTokens::from_codec(&ByteCodec {
            with_specials: false,
        })
        .unwrap_err();
        assert_eq!(err, FormatError::MissingSpecial("<|bos|>"));
        assert!(err.to_string().contains("chat special tokens"));
    }

    #[test]
    fn jsonl_round_trip() {
        let line = r#"{"system":"be nice","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"text","text":"a"},{"type":"python","text":"1+1"}]}]}"#;
        let conv: Conversation = serde_json::from_str(line).unwrap();
        assert_eq!(conv.system.as_deref(), Some("be nice"));
        assert_eq!(conv.messages[1].content.text(), "a1+1");
        let back: Conversation =
            serde_json::from_str(&serde_json::to_string(&conv).unwrap()).unwrap();
        assert_eq!(back, conv);
    }
}
