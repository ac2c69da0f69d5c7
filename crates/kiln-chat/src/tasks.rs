//! Verifiable tasks for reinforcement learning: seeded problem generators, verifiers and a format
//! reward. Five tasks: multi-digit arithmetic (`arith`), its first rung (`arith-easy`: small
//! operands, where a small SFT model already gets some right, so GRPO groups have a signal),
//! sums of two two-digit numbers whose cold start works them column by column (`two-digit-sums`),
//! GSM-style templated word problems (`word`), countdown (reach a target with given numbers,
//! `countdown`) and counting the items of a list (`count-items`: "models can't count").
//!
//! Every problem has a canonical key; a hash of the key puts about one in ten on the held-out side,
//! and the generators for training never emit a held-out problem, so held-out pass@1 measures
//! generalisation, not recall (the same rule as [`crate::arith`]). GSM8K stays evaluation-only
//! ([`crate::evals`]); nothing here reads it.
//!
//! The expected place for an answer is a final sentence `The answer is X.` (what the SFT arithmetic
//! data teaches). The reward is 1 for a correct answer plus [`FORMAT_REWARD`] when the answer sits in
//! that place, so a model that already answers correctly is still pushed towards the format, and a
//! model that gets the format but not the answer gets a small signal to climb from.

use std::fmt;
use std::str::FromStr;

use kiln_engine::Rng;

use crate::arith::last_integer;
use crate::format::{Conversation, Message};

/// Reward for putting an answer in the expected place (`The answer is X.`), right or wrong.
pub const FORMAT_REWARD: f32 = 0.1;

/// The closed set of tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// Addition, subtraction and multiplication with operands of 1 to 4 digits.
    Arith,
    /// The same questions with small operands: + and - up to 20, one-digit products.
    ArithEasy,
    /// Sums of two two-digit numbers, worked column by column (its cold start shows the steps).
    TwoDigitSums,
    /// GSM-style word problems from templates (two or three operations).
    Word,
    /// Countdown: combine the given numbers with + - * / to reach the target.
    Countdown,
    /// How many items a list of 3 to 15 words holds.
    CountItems,
}

/// Every task, in `--help` order.
pub const TASKS: [TaskKind; 6] = [
    TaskKind::Arith,
    TaskKind::ArithEasy,
    TaskKind::TwoDigitSums,
    TaskKind::Word,
    TaskKind::Countdown,
    TaskKind::CountItems,
];

/// A task name that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task {name:?}; the tasks are: {}", TASKS.map(|t| t.name()).join(", "))]
pub struct UnknownTask {
    pub name: String,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Arith => "arith",
            TaskKind::ArithEasy => "arith-easy",
            TaskKind::TwoDigitSums => "two-digit-sums",
            TaskKind::Word => "word",
            TaskKind::Countdown => "countdown",
            TaskKind::CountItems => "count-items",
        }
    }

    /// One random problem from either side of the split.
    fn random(self, rng: &mut Rng) -> TaskProblem {
        match self {
            TaskKind::Arith => arith_problem(rng),
            TaskKind::ArithEasy => arith_easy_problem(rng),
            TaskKind::TwoDigitSums => two_digit_sum_problem(rng),
            TaskKind::Word => word_problem(rng),
            TaskKind::Countdown => countdown_problem(rng),
            TaskKind::CountItems => count_items_problem(rng),
        }
    }

    /// `count` problems from one side of the split (`held_out = false` for training), seeded.
    pub fn problems(self, count: usize, seed: u64, held_out: bool) -> Vec<TaskProblem> {
        let mut rng = Rng::new(seed ^ (self as u64 + 1).wrapping_mul(0x5851_F42D_4C95_7F2D));
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let p = self.random(&mut rng);
            if p.is_held_out() == held_out {
                out.push(p);
            }
        }
        out
    }
}

impl TaskKind {
    /// `count` training-split problems as conversations answered directly (`The answer is X.`):
    /// a cold start before RL, as DeepSeek-R1 fine-tunes on a little task data before its RL. The
    /// answer sits where the verifier reads it; no held-out problem is ever emitted.
    pub fn cold_start_conversations(self, count: usize, seed: u64) -> Vec<Conversation> {
        self.problems(count, seed, false)
            .into_iter()
            .map(|p| {
                let reply = p.demonstration();
                Conversation::new(vec![Message::user(p.question), Message::assistant(reply)])
            })
            .collect()
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TaskKind {
    type Err = UnknownTask;
    fn from_str(s: &str) -> Result<Self, UnknownTask> {
        TASKS
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownTask { name: s.into() })
    }
}

/// What a reply must contain to be correct.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// An integer (arith, word).
    Integer(i64),
    /// An expression over `numbers` (each used at most once) equal to `target`.
    Countdown { numbers: Vec<i64>, target: i64 },
}

/// One problem: the user's question and how to check a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskProblem {
    pub question: String,
    pub expected: Expected,
    /// A correct reply's answer (the integer, or one countdown expression that reaches the target).
    pub solution: String,
    /// Worked steps ending with `The answer is X.`, for tasks whose cold start shows them.
    worked: Option<String>,
    /// Canonical identity for the train/held-out split (not the phrasing).
    key: String,
}

/// How a reply scored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    pub correct: bool,
    /// The answer was in the expected place (`The answer is X.` at the end).
    pub formatted: bool,
    pub reward: f32,
}

impl TaskProblem {
    /// About one problem in ten is held out (by a hash of its canonical key).
    pub fn is_held_out(&self) -> bool {
        key_is_held_out(&self.key)
    }

    /// The reply a cold start trains on: the worked steps where the task has them, else the
    /// answer alone (`The answer is X.`).
    pub fn demonstration(&self) -> String {
        self.worked
            .clone()
            .unwrap_or_else(|| format!("The answer is {}.", self.solution))
    }

    /// Verify `reply` (the assistant text): correctness, format and the reward.
    pub fn score(&self, reply: &str) -> Score {
        self.score_with(reply, FORMAT_REWARD)
    }

    /// [`score`](Self::score) with `format_reward` in place of [`FORMAT_REWARD`] (0: correctness
    /// alone).
    pub fn score_with(&self, reply: &str, format_reward: f32) -> Score {
        let placed = answer_in_place(reply);
        let correct = match &self.expected {
            // The last integer, as the GSM8K and arithmetic evals read answers.
            Expected::Integer(n) => last_integer(reply) == Some(*n),
            Expected::Countdown { numbers, target } => placed
                .as_deref()
                .is_some_and(|e| countdown_ok(e, numbers, *target)),
        };
        let formatted = placed.is_some();
        let reward = f32::from(u8::from(correct)) + if formatted { format_reward } else { 0.0 };
        Score {
            correct,
            formatted,
            reward,
        }
    }
}

/// The text after the last `The answer is`, up to a final `.`, if the reply ends there (only
/// whitespace after it).
fn answer_in_place(reply: &str) -> Option<String> {
    let i = reply.rfind("The answer is ")?;
    let rest = reply[i + "The answer is ".len()..].trim_end();
    let ans = rest.strip_suffix('.').unwrap_or(rest).trim();
    // The answer must be one expression: no further sentence after it.
    if ans.is_empty() || ans.contains(". ") || ans.contains('\n') {
        return None;
    }
    Some(ans.to_string())
}

/// Whether the problem with this canonical key is on the held-out side.
fn key_is_held_out(key: &str) -> bool {
    // FNV-1a, then a multiplicative mix: stable across platforms and Rust versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32).is_multiple_of(10)
}

/// Whether `a op b` is held out by the `arith` and `arith-easy` tasks (their shared key), so that
/// SFT data can leave those problems out.
pub(crate) fn arith_is_held_out(a: i64, op: char, b: i64) -> bool {
    key_is_held_out(&arith_key(a, op, b))
}

fn arith_key(a: i64, op: char, b: i64) -> String {
    format!("arith {a} {op} {b}")
}

/// Uniform in `lo..=hi`.
fn range(rng: &mut Rng, lo: i64, hi: i64) -> i64 {
    lo + rng.below((hi - lo + 1) as u64) as i64
}

fn arith_easy_problem(rng: &mut Rng) -> TaskProblem {
    let (a, op, b) = match rng.below(3) {
        0 => (range(rng, 1, 20), '+', range(rng, 1, 20)),
        1 => {
            let a = range(rng, 2, 20);
            (a, '-', range(rng, 1, a))
        }
        _ => (range(rng, 2, 9), '*', range(rng, 2, 9)),
    };
    arith_question(rng, a, op, b)
}

fn arith_problem(rng: &mut Rng) -> TaskProblem {
    // Operands of 1 to 4 digits, mixed: up to the SFT arithmetic's size and beyond (room to
    // improve), with easy ones so a small model starts with some successes to learn from (a group
    // whose rewards are all equal has no advantage and no gradient).
    let d = range(rng, 1, 4) as u32;
    let (lo, hi) = (10i64.pow(d - 1).max(2), 10i64.pow(d) - 1);
    let (a, op, b) = match rng.below(3) {
        0 => (range(rng, lo, hi), '+', range(rng, 1, hi)),
        1 => {
            let a = range(rng, lo, hi);
            (a, '-', range(rng, 1, a))
        }
        _ => (
            range(rng, lo, hi.min(999)),
            '*',
            range(rng, 2, if d > 2 { 99 } else { 9 }),
        ),
    };
    arith_question(rng, a, op, b)
}

/// `a op b` in one of three phrasings. The key is the problem, not the task, so `arith` and
/// `arith-easy` hold out the same problems (a curriculum from one to the other does not train on
/// the other's held-out set).
fn arith_question(rng: &mut Rng, a: i64, op: char, b: i64) -> TaskProblem {
    let ans = match op {
        '+' => a + b,
        '-' => a - b,
        _ => a * b,
    };
    let question = match rng.below(3) {
        0 => format!("What is {a} {op} {b}?"),
        1 => format!("Compute {a} {op} {b}."),
        _ => format!("{a} {op} {b} = ?"),
    };
    TaskProblem {
        question,
        expected: Expected::Integer(ans),
        solution: ans.to_string(),
        worked: None,
        key: arith_key(a, op, b),
    }
}

fn two_digit_sum_problem(rng: &mut Rng) -> TaskProblem {
    let (a, b) = (range(rng, 10, 99), range(rng, 10, 99));
    let mut p = arith_question(rng, a, '+', b);
    // The SFT arithmetic data's worked form: a column at a time, each step a one-digit sum that
    // every training problem's columns cover, so a held-out sum is new steps in a known order.
    p.worked = Some(
        crate::arith::Problem {
            a: a as u64,
            op: crate::arith::Op::Add,
            b: b as u64,
        }
        .worked(),
    );
    p
}

const NAMES: [&str; 8] = [
    "Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo",
];
const THINGS: [&str; 6] = [
    "apples", "marbles", "stickers", "books", "pencils", "cookies",
];

fn word_problem(rng: &mut Rng) -> TaskProblem {
    let n = NAMES.len();
    let i = rng.below(n as u64) as usize;
    let (name, other) = (
        NAMES[i],
        NAMES[(i + 1 + rng.below(n as u64 - 1) as usize) % n],
    );
    let thing = THINGS[rng.below(THINGS.len() as u64) as usize];
    let template = rng.below(4);
    let (question, ans, nums) = match template {
        0 => {
            let (a, b) = (range(rng, 5, 60), range(rng, 2, 40));
            let c = range(rng, 1, a + b);
            (
                format!("{name} has {a} {thing}. {other} gives {name} {b} more. Then {name} gives away {c}. How many {thing} does {name} have now?"),
                a + b - c,
                vec![a, b, c],
            )
        }
        1 => {
            let (n, k) = (range(rng, 2, 12), range(rng, 2, 15));
            let s = range(rng, 0, n * k);
            (
                format!("{name} buys {n} boxes with {k} {thing} in each box, then shares {s} with {other}. How many {thing} does {name} keep?"),
                n * k - s,
                vec![n, k, s],
            )
        }
        2 => {
            let (p, q) = (range(rng, 2, 20), range(rng, 2, 9));
            let r = range(rng, 1, 30);
            (
                format!("A {thing} costs {p} dollars. {name} buys {q} of them and a bag for {r} dollars. How many dollars does {name} spend?"),
                p * q + r,
                vec![p, q, r],
            )
        }
        _ => {
            let per = range(rng, 2, 12);
            let groups = range(rng, 2, 12);
            let extra = range(rng, 0, per - 1);
            let total = per * groups + extra;
            (
                format!("{name} has {total} {thing} and puts them into bags of {per}. How many full bags does {name} make?"),
                groups,
                vec![total, per],
            )
        }
    };
    TaskProblem {
        question,
        expected: Expected::Integer(ans),
        solution: ans.to_string(),
        worked: None,
        key: format!("word {template} {nums:?}"),
    }
}

/// Everyday words for the lists of `count-items` (some split into several tokens, so counting
/// tokens is not counting items).
const LIST_WORDS: [&str; 32] = [
    "apple", "pear", "plum", "kiwi", "grape", "melon", "chair", "table", "lamp", "clock", "spoon",
    "cup", "book", "pencil", "shoe", "hat", "coat", "ring", "key", "coin", "stone", "shell",
    "leaf", "rose", "tulip", "daisy", "cat", "dog", "horse", "rabbit", "bottle", "window",
];

/// The fewest and most items of a `count-items` list.
pub const COUNT_ITEMS_RANGE: (usize, usize) = (3, 15);

fn count_items_problem(rng: &mut Rng) -> TaskProblem {
    // The length is uniform over the range, so a fixed guess is right 1 time in 13.
    let (lo, hi) = COUNT_ITEMS_RANGE;
    let n = range(rng, lo as i64, hi as i64) as usize;
    let items: Vec<&str> = (0..n)
        .map(|_| LIST_WORDS[rng.below(LIST_WORDS.len() as u64) as usize])
        .collect();
    let list = items.join(", ");
    let question = match rng.below(3) {
        0 => format!("How many items are in this list: {list}?"),
        1 => format!("Count the words in this list: {list}."),
        _ => format!("How many things are listed here: {list}?"),
    };
    TaskProblem {
        question,
        expected: Expected::Integer(n as i64),
        solution: n.to_string(),
        worked: None,
        key: format!("count-items {list}"),
    }
}

fn countdown_problem(rng: &mut Rng) -> TaskProblem {
    // Build the target from the numbers so every problem has a solution: fold the numbers left to
    // right with random operations, keeping every intermediate a positive integer.
    let n = range(rng, 3, 4) as usize;
    let numbers: Vec<i64> = (0..n).map(|_| range(rng, 1, 25)).collect();
    let mut acc = numbers[0];
    let mut witness = numbers[0].to_string();
    for &x in &numbers[1..] {
        let (v, op) = match rng.below(4) {
            1 if acc > x => (acc - x, '-'),
            2 if acc * x <= 1000 => (acc * x, '*'),
            3 if acc % x == 0 => (acc / x, '/'),
            _ => (acc + x, '+'),
        };
        acc = v;
        witness = format!("({witness} {op} {x})");
    }
    let list = numbers
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut sorted = numbers.clone();
    sorted.sort_unstable();
    TaskProblem {
        question: format!(
            "Using the numbers {list}, each at most once, and + - * / with parentheses, make {acc}. End with: The answer is <expression>."
        ),
        worked: None,
        solution: witness,
        key: format!("countdown {sorted:?} {acc}"),
        expected: Expected::Countdown {
            numbers,
            target: acc,
        },
    }
}

/// Whether `expr` uses only `numbers` (each at most once) and evaluates exactly to `target`.
fn countdown_ok(expr: &str, numbers: &[i64], target: i64) -> bool {
    // An `= target` tail ("3 * 4 + 1 = 13") is allowed: check the left side.
    let expr = expr.split('=').next().unwrap_or("");
    let mut p = Parser {
        s: expr.as_bytes(),
        i: 0,
        used: Vec::new(),
    };
    let Some(v) = p.expr(0) else { return false };
    p.skip_ws();
    if p.i != p.s.len() {
        return false;
    }
    let mut pool = numbers.to_vec();
    for u in &p.used {
        match pool.iter().position(|x| x == u) {
            Some(k) => {
                pool.swap_remove(k);
            }
            None => return false,
        }
    }
    v == Frac::int(target)
}

/// An exact rational (countdown allows `/`, and `6 / 4 * 2` must be exact).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frac {
    n: i128,
    d: i128,
}

impl Frac {
    fn int(x: i64) -> Frac {
        Frac {
            n: i128::from(x),
            d: 1,
        }
    }
    fn new(n: i128, d: i128) -> Option<Frac> {
        if d == 0 || n.abs() > 1 << 80 || d.abs() > 1 << 80 {
            return None;
        }
        let g = gcd(n.abs(), d.abs()).max(1);
        let s = if d < 0 { -1 } else { 1 };
        Some(Frac {
            n: s * n / g,
            d: s * d / g,
        })
    }
}

fn gcd(a: i128, b: i128) -> i128 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Recursive descent over `+ - * / ( )` and non-negative integers.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    used: Vec<i64>,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }
    fn expr(&mut self, depth: usize) -> Option<Frac> {
        let mut v = self.term(depth)?;
        while let Some(c @ (b'+' | b'-')) = self.peek() {
            self.i += 1;
            let r = self.term(depth)?;
            v = if c == b'+' {
                Frac::new(v.n * r.d + r.n * v.d, v.d * r.d)?
            } else {
                Frac::new(v.n * r.d - r.n * v.d, v.d * r.d)?
            };
        }
        Some(v)
    }
    fn term(&mut self, depth: usize) -> Option<Frac> {
        let mut v = self.atom(depth)?;
        while let Some(c @ (b'*' | b'/' | b'x')) = self.peek() {
            self.i += 1;
            let r = self.atom(depth)?;
            v = if c == b'/' {
                Frac::new(v.n * r.d, v.d * r.n)?
            } else {
                Frac::new(v.n * r.n, v.d * r.d)?
            };
        }
        Some(v)
    }
    fn atom(&mut self, depth: usize) -> Option<Frac> {
        if depth > 16 {
            return None;
        }
        match self.peek()? {
            b'(' => {
                self.i += 1;
                let v = self.expr(depth + 1)?;
                (self.peek()? == b')').then(|| self.i += 1)?;
                Some(v)
            }
            c if c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                let x: i64 = std::str::from_utf8(&self.s[start..self.i])
                    .ok()?
                    .parse()
                    .ok()?;
                self.used.push(x);
                Some(Frac::int(x))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_task_lists_the_tasks() {
        let e = "gsm9k".parse::<TaskKind>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown task \"gsm9k\"; the tasks are: arith, arith-easy, two-digit-sums, word, countdown, count-items"
        );
        for t in TASKS {
            assert_eq!(t.name().parse::<TaskKind>().unwrap(), t);
        }
    }

    /// Every cold-start reply is a correct, well-placed answer to a training-split problem, and
    /// none of the task's held-out questions appears among them.
    #[test]
    fn cold_start_conversations_answer_training_problems_correctly() {
        for t in TASKS {
            let convs = t.cold_start_conversations(400, 3);
            assert_eq!(convs.len(), 400);
            let train = t.problems(400, 3, false);
            let held: std::collections::HashSet<String> = t
                .problems(200, 3, true)
                .into_iter()
                .map(|p| p.question)
                .collect();
            for (c, p) in convs.iter().zip(&train) {
                c.validate(true).unwrap();
                let (q, a) = (c.messages[0].content.text(), c.messages[1].content.text());
                assert_eq!(q, p.question);
                assert!(!held.contains(&q), "{t}: held-out {q:?}");
                let s = p.score(&a);
                assert!(s.correct && s.formatted, "{t}: {q:?} -> {a:?}");
            }
        }
    }

    #[test]
    fn two_digit_sums_are_demonstrated_column_by_column() {
        for p in TaskKind::TwoDigitSums.problems(200, 5, false) {
            assert!(
                p.demonstration()
                    .starts_with("Add column by column. ones: "),
                "{}",
                p.demonstration()
            );
            let Expected::Integer(n) = p.expected else {
                panic!("{:?}", p.expected)
            };
            assert!((20..=198).contains(&n), "{}", p.question);
            assert!(p.demonstration().ends_with(&format!("The answer is {n}.")));
        }
    }

    #[test]
    fn generators_are_seeded_and_held_out_sets_are_disjoint() {
        for t in TASKS {
            let a = t.problems(300, 7, false);
            assert_eq!(
                a,
                t.problems(300, 7, false),
                "{t}: same seed, same problems"
            );
            assert_ne!(a, t.problems(300, 8, false), "{t}: seed matters");
            let held = t.problems(60, 7, true);
            assert!(held.iter().all(TaskProblem::is_held_out));
            assert!(a.iter().all(|p| !p.is_held_out()));
            let keys: std::collections::HashSet<_> = a.iter().map(|p| &p.key).collect();
            assert!(held.iter().all(|p| !keys.contains(&p.key)), "{t}");
        }
    }

    #[test]
    fn verifiers_accept_right_answers_and_reject_wrong_ones() {
        for t in [TaskKind::Arith, TaskKind::Word] {
            for p in t.problems(50, 3, false) {
                let Expected::Integer(n) = p.expected else {
                    panic!()
                };
                let good = p.score(&format!("Let me think. The answer is {n}."));
                assert_eq!(
                    (good.correct, good.formatted, good.reward),
                    (true, true, 1.1)
                );
                let bare = p.score(&format!("{n}"));
                assert_eq!(
                    (bare.correct, bare.formatted, bare.reward),
                    (true, false, 1.0)
                );
                let wrong = p.score(&format!("The answer is {}.", n + 1));
                assert_eq!((wrong.correct, wrong.formatted), (false, true));
                assert!((wrong.reward - FORMAT_REWARD).abs() < 1e-6);
                assert_eq!(p.score("no idea").reward, 0.0);
                // Without the format reward only correctness pays.
                let right = format!("The answer is {n}.");
                assert_eq!(p.score_with(&right, 0.0).reward, 1.0);
                let wrong = format!("The answer is {}.", n + 1);
                assert_eq!(p.score_with(&wrong, 0.0).reward, 0.0);
            }
        }
    }

    /// The answer is the number of items in the question's list, every length of the range
    /// comes up about equally often (so no fixed guess does better than chance), and the
    /// verifier reads the count.
    #[test]
    fn count_items_answers_the_lists_length_uniformly() {
        let (lo, hi) = COUNT_ITEMS_RANGE;
        let mut seen = vec![0usize; hi + 1];
        let problems = TaskKind::CountItems.problems(2600, 3, false);
        for p in &problems {
            let list = p
                .question
                .split(": ")
                .nth(1)
                .unwrap()
                .trim_end_matches(['?', '.']);
            let n = list.split(", ").count();
            assert_eq!(p.expected, Expected::Integer(n as i64), "{}", p.question);
            seen[n] += 1;
            assert!(p.score(&format!("The answer is {n}.")).correct);
            assert!(!p.score(&format!("The answer is {}.", n + 1)).correct);
        }
        let per = problems.len() / (hi - lo + 1);
        for (n, &c) in seen.iter().enumerate() {
            if (lo..=hi).contains(&n) {
                assert!(
                    c > per * 3 / 4 && c < per * 5 / 4,
                    "{n} items: {c} of {per}"
                );
            } else {
                assert_eq!(c, 0);
            }
        }
    }

    #[test]
    fn countdown_checks_numbers_and_value_exactly() {
        let p = TaskProblem {
            question: String::new(),
            expected: Expected::Countdown {
                numbers: vec![3, 4, 6, 25],
                target: 37,
            },
            solution: String::new(),
            worked: None,
            key: String::new(),
        };
        assert!(p.score("The answer is 25 + 3 * 4.").correct);
        assert!(
            p.score("So: The answer is (25 + 6 * 4 / 3) - 4 + 4 * 0.")
                .reward
                < 1.0
        );
        assert!(p.score("The answer is 25 + 3 * 4 = 37.").correct);
        let exact = TaskProblem {
            expected: Expected::Countdown {
                numbers: vec![6, 4, 2],
                target: 3,
            },
            ..p.clone()
        };
        assert!(
            exact.score("The answer is 6 / 4 * 2.").correct,
            "exact fractions"
        );
        assert!(
            !p.score("The answer is 25 + 3 * 4 + 0.").correct,
            "0 is not given"
        );
        assert!(
            !p.score("The answer is 25 + 6 + 6.").correct,
            "6 used twice"
        );
        assert!(!p.score("The answer is 25 + 3 * 4 / 0.").correct);
        assert!(!p.score("25 + 3 * 4").correct, "not in the expected place");
        // Every generated problem is solvable: the generator's witness passes the verifier.
        for p in TaskKind::Countdown.problems(100, 1, false) {
            let s = p.score(&format!("The answer is {}.", p.solution));
            assert!(s.correct, "{} / {}", p.question, p.solution);
        }
    }
}
