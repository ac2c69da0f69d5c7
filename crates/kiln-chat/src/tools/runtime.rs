//! The tool runtime: one assistant turn of generation in which the model may call tools.
//!
//! Generation pauses when the model closes a call (`<|python_end|>` or `<|search_end|>`), the tool
//! runs on the text between the call's tokens, and `<|output_start|> output <|output_end|>` is fed
//! to the model as forced tokens (marked in [`Turn::forced`] so SFT can mask them from the loss);
//! then generation resumes on the same decoder state (the KV cache is kept). Limits per turn: the
//! number of calls, the length of each output (cut and marked), the sampled tokens, and wall time
//! (checked before each call, so a turn never starts a tool after its deadline).
//!
//! The runtime speaks ids through two small traits — [`Decoder`] (the model) and [`ToolRunner`]
//! (the tools) — so that `kiln chat`, the evals and a server can drive it, and a scripted fake model
//! tests it.

use std::time::{Duration, Instant};

use kiln_engine::{sample_token, Backend, EngineError, Generator, Model, Rng, SamplingParams};

use crate::format::Codec;

/// The model as the runtime sees it: sample the next token (it joins the context), or append
/// forced tokens to the context without sampling.
pub trait Decoder {
    type Error;
    fn next(&mut self) -> Result<u32, Self::Error>;
    fn feed(&mut self, ids: &[u32]) -> Result<(), Self::Error>;
    /// How many more ids the context can take (sampled or forced); the turn ends when it is 0.
    fn room(&self) -> usize;
}

/// [`Decoder`] over kiln-engine's KV-cache generator: the prompt is prefilled once; sampled and
/// forced tokens alike are stepped into the same cache (forced outputs are short, so one step per
/// token costs little against re-prefilling the whole context).
pub struct EngineDecoder<'m, B: Backend> {
    generator: Generator<'m, B>,
    logits: Vec<f32>,
    rng: Rng,
    sampling: SamplingParams,
    context: usize,
}

impl<'m, B: Backend> EngineDecoder<'m, B> {
    pub fn new(
        model: &'m Model<B>,
        prompt: &[u32],
        sampling: SamplingParams,
        seed: u64,
    ) -> Result<Self, EngineError> {
        let context = model.cfg.context;
        model.check_ids(prompt)?;
        if prompt.is_empty() || prompt.len() >= context {
            return Err(EngineError::Shape(format!(
                "prompt of {} tokens must be in 1..{context}",
                prompt.len()
            )));
        }
        let mut generator = Generator::new(model, 1, context)?;
        let logits = generator.prefill(prompt)?;
        Ok(EngineDecoder {
            generator,
            logits,
            rng: Rng::new(seed),
            sampling,
            context,
        })
    }

    fn advance(&mut self, id: u32) -> Result<(), EngineError> {
        if self.generator.pos() + 1 >= self.context {
            return Err(EngineError::Shape(format!(
                "context window of {} tokens is full",
                self.context
            )));
        }
        self.logits = self.generator.step(&[id])?;
        Ok(())
    }
}

impl<B: Backend> Decoder for EngineDecoder<'_, B> {
    type Error = EngineError;
    fn next(&mut self) -> Result<u32, EngineError> {
        let id = sample_token(&self.logits, &self.sampling, &mut self.rng);
        self.advance(id)?;
        Ok(id)
    }
    fn feed(&mut self, ids: &[u32]) -> Result<(), EngineError> {
        ids.iter().try_for_each(|&id| self.advance(id))
    }
    fn room(&self) -> usize {
        // `advance` steps an id in while the cache keeps one free position.
        self.context.saturating_sub(self.generator.pos() + 1)
    }
}

/// Which tool a call names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Code,
    Search,
}

/// Runs a tool on a call's text and returns what the model should read.
pub trait ToolRunner {
    fn run(&mut self, tool: Tool, input: &str) -> String;
}

/// The special tokens of tool calls; `None` for a tool the tokenizer (or the session) lacks.
#[derive(Debug, Clone, Copy)]
pub struct ToolTokens {
    pub python: Option<(u32, u32)>,
    pub search: Option<(u32, u32)>,
    pub output_start: u32,
    pub output_end: u32,
}

impl ToolTokens {
    /// The tool whose call `id` opens, and the id that closes it.
    pub fn opens(&self, id: u32) -> Option<(Tool, u32)> {
        if let Some((_, end)) = self.python.filter(|&(s, _)| s == id) {
            Some((Tool::Code, end))
        } else {
            let (_, end) = self.search.filter(|&(s, _)| s == id)?;
            Some((Tool::Search, end))
        }
    }

    /// The forced ids of a call's output: `<|output_start|> output <|output_end|>`.
    pub fn output_ids(&self, codec: &dyn Codec, output: &str) -> Vec<u32> {
        let mut ids = vec![self.output_start];
        ids.extend(codec.encode_text(output));
        ids.push(self.output_end);
        ids
    }

    /// The tool tokens of a chat vocabulary; `None` when it lacks the output pair (no tool can
    /// answer then).
    pub fn from_chat(t: &crate::format::ChatTokens) -> Option<ToolTokens> {
        Some(ToolTokens {
            python: t.python_start.zip(t.python_end),
            search: t.search_start.zip(t.search_end),
            output_start: t.output_start?,
            output_end: t.output_end?,
        })
    }
}

/// Where a reply stands with tool calls, token by token: the one state machine that
/// [`run_turn`], RL's batched rollouts and the server's scheduler share. Feed it each id as it
/// joins the reply; it says when a call opens and, on the call's closing id, which ids hold the
/// call's text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallTracker {
    /// The open call: its tool, the id that closes it, where its text starts in the reply.
    open: Option<(Tool, u32, usize)>,
}

/// What one id did to a reply's tool calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallStep {
    /// Outside any call.
    Text,
    /// It opened a call of this tool.
    Opened(Tool),
    /// Part of an open call's text.
    Inside(Tool),
    /// It closed a call; the call's text is `reply[text]`.
    Closed(Tool, std::ops::Range<usize>),
}

impl CallTracker {
    /// `reply` ends with the id just sampled.
    pub fn push(&mut self, tokens: &ToolTokens, reply: &[u32]) -> CallStep {
        let Some(&id) = reply.last() else {
            return CallStep::Text;
        };
        match self.open {
            None => match tokens.opens(id) {
                Some((tool, end)) => {
                    self.open = Some((tool, end, reply.len()));
                    CallStep::Opened(tool)
                }
                None => CallStep::Text,
            },
            Some((tool, end, from)) if id == end => {
                self.open = None;
                CallStep::Closed(tool, from..reply.len() - 1)
            }
            Some((tool, ..)) => CallStep::Inside(tool),
        }
    }

    /// The call still open when a reply ends (never closed, so never run): its tool and where
    /// its text starts in the reply.
    pub fn unclosed(&mut self) -> Option<(Tool, usize)> {
        self.open.take().map(|(tool, _, from)| (tool, from))
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }
}

/// What the model reads for a call it opened but never closed.
pub const UNCLOSED_CALL: &str = "error: the tool call was not closed\n";

/// Per-turn limits.
#[derive(Debug, Clone, Copy)]
pub struct TurnLimits {
    pub max_calls: usize,
    /// Characters of one tool output the model reads; more is cut and marked.
    pub max_output_chars: usize,
    /// Tokens the model may sample in the turn (forced tool outputs not counted).
    pub max_new_tokens: usize,
    pub wall: Duration,
}

impl Default for TurnLimits {
    fn default() -> Self {
        TurnLimits {
            max_calls: 4,
            max_output_chars: 2000,
            max_new_tokens: 512,
            wall: Duration::from_secs(30),
        }
    }
}

/// One tool call of a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub tool: Tool,
    pub input: String,
    pub output: String,
}

/// Why a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEnd {
    /// A stop token (not included in [`Turn::ids`]).
    Stop(u32),
    MaxTokens,
    /// The wall-time limit passed before a call could run.
    WallTime,
    /// The context window filled up (the reply so far is kept; a tool output that did not fit
    /// is recorded in [`Turn::calls`] but not read by the model).
    ContextFull,
}

/// A generated assistant turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Sampled and forced ids in order.
    pub ids: Vec<u32>,
    /// Parallel to `ids`: true for tool-output tokens the runtime forced (loss mask 0 in SFT).
    pub forced: Vec<bool>,
    pub calls: Vec<ToolCall>,
    pub end: TurnEnd,
}

/// Generate one assistant turn, running the tools the model calls.
pub fn run_turn<D: Decoder>(
    decoder: &mut D,
    codec: &dyn Codec,
    tokens: &ToolTokens,
    stop: &[u32],
    tools: &mut dyn ToolRunner,
    limits: &TurnLimits,
) -> Result<Turn, D::Error> {
    run_turn_streaming(decoder, codec, tokens, stop, tools, limits, &mut |_, _| {})
}

/// [`run_turn`], calling `on_token(id, forced)` for each id as it joins the turn (sampled ids as
/// they are sampled, a tool's output ids once the tool has run), for a chat that shows the turn
/// as it happens.
pub fn run_turn_streaming<D: Decoder>(
    decoder: &mut D,
    codec: &dyn Codec,
    tokens: &ToolTokens,
    stop: &[u32],
    tools: &mut dyn ToolRunner,
    limits: &TurnLimits,
    on_token: &mut dyn FnMut(u32, bool),
) -> Result<Turn, D::Error> {
    let started = Instant::now();
    let mut turn = Turn {
        ids: Vec::new(),
        forced: Vec::new(),
        calls: Vec::new(),
        end: TurnEnd::MaxTokens,
    };
    let mut calls = CallTracker::default();
    for _ in 0..limits.max_new_tokens {
        if decoder.room() == 0 {
            turn.end = TurnEnd::ContextFull;
            break;
        }
        let id = decoder.next()?;
        if stop.contains(&id) {
            turn.end = TurnEnd::Stop(id);
            break;
        }
        turn.ids.push(id);
        turn.forced.push(false);
        on_token(id, false);
        if let CallStep::Closed(tool, text) = calls.push(tokens, &turn.ids) {
            if started.elapsed() >= limits.wall {
                turn.end = TurnEnd::WallTime;
                return Ok(turn);
            }
            let input = codec.decode_text(&turn.ids[text]);
            let output = call_output(tools, tool, &input, turn.calls.len(), limits);
            let forced = tokens.output_ids(codec, &output);
            if forced.len() > decoder.room() {
                turn.calls.push(ToolCall {
                    tool,
                    input,
                    output,
                });
                turn.end = TurnEnd::ContextFull;
                return Ok(turn);
            }
            decoder.feed(&forced)?;
            forced.iter().for_each(|&id| on_token(id, true));
            turn.forced.extend(std::iter::repeat_n(true, forced.len()));
            turn.ids.extend(forced);
            turn.calls.push(ToolCall {
                tool,
                input,
                output,
            });
        }
    }
    if let Some((tool, from)) = calls.unclosed() {
        // An unterminated call is recorded (the model never closed it), not run.
        turn.calls.push(ToolCall {
            tool,
            input: codec.decode_text(&turn.ids[from..]),
            output: UNCLOSED_CALL.into(),
        });
    }
    Ok(turn)
}

/// What the model reads for a call: the tool's output cut to the limit, or an error once the
/// turn has made `calls_made` calls of its `max_calls`.
pub fn call_output(
    tools: &mut dyn ToolRunner,
    tool: Tool,
    input: &str,
    calls_made: usize,
    limits: &TurnLimits,
) -> String {
    if calls_made >= limits.max_calls {
        format!(
            "error: tool call limit reached ({} per turn)\n",
            limits.max_calls
        )
    } else {
        cut(tools.run(tool, input), limits.max_output_chars)
    }
}

/// Last lines of a long output kept after the cut, within half the budget.
const TAIL_LINES: usize = 3;

/// Cut `text` to about `max` characters, marking the cut. The end of a multi-line output is kept
/// too (up to [`TAIL_LINES`] lines in half the budget): the sandbox ends its output with the
/// Python error or why it stopped the program, which a cut keeping only the start threw away
/// (`print('a' * 3000); 1 / 0` read as 2,000 `a`s and no error).
fn cut(text: String, max: usize) -> String {
    let total = text.chars().count();
    if total <= max {
        return text;
    }
    let lines: Vec<&str> = text.trim_end_matches('\n').lines().collect();
    let mut tail = String::new();
    if lines.len() > 1 {
        for line in lines.iter().rev().take(TAIL_LINES) {
            let longer = format!("{line}\n{tail}");
            if longer.chars().count() > max / 2 {
                break;
            }
            tail = longer;
        }
    }
    let tail_chars = tail.chars().count();
    let head_chars = max - tail_chars;
    let head_end = text
        .char_indices()
        .nth(head_chars)
        .map_or(text.len(), |(at, _)| at);
    if tail.is_empty() {
        format!(
            "{}\n[output truncated at {max} characters]\n",
            &text[..head_end]
        )
    } else {
        let dropped = total - head_chars - tail_chars;
        format!(
            "{}\n[output truncated: {dropped} characters cut]\n{tail}",
            &text[..head_end]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testing::ByteCodec;

    const PY: (u32, u32) = (261, 262);
    const OUT: (u32, u32) = (263, 264);
    const SEARCH: (u32, u32) = (270, 271);
    const END: u32 = 260;

    /// Plays back a script of sampled ids and records what was fed.
    struct Scripted {
        script: std::vec::IntoIter<u32>,
        fed: Vec<Vec<u32>>,
        /// Context positions left; going past it is an error, as in the engine's decoder.
        room: usize,
    }

    impl Decoder for Scripted {
        type Error = String;
        fn next(&mut self) -> Result<u32, String> {
            self.room = self.room.checked_sub(1).ok_or("context full")?;
            self.script
                .next()
                .ok_or_else(|| "script ran out".to_string())
        }
        fn feed(&mut self, ids: &[u32]) -> Result<(), String> {
            self.room = self.room.checked_sub(ids.len()).ok_or("context full")?;
            self.fed.push(ids.to_vec());
            Ok(())
        }
        fn room(&self) -> usize {
            self.room
        }
    }

    struct Echo(Vec<(Tool, String)>);

    impl ToolRunner for Echo {
        fn run(&mut self, tool: Tool, input: &str) -> String {
            self.0.push((tool, input.to_string()));
            match tool {
                Tool::Code => "3\n".into(),
                Tool::Search => "x".repeat(50),
            }
        }
    }

    fn script(parts: &[&[u32]]) -> Scripted {
        Scripted {
            script: parts.concat().into_iter(),
            fed: Vec::new(),
            room: usize::MAX,
        }
    }

    /// A full context ends the turn with what was generated, whether it fills while sampling or
    /// when a tool's output would not fit; neither is an error.
    #[test]
    fn a_full_context_ends_the_turn_without_an_error() {
        let codec = ByteCodec {
            with_specials: true,
        };
        let mut tools = Echo(Vec::new());
        let mut turn_in = |ids: &[u32], room: usize| {
            let mut model = script(&[ids]);
            model.room = room;
            let turn = run_turn(
                &mut model,
                &codec,
                &tokens(),
                &[END],
                &mut tools,
                &TurnLimits::default(),
            )
            .unwrap();
            (turn, model.fed)
        };
        let (turn, _) = turn_in(&ids("The answer is 44444444"), 10);
        assert_eq!(turn.end, TurnEnd::ContextFull);
        assert_eq!(codec.decode_text(&turn.ids), "The answer");

        // The search output (52 forced ids) does not fit in what is left after the call.
        let call = [&[SEARCH.0][..], &ids("kiwi"), &[SEARCH.1], &ids("ok")].concat();
        let (turn, fed) = turn_in(&call, 30);
        assert_eq!(turn.end, TurnEnd::ContextFull);
        assert_eq!(turn.calls.len(), 1, "the call ran and is recorded");
        assert!(fed.is_empty(), "nothing fed past the context");
        assert!(turn.forced.iter().all(|f| !f));
    }

    fn ids(s: &str) -> Vec<u32> {
        s.bytes().map(u32::from).collect()
    }

    fn tokens() -> ToolTokens {
        ToolTokens {
            python: Some(PY),
            search: Some(SEARCH),
            output_start: OUT.0,
            output_end: OUT.1,
        }
    }

    #[test]
    fn the_call_tracker_marks_opening_inside_closing_and_unclosed_ids() {
        let t = tokens();
        let mut calls = CallTracker::default();
        let mut reply = Vec::new();
        let mut steps = Vec::new();
        for id in [104, SEARCH.0, 107, PY.1, 108, SEARCH.1, 105, PY.0, 109] {
            reply.push(id);
            steps.push(calls.push(&t, &reply));
        }
        use CallStep::*;
        assert_eq!(
            steps,
            vec![
                Text,
                Opened(Tool::Search),
                Inside(Tool::Search),
                // Another tool's closing id inside a search call is part of its text.
                Inside(Tool::Search),
                Inside(Tool::Search),
                Closed(Tool::Search, 2..5),
                Text,
                Opened(Tool::Code),
                Inside(Tool::Code),
            ]
        );
        assert!(calls.is_open());
        assert_eq!(calls.unclosed(), Some((Tool::Code, 8)));
        assert!(!calls.is_open() && calls.unclosed().is_none());
    }

    #[test]
    fn a_code_call_pauses_runs_the_tool_and_feeds_its_output() {
        let mut model = script(&[
            &[PY.0],
            &ids("print('strawberry'.count('r'))"),
            &[PY.1],
            &ids("There are 3."),
            &[END],
        ]);
        let mut tools = Echo(Vec::new());
        let turn = run_turn(
            &mut model,
            &ByteCodec {
                with_specials: true,
            },
            &tokens(),
            &[END],
            &mut tools,
            &TurnLimits::default(),
        )
        .unwrap();
        assert_eq!(
            tools.0,
            vec![(Tool::Code, "print('strawberry'.count('r'))".to_string())]
        );
        let forced: Vec<u32> = [&[OUT.0][..], &ids("3\n"), &[OUT.1]].concat();
        assert_eq!(model.fed, vec![forced.clone()]);
        assert_eq!(turn.end, TurnEnd::Stop(END));
        let decoded = ByteCodec {
            with_specials: true,
        }
        .decode_text(&turn.ids);
        assert_eq!(
            decoded,
            "<|python_start|>print('strawberry'.count('r'))<|python_end|><|output_start|>3\n<|output_end|>There are 3."
        );
        // Exactly the output tokens are forced.
        let forced_ids: Vec<u32> = turn
            .ids
            .iter()
            .zip(&turn.forced)
            .filter(|(_, f)| **f)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(forced_ids, forced);
    }

    #[test]
    fn limits_on_calls_and_output_length_give_readable_outputs() {
        let call = |q: &str| [&[SEARCH.0][..], &ids(q), &[SEARCH.1]].concat();
        let mut model = script(&[&call("a"), &call("b"), &[END]]);
        let mut tools = Echo(Vec::new());
        let limits = TurnLimits {
            max_calls: 1,
            max_output_chars: 10,
            ..TurnLimits::default()
        };
        let turn = run_turn(
            &mut model,
            &ByteCodec {
                with_specials: true,
            },
            &tokens(),
            &[END],
            &mut tools,
            &limits,
        )
        .unwrap();
        assert_eq!(tools.0.len(), 1, "the second call is refused, not run");
        assert_eq!(
            turn.calls[0].output,
            "xxxxxxxxxx\n[output truncated at 10 characters]\n"
        );
        assert_eq!(
            turn.calls[1].output,
            "error: tool call limit reached (1 per turn)\n"
        );
    }

    #[test]
    fn a_cut_output_keeps_the_error_at_its_end() {
        let out = format!(
            "{}\nTraceback (most recent call last):\n  File \"<string>\", line 1, in <module>\nZeroDivisionError: division by zero\n",
            "a".repeat(3000)
        );
        let cut_out = cut(out, 200);
        assert!(
            cut_out.ends_with("ZeroDivisionError: division by zero\n"),
            "{cut_out}"
        );
        assert!(cut_out.starts_with(&"a".repeat(50)), "{cut_out}");
        assert!(cut_out.contains("characters cut]"), "{cut_out}");
        assert!(cut_out.chars().count() < 200 + 50, "{}", cut_out.len());
        // Short outputs are left alone; one long line keeps its start.
        assert_eq!(cut("ok\n".into(), 200), "ok\n");
        assert_eq!(
            cut("é".repeat(12), 10),
            format!("{}\n[output truncated at 10 characters]\n", "é".repeat(10))
        );
        // A last line longer than half the budget is not kept whole: the start is.
        let long_tail = format!("{}\n{}\n", "a".repeat(300), "b".repeat(300));
        let c = cut(long_tail, 100);
        assert!(c.starts_with(&"a".repeat(100)) && !c.contains('b'), "{c}");
    }

    #[test]
    fn an_unterminated_call_is_recorded_not_run_and_max_tokens_ends_the_turn() {
        let mut model = script(&[&[PY.0], &ids("while True")]);
        let mut tools = Echo(Vec::new());
        let limits = TurnLimits {
            max_new_tokens: 5,
            ..TurnLimits::default()
        };
        let turn = run_turn(
            &mut model,
            &ByteCodec {
                with_specials: true,
            },
            &tokens(),
            &[END],
            &mut tools,
            &limits,
        )
        .unwrap();
        assert!(tools.0.is_empty());
        assert_eq!(turn.end, TurnEnd::MaxTokens);
        assert_eq!(turn.calls[0].input, "whil");
        assert_eq!(
            turn.calls[0].output,
            "error: the tool call was not closed\n"
        );
    }

    #[test]
    fn the_engine_decoder_keeps_its_cache_across_forced_tokens() {
        use kiln_engine::{CpuBackend, ModelConfig};
        let be = std::sync::Arc::new(CpuBackend::new(1));
        let model = Model::new(be, ModelConfig::gpt2(64, 1, 2, 16, 32), 3).unwrap();
        let greedy = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        let mut d = EngineDecoder::new(&model, &[1, 2, 3], greedy, 0).unwrap();
        let a = d.next().unwrap();
        d.feed(&[4, 5]).unwrap();
        let mut fresh = Generator::new(&model, 1, 32).unwrap();
        let want = fresh.prefill(&[1, 2, 3, a, 4, 5]).unwrap();
        let diff = want
            .iter()
            .zip(&d.logits)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "cached logits differ by {diff}");
        // The window is enforced as an error, not a panic.
        assert!(d.feed(&[7; 40]).is_err());
    }

    #[test]
    fn the_wall_time_limit_stops_before_a_call() {
        let mut model = script(&[&[PY.0], &ids("1"), &[PY.1], &[END]]);
        let mut tools = Echo(Vec::new());
        let limits = TurnLimits {
            wall: Duration::ZERO,
            ..TurnLimits::default()
        };
        let turn = run_turn(
            &mut model,
            &ByteCodec {
                with_specials: true,
            },
            &tokens(),
            &[END],
            &mut tools,
            &limits,
        )
        .unwrap();
        assert_eq!(turn.end, TurnEnd::WallTime);
        assert!(tools.0.is_empty() && model.fed.is_empty());
    }
}
