//! [`SimulatedPerson`]: a scripted labeller — a *simulator of a person*, not a person — for tests,
//! the demo and the RLHF hack guard's held-out judge. Its preferences are hidden from the reward
//! model (which only sees its orderings), learnable from text, but not a verifier a policy could
//! be trained on directly:
//!
//! - stays on topic: mentions a content word of the prompt (`pelicans` → `pelican…`);
//! - does not repeat itself: penalised by the share of repeated words;
//! - answers within a length: 6–40 words, a small penalty per word outside;
//! - a stated style: ends a sentence (`.`, `!` or `?`) and has no digits.
//!
//! Orderings add Gaussian noise to each sample's utility (people disagree with themselves), so the
//! best reward model cannot reach 100% pairwise accuracy on its data.

use kiln_engine::Rng;

use super::prefs::Ordering;

/// The name it writes into the orderings it makes.
pub const SIM_LABELLER: &str = "sim-person";

/// A simulator of a person ordering samples (module docs give its preferences).
#[derive(Clone, Debug)]
pub struct SimulatedPerson {
    /// Std of the noise added to each utility when ordering (0: always the same order).
    pub noise: f64,
    pub min_words: usize,
    pub max_words: usize,
}

impl Default for SimulatedPerson {
    fn default() -> Self {
        SimulatedPerson {
            noise: 0.3,
            min_words: 6,
            max_words: 40,
        }
    }
}

const STOP: [&str; 16] = [
    "about", "write", "what", "that", "this", "with", "tell", "give", "from", "have", "your",
    "make", "some", "short", "there", "please",
];

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The prompt's content words, cut to a 5-letter stem so plurals and suffixes match.
fn topic_stems(prompt: &str) -> Vec<String> {
    words(prompt)
        .into_iter()
        .filter(|w| w.len() >= 4 && !STOP.contains(&w.as_str()))
        .map(|w| w.chars().take(5).collect())
        .collect()
}

impl SimulatedPerson {
    /// The hidden utility of `text` as an answer to `prompt` (higher is better).
    pub fn utility(&self, prompt: &str, text: &str) -> f64 {
        let ws = words(text);
        let stems = topic_stems(prompt);
        let mut u = 0.0;
        if !stems.is_empty() && ws.iter().any(|w| stems.iter().any(|s| w.starts_with(s))) {
            u += 1.0;
        }
        if !ws.is_empty() {
            let mut uniq = ws.clone();
            uniq.sort();
            uniq.dedup();
            u -= 2.0 * (1.0 - uniq.len() as f64 / ws.len() as f64);
        }
        let n = ws.len();
        if n < self.min_words {
            u -= 0.1 * (self.min_words - n) as f64;
        } else if n > self.max_words {
            u -= 0.05 * (n - self.max_words) as f64;
        }
        let t = text.trim_end();
        if t.ends_with(['.', '!', '?']) {
            u += 0.5;
        }
        if t.chars().any(|c| c.is_ascii_digit()) {
            u -= 0.5;
        }
        u
    }

    /// Order `samples` best first by noisy utility.
    pub fn order(&self, prompt: &str, samples: &[String], rng: &mut Rng) -> Ordering {
        let noisy: Vec<f64> = samples
            .iter()
            .map(|s| self.utility(prompt, s) + self.noise * rng.normal())
            .collect();
        let mut order: Vec<usize> = (0..samples.len()).collect();
        order.sort_by(|&a, &b| noisy[b].total_cmp(&noisy[a]));
        Ordering {
            prompt: prompt.to_string(),
            samples: samples.to_vec(),
            order,
            labeller: SIM_LABELLER.into(),
        }
    }
}

const FILLER: [&str; 24] = [
    "the", "a", "very", "little", "big", "bird", "fish", "sky", "walked", "said", "and", "then",
    "funny", "old", "sea", "bright", "it", "was", "on", "day", "because", "wanted", "home", "song",
];

/// Synthetic candidate answers with the traits the person cares about varied at random (on or off
/// topic, repeated words, length, ending, digits): data for the reward model's tests and for
/// exercising the pipeline without a policy to sample from.
pub fn synthetic_samples(prompt: &str, n: usize, rng: &mut Rng) -> Vec<String> {
    let topic: Vec<String> = words(prompt)
        .into_iter()
        .filter(|w| w.len() >= 4 && !STOP.contains(&w.as_str()))
        .collect();
    (0..n)
        .map(|_| {
            let len = 2 + rng.below(18) as usize;
            let repeat = rng.uniform() < 0.3;
            let mut ws: Vec<String> = Vec::with_capacity(len);
            for i in 0..len {
                let w = if repeat && i > 0 {
                    ws[0].clone()
                } else {
                    FILLER[rng.below(FILLER.len() as u64) as usize].to_string()
                };
                ws.push(w);
            }
            if !topic.is_empty() && rng.uniform() < 0.5 {
                let k = rng.below(len as u64) as usize;
                ws[k] = topic[rng.below(topic.len() as u64) as usize].clone();
            }
            if rng.uniform() < 0.2 {
                ws.push(format!("{}", rng.below(100)));
            }
            let mut text = ws.join(" ");
            if rng.uniform() < 0.5 {
                text.push(['.', '!', '?'][rng.below(3) as usize]);
            }
            text
        })
        .collect()
}

/// Open prompts in the demo's style (the seed's "write a joke about pelicans" among them): every
/// template with every topic. Split them with [`super::is_held_out`] so training, the guard and
/// the win-rate measurement see different prompts.
pub fn prompt_set() -> Vec<String> {
    const TEMPLATES: [&str; 6] = [
        "write a joke about {}",
        "write a short poem about {}",
        "tell me a story about {}",
        "describe {} in a few sentences",
        "write a limerick about {}",
        "tell me something funny about {}",
    ];
    const TOPICS: [&str; 24] = [
        "pelicans",
        "cats",
        "the sea",
        "a brave mouse",
        "penguins",
        "autumn leaves",
        "the rain",
        "computers",
        "a lost dragon",
        "mountains",
        "a busy city",
        "owls",
        "a tiny robot",
        "the moon",
        "a baker",
        "bicycles",
        "a lighthouse",
        "elephants",
        "winter",
        "a teapot",
        "gardens",
        "trains",
        "a wizard",
        "the desert",
    ];
    let mut out = Vec::new();
    for t in TOPICS {
        for tpl in TEMPLATES {
            out.push(tpl.replace("{}", t));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utility_prefers_on_topic_varied_finished_answers() {
        let p = SimulatedPerson::default();
        let q = "write a joke about pelicans";
        let good = "Why did the pelican bring a bag? It wanted to carry its jokes home.";
        let off = "Why did the chicken cross the road? It wanted to get to the other side.";
        let rep = "pelican pelican pelican pelican pelican pelican pelican pelican.";
        let unfinished = "Why did the pelican bring a bag it wanted to carry its jokes home";
        assert!(p.utility(q, good) > p.utility(q, off));
        assert!(p.utility(q, good) > p.utility(q, rep));
        assert!(p.utility(q, good) > p.utility(q, unfinished));
        assert!(p.utility(q, good) > p.utility(q, "A pelican has 3 legs."));
        let noiseless = SimulatedPerson {
            noise: 0.0,
            ..Default::default()
        };
        let s: Vec<String> = [off, good, rep].iter().map(|s| s.to_string()).collect();
        let o = noiseless.order(q, &s, &mut Rng::new(1));
        assert_eq!(o.order[0], 1);
        assert_eq!(o.labeller, SIM_LABELLER);
    }
}
