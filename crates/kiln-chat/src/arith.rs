//! Generated arithmetic problems with worked steps: SFT data and a held-out eval.
//!
//! Problems are split by a hash of `(a, op, b)`: one in ten is held out for evaluation and never
//! generated for training, so the eval measures generalisation, not recall.

use crate::format::{Conversation, Message};
use kiln_engine::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Add,
    Sub,
    Mul,
}

/// One problem with its exact answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub a: u64,
    pub op: Op,
    pub b: u64,
}

impl Problem {
    pub fn answer(&self) -> i64 {
        let (a, b) = (self.a as i64, self.b as i64);
        match self.op {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
        }
    }

    /// Held out by the RL tasks `arith` and `arith-easy` ([`crate::tasks`]), which split problems
    /// by their own key: SFT data leaves these out too, so RL's held-out pass@1 measures
    /// generalisation.
    pub fn is_held_out_by_tasks(&self) -> bool {
        let op = self.sym().chars().next().expect("one-char symbol");
        crate::tasks::arith_is_held_out(self.a as i64, op, self.b as i64)
    }

    fn sym(&self) -> &'static str {
        match self.op {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "*",
        }
    }

    /// Held-out problems (about 1 in 10) are reserved for the eval.
    pub fn is_held_out(&self) -> bool {
        let h = (self.a.wrapping_mul(1_000_003) ^ self.b.wrapping_mul(998_244_353))
            .wrapping_add(self.op as u64 * 7919)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 32).is_multiple_of(10)
    }

    /// The question, phrased by one of a few templates.
    pub fn question(&self, rng: &mut Rng) -> String {
        let (a, b, s) = (self.a, self.b, self.sym());
        match rng.below(4) {
            0 => format!("What is {a} {s} {b}?"),
            1 => format!("Compute {a} {s} {b}."),
            2 => format!("{a} {s} {b} = ?"),
            _ => match self.op {
                Op::Add => format!("What do you get if you add {a} and {b}?"),
                Op::Sub => format!("What is {b} subtracted from {a}?"),
                Op::Mul => format!("What do you get if you multiply {a} by {b}?"),
            },
        }
    }

    /// A worked solution ending with "The answer is N."
    pub fn worked(&self) -> String {
        let (a, b, s, ans) = (self.a, self.b, self.sym(), self.answer());
        let steps = match self.op {
            Op::Add => {
                let mut steps = Vec::new();
                let (mut x, mut y, mut carry, mut place) = (a, b, 0, 0);
                let names = ["ones", "tens", "hundreds", "thousands", "ten-thousands"];
                while x > 0 || y > 0 {
                    let (dx, dy) = (x % 10, y % 10);
                    let sum = dx + dy + carry;
                    let name = names.get(place).copied().unwrap_or("next digits");
                    if carry > 0 {
                        steps.push(format!("{name}: {dx} + {dy} + {carry} = {sum}"));
                    } else {
                        steps.push(format!("{name}: {dx} + {dy} = {sum}"));
                    }
                    carry = sum / 10;
                    x /= 10;
                    y /= 10;
                    place += 1;
                }
                format!("Add column by column. {}.", steps.join(", "))
            }
            Op::Sub => {
                let tens = b / 10 * 10;
                let ones = b % 10;
                if tens > 0 && ones > 0 {
                    format!(
                        "Split {b} into {tens} + {ones}. {a} - {tens} = {}. {} - {ones} = {ans}.",
                        a - tens,
                        a - tens
                    )
                } else {
                    format!("{a} - {b} = {ans}.")
                }
            }
            Op::Mul => {
                let tens = a / 10 * 10;
                let ones = a % 10;
                if tens > 0 && ones > 0 {
                    format!(
                        "Split {a} into {tens} + {ones}. {tens} * {b} = {}. {ones} * {b} = {}. {} + {} = {ans}.",
                        tens * b,
                        ones * b,
                        tens * b,
                        ones * b
                    )
                } else {
                    format!("{a} * {b} = {ans}.")
                }
            }
        };
        format!("{steps} So {a} {s} {b} = {ans}. The answer is {ans}.")
    }
}

/// Uniform in `lo..=hi`.
fn range(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo + rng.below(hi - lo + 1)
}

/// A random problem of modest size (sums and differences up to 3 digits, products 2 × 1 digits).
pub fn random_problem(rng: &mut Rng) -> Problem {
    match rng.below(3) {
        0 => Problem {
            a: range(rng, 1, 999),
            op: Op::Add,
            b: range(rng, 1, 999),
        },
        1 => {
            let a = range(rng, 10, 999);
            Problem {
                a,
                op: Op::Sub,
                b: range(rng, 1, a),
            }
        }
        _ => Problem {
            a: range(rng, 2, 99),
            op: Op::Mul,
            b: range(rng, 2, 9),
        },
    }
}

/// A problem of the RL task `arith-easy`'s size (sums and differences up to 20, one-digit
/// products): the first rung, which the 3-digit problems alone almost never show (two operands
/// ≤ 20 come up about once in 2,500 draws).
pub fn small_problem(rng: &mut Rng) -> Problem {
    match rng.below(3) {
        0 => Problem {
            a: range(rng, 1, 20),
            op: Op::Add,
            b: range(rng, 1, 20),
        },
        1 => {
            let a = range(rng, 2, 20);
            Problem {
                a,
                op: Op::Sub,
                b: range(rng, 1, a),
            }
        }
        _ => Problem {
            a: range(rng, 2, 9),
            op: Op::Mul,
            b: range(rng, 2, 9),
        },
    }
}

/// `count` problems from one side of the split (`held_out = false` for training data).
pub fn problems(count: usize, seed: u64, held_out: bool) -> Vec<Problem> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let p = random_problem(&mut rng);
        if p.is_held_out() == held_out {
            out.push(p);
        }
    }
    out
}

/// The endless stream of training problems behind [`conversations`], seeded.
fn training_problems(seed: u64) -> impl Iterator<Item = Problem> {
    let mut draw = Rng::new(seed);
    std::iter::repeat_with(move || {
        if draw.below(4) == 0 {
            small_problem(&mut draw)
        } else {
            random_problem(&mut draw)
        }
    })
    .filter(|p| !p.is_held_out() && !p.is_held_out_by_tasks())
}

/// Training conversations: question → worked answer (some with a second problem as a follow-up).
/// One problem in four is a small one ([`small_problem`]); none is held out by this module's eval
/// or by the RL tasks.
pub fn conversations(count: usize, seed: u64) -> Vec<Conversation> {
    let mut rng = Rng::new(seed ^ 0xA517);
    let mut problems = training_problems(seed);
    let mut next_problem = move || problems.next().expect("an endless stream");
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let p = next_problem();
        let mut msgs = vec![
            Message::user(p.question(&mut rng)),
            Message::assistant(p.worked()),
        ];
        if rng.below(4) == 0 {
            let q = next_problem();
            msgs.push(Message::user(format!("And {}", q.question(&mut rng))));
            msgs.push(Message::assistant(q.worked()));
        }
        out.push(Conversation::new(msgs));
    }
    out
}

/// The last integer in a reply (how answers are read, for arithmetic and GSM8K alike).
pub fn last_integer(text: &str) -> Option<i64> {
    let s: Vec<char> = text.chars().filter(|c| *c != ',').collect();
    let mut last = None;
    let mut i = 0;
    while i < s.len() {
        if !s[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        let digits: String = s[start..i].iter().collect();
        // A decimal like 18.00 counts as 18; 18.5 is not an integer answer.
        let mut whole = true;
        if i + 1 < s.len() && s[i] == '.' && s[i + 1].is_ascii_digit() {
            i += 1;
            while i < s.len() && s[i].is_ascii_digit() {
                whole &= s[i] == '0';
                i += 1;
            }
        }
        let neg = start > 0 && s[start - 1] == '-' && (start < 2 || !s[start - 2].is_ascii_digit());
        last = if whole {
            digits.parse::<i64>().ok().map(|v| if neg { -v } else { v })
        } else {
            None
        };
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_answers_are_correct() {
        for p in problems(300, 3, false) {
            let w = p.worked();
            assert_eq!(last_integer(&w), Some(p.answer()), "{w}");
            assert!(!p.is_held_out());
        }
        let p = Problem {
            a: 37,
            op: Op::Add,
            b: 48,
        };
        assert_eq!(
            p.worked(),
            "Add column by column. ones: 7 + 8 = 15, tens: 3 + 4 + 1 = 8. So 37 + 48 = 85. The answer is 85."
        );
    }

    #[test]
    fn held_out_split_is_disjoint_and_about_a_tenth() {
        let held = problems(200, 9, true);
        assert!(held.iter().all(Problem::is_held_out));
        let mut rng = Rng::new(5);
        let n = 5000;
        let k = (0..n)
            .filter(|_| random_problem(&mut rng).is_held_out())
            .count();
        assert!((300..700).contains(&k), "{k} of {n} held out");
    }

    #[test]
    fn last_integer_reads_answers() {
        assert_eq!(
            last_integer("so 3 + 4 = 7. The answer is 1,234."),
            Some(1234)
        );
        assert_eq!(last_integer("it is -5"), Some(-5));
        assert_eq!(last_integer("10 - 3 = 7"), Some(7));
        assert_eq!(last_integer("$18.00"), Some(18));
        assert_eq!(last_integer("none"), None);
    }

    #[test]
    fn training_problems_hold_small_ones_but_none_the_rl_tasks_hold_out() {
        use crate::tasks::TaskKind;
        let held: std::collections::HashSet<String> = TaskKind::ArithEasy
            .problems(2000, 4, true)
            .into_iter()
            .map(|p| p.question)
            .collect();
        assert!(
            held.len() > 30,
            "{} held-out arith-easy problems",
            held.len()
        );
        let n = 8000;
        let mut small = 0;
        for p in training_problems(2).take(n) {
            // The task phrases `a op b` as one of three questions, all starting with it or
            // "What is"/"Compute" before it.
            let q = format!("{} {} {}", p.a, p.sym(), p.b);
            for held_q in &held {
                assert!(
                    !(held_q.contains(&format!(" {q}?"))
                        || held_q.contains(&format!(" {q}."))
                        || held_q.starts_with(&format!("{q} ="))),
                    "{q} is held out by arith-easy ({held_q})"
                );
            }
            assert!(!p.is_held_out() && !p.is_held_out_by_tasks());
            small += usize::from(p.a <= 20 && p.b <= 20);
        }
        // A quarter are drawn small; of the rest, products of a ≤ 20 by one digit are too.
        assert!((2000..3000).contains(&small), "{small} small of {n}");
    }

    #[test]
    fn conversations_are_valid() {
        for c in conversations(50, 1) {
            c.validate(true).unwrap();
        }
    }
}
