//! SFT conversations that teach tool use, and the held-out problems that test it.
//!
//! - Code lessons ([`CodeProblem`]): letter counting, spelling backwards, counting items in a list,
//!   sums, products and powers of large numbers — what a model cannot do in its head. The assistant
//!   writes a one-line Python program, reads its output and states the answer. The output in the
//!   training conversation is computed here exactly as CPython prints it, so a lesson never shows
//!   the model an output the sandbox would not give.
//! - Search lessons ([`FactWorld`]): a generated world of made-up places, each with a short
//!   document (its capital, founding year, export and river). The documents go into the search
//!   index (beside whatever real corpus is indexed); the assistant searches, reads the passage and
//!   answers citing its source. Because the places are invented, a held-out place's facts exist
//!   only in the index: answering them shows search use, not memory.
//!
//! Every generator splits its problems by a hash into training (9 in 10) and held-out (1 in 10),
//! so evals measure generalisation.

use crate::format::{Content, Conversation, Message, Segment};
use crate::tools::search::SearchIndex;
use kiln_engine::Rng;

/// The system message that offers the tools. Lessons that call a tool carry it; honesty lessons
/// (no tools offered) do not, so the model learns to search when it can and to say it doesn't
/// know when it can't. `kiln chat --tools` and the evals' with-tools condition send it.
pub const TOOLS_SYSTEM: &str = "Tools: code (Python), search.";

/// Passages a search call returns, in lessons and at run time alike (the model learns to read
/// exactly this shape). One: a speedrun model's context is 256 tokens, and the right document
/// ranks first for the lessons' queries (tested below).
pub const SEARCH_TOP_K: usize = 1;
/// The world the `tool_search` mix source, `kiln chat --tools search` and the evals share unless
/// told otherwise.
pub const DEFAULT_PLACES: usize = 300;
pub const DEFAULT_WORLD_SEED: u64 = 1;

const WORDS: &[&str] = &[
    "strawberry",
    "banana",
    "mississippi",
    "bookkeeper",
    "parallel",
    "committee",
    "balloon",
    "occurrence",
    "assessment",
    "programming",
    "kiln",
    "tokenizer",
    "transformer",
    "raspberry",
    "necessary",
    "embarrass",
    "accommodate",
    "possession",
    "grammar",
    "millennium",
    "coffee",
    "address",
    "success",
    "pepper",
    "tomorrow",
    "giraffe",
    "hippopotamus",
    "engineering",
    "independence",
    "character",
    "alphabet",
    "chocolate",
    "umbrella",
    "elephant",
    "volleyball",
    "cinnamon",
];

const ITEMS: &[&str] = &[
    "apple", "pear", "plum", "fig", "kiwi", "lime", "grape", "melon",
];

/// One code problem: the question, the program the assistant writes, the program's exact output
/// (as CPython prints it) and the answer a grader accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeProblem {
    pub question: String,
    pub code: String,
    pub output: String,
    pub answer: String,
}

impl CodeProblem {
    /// The assistant turn of a lesson: the call, its output (not trained), the answer.
    pub fn assistant_turn(&self) -> Content {
        Content::Segments(vec![
            Segment::Python(self.code.clone()),
            Segment::Output(self.output.clone()),
            Segment::Text(format!("The answer is {}.", self.answer)),
        ])
    }

    /// True when `reply` gives this problem's answer as its last number or last quoted word.
    pub fn is_correct(&self, reply: &str) -> bool {
        final_answer(reply).is_some_and(|a| a == self.answer)
    }
}

/// What a reply answers: the text after its last "The answer is", up to the full stop, else its
/// last whitespace-separated word, with punctuation and quotes trimmed.
pub fn final_answer(reply: &str) -> Option<String> {
    let tail = match reply.rfind("answer is") {
        Some(at) => &reply[at + "answer is".len()..],
        None => reply.split_whitespace().last().unwrap_or(""),
    };
    let word = tail.split_whitespace().next()?;
    let word = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '-');
    (!word.is_empty()).then(|| word.replace(',', ""))
}

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.below(xs.len() as u64) as usize]
}

fn digits(rng: &mut Rng, lo: u32, hi: u32) -> u128 {
    let n = lo + rng.below(u64::from(hi - lo + 1)) as u32;
    let min = 10u128.pow(n - 1);
    min + u128::from(rng.next_u64()) % (9 * min)
}

/// A random code problem (either side of the split).
fn random_code_problem(rng: &mut Rng) -> CodeProblem {
    match rng.below(6) {
        0 => {
            let word = pick(rng, WORDS);
            let letters: Vec<char> = word.chars().collect();
            // Mostly a letter of the word, sometimes one it lacks (the answer 0 is a fact too).
            let letter = if rng.below(5) == 0 {
                (b'a' + rng.below(26) as u8) as char
            } else {
                letters[rng.below(letters.len() as u64) as usize]
            };
            let n = letters.iter().filter(|&&c| c == letter).count();
            let question = match rng.below(3) {
                0 => format!("How many times does the letter \"{letter}\" appear in \"{word}\"?"),
                1 => format!("How many {letter}'s are in the word {word}?"),
                _ => format!("Count the letter {letter} in \"{word}\"."),
            };
            CodeProblem {
                question,
                code: format!("print(\"{word}\".count(\"{letter}\"))"),
                output: format!("{n}\n"),
                answer: n.to_string(),
            }
        }
        1 => {
            let word = pick(rng, WORDS);
            let rev: String = word.chars().rev().collect();
            CodeProblem {
                question: match rng.below(2) {
                    0 => format!("Spell \"{word}\" backwards."),
                    _ => format!("What is {word} written in reverse?"),
                },
                code: format!("print(\"{word}\"[::-1])"),
                output: format!("{rev}\n"),
                answer: rev,
            }
        }
        2 => {
            let n = 5 + rng.below(8) as usize;
            let target = pick(rng, ITEMS);
            let list: Vec<&str> = (0..n)
                .map(|_| {
                    if rng.below(3) == 0 {
                        target
                    } else {
                        pick(rng, ITEMS)
                    }
                })
                .collect();
            let count = list.iter().filter(|&&x| x == target).count();
            let quoted: Vec<String> = list.iter().map(|x| format!("\"{x}\"")).collect();
            CodeProblem {
                question: format!(
                    "How many times does {target} appear in this list: {}?",
                    list.join(", ")
                ),
                code: format!("print([{}].count(\"{target}\"))", quoted.join(", ")),
                output: format!("{count}\n"),
                answer: count.to_string(),
            }
        }
        3 => {
            let n = 4 + rng.below(5) as usize;
            let xs: Vec<u128> = (0..n).map(|_| digits(rng, 3, 6)).collect();
            let sum: u128 = xs.iter().sum();
            let shown: Vec<String> = xs.iter().map(u128::to_string).collect();
            CodeProblem {
                question: format!("What is the sum of {}?", shown.join(", ")),
                code: format!("print(sum([{}]))", shown.join(", ")),
                output: format!("{sum}\n"),
                answer: sum.to_string(),
            }
        }
        4 => {
            let (a, b) = (digits(rng, 4, 9), digits(rng, 4, 9));
            CodeProblem {
                question: match rng.below(2) {
                    0 => format!("What is {a} * {b}?"),
                    _ => format!("Multiply {a} by {b}."),
                },
                code: format!("print({a} * {b})"),
                output: format!("{}\n", a * b),
                answer: (a * b).to_string(),
            }
        }
        _ => {
            let base = 2 + rng.below(8) as u32;
            // Exponents whose power fits comfortably in u128 (9^38 < 2^127).
            let exp = 20 + rng.below(19) as u32;
            let p = u128::from(base).pow(exp);
            CodeProblem {
                question: format!("What is {base} to the power of {exp}?"),
                code: format!("print({base} ** {exp})"),
                output: format!("{p}\n"),
                answer: p.to_string(),
            }
        }
    }
}

fn is_held_out(text: &str) -> bool {
    // FNV-1a: stable across platforms and releases (unlike std's hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h.is_multiple_of(10)
}

/// `count` code problems from one side of the split (split by the program text, so a held-out
/// program never appears in training under another phrasing).
pub fn code_problems(count: usize, seed: u64, held_out: bool) -> Vec<CodeProblem> {
    let mut rng = Rng::new(seed ^ 0xC0DE);
    let mut out = Vec::with_capacity(count);
    // The split keeps one in ten; the small problem families repeat, so bound the attempts.
    let mut tries = 0;
    while out.len() < count && tries < count * 200 + 1000 {
        tries += 1;
        let p = random_code_problem(&mut rng);
        if is_held_out(&p.code) == held_out {
            out.push(p);
        }
    }
    out
}

/// Training conversations that answer code problems with the code tool.
pub fn code_conversations(count: usize, seed: u64) -> Vec<Conversation> {
    code_problems(count, seed, false)
        .into_iter()
        .map(|p| Conversation {
            system: Some(TOOLS_SYSTEM.into()),
            messages: vec![
                Message::user(p.question.as_str()),
                Message::assistant(p.assistant_turn()),
            ],
        })
        .collect()
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mir", "ven", "dra", "sel", "to", "rin", "qua", "bel", "zor", "na", "thu", "el",
    "vos", "ari", "gan", "de", "lum", "os",
];
const EXPORTS: &[&str] = &[
    "wool", "copper", "tea", "salt", "glass", "timber", "silk", "tin", "honey", "marble",
];

/// One invented place and its facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub name: String,
    pub capital: String,
    pub founded: u32,
    pub export: String,
    pub river: String,
}

/// A factual question about a place, with its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactQuestion {
    pub place: String,
    pub question: String,
    /// What the assistant searches for.
    pub query: String,
    pub answer: String,
}

impl FactQuestion {
    pub fn is_correct(&self, reply: &str) -> bool {
        reply.to_lowercase().contains(&self.answer.to_lowercase())
    }
}

/// A generated world of places: documents for the search index, questions with answers, and a
/// split of places into training and held-out.
#[derive(Debug, Clone)]
pub struct FactWorld {
    pub places: Vec<Place>,
}

fn invented_name(rng: &mut Rng) -> String {
    let n = 2 + rng.below(2) as usize;
    let mut s: String = (0..n).map(|_| pick(rng, SYLLABLES)).collect();
    s[..1].make_ascii_uppercase();
    s
}

impl FactWorld {
    /// `n` places with distinct names, from `seed`.
    pub fn new(n: usize, seed: u64) -> FactWorld {
        let mut rng = Rng::new(seed ^ 0xFAC7);
        let mut seen = std::collections::HashSet::new();
        let mut places = Vec::with_capacity(n);
        while places.len() < n {
            let name = invented_name(&mut rng);
            let capital = invented_name(&mut rng);
            let river = invented_name(&mut rng);
            if !seen.insert(name.clone()) || capital == name || river == name {
                continue;
            }
            places.push(Place {
                name,
                capital,
                founded: 1100 + rng.below(850) as u32,
                export: pick(&mut rng, EXPORTS).to_string(),
                river,
            });
        }
        FactWorld { places }
    }

    /// The source name of a place's document in the index.
    pub fn source(place: &Place) -> String {
        FactWorld::source_of(&place.name)
    }

    /// The source name of the document about the place called `name`.
    pub fn source_of(name: &str) -> String {
        format!("atlas/{}", name.to_lowercase())
    }

    /// One short document per place, as `(source, text)`.
    pub fn documents(&self) -> Vec<(String, String)> {
        self.places
            .iter()
            .map(|p| {
                let text = format!(
                    "{name} is a small country. The capital of {name} is {capital}. {name} was \
                     founded in {founded}. The main export of {name} is {export}. The river \
                     {river} runs through {name}.",
                    name = p.name,
                    capital = p.capital,
                    founded = p.founded,
                    export = p.export,
                    river = p.river
                );
                (FactWorld::source(p), text)
            })
            .collect()
    }

    /// The index a search tool answers from: these documents plus `extra` ones (a real corpus).
    pub fn index<'a>(&self, extra: impl IntoIterator<Item = (&'a str, &'a str)>) -> SearchIndex {
        let mut docs = self.documents();
        docs.extend(
            extra
                .into_iter()
                .map(|(s, t)| (s.to_string(), t.to_string())),
        );
        SearchIndex::build(docs.iter().map(|(s, t)| (s.as_str(), t.as_str())))
    }

    /// Whether a place is held out (its questions never appear in training).
    pub fn is_held_out(place: &Place) -> bool {
        is_held_out(&place.name)
    }

    /// The four questions about a place.
    pub fn questions(place: &Place, rng: &mut Rng) -> Vec<FactQuestion> {
        let n = &place.name;
        let q = |question: String, query: String, answer: String| FactQuestion {
            place: n.clone(),
            question,
            query,
            answer,
        };
        vec![
            q(
                match rng.below(2) {
                    0 => format!("What is the capital of {n}?"),
                    _ => format!("Which city is the capital of {n}?"),
                },
                format!("capital of {n}"),
                place.capital.clone(),
            ),
            q(
                format!("When was {n} founded?"),
                format!("{n} founded"),
                place.founded.to_string(),
            ),
            q(
                format!("What is the main export of {n}?"),
                format!("{n} main export"),
                place.export.clone(),
            ),
            q(
                format!("Which river runs through {n}?"),
                format!("river {n}"),
                place.river.clone(),
            ),
        ]
    }

    /// Questions about the places on one side of the split.
    pub fn fact_questions(&self, held_out: bool, seed: u64) -> Vec<FactQuestion> {
        let mut rng = Rng::new(seed ^ 0x0A5C);
        self.places
            .iter()
            .filter(|p| FactWorld::is_held_out(p) == held_out)
            .flat_map(|p| FactWorld::questions(p, &mut rng))
            .collect()
    }

    /// Training conversations: search, read, answer citing the source. `index` must be the index
    /// the runtime will search (so the lesson's output is exactly what the tool returns).
    pub fn search_conversations(
        &self,
        index: &SearchIndex,
        count: usize,
        seed: u64,
    ) -> Vec<Conversation> {
        let mut qs = self.fact_questions(false, seed);
        Rng::new(seed).shuffle(&mut qs);
        qs.into_iter()
            .cycle()
            .take(if self.places.is_empty() { 0 } else { count })
            .map(|q| {
                let source = self
                    .places
                    .iter()
                    .find(|p| p.name == q.place)
                    .map(FactWorld::source)
                    .unwrap_or_default();
                Conversation {
                    system: Some(TOOLS_SYSTEM.into()),
                    messages: vec![
                        Message::user(q.question.as_str()),
                        Message::assistant(Content::Segments(vec![
                            Segment::Search(q.query.clone()),
                            Segment::Output(index.answer(&q.query, SEARCH_TOP_K)),
                            Segment::Text(format!("{} (source: {source})", fact_sentence(&q))),
                        ])),
                    ],
                }
            })
            .collect()
    }
}

/// The answer as a sentence, e.g. "The capital of Kalo is Venmir."
fn fact_sentence(q: &FactQuestion) -> String {
    let n = &q.place;
    let a = &q.answer;
    if q.query.starts_with("capital") {
        format!("The capital of {n} is {a}.")
    } else if q.query.ends_with("founded") {
        format!("{n} was founded in {a}.")
    } else if q.query.ends_with("export") {
        format!("The main export of {n} is {a}.")
    } else {
        format!("The river {a} runs through {n}.")
    }
}

/// The reply a model is taught for a question it consistently gets wrong.
pub const DONT_KNOW: &str = "I don't know.";

/// True when a reply admits not knowing.
pub fn says_dont_know(reply: &str) -> bool {
    let r = reply.to_lowercase();
    [
        "don't know",
        "do not know",
        "not sure",
        "i'm unsure",
        "no idea",
    ]
    .iter()
    .any(|p| r.contains(p))
}

/// A probed question: how often the model answered it right.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub question: String,
    pub answer: String,
    pub correct: usize,
    pub samples: usize,
}

/// Knowledge probing: ask each question `samples` times through `ask` (the model, sampled),
/// grade each reply with `is_correct`. A question the model never gets right becomes a
/// conversation that says [`DONT_KNOW`]; one it gets right at least half the time keeps its
/// correct answer (so honesty training does not teach it to refuse what it knows); the rest are
/// left out (the model is unsure; neither answer is clearly the truth about its knowledge).
pub fn probe_conversations<E>(
    questions: &[(String, String)],
    samples: usize,
    mut ask: impl FnMut(&str, usize) -> Result<String, E>,
    is_correct: impl Fn(&str, &str) -> bool,
) -> Result<(Vec<Probe>, Vec<Conversation>), E> {
    let mut probes = Vec::with_capacity(questions.len());
    let mut convs = Vec::new();
    for (question, answer) in questions {
        let mut correct = 0;
        for i in 0..samples {
            if is_correct(&ask(question, i)?, answer) {
                correct += 1;
            }
        }
        let reply = if correct == 0 {
            Some(DONT_KNOW.to_string())
        } else if 2 * correct >= samples {
            Some(answer.clone())
        } else {
            None
        };
        if let Some(reply) = reply {
            convs.push(Conversation::new(vec![
                Message::user(question.as_str()),
                Message::assistant(reply),
            ]));
        }
        probes.push(Probe {
            question: question.clone(),
            answer: answer.clone(),
            correct,
            samples,
        });
    }
    Ok((probes, convs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testing::ByteCodec;
    use crate::format::{render_for_training, ChatTokens};

    #[test]
    fn code_lessons_state_what_python_prints() {
        let ps = code_problems(300, 1, false);
        assert_eq!(ps.len(), 300);
        for p in &ps {
            assert!(p.output.ends_with('\n'));
            assert_eq!(p.output.trim_end(), p.answer, "{p:?}");
            assert!(p.is_correct(&format!("The answer is {}.", p.answer)));
            assert!(!p.is_correct("The answer is 12345678901234567890123."));
        }
    }

    /// The outputs lessons show are what the sandboxed CPython really prints, for every family.
    #[test]
    fn lesson_outputs_equal_the_sandbox_output() {
        let dir = crate::fetched_source_for_test(kiln_sandbox::SOURCE_NAME);
        let sandbox = kiln_sandbox::Sandbox::load(&dir.join(kiln_sandbox::WASM_IN_SOURCE)).unwrap();
        let mut families = std::collections::BTreeMap::new();
        for p in code_problems(400, 11, false) {
            let family = p
                .code
                .split(['(', '"', '['])
                .nth(1)
                .unwrap_or("")
                .to_string();
            families.entry(family).or_insert(p);
        }
        assert!(families.len() >= 4, "{:?}", families.keys());
        let limits = kiln_sandbox::Limits::default();
        for p in families.values() {
            let out = sandbox.run(p.code.as_bytes(), &limits);
            assert_eq!(out.text, p.output, "{}", p.code);
        }
    }

    #[test]
    fn held_out_problems_never_appear_in_training() {
        let train: std::collections::HashSet<String> = code_problems(3000, 5, false)
            .into_iter()
            .map(|p| p.code)
            .collect();
        let held = code_problems(100, 5, true);
        assert_eq!(held.len(), 100);
        assert!(held.iter().all(|p| !train.contains(&p.code)));
    }

    #[test]
    fn lessons_render_with_the_call_trained_and_the_output_masked() {
        let codec = ByteCodec {
            with_specials: true,
        };
        let tokens = ChatTokens::from_codec(&codec).unwrap();
        let conv = &code_conversations(1, 3)[0];
        let r = render_for_training(conv, &codec, &tokens, 4096).unwrap();
        let py = tokens.python_start.unwrap();
        let out = tokens.output_start.unwrap();
        let at_py = r.ids.iter().position(|&i| i == py).unwrap();
        let at_out = r.ids.iter().position(|&i| i == out).unwrap();
        assert_eq!(r.mask[at_py], 1, "the call is trained");
        assert_eq!(r.mask[at_out], 0, "the output is not");
        assert_eq!(r.mask[at_out + 1], 0);

        let world = FactWorld::new(30, 1);
        let index = world.index([]);
        let conv = &world.search_conversations(&index, 1, 2)[0];
        let r = render_for_training(conv, &codec, &tokens, 8192).unwrap();
        let s = tokens.search_start.unwrap();
        let at_s = r.ids.iter().position(|&i| i == s).unwrap();
        assert_eq!(r.mask[at_s], 1);
        // Without search tokens the lesson cannot be rendered: a clear error, not a silent drop.
        let plain = ByteCodec {
            with_specials: false,
        };
        assert!(ChatTokens::from_codec(&plain).is_err());
    }

    #[test]
    fn a_held_out_place_is_answered_by_its_search_result() {
        let world = FactWorld::new(60, 9);
        let index = world.index([("doc/other", "Unrelated text about kilns and pottery.")]);
        let held = world.fact_questions(true, 1);
        assert!(!held.is_empty(), "some places are held out");
        let train = world.fact_questions(false, 1);
        assert!(train
            .iter()
            .all(|q| held.iter().all(|h| h.place != q.place)));
        // Searching the lesson's query puts the right document first, with the answer in it.
        for q in &held {
            let hits = index.search(&q.query, SEARCH_TOP_K);
            assert!(
                hits[0].passage.text.contains(&q.answer),
                "{q:?} → {}",
                hits[0].passage.text
            );
        }
    }

    #[test]
    fn probing_keeps_known_answers_and_marks_unknown_ones() {
        let qs = vec![
            ("2+2?".to_string(), "4".to_string()),
            ("capital of Zorlo?".to_string(), "Kamir".to_string()),
            ("coin?".to_string(), "heads".to_string()),
        ];
        // A fake model: knows arithmetic, never the invented capital, half right on the coin.
        let (probes, convs) = probe_conversations::<()>(
            &qs,
            4,
            |q, i| {
                Ok(match q {
                    "2+2?" => "4".into(),
                    "coin?" if i % 4 == 0 => "heads".into(),
                    _ => "Paris".into(),
                })
            },
            |reply, answer| reply.contains(answer),
        )
        .unwrap();
        assert_eq!(
            probes.iter().map(|p| p.correct).collect::<Vec<_>>(),
            vec![4, 0, 1]
        );
        assert_eq!(convs.len(), 2);
        assert_eq!(convs[0].messages[1].content.text(), "4");
        assert_eq!(convs[1].messages[1].content.text(), DONT_KNOW);
        assert!(says_dont_know(DONT_KNOW));
        assert!(!says_dont_know("The capital is Kamir."));
    }

    #[test]
    fn final_answers_are_read_from_replies() {
        assert_eq!(final_answer("The answer is 1,234."), Some("1234".into()));
        assert_eq!(final_answer("so: yrrebwarts"), Some("yrrebwarts".into()));
        assert_eq!(final_answer(""), None);
    }
}
