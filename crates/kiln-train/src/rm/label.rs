//! The labelling UI's logic, apart from any terminal so it is tested as plain code: a
//! [`LabelState`] per prompt (pick the best remaining sample, again and again; undo; skip;
//! finish early with at least two ranked) and [`pending`], which prompts a file still lacks, so a
//! session that was quit (or killed) continues where it stopped. The terminal front end is the
//! `kiln label` command; it only draws the state and feeds it keys.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use kiln_chat::format::Codec;
use kiln_engine::{load_checkpoint, resolve_checkpoint, CpuBackend, Model, SamplingParams};

use super::prefs::Ordering;
use super::{checkpoint_tokenizer, render_prompt};
use crate::error::TrainError;
use crate::rl::run::{rollouts, strip_stop};

/// A policy to draw the samples people order: the checkpoint on the cpu and its tokenizer.
pub struct Sampler {
    model: Model<CpuBackend>,
    tok: kiln_tokenizer::Tokenizer,
    tokens: kiln_chat::format::ChatTokens,
    pub max_new: usize,
    pub temperature: f32,
}

impl Sampler {
    pub fn load(
        ckpt: &Path,
        tokenizer: Option<&str>,
        threads: usize,
        max_new: usize,
        temperature: f32,
    ) -> Result<Sampler, TrainError> {
        let (tok, _) = checkpoint_tokenizer(ckpt, tokenizer)?;
        let tokens = kiln_chat::load::chat_tokens(&tok, &format!("model {}", ckpt.display()))?;
        let dir = resolve_checkpoint(ckpt)?;
        let model = load_checkpoint(&dir)?.into_model(Arc::new(CpuBackend::new(threads)))?;
        Ok(Sampler {
            model,
            tok,
            tokens,
            max_new,
            temperature,
        })
    }

    /// `n` sampled answers to `prompt` (one prefill, `n` forked rows).
    pub fn samples(&self, prompt: &str, n: usize, seed: u64) -> Result<Vec<String>, TrainError> {
        let ids = render_prompt(prompt, &self.tok, &self.tokens)?;
        let max_new = self
            .max_new
            .min(self.model.cfg.context.saturating_sub(ids.len()))
            .max(1);
        let sp = SamplingParams {
            temperature: self.temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
        };
        let stop = self.tokens.stop_ids();
        let outs = rollouts(
            &self.model,
            &[&ids],
            &[seed],
            n,
            max_new,
            &sp,
            &stop,
            false,
            None,
        )?
        .ids;
        Ok(outs
            .iter()
            .map(|o| self.tok.decode_text(strip_stop(o, &stop)))
            .collect())
    }
}

/// A key as the UI understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// Sample `i` (0-based) is the best of those not ranked yet.
    Pick(usize),
    /// Take back the last pick.
    Undo,
    /// Save the ranking so far (at least 2 ranked; the rest stay unranked).
    Done,
    /// Skip this prompt (nothing saved).
    Skip,
    /// Stop; every saved ordering is already in the file.
    Quit,
}

/// What the front end should do after a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Keep asking (with a message when the key was refused).
    Continue(Option<String>),
    /// Append this ordering (best first) and go to the next prompt.
    Save(Vec<usize>),
    Skip,
    Quit,
}

/// The ordering being built for one prompt's `n` samples.
#[derive(Clone, Debug)]
pub struct LabelState {
    n: usize,
    ranked: Vec<usize>,
}

impl LabelState {
    pub fn new(n: usize) -> Self {
        LabelState {
            n,
            ranked: Vec::new(),
        }
    }

    /// Samples ranked so far, best first.
    pub fn ranked(&self) -> &[usize] {
        &self.ranked
    }

    /// Samples still to rank.
    pub fn remaining(&self) -> Vec<usize> {
        (0..self.n).filter(|i| !self.ranked.contains(i)).collect()
    }

    pub fn apply(&mut self, key: Key) -> Action {
        match key {
            Key::Pick(i) if i >= self.n => {
                Action::Continue(Some(format!("no sample {} (1–{})", i + 1, self.n)))
            }
            Key::Pick(i) if self.ranked.contains(&i) => Action::Continue(Some(format!(
                "sample {} is already ranked (u to undo)",
                i + 1
            ))),
            Key::Pick(i) => {
                self.ranked.push(i);
                // The last one left is the worst: no key needed.
                if self.ranked.len() + 1 == self.n {
                    self.ranked.extend(self.remaining());
                }
                if self.ranked.len() == self.n {
                    Action::Save(self.ranked.clone())
                } else {
                    Action::Continue(None)
                }
            }
            Key::Undo => {
                let msg = self
                    .ranked
                    .pop()
                    .is_none()
                    .then(|| "nothing to undo".into());
                Action::Continue(msg)
            }
            Key::Done if self.ranked.len() >= 2 => Action::Save(self.ranked.clone()),
            Key::Done => Action::Continue(Some(
                "rank at least 2 samples before saving (s skips the prompt)".into(),
            )),
            Key::Skip => Action::Skip,
            Key::Quit => Action::Quit,
        }
    }
}

/// The prompts (in order) that `done` holds no ordering for.
pub fn pending<'a>(prompts: &'a [String], done: &[Ordering]) -> Vec<&'a String> {
    let seen: HashSet<&str> = done.iter().map(|o| o.prompt.as_str()).collect();
    prompts
        .iter()
        .filter(|p| !seen.contains(p.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_undo_and_the_automatic_last_place() {
        let mut s = LabelState::new(3);
        assert_eq!(s.apply(Key::Pick(1)), Action::Continue(None));
        assert!(matches!(s.apply(Key::Pick(1)), Action::Continue(Some(_))));
        assert!(matches!(s.apply(Key::Pick(7)), Action::Continue(Some(_))));
        assert_eq!(s.apply(Key::Undo), Action::Continue(None));
        assert!(matches!(s.apply(Key::Undo), Action::Continue(Some(_))));
        assert_eq!(s.apply(Key::Pick(2)), Action::Continue(None));
        assert_eq!(s.apply(Key::Pick(0)), Action::Save(vec![2, 0, 1]));
    }

    #[test]
    fn done_needs_two_and_skip_quit_pass_through() {
        let mut s = LabelState::new(5);
        s.apply(Key::Pick(4));
        assert!(matches!(s.apply(Key::Done), Action::Continue(Some(_))));
        s.apply(Key::Pick(0));
        assert_eq!(s.apply(Key::Done), Action::Save(vec![4, 0]));
        assert_eq!(s.apply(Key::Skip), Action::Skip);
        assert_eq!(s.apply(Key::Quit), Action::Quit);
    }

    #[test]
    fn a_second_session_continues_with_the_prompts_not_yet_labelled() {
        let prompts: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let done = vec![Ordering {
            prompt: "b".into(),
            samples: vec!["x".into(), "y".into()],
            order: vec![0, 1],
            labeller: String::new(),
        }];
        assert_eq!(pending(&prompts, &done), vec!["a", "c"]);
    }
}
