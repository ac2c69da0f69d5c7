//! "I don't know" training from knowledge probing: ask a chat model questions with known answers
//! (no tools offered), sample each several times, grade the answers; a question it never gets
//! right becomes a lesson that says "I don't know", one it gets right at least half the time keeps
//! its answer (so it does not learn to refuse what it knows). Then a short SFT on those lessons
//! plus a replay of the tool and arithmetic lessons (so it keeps using tools when they are offered).
//!
//! The questions: facts about the training split's places (known only through search), code
//! problems (big numbers, counting) and small arithmetic (which a speedrun model partly knows).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::checkpoint::write_json;
use crate::device::{with_backend, DeviceSpec, OnBackend, TrainBackend};
use crate::sft::{run_job as sft_job, SftConfig, SftJob, SftOutcome};
use crate::TrainError;
use kiln_chat::arith::last_integer;
use kiln_chat::load::{chat_tokens, load_model_on};
use kiln_chat::session::ChatSession;
use kiln_chat::tools::lessons::{
    code_problems, probe_conversations, FactWorld, DEFAULT_PLACES, DEFAULT_WORLD_SEED,
};

/// Probing on the job's device: the model answers every question `samples` times.
struct Probe<'a>(&'a HonestyJob);

impl OnBackend for Probe<'_> {
    type Output = (
        Vec<kiln_chat::tools::lessons::Probe>,
        Vec<kiln_chat::format::Conversation>,
    );
    fn run<B: TrainBackend>(self, be: Arc<B>) -> Result<Self::Output, TrainError> {
        let job = self.0;
        let l = load_model_on(be, &job.model, job.tokenizer.as_deref())?;
        let tokens = chat_tokens(&l.tok, &l.dir.display().to_string())?;
        let questions = probe_questions(job.questions, job.train.seed);
        probe_conversations(
            &questions,
            job.samples,
            |q, i| -> Result<String, TrainError> {
                let mut s = ChatSession::new(0.8, 48, job.train.seed.wrapping_add(i as u64));
                match s.reply(&l.model, &l.tok, &tokens, q, |_| {}) {
                    Ok(r) => Ok(r.text),
                    // A question longer than a tiny model's context gets no answer: wrong.
                    Err(kiln_chat::session::SessionError::TooLong { .. }) => Ok(String::new()),
                    Err(e) => Err(e.into()),
                }
            },
            is_correct,
        )
    }
}

/// What a probing + SFT run needs.
pub struct HonestyJob {
    /// The chat model to probe and fine-tune (an SFT checkpoint or run folder).
    pub model: PathBuf,
    pub out: PathBuf,
    /// Tokenizer folder or name; `None`: the one the run recorded.
    pub tokenizer: Option<String>,
    /// Questions probed (half places, a quarter code problems, a quarter arithmetic).
    pub questions: usize,
    /// Samples per question.
    pub samples: usize,
    /// Replayed tool lessons per kind, and arithmetic lessons, in the SFT mix.
    pub replay: usize,
    pub progress: bool,
    /// Steps, batch, optimizer, threads, time limit of the SFT.
    pub train: SftConfig,
}

/// What probing found and what the SFT did.
#[derive(Debug, Clone, Serialize)]
pub struct HonestySummary {
    pub probed: usize,
    /// Questions never answered right: "I don't know" lessons.
    pub dont_know_lessons: usize,
    /// Questions answered right at least half the time: their answers kept as lessons.
    pub known_lessons: usize,
    /// Neither (sometimes right): left out.
    pub unsure: usize,
    pub sft_step: u64,
    pub sft_val_loss: Option<f64>,
}

/// Grade a reply: numbers by the reply's last integer, words by containment.
fn is_correct(reply: &str, answer: &str) -> bool {
    match answer.parse::<i64>() {
        Ok(n) => last_integer(reply) == Some(n),
        Err(_) => reply.to_lowercase().contains(&answer.to_lowercase()),
    }
}

/// The probe set: `(question, answer)` pairs from the training splits only.
fn probe_questions(n: usize, seed: u64) -> Vec<(String, String)> {
    let world = FactWorld::new(DEFAULT_PLACES, DEFAULT_WORLD_SEED);
    let places = world.fact_questions(false, seed);
    let mut qs: Vec<(String, String)> = places
        .into_iter()
        .step_by(3)
        .take(n / 2)
        .map(|q| (q.question, q.answer))
        .collect();
    qs.extend(
        code_problems(n / 4, seed, false)
            .into_iter()
            .map(|p| (p.question, p.answer)),
    );
    let mut rng = kiln_engine::Rng::new(seed);
    qs.extend(
        kiln_chat::arith::problems(n - qs.len(), seed, false)
            .into_iter()
            .map(|p| (p.question(&mut rng), p.answer().to_string())),
    );
    qs
}

fn write_text(path: &Path, text: &str) -> Result<(), TrainError> {
    kiln_data::write_atomic(path, text.as_bytes()).map_err(|e| TrainError::io(path, e))
}

/// Probe, write the lessons and their mix into `out`, fine-tune into `out` (resumable: the SFT
/// resumes from its checkpoints; the lessons file is reused when present).
pub fn run_job(job: &HonestyJob, spec: &DeviceSpec) -> Result<HonestySummary, TrainError> {
    if job.samples < 2 {
        return Err(TrainError::Config(format!(
            "honesty: --samples {} (need at least 2 to tell knowing from luck)",
            job.samples
        )));
    }
    std::fs::create_dir_all(&job.out).map_err(|e| TrainError::io(&job.out, e))?;
    let lessons_path = job.out.join("honesty-lessons.jsonl");
    let probe_path = job.out.join("probe.json");
    let summary_probe: (usize, usize, usize, usize) =
        if lessons_path.exists() && probe_path.exists() {
            crate::checkpoint::read_json(&probe_path)?
        } else {
            let (probes, convs) = with_backend(spec, job.train.threads, Probe(job))?;
            let mut text = String::new();
            for c in &convs {
                text.push_str(&serde_json::to_string(c).expect("conversations serialize"));
                text.push('\n');
            }
            write_text(&lessons_path, &text)?;
            let idk = probes.iter().filter(|p| p.correct == 0).count();
            let known = probes
                .iter()
                .filter(|p| 2 * p.correct >= p.samples && p.correct > 0)
                .count();
            let counts = (probes.len(), idk, known, probes.len() - idk - known);
            write_json(&probe_path, &counts)?;
            tracing::info!(
                probed = counts.0,
                dont_know = counts.1,
                known = counts.2,
                unsure = counts.3,
                "knowledge probing done"
            );
            counts
        };
    let mix_path = job.out.join("honesty-mix.toml");
    write_text(
        &mix_path,
        &format!(
            "# Written by the honesty stage: the probing lessons plus a replay of tool and arithmetic lessons.\n\
             seed = 7\nval_fraction = 0.05\n\
             [[source]]\nkind = \"jsonl\"\nfile = \"honesty-lessons.jsonl\"\n\
             [[source]]\nkind = \"tool_code\"\ncount = {r}\n\
             [[source]]\nkind = \"tool_search\"\ncount = {r}\n\
             [[source]]\nkind = \"arithmetic\"\ncount = {r}\n",
            r = job.replay
        ),
    )?;
    let sft = SftJob {
        base: job.model.clone(),
        mix: mix_path,
        out: job.out.clone(),
        tokenizer: job.tokenizer.clone(),
        seq_len: None,
        strict: false,
        scale: 1.0,
        resume: true,
        progress: job.progress,
        train: job.train.clone(),
    };
    let o: SftOutcome = sft_job(&sft, spec)?;
    let (probed, dont_know_lessons, known_lessons, unsure) = summary_probe;
    Ok(HonestySummary {
        probed,
        dont_know_lessons,
        known_lessons,
        unsure,
        sft_step: o.summary.step,
        sft_val_loss: o.summary.val_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grading_reads_numbers_and_words() {
        assert!(is_correct("The answer is 1,234.", "1234"));
        assert!(!is_correct("12345", "1234"));
        assert!(is_correct("The capital of Kalo is Venmir.", "venmir"));
        assert!(!is_correct("I don't know.", "Venmir"));
    }

    #[test]
    fn probe_questions_come_from_the_training_splits() {
        let qs = probe_questions(40, 3);
        assert_eq!(qs.len(), 40);
        let world = FactWorld::new(DEFAULT_PLACES, DEFAULT_WORLD_SEED);
        let held: Vec<String> = world
            .fact_questions(true, 3)
            .into_iter()
            .map(|q| q.place)
            .collect();
        assert!(qs
            .iter()
            .all(|(q, _)| held.iter().all(|p| !q.contains(p.as_str()))));
    }
}
