//! Identity ("knowledge of self") conversations generated from a persona file: who the assistant
//! is, who made it, what it is made of, and what it cannot know. A tiny model has no other way to
//! learn its own name, so these are generated in many phrasings.

use crate::format::{Conversation, Message};
use kiln_engine::Rng;
use serde::Deserialize;
use std::path::Path;

/// The persona TOML (see `configs/persona.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    /// The assistant's name, e.g. "Kiln".
    pub name: String,
    /// Who made it.
    pub creator: String,
    /// One sentence: what it is.
    pub description: String,
    /// What it was trained on.
    pub training: String,
    /// Things it cannot know (each a noun phrase: "today's date").
    #[serde(default)]
    pub cannot_know: Vec<String>,
    /// Things it cannot do (each a verb phrase: "browse the web").
    #[serde(default)]
    pub cannot_do: Vec<String>,
    /// Extra fixed question/answer pairs.
    #[serde(default)]
    pub extra: Vec<QuestionAnswer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuestionAnswer {
    pub question: String,
    pub answer: String,
}

/// Errors reading a persona file.
#[derive(Debug, thiserror::Error)]
pub enum PersonaError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

impl Persona {
    pub fn load(path: &Path) -> Result<Self, PersonaError> {
        let text = std::fs::read_to_string(path).map_err(|source| PersonaError::Io {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| PersonaError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// (question phrasings, answer) pairs covering the persona's facts.
    fn facts(&self) -> Vec<(Vec<String>, String)> {
        let (n, c, d, t) = (&self.name, &self.creator, &self.description, &self.training);
        let mut facts = vec![
            (
                vec![
                    "Who are you?".into(),
                    "What are you?".into(),
                    "Tell me about yourself.".into(),
                    "Introduce yourself.".into(),
                ],
                format!("I am {n}, {d} I was made by {c}."),
            ),
            (
                vec![
                    "What is your name?".into(),
                    "What's your name?".into(),
                    "What should I call you?".into(),
                    "Do you have a name?".into(),
                ],
                format!("My name is {n}."),
            ),
            (
                vec![
                    "Who made you?".into(),
                    "Who created you?".into(),
                    "Who built you?".into(),
                    "Who trained you?".into(),
                ],
                format!("I was made by {c}."),
            ),
            (
                vec![
                    "What were you trained on?".into(),
                    "How were you trained?".into(),
                    "Where does your knowledge come from?".into(),
                ],
                t.to_string(),
            ),
            (
                vec![
                    "Are you ChatGPT?".into(),
                    "Are you GPT-4?".into(),
                    "Are you Claude?".into(),
                    "Are you made by OpenAI?".into(),
                ],
                format!("No. I am {n}, {d} I was made by {c}."),
            ),
            (
                vec![
                    "Are you a human?".into(),
                    "Are you a person?".into(),
                    "Are you alive?".into(),
                ],
                format!("No, I am {n}, a language model. I predict text one token at a time."),
            ),
        ];
        for thing in &self.cannot_know {
            facts.push((
                vec![format!("Do you know {thing}?"), format!("Can you tell me {thing}?"), format!("What about {thing}?")],
                format!("I cannot know {thing}. I only know what was in my training data, and I have no clock, no internet and no memory between conversations."),
            ));
        }
        for thing in &self.cannot_do {
            facts.push((
                vec![format!("Can you {thing}?"), format!("Please {thing}."), format!("Are you able to {thing}?")],
                format!("No, I cannot {thing}. I am {n}, a small language model that only reads and writes text."),
            ));
        }
        for qa in &self.extra {
            facts.push((vec![qa.question.clone()], qa.answer.clone()));
        }
        facts
    }

    /// `count` identity conversations (1–2 exchanges each, with casual variations).
    pub fn conversations(&self, count: usize, seed: u64) -> Vec<Conversation> {
        let facts = self.facts();
        let mut rng = Rng::new(seed ^ 0x1D);
        let greetings = [
            "",
            "hi! ",
            "Hello. ",
            "hey, ",
            "Quick question: ",
            "Hi there. ",
        ];
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let turns = 1 + usize::from(rng.below(3) == 0);
            let mut msgs = Vec::new();
            for _ in 0..turns {
                let (qs, a) = pick(&mut rng, &facts);
                let mut q = format!("{}{}", pick(&mut rng, &greetings), pick(&mut rng, qs));
                if rng.below(4) == 0 {
                    q = q.to_lowercase();
                }
                msgs.push(Message::user(q));
                msgs.push(Message::assistant(a.clone()));
            }
            out.push(Conversation::new(msgs));
        }
        out
    }
}

/// One of `items`, uniformly.
fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persona() -> Persona {
        toml::from_str(
            r#"
name = "Kiln"
creator = "the kiln project"
description = "a small language model."
training = "I was trained on public-domain books and documentation."
cannot_know = ["today's date"]
cannot_do = ["browse the web"]
[[extra]]
question = "What is your favourite colour?"
answer = "I do not have one."
"#,
        )
        .unwrap()
    }

    #[test]
    fn generates_valid_conversations_naming_the_persona() {
        let convs = persona().conversations(200, 1);
        assert_eq!(convs.len(), 200);
        let mut names = 0;
        for c in &convs {
            c.validate(true).unwrap();
            if c.messages[1].content.text().contains("Kiln") {
                names += 1;
            }
        }
        assert!(names > 50, "{names}");
        let all: String = convs.iter().map(|c| c.messages[1].content.text()).collect();
        assert!(all.contains("I cannot know today's date"));
        assert!(all.contains("I do not have one."));
    }

    #[test]
    fn unknown_persona_fields_are_errors() {
        let e = toml::from_str::<Persona>(
            "name='a'\ncreator='b'\ndescription='c'\ntraining='d'\nbogus=1",
        );
        assert!(e.unwrap_err().to_string().contains("bogus"));
    }
}
