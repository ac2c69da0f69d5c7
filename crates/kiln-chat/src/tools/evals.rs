//! Evals of tool use and honesty, on held-out problems only (see [`crate::tools::lessons`]):
//!
//! - code problems (counting, spelling, big numbers) answered with the code tool and without it;
//! - questions about held-out places (their facts exist only in the search index) answered with
//!   search and without it;
//! - honesty on those same questions without tools (the model cannot know them): how often it
//!   says it doesn't know, and how often it answers wrongly with confidence;
//! - where a tool answer goes wrong: whether the model called the tool, and whether the call
//!   itself was right (its program printed the answer; its search returned the place's own
//!   document), apart from whether the reply then read the answer off.
//!
//! With tools, the conversation's system message offers them ([`TOOLS_SYSTEM`]); without, there
//! is none. Greedy decoding, one conversation per question, through the same [`ChatSession`] paths that
//! `kiln chat` uses.

use serde::Serialize;

use crate::evals::EvalScore;
use crate::format::{ChatTokens, Codec, Content, Segment};
use crate::session::{ChatSession, SessionError};
use crate::tools::lessons::{says_dont_know, CodeProblem, FactQuestion, FactWorld, TOOLS_SYSTEM};
use crate::tools::runtime::{ToolRunner, TurnLimits};
use kiln_engine::{Backend, Model};

/// Scores of the tool and honesty evals.
#[derive(Debug, Clone, Serialize)]
pub struct ToolScores {
    pub code_with_tools: EvalScore,
    pub code_without_tools: EvalScore,
    pub search_with_tools: EvalScore,
    pub search_without_tools: EvalScore,
    /// Unanswerable questions (held-out places, no tools) answered "I don't know".
    pub dont_know: EvalScore,
    /// Unanswerable questions answered wrongly without admitting it (lower is better).
    pub confident_wrong: EvalScore,
    /// Code problems (tools offered) on which the model called the code tool.
    pub code_calls: EvalScore,
    /// Code problems whose program printed the answer (a line equal to it), whatever the reply
    /// then said.
    pub code_prints_answer: EvalScore,
    /// Held-out questions (tools offered) on which the model called search.
    pub search_calls: EvalScore,
    /// Held-out questions whose search returned the place's own document.
    pub search_finds_document: EvalScore,
}

fn score(name: &str) -> EvalScore {
    EvalScore {
        name: name.to_string(),
        correct: 0,
        total: 0,
        chance: 0.0,
        examples: Vec::new(),
    }
}

fn tally(s: &mut EvalScore, ok: bool, q: &str, reply: &str, gold: &str) {
    s.correct += usize::from(ok);
    s.total += 1;
    if s.examples.len() < 3 {
        s.examples
            .push((q.to_string(), reply.to_string(), gold.to_string()));
    }
}

/// One greedy reply, with `tools` or (None) without the tool runtime.
fn ask<B: Backend>(
    model: &Model<B>,
    codec: &dyn Codec,
    tokens: &ChatTokens,
    tools: Option<&mut dyn ToolRunner>,
    question: &str,
    max_new: usize,
) -> Result<(String, Vec<Segment>), SessionError> {
    let mut session = ChatSession::new(0.0, max_new, 0);
    if tools.is_some() {
        session.conv.system = Some(TOOLS_SYSTEM.into());
    }
    let reply = match tools {
        None => session
            .reply(model, codec, tokens, question, |_| {})
            .map(|r| r.text),
        Some(t) => session
            .reply_with_tools(
                model,
                codec,
                tokens,
                t,
                &TurnLimits::default(),
                question,
                |_, _| {},
            )
            .map(|r| r.text),
    };
    let text = match reply {
        // The context filled (a long tool output): the turn has no answer; counted wrong.
        Err(SessionError::Engine(kiln_engine::EngineError::Shape(m))) => format!("[{m}]"),
        // A question longer than a tiny model's context: unanswerable, counted wrong.
        Err(e @ SessionError::TooLong { .. }) => format!("[{e}]"),
        r => r?,
    };
    // The turn's calls and outputs, as the session kept them.
    let segments = match session.conv.messages.last().map(|m| &m.content) {
        Some(Content::Segments(s)) => s.clone(),
        _ => Vec::new(),
    };
    Ok((text, segments))
}

/// Whether a search output holds a hit from `source` (a hit's header line is `[rank] source`).
fn lists_source(output: &str, source: &str) -> bool {
    output
        .lines()
        .any(|l| l.starts_with('[') && l.split_whitespace().nth(1) == Some(source))
}

/// What the calls of one tool sent (`input_of` picks the call segments and their text).
fn call_inputs(segments: &[Segment], input_of: fn(&Segment) -> Option<&String>) -> Vec<&str> {
    segments
        .iter()
        .filter_map(input_of)
        .map(String::as_str)
        .collect()
}

/// The outputs of the calls of one tool in a turn: `is_call` picks the call segments, and each
/// call's output is the segment right after it.
fn call_outputs(segments: &[Segment], is_call: fn(&Segment) -> bool) -> Vec<&str> {
    segments
        .windows(2)
        .filter(|w| is_call(&w[0]))
        .filter_map(|w| match &w[1] {
            Segment::Output(o) => Some(o.as_str()),
            _ => None,
        })
        .collect()
}

/// Runs every tool and honesty eval. `facts` should be questions about held-out places.
pub fn run_tool_evals<B: Backend>(
    model: &Model<B>,
    codec: &dyn Codec,
    tokens: &ChatTokens,
    tools: &mut dyn ToolRunner,
    code: &[CodeProblem],
    facts: &[FactQuestion],
    max_new: usize,
) -> Result<ToolScores, SessionError> {
    let mut s = ToolScores {
        code_with_tools: score("code problems, with tools"),
        code_without_tools: score("code problems, without tools"),
        search_with_tools: score("held-out facts, with search"),
        search_without_tools: score("held-out facts, without tools"),
        dont_know: score("\"I don't know\" on unanswerable questions"),
        confident_wrong: score("confident wrong answers on unanswerable questions"),
        code_calls: score("code problems: calls the code tool"),
        code_prints_answer: score("code problems: its program prints the answer"),
        search_calls: score("held-out facts: calls search"),
        search_finds_document: score("held-out facts: search finds the place's document"),
    };
    for p in code {
        let (r, segments) = ask(model, codec, tokens, Some(tools), &p.question, max_new)?;
        tally(
            &mut s.code_with_tools,
            p.is_correct(&r),
            &p.question,
            &r,
            &p.answer,
        );
        let programs = call_inputs(&segments, |x| match x {
            Segment::Python(c) => Some(c),
            _ => None,
        });
        let outputs = call_outputs(&segments, |x| matches!(x, Segment::Python(_)));
        let printed = outputs
            .iter()
            .any(|o| o.lines().any(|l| l.trim() == p.answer));
        tally(
            &mut s.code_calls,
            !programs.is_empty(),
            &p.question,
            &programs.join(" | "),
            &p.code,
        );
        tally(
            &mut s.code_prints_answer,
            printed,
            &p.question,
            &outputs.join(" | "),
            &p.answer,
        );
        let (r, _) = ask(model, codec, tokens, None, &p.question, max_new)?;
        tally(
            &mut s.code_without_tools,
            p.is_correct(&r),
            &p.question,
            &r,
            &p.answer,
        );
    }
    for q in facts {
        let (r, segments) = ask(model, codec, tokens, Some(tools), &q.question, max_new)?;
        tally(
            &mut s.search_with_tools,
            q.is_correct(&r),
            &q.question,
            &r,
            &q.answer,
        );
        let queries = call_inputs(&segments, |x| match x {
            Segment::Search(c) => Some(c),
            _ => None,
        });
        let source = FactWorld::source_of(&q.place);
        let found = call_outputs(&segments, |x| matches!(x, Segment::Search(_)))
            .iter()
            .any(|o| lists_source(o, &source));
        tally(
            &mut s.search_calls,
            !queries.is_empty(),
            &q.question,
            &queries.join(" | "),
            &q.query,
        );
        tally(
            &mut s.search_finds_document,
            found,
            &q.question,
            &queries.join(" | "),
            &source,
        );
        let (r, _) = ask(model, codec, tokens, None, &q.question, max_new)?;
        let right = q.is_correct(&r);
        let idk = says_dont_know(&r);
        tally(
            &mut s.search_without_tools,
            right,
            &q.question,
            &r,
            &q.answer,
        );
        tally(&mut s.dont_know, idk, &q.question, &r, "I don't know.");
        tally(
            &mut s.confident_wrong,
            !right && !idk,
            &q.question,
            &r,
            &q.answer,
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::lessons::{code_problems, FactWorld};
    use crate::tools::toolbox::ToolBox;
    use kiln_engine::{CpuBackend, ModelConfig};
    use std::sync::Arc;

    #[test]
    fn evals_count_every_question_once_per_condition() {
        // An untrained model: the scores are near zero, but every question is asked and tallied.
        let cfg = kiln_tokenizer::TrainConfig {
            vocab_size: 300,
            ..Default::default()
        };
        let tok =
            kiln_tokenizer::train_from_texts(&["the answer is 12 kiln search code"], &cfg).unwrap();
        let be = Arc::new(CpuBackend::new(1));
        let cfg = ModelConfig::gpt2(tok.vocab_size(), 1, 2, 16, 512);
        let model = Model::new(be, cfg, 1).unwrap();
        let tokens = ChatTokens::from_codec(&tok).unwrap();
        let world = FactWorld::new(40, 1);
        let mut tools = ToolBox {
            code: None,
            search: Some(world.index([])),
        };
        let code = code_problems(2, 1, true);
        let facts: Vec<_> = world.fact_questions(true, 1).into_iter().take(3).collect();
        let s = run_tool_evals(&model, &tok, &tokens, &mut tools, &code, &facts, 8).unwrap();
        assert_eq!(
            (s.code_with_tools.total, s.code_without_tools.total),
            (2, 2)
        );
        assert_eq!(s.search_with_tools.total, 3);
        assert_eq!((s.code_calls.total, s.code_prints_answer.total), (2, 2));
        assert_eq!(
            (s.search_calls.total, s.search_finds_document.total),
            (3, 3)
        );
        // A call that was not made cannot have been right.
        assert!(s.code_prints_answer.correct <= s.code_calls.correct);
        assert!(s.search_finds_document.correct <= s.search_calls.correct);
        assert_eq!(s.dont_know.total, 3);
        // Every unanswerable question is either admitted, answered right by luck, or wrong.
        assert!(s.dont_know.correct + s.confident_wrong.correct <= 3);
    }

    #[test]
    fn each_call_is_paired_with_the_output_after_it() {
        let turn = vec![
            Segment::Text("Let me check.".into()),
            Segment::Search("capital of Kalo".into()),
            Segment::Output("[1] atlas/kalo\nKalo is a small country.\n".into()),
            Segment::Python("print(2 ** 3)".into()),
            Segment::Output("8\n".into()),
            // A call the turn ended before its output (the limit or the context).
            Segment::Search("river Kalo".into()),
        ];
        let searches = call_outputs(&turn, |x| matches!(x, Segment::Search(_)));
        assert_eq!(searches, vec!["[1] atlas/kalo\nKalo is a small country.\n"]);
        let programs = call_outputs(&turn, |x| matches!(x, Segment::Python(_)));
        assert_eq!(programs, vec!["8\n"]);
    }

    #[test]
    fn a_search_output_is_read_for_the_document_it_returned() {
        let world = FactWorld::new(40, 1);
        let index = world.index([]);
        let place = &world.places[3];
        let source = FactWorld::source(place);
        let hit = index.answer(&format!("capital of {}", place.name), 1);
        assert!(lists_source(&hit, &source), "{hit}");
        let other = FactWorld::source(&world.places[4]);
        assert!(!lists_source(&hit, &other), "{hit}");
        // A passage that merely mentions the source is not a hit from it.
        assert!(!lists_source(
            &format!("no results for: {source}\n"),
            &source
        ));
    }
}
