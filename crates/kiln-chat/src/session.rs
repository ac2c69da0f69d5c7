//! A multi-turn chat with a model: history, system message, temperature, and what to do when the
//! context window fills up (drop the oldest exchanges, say so). Also the base-model trick: a
//! conversation-shaped plain-text document continued until the next turn marker.

use crate::engine::{stream, StopReason, TextStream};
use crate::format::{
    render_for_completion, ChatTokens, Codec, Content, Conversation, FormatError, Message, Segment,
};
use crate::tools::runtime::{
    run_turn_streaming, EngineDecoder, ToolRunner, ToolTokens, TurnEnd, TurnLimits,
};
use kiln_engine::{Backend, EngineError, Model, SamplingParams};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Format(#[from] FormatError),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error(
        "the message alone ({tokens} tokens) does not fit the model's context of {context} tokens"
    )]
    TooLong { tokens: usize, context: usize },
}

/// What happened during one reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyInfo {
    pub text: String,
    pub tokens: usize,
    /// Earlier exchanges dropped to make room (the context filled up).
    pub dropped_exchanges: usize,
    /// Tokens used of the context after this reply.
    pub context_used: usize,
    pub context: usize,
    /// The reply was cut by the context window or the token limit, not ended by the model.
    pub cut: bool,
}

/// Chat state: the conversation so far and sampling settings.
pub struct ChatSession {
    pub conv: Conversation,
    pub sampling: SamplingParams,
    pub max_new: usize,
    pub seed: u64,
    /// Tokens kept free for the reply when trimming history.
    pub reserve: usize,
}

impl ChatSession {
    pub fn new(temperature: f32, max_new: usize, seed: u64) -> Self {
        ChatSession {
            conv: Conversation::default(),
            sampling: SamplingParams {
                temperature,
                top_k: 50,
                top_p: 0.95,
                min_p: 0.0,
            },
            max_new,
            seed,
            reserve: 64,
        }
    }

    pub fn clear(&mut self) {
        self.conv.messages.clear();
    }

    /// Adds `user_text` and renders the conversation as a prompt, dropping the oldest exchanges
    /// until it fits `ctx` with room for a reply; returns the prompt and the exchanges dropped.
    fn prompt(
        &mut self,
        ctx: usize,
        codec: &dyn Codec,
        tokens: &ChatTokens,
        user_text: &str,
    ) -> Result<(Vec<u32>, usize), SessionError> {
        self.conv.messages.push(Message::user(user_text));
        let reserve = self.reserve.min(ctx / 2);
        let mut dropped = 0;
        loop {
            let ids = render_for_completion(&self.conv, codec, tokens)?;
            if ids.len() + reserve <= ctx {
                return Ok((ids, dropped));
            }
            if self.conv.messages.len() <= 1 {
                let n = ids.len();
                self.conv.messages.pop();
                return Err(SessionError::TooLong {
                    tokens: n,
                    context: ctx,
                });
            }
            self.conv.messages.drain(..2);
            dropped += 1;
        }
    }

    /// Like [`ChatSession::reply`], with tools: the model may call the code or search tool
    /// (through `tools`); `on_piece` gets the turn as it happens, each piece with what it is.
    /// The history keeps the calls and outputs, so later turns see them.
    #[allow(clippy::too_many_arguments)]
    pub fn reply_with_tools<B: Backend>(
        &mut self,
        model: &Model<B>,
        codec: &dyn Codec,
        tokens: &ChatTokens,
        tools: &mut dyn ToolRunner,
        limits: &TurnLimits,
        user_text: &str,
        mut on_piece: impl FnMut(&str, PieceKind),
    ) -> Result<ReplyInfo, SessionError> {
        let tool_tokens =
            ToolTokens::from_chat(tokens).ok_or(FormatError::MissingSpecial("<|output_start|>"))?;
        let ctx = model.cfg.context;
        let (prompt, dropped) = self.prompt(ctx, codec, tokens, user_text)?;
        self.seed = self.seed.wrapping_add(1);
        let mut decoder = EngineDecoder::new(model, &prompt, self.sampling.clone(), self.seed)?;
        let limits = TurnLimits {
            max_new_tokens: self.max_new,
            ..*limits
        };
        let mut ts = TextStream::default();
        let mut kind = PieceKind::Answer;
        let mut output = Vec::new();
        let turn = run_turn_streaming(
            &mut decoder,
            codec,
            &tool_tokens,
            &tokens.stop_ids(),
            tools,
            &limits,
            &mut |id, forced| {
                let call_start = Some(id) == tokens.python_start || Some(id) == tokens.search_start;
                let call_end = Some(id) == tokens.python_end || Some(id) == tokens.search_end;
                if forced {
                    // Tool output: shown whole once its closing token arrives.
                    if id == tool_tokens.output_end {
                        on_piece(&codec.decode_text(&output), PieceKind::ToolOutput);
                        output.clear();
                    } else if id != tool_tokens.output_start {
                        output.push(id);
                    }
                } else if call_start {
                    on_piece(&ts.finish(), kind);
                    kind = PieceKind::ToolCall;
                    let name = if Some(id) == tokens.python_start {
                        "code"
                    } else {
                        "search"
                    };
                    on_piece(name, PieceKind::ToolName);
                } else if call_end {
                    on_piece(&ts.finish(), kind);
                    kind = PieceKind::Answer;
                } else {
                    on_piece(&ts.push(codec, id), kind);
                }
            },
        )
        .map_err(SessionError::Engine)?;
        on_piece(&ts.finish(), kind);
        let segments = segments_of(&turn.ids, codec, tokens);
        let text: String = segments
            .iter()
            .filter_map(|s| match s {
                Segment::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        let content = if segments.iter().all(|s| s.is_blank()) {
            Content::Text("…".into())
        } else {
            Content::Segments(segments)
        };
        self.conv.messages.push(Message::assistant(content));
        Ok(ReplyInfo {
            text,
            tokens: turn.forced.iter().filter(|f| !**f).count(),
            dropped_exchanges: dropped,
            context_used: prompt.len() + turn.ids.len() + 1,
            context: ctx,
            cut: !matches!(turn.end, TurnEnd::Stop(_)),
        })
    }

    /// Adds `user_text`, samples the assistant's reply (passing each text piece to `on_text`), and
    /// keeps both in the history.
    pub fn reply<B: Backend>(
        &mut self,
        model: &Model<B>,
        codec: &dyn Codec,
        tokens: &ChatTokens,
        user_text: &str,
        mut on_text: impl FnMut(&str),
    ) -> Result<ReplyInfo, SessionError> {
        let ctx = model.cfg.context;
        let (prompt, dropped) = self.prompt(ctx, codec, tokens, user_text)?;
        let mut ts = TextStream::default();
        let mut text = String::new();
        let mut n = 0;
        self.seed = self.seed.wrapping_add(1);
        let why = stream(
            model,
            &prompt,
            self.max_new,
            &tokens.stop_ids(),
            &self.sampling,
            self.seed,
            |id, _| {
                n += 1;
                // Without tools a sampled tool bracket (a small model's stray `<|python_end|>`)
                // means nothing: it is not shown or kept, and the reply goes on.
                if tokens.is_format_token(id) {
                    return true;
                }
                let piece = ts.push(codec, id);
                on_text(&piece);
                text.push_str(&piece);
                true
            },
        )?;
        let rest = ts.finish();
        on_text(&rest);
        text.push_str(&rest);
        // An empty reply cannot go into the history (an empty assistant turn is invalid).
        let stored = if text.trim().is_empty() {
            "…".to_string()
        } else {
            text.clone()
        };
        self.conv.messages.push(Message::assistant(stored));
        Ok(ReplyInfo {
            text,
            tokens: n,
            dropped_exchanges: dropped,
            context_used: prompt.len() + n + 1,
            context: ctx,
            cut: !matches!(why, StopReason::StopToken(_)),
        })
    }
}

/// What a piece of a turn with tools is, for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// The reply the user reads.
    Answer,
    /// The name of the tool being called (`code` or `search`).
    ToolName,
    /// The call's text (Python source, or the query).
    ToolCall,
    /// What the tool returned.
    ToolOutput,
}

/// Split a turn's ids into the format's segments (text, calls, outputs).
pub fn segments_of(ids: &[u32], codec: &dyn Codec, tokens: &ChatTokens) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut run: Vec<u32> = Vec::new();
    let mut current: fn(String) -> Segment = Segment::Text;
    for &id in ids {
        let next: Option<fn(String) -> Segment> = if Some(id) == tokens.python_start {
            Some(Segment::Python)
        } else if Some(id) == tokens.search_start {
            Some(Segment::Search)
        } else if Some(id) == tokens.output_start {
            Some(Segment::Output)
        } else if Some(id) == tokens.python_end
            || Some(id) == tokens.search_end
            || Some(id) == tokens.output_end
        {
            Some(Segment::Text)
        } else {
            None
        };
        match next {
            Some(seg) => {
                let text = codec.decode_text(&run);
                if !text.is_empty() {
                    out.push(current(text));
                }
                run.clear();
                current = seg;
            }
            None => run.push(id),
        }
    }
    let text = codec.decode_text(&run);
    if !text.is_empty() {
        out.push(current(text));
    }
    out
}

/// The base-model trick: `document` is a conversation-shaped text (e.g. a few `User:` /
/// `Assistant:` exchanges); the user's message is appended as a new turn and the model continues
/// until it starts the next turn (`user_marker`) or writes a BOS.
// The arguments are independent knobs of one call; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn base_model_reply<B: Backend>(
    model: &Model<B>,
    codec: &dyn Codec,
    bos: Option<u32>,
    document: &str,
    user_text: &str,
    markers: (&str, &str),
    sampling: &SamplingParams,
    max_new: usize,
    seed: u64,
    mut on_text: impl FnMut(&str),
) -> Result<String, SessionError> {
    let (user_marker, assistant_marker) = markers;
    let doc = format!(
        "{}\n{user_marker} {}\n{assistant_marker}",
        document.trim_end(),
        user_text.trim()
    );
    let mut ids: Vec<u32> = bos.into_iter().collect();
    ids.extend(codec.encode_text(&doc));
    let ctx = model.cfg.context;
    let keep = ctx.saturating_sub(max_new.min(ctx / 2)).max(1);
    if ids.len() > keep {
        // Keep the end of the document: the newest turns matter most.
        let start = ids.len() - keep;
        ids.drain(..start);
    }
    let stop: Vec<u32> = bos.into_iter().collect();
    let mut ts = TextStream::default();
    let mut text = String::new();
    let mut shown = 0;
    let stop_at = format!("\n{user_marker}");
    stream(model, &ids, max_new, &stop, sampling, seed, |id, _| {
        text.push_str(&ts.push(codec, id));
        if let Some(pos) = text.find(&stop_at) {
            text.truncate(pos);
            on_text(&text[shown.min(text.len())..]);
            shown = text.len();
            return false;
        }
        // Hold back a possible partial marker at the end.
        let safe = text.len().saturating_sub(stop_at.len());
        let safe = (0..=safe)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        if safe > shown {
            on_text(&text[shown..safe]);
            shown = safe;
        }
        true
    })?;
    if let Some(pos) = text.find(&stop_at) {
        text.truncate(pos);
    }
    if text.len() > shown {
        on_text(&text[shown..]);
    }
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_splits_back_into_the_segments_it_was_rendered_from() {
        use crate::format::render_for_training;
        use crate::format::testing::ByteCodec;
        let codec = ByteCodec {
            with_specials: true,
        };
        let tokens = ChatTokens::from_codec(&codec).unwrap();
        let segs = vec![
            Segment::Text("Let me check. ".into()),
            Segment::Python("print(6*7)".into()),
            Segment::Output("42\n".into()),
            Segment::Search("kiln".into()),
            Segment::Output("[1] doc\n".into()),
            Segment::Text("It is 42.".into()),
        ];
        let conv = Conversation::new(vec![
            Message::user("q"),
            Message::assistant(Content::Segments(segs.clone())),
        ]);
        let r = render_for_training(&conv, &codec, &tokens, 1000).unwrap();
        let start = r
            .ids
            .iter()
            .position(|&i| i == tokens.assistant_start)
            .unwrap()
            + 1;
        let turn = &r.ids[start..r.ids.len() - 1];
        assert_eq!(segments_of(turn, &codec, &tokens), segs);
    }
    use crate::format::testing::ByteCodec;
    use kiln_engine::{CpuBackend, ModelConfig};
    use std::sync::Arc;

    fn model(ctx: usize) -> Model<CpuBackend> {
        Model::new(
            Arc::new(CpuBackend::new(1)),
            ModelConfig::gpt2(265, 1, 2, 16, ctx),
            1,
        )
        .unwrap()
    }

    #[test]
    fn multi_turn_history_and_context_trimming() {
        let c = ByteCodec {
            with_specials: true,
        };
        let t = ChatTokens::from_codec(&c).unwrap();
        let m = model(64);
        let mut s = ChatSession::new(1.0, 8, 0);
        s.reserve = 8;
        let mut streamed = String::new();
        let r1 = s
            .reply(&m, &c, &t, "hello there", |p| streamed.push_str(p))
            .unwrap();
        assert_eq!(streamed, r1.text);
        assert_eq!(s.conv.messages.len(), 2);
        assert_eq!(r1.dropped_exchanges, 0);
        // Each turn adds ~20 tokens; the window of 64 forces old exchanges out.
        let mut dropped = 0;
        for _ in 0..5 {
            dropped += s
                .reply(&m, &c, &t, "and another one", |_| {})
                .unwrap()
                .dropped_exchanges;
        }
        assert!(dropped > 0);
        assert!(s.conv.messages.len() < 12);
        let e = s.reply(&m, &c, &t, &"x".repeat(100), |_| {}).unwrap_err();
        assert!(matches!(e, SessionError::TooLong { .. }), "{e}");
        s.clear();
        assert!(s.conv.messages.is_empty());
    }

    #[test]
    fn base_model_reply_stops_at_next_turn_marker() {
        let c = ByteCodec {
            with_specials: true,
        };
        let m = model(128);
        let sp = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
        };
        let mut shown = String::new();
        let r = base_model_reply(
            &m,
            &c,
            Some(256),
            "User: hi\nAssistant: hello",
            "how?",
            ("User:", "Assistant:"),
            &sp,
            40,
            5,
            |p| shown.push_str(p),
        )
        .unwrap();
        assert!(!r.contains("\nUser:"));
        assert_eq!(shown.trim(), r);
    }
}
