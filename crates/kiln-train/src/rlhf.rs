//! RLHF: policy optimisation against a reward model — the RL loop ([`crate::rl`]: rollouts,
//! group-relative advantages, the clipped loss with a k3 KL leash to the SFT reference) with the
//! reward model as the verifier — stopped by a *hack guard* before the policy games the model.
//!
//! The guard ([`Guard`], a [`StepHook`] of the RL loop) evaluates, every `eval_every` steps, the
//! policy's samples on held-out prompts with the reward model *and* with a held-out judge the
//! policy never trains on (the scripted labeller's noiseless utility). It keeps the best
//! checkpoint by the judge (`<out>/best`), and stops the run when the reward model's score has
//! risen above its value at the best checkpoint while the judge fell below its best, for
//! `patience` evaluations in a row — the policy is fooling the reward model — or when the KL to
//! the reference passes its budget. `rlhf.json` holds the curves and samples (before, at the best
//! checkpoint, at the end) and `rlhf.svg` plots both scores.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_chat::format::Codec;
use kiln_chat::tasks::Score;
use kiln_engine::{
    load_checkpoint, resolve_checkpoint, save_checkpoint, Backend, CpuBackend, Model, Rng,
    SamplingParams, Trainer,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::checkpoint::write_json;
use crate::device::DeviceSpec;
use crate::error::TrainError;
use crate::plot::{write_svg, Series};
use crate::rl::run::{rollouts, strip_stop};
use crate::rl::{rl_on_hooked, HookOut, RlConfig, RlData, RlItem, RlSummary, Scorer, StepHook};
use crate::rm::person::{prompt_set, SimulatedPerson};
use crate::rm::{is_held_out, load_reward_model, render_pair, render_prompt};

/// A held-out judge of a response (token ids, stop token excluded): higher is better.
pub type Judge = Arc<dyn Fn(&[u32]) -> f64 + Send + Sync>;
/// Token ids → text, for the samples the guard records.
pub type Decode = Arc<dyn Fn(&[u32]) -> String + Send + Sync>;

/// A held-out prompt with the reward model's score and the judge's.
#[derive(Clone)]
pub struct GuardItem {
    /// The prompt as text (for the recorded samples) and rendered.
    pub text: String,
    pub prompt: Vec<u32>,
    pub rm: Scorer,
    pub judge: Judge,
}

/// When the guard evaluates and when it fires.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuardConfig {
    pub eval_every: usize,
    /// Samples per held-out prompt per evaluation (at the rollout temperature, fixed seeds).
    pub samples: usize,
    /// Evaluations in a row with the reward model above and the judge below their best-checkpoint
    /// values before the guard fires.
    pub patience: usize,
    /// Margin both must move by to count.
    pub min_gap: f64,
    /// The judge must also fall by more than `z` standard errors of the difference between the
    /// two evaluations (each the mean of a few dozen samples: small falls are noise; 0 = any fall).
    pub z: f64,
    /// Stop when the step's mean k3 KL to the reference passes this.
    pub kl_budget: Option<f64>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            eval_every: 5,
            samples: 4,
            patience: 2,
            min_gap: 0.0,
            z: 1.0,
            kl_budget: Some(0.5),
        }
    }
}

/// One guard evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct GuardEval {
    pub step: u64,
    /// Mean reward-model score and mean judge score of the samples on held-out prompts.
    pub rm: f64,
    pub judge: f64,
    /// Standard error of `judge` over the samples.
    pub judge_se: f64,
    /// The step's KL to the reference (0 before training).
    pub kl: f64,
    /// The first held-out prompt's first sample, decoded.
    pub sample: String,
}

/// The hack guard (module docs); a [`StepHook`] of the RL loop.
pub struct Guard {
    pub cfg: GuardConfig,
    items: Vec<GuardItem>,
    stop: Vec<u32>,
    max_new: usize,
    temperature: f32,
    decode: Decode,
    out: PathBuf,
    /// Saved with the best checkpoint (e.g. the tokenizer, so `kiln chat` finds it).
    state: Value,
    pub evals: Vec<GuardEval>,
    /// Index into `evals` of the best by the judge.
    pub best: Option<usize>,
    strikes: usize,
    pub fired: Option<String>,
}

impl Guard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: GuardConfig,
        items: Vec<GuardItem>,
        stop: Vec<u32>,
        max_new: usize,
        temperature: f32,
        decode: Decode,
        out: &Path,
        state: Value,
    ) -> Guard {
        Guard {
            cfg,
            items,
            stop,
            max_new,
            temperature,
            decode,
            out: out.to_path_buf(),
            state,
            evals: Vec::new(),
            best: None,
            strikes: 0,
            fired: None,
        }
    }

    /// The best checkpoint by the judge.
    pub fn best_dir(&self) -> PathBuf {
        self.out.join("best")
    }

    fn evaluate<B: Backend>(
        &self,
        model: &Model<B>,
        step: u64,
        kl: f64,
    ) -> Result<GuardEval, TrainError> {
        let sp = SamplingParams {
            temperature: self.temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
        };
        let (mut rm, mut judge, mut judge2, mut n) = (0f64, 0f64, 0f64, 0usize);
        let mut sample = String::new();
        for (i, it) in self.items.iter().enumerate() {
            // The same seeds at every evaluation: differences come from the policy.
            let seed = 0x6A7D ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let outs = rollouts(
                model,
                &[&it.prompt],
                &[seed],
                self.cfg.samples,
                self.max_new,
                &sp,
                &self.stop,
                false,
                None,
            )?;
            for (k, o) in outs.ids.iter().enumerate() {
                let r = strip_stop(o, &self.stop);
                rm += (it.rm)(r).reward as f64;
                let j = (it.judge)(r);
                judge += j;
                judge2 += j * j;
                n += 1;
                if i == 0 && k == 0 {
                    sample = (self.decode)(r);
                }
            }
        }
        let n = n.max(1) as f64;
        let var = (judge2 / n - (judge / n).powi(2)).max(0.0) * n / (n - 1.0).max(1.0);
        Ok(GuardEval {
            step,
            rm: rm / n,
            judge: judge / n,
            judge_se: (var / n).sqrt(),
            kl,
            sample,
        })
    }

    /// Record an evaluation: a new best is saved; otherwise count a strike when the reward model
    /// rose and the judge fell. Returns the log record.
    fn record<B: Backend>(&mut self, e: GuardEval, tr: &Trainer<B>) -> Result<Value, TrainError> {
        let gap = self.cfg.min_gap;
        let rec = json!({"event": "guard", "step": e.step, "rm": e.rm, "judge": e.judge, "judge_se": e.judge_se, "kl": e.kl});
        let best = self.best.map(|b| &self.evals[b]);
        match best {
            Some(b) if e.judge <= b.judge => {
                let fall = gap.max(self.cfg.z * (e.judge_se.powi(2) + b.judge_se.powi(2)).sqrt());
                if e.rm > b.rm + gap && e.judge < b.judge - fall {
                    self.strikes += 1;
                    if self.strikes >= self.cfg.patience.max(1) {
                        self.fired = Some(format!(
                            "hack guard: the reward model's score rose from {:.3} to {:.3} while the held-out judge fell from {:.3} to {:.3} (best at step {}), {} evaluations in a row",
                            b.rm, e.rm, b.judge, e.judge, b.step, self.strikes
                        ));
                    }
                } else {
                    self.strikes = 0;
                }
                self.evals.push(e);
            }
            _ => {
                let mut state = self.state.clone();
                state["kind"] = "rlhf-best".into();
                state["step"] = e.step.into();
                state["judge"] = e.judge.into();
                state["rm"] = e.rm.into();
                save_checkpoint(&self.best_dir(), &tr.model, None, &state)?;
                self.strikes = 0;
                self.evals.push(e);
                self.best = Some(self.evals.len() - 1);
            }
        }
        self.write_report()?;
        Ok(rec)
    }

    /// `rlhf.json` (curves, best, samples) and `rlhf.svg`.
    fn write_report(&self) -> Result<(), TrainError> {
        let best = self.best.map(|b| &self.evals[b]);
        write_json(
            &self.out.join("rlhf.json"),
            &json!({"evals": self.evals, "best_step": best.map(|b| b.step), "best_judge": best.map(|b| b.judge),
                "fired": self.fired,
                "samples": {"prompt": self.items.first().map(|i| &i.text), "start": self.evals.first().map(|e| &e.sample), "best": best.map(|b| &b.sample),
                    "last": self.evals.last().map(|e| &e.sample)}}),
        )?;
        let pts = |f: fn(&GuardEval) -> f64| -> Vec<(f64, f64)> {
            self.evals.iter().map(|e| (e.step as f64, f(e))).collect()
        };
        let (rm, judge, kl) = (pts(|e| e.rm), pts(|e| e.judge), pts(|e| e.kl));
        write_svg(
            &self.out.join("rlhf.svg"),
            &[
                Series {
                    title: "reward model score (held-out prompts)",
                    points: &rm,
                },
                Series {
                    title: "held-out judge (never trained on)",
                    points: &judge,
                },
                Series {
                    title: "KL to the SFT reference",
                    points: &kl,
                },
            ],
        )
    }
}

impl StepHook for Guard {
    fn before<B: Backend>(&mut self, tr: &Trainer<B>) -> Result<HookOut, TrainError> {
        let e = self.evaluate(&tr.model, 0, 0.0)?;
        Ok(HookOut {
            log: vec![self.record(e, tr)?],
            stop: None,
        })
    }

    fn after_step<B: Backend>(
        &mut self,
        step: u64,
        tr: &Trainer<B>,
        rec: &Value,
    ) -> Result<HookOut, TrainError> {
        let kl = rec["kl"].as_f64().unwrap_or(0.0);
        let mut out = HookOut::default();
        if self.cfg.eval_every > 0 && (step as usize).is_multiple_of(self.cfg.eval_every) {
            let e = self.evaluate(&tr.model, step, kl)?;
            out.log.push(self.record(e, tr)?);
        }
        if let Some(budget) = self.cfg.kl_budget {
            if kl > budget && self.fired.is_none() {
                self.fired = Some(format!(
                    "hack guard: KL to the SFT reference {kl:.4} passed its budget {budget}"
                ));
                self.write_report()?;
            }
        }
        out.stop = self.fired.clone();
        Ok(out)
    }
}

/// The held-out judge's win rate of policy `a` over policy `b`: per prompt, `samples` responses
/// from each (the same seeds), each pair scored win 1, tie ½, loss 0; the mean over prompts and
/// its spread (standard error over prompts, and a 95% bootstrap interval over prompts).
#[derive(Clone, Debug, Serialize)]
pub struct WinRate {
    pub rate: f64,
    pub std_err: f64,
    pub ci95: (f64, f64),
    pub prompts: usize,
    pub pairs: usize,
}

#[allow(clippy::too_many_arguments)]
pub fn win_rate<B: Backend>(
    a: &Model<B>,
    b: &Model<B>,
    items: &[GuardItem],
    samples: usize,
    max_new: usize,
    temperature: f32,
    stop: &[u32],
    seed: u64,
) -> Result<WinRate, TrainError> {
    let sp = SamplingParams {
        temperature,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
    };
    let mut per = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let s = seed ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let prompt: &[&[u32]] = &[&it.prompt];
        let oa = rollouts(a, prompt, &[s], samples, max_new, &sp, stop, false, None)?.ids;
        let ob = rollouts(b, prompt, &[s], samples, max_new, &sp, stop, false, None)?.ids;
        let w: f64 = oa
            .iter()
            .zip(&ob)
            .map(|(x, y)| {
                let (jx, jy) = (
                    (it.judge)(strip_stop(x, stop)),
                    (it.judge)(strip_stop(y, stop)),
                );
                if jx > jy {
                    1.0
                } else if jx == jy {
                    0.5
                } else {
                    0.0
                }
            })
            .sum();
        per.push(w / samples.max(1) as f64);
    }
    let n = per.len().max(1) as f64;
    let mean = per.iter().sum::<f64>() / n;
    let var = per.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let mut rng = Rng::new(seed ^ 0xB007);
    let mut boots: Vec<f64> = (0..2000)
        .map(|_| {
            (0..per.len())
                .map(|_| per[rng.below(per.len().max(1) as u64) as usize])
                .sum::<f64>()
                / n
        })
        .collect();
    boots.sort_by(f64::total_cmp);
    Ok(WinRate {
        rate: mean,
        std_err: (var / n).sqrt(),
        ci95: (boots[50], boots[1949]),
        prompts: per.len(),
        pairs: per.len() * samples,
    })
}

/// An RLHF run as the CLI describes it.
#[derive(Clone, Debug)]
pub struct RlhfJob {
    /// The SFT checkpoint (policy start and KL reference).
    pub policy: PathBuf,
    /// The reward model (`kiln rm train`'s output).
    pub rm: PathBuf,
    pub out: PathBuf,
    /// One prompt per line; `None`: the built-in open prompts ([`prompt_set`]).
    pub prompts: Option<PathBuf>,
    /// Tokenizer of the policy; `None`: the one its run recorded.
    pub tokenizer: Option<String>,
    pub progress: bool,
    pub train: RlConfig,
    pub guard: GuardConfig,
    /// Held-out prompts the guard evaluates on, and prompts (disjoint from both) for the final
    /// win rate.
    pub guard_prompts: usize,
    pub test_prompts: usize,
    pub win_samples: usize,
}

/// What an RLHF run did.
#[derive(Clone, Debug, Serialize)]
pub struct RlhfSummary {
    pub rl: RlSummary,
    pub fired: Option<String>,
    pub best_step: Option<u64>,
    pub best_ckpt: PathBuf,
    pub judge_start: Option<f64>,
    pub judge_best: Option<f64>,
    pub rm_start: Option<f64>,
    pub rm_last: Option<f64>,
    /// Judge win rate of the best checkpoint over the SFT policy on unseen prompts.
    pub win_rate: Option<WinRate>,
    /// The same for the last policy (where the guard stopped the run, or the last step).
    pub win_rate_last: Option<WinRate>,
}

fn recorded_tokenizer(ck_train: &Value) -> Option<String> {
    ck_train["config"]["tokenizer"].as_str().map(str::to_string)
}

/// Whether two tokenizers are the same (names, or else vocabularies and special tokens).
fn same_tokenizer(a: &kiln_tokenizer::Tokenizer, b: &kiln_tokenizer::Tokenizer) -> bool {
    a.vocab_size() == b.vocab_size()
        && a.special_tokens() == b.special_tokens()
        && a.ranks() == b.ranks()
}

/// Split prompts three ways by a hash of their text: (train, guard, test).
pub fn split_prompts(prompts: &[String]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut tr, mut g, mut te) = (Vec::new(), Vec::new(), Vec::new());
    for p in prompts {
        if is_held_out(p, 0.2) {
            te.push(p.clone());
        } else if is_held_out(&format!("guard:{p}"), 0.2) {
            g.push(p.clone());
        } else {
            tr.push(p.clone());
        }
    }
    (tr, g, te)
}

/// Load the policy's and reward model's tokenizers (they must agree), render the prompts, run the
/// RL loop against the reward model with the guard, then measure the win rate.
pub fn run_job(job: &RlhfJob, spec: &DeviceSpec) -> Result<RlhfSummary, TrainError> {
    let pdir = resolve_checkpoint(&job.policy)?;
    let tok_name = match &job.tokenizer {
        Some(t) => t.clone(),
        None => recorded_tokenizer(&load_checkpoint(&pdir)?.train).ok_or_else(|| {
            TrainError::Config(format!(
                "{}: the run recorded no tokenizer; pass --tokenizer",
                pdir.display()
            ))
        })?,
    };
    let tok = Arc::new(kiln_tokenizer::Tokenizer::load_named(&tok_name)?);
    let (rm, rm_tok) = load_reward_model(&job.rm, job.train.threads, 1)?;
    let rm_tok = rm_tok.ok_or_else(|| {
        TrainError::Config(format!(
            "{}: the reward model recorded no tokenizer",
            job.rm.display()
        ))
    })?;
    if rm_tok != tok_name {
        let other = kiln_tokenizer::Tokenizer::load_named(&rm_tok)?;
        if !same_tokenizer(&tok, &other) {
            return Err(TrainError::Config(format!(
                "the reward model {} uses tokenizer {rm_tok} but the policy {} uses {tok_name}: they differ, so the reward model cannot read the policy's tokens (train the reward model from the policy's run)",
                job.rm.display(),
                job.policy.display()
            )));
        }
    }
    let tokens = kiln_chat::load::chat_tokens(&tok, &format!("policy {}", job.policy.display()))?;
    let prompts = match &job.prompts {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| TrainError::io(p, e))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        None => prompt_set(),
    };
    let (train_p, mut guard_p, mut test_p) = split_prompts(&prompts);
    guard_p.truncate(job.guard_prompts);
    test_p.truncate(job.test_prompts);
    if train_p.is_empty() || guard_p.is_empty() {
        return Err(TrainError::Data(format!(
            "{} prompts split into {} for training and {} for the guard; both need at least one (give more prompts)",
            prompts.len(),
            train_p.len(),
            guard_p.len()
        )));
    }
    let rm = Arc::new(Mutex::new(rm));
    let person = SimulatedPerson::default();
    let item = |p: &String| -> Result<(RlItem, GuardItem), TrainError> {
        let ids = render_prompt(p, tok.as_ref(), &tokens)?;
        let (rm, pi) = (rm.clone(), ids.clone());
        let score: Scorer = Arc::new(move |resp: &[u32]| {
            // A failure here becomes a NaN reward, which the RL loop reports as an error.
            let r = match rm.lock() {
                Ok(mut m) => m.score(&[render_pair(&pi, resp, &tokens)]).map(|r| r[0]),
                Err(_) => Err(TrainError::Config(
                    "the reward model panicked earlier".into(),
                )),
            };
            let r = r.unwrap_or_else(|e| {
                tracing::error!("reward model: {e}");
                f32::NAN
            });
            Score {
                correct: false,
                formatted: false,
                reward: r,
            }
        });
        let (tk, text, person) = (tok.clone(), p.clone(), person.clone());
        let judge: Judge =
            Arc::new(move |resp: &[u32]| person.utility(&text, &tk.decode_text(resp)));
        Ok((
            RlItem {
                prompt: ids.clone(),
                score: score.clone(),
            },
            GuardItem {
                text: p.clone(),
                prompt: ids,
                rm: score,
                judge,
            },
        ))
    };
    let train: Vec<RlItem> = train_p
        .iter()
        .map(|p| item(p).map(|x| x.0))
        .collect::<Result<_, _>>()?;
    let guard: Vec<GuardItem> = guard_p
        .iter()
        .map(|p| item(p).map(|x| x.1))
        .collect::<Result<_, _>>()?;
    let test: Vec<GuardItem> = test_p
        .iter()
        .map(|p| item(p).map(|x| x.1))
        .collect::<Result<_, _>>()?;
    let data = RlData {
        train,
        held_out: Vec::new(),
        stop: tokens.stop_ids(),
        tools: None,
    };
    std::fs::create_dir_all(&job.out).map_err(|e| TrainError::io(&job.out, e))?;
    let tok_abs = match std::fs::canonicalize(&tok_name) {
        Ok(p) => p.display().to_string(),
        Err(_) => tok_name.clone(),
    };
    let cfg = RlConfig {
        task: "rlhf".into(),
        tokenizer: Some(tok_abs.clone()),
        eval_problems: 0,
        ..job.train.clone()
    };
    let tk = tok.clone();
    let mut g = Guard::new(
        job.guard.clone(),
        guard,
        data.stop.clone(),
        cfg.max_new,
        cfg.temperature,
        Arc::new(move |ids: &[u32]| tk.decode_text(ids)),
        &job.out,
        json!({"config": {"tokenizer": tok_abs}, "rm": job.rm, "policy": job.policy}),
    );
    let rl = rl_on_hooked(
        spec,
        &cfg,
        &job.policy,
        &data,
        &job.out,
        false,
        job.progress,
        &mut g,
    )?;
    let (win_rate, win_rate_last) = if test.is_empty() || job.win_samples == 0 {
        (None, None)
    } else {
        let be = Arc::new(CpuBackend::new(cfg.threads));
        let load = |dir: &Path| -> Result<Model<CpuBackend>, TrainError> {
            Ok(load_checkpoint(dir)?.into_model(be.clone())?)
        };
        let sft = load(&pdir)?;
        let vs_sft = |m: &Model<CpuBackend>| {
            win_rate(
                m,
                &sft,
                &test,
                job.win_samples,
                cfg.max_new,
                cfg.temperature,
                &data.stop,
                cfg.seed,
            )
        };
        (
            Some(vs_sft(&load(&g.best_dir())?)?),
            Some(vs_sft(&load(&rl.last_ckpt)?)?),
        )
    };
    let best = g.best.map(|b| &g.evals[b]);
    let s = RlhfSummary {
        fired: g.fired.clone(),
        best_step: best.map(|b| b.step),
        best_ckpt: g.best_dir(),
        judge_start: g.evals.first().map(|e| e.judge),
        judge_best: best.map(|b| b.judge),
        rm_start: g.evals.first().map(|e| e.rm),
        rm_last: g.evals.last().map(|e| e.rm),
        win_rate,
        win_rate_last,
        rl,
    };
    write_json(&job.out.join("summary.json"), &s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::loss::LossKind;
    use crate::rl::rl_hooked;
    use kiln_engine::ModelConfig;

    const TARGET: u32 = b'A' as u32;
    const END: u32 = 300;

    fn hits(ids: &[u32]) -> usize {
        ids.iter().filter(|&&t| t == TARGET).count()
    }

    /// A deliberately exploitable reward model: it pays for every `TARGET`, so repeating it is
    /// the best answer. The judge likes one `TARGET` and dislikes each repeat.
    fn toy(dir: &Path) -> (PathBuf, RlData, Vec<GuardItem>) {
        let base = dir.join("base");
        let be = Arc::new(CpuBackend::new(1));
        let model = Model::new(be, ModelConfig::gpt2(301, 1, 2, 32, 32), 3).unwrap();
        save_checkpoint(&base, &model, None, &json!({"step": 0})).unwrap();
        let rm: Scorer = Arc::new(|ids: &[u32]| Score {
            correct: false,
            formatted: false,
            reward: hits(ids) as f32 / ids.len().max(1) as f32,
        });
        let judge: Judge = Arc::new(|ids: &[u32]| {
            let h = hits(ids) as f64;
            h.min(1.0) - 0.6 * (h - 1.0).max(0.0)
        });
        let item = |p: &[u32]| RlItem {
            prompt: p.to_vec(),
            score: rm.clone(),
        };
        let data = RlData {
            train: vec![item(&[256, 104, 105, 257]), item(&[256, 111, 107, 257])],
            held_out: Vec::new(),
            stop: vec![END],
            tools: None,
        };
        let guard = vec![GuardItem {
            text: "yo".into(),
            prompt: vec![256, 121, 111, 257],
            rm,
            judge,
        }];
        (base, data, guard)
    }

    fn cfg(steps: usize) -> RlConfig {
        let mut c = RlConfig {
            steps,
            prompts_per_step: 2,
            group: 8,
            max_new: 4,
            eval_every: 0,
            eval_problems: 0,
            ckpt_every: 0,
            threads: 1,
            micro_batch: 16,
            ..Default::default()
        };
        c.loss.max_new = 4;
        c.loss.kind = LossKind::Dapo;
        c.optim.lr = 1e-2;
        c
    }

    fn guard(dir: &Path, items: Vec<GuardItem>, gc: GuardConfig) -> Guard {
        Guard::new(
            gc,
            items,
            vec![END],
            4,
            1.0,
            Arc::new(|ids: &[u32]| format!("{ids:?}")),
            dir,
            json!({}),
        )
    }

    #[test]
    fn a_gamed_reward_model_trips_the_guard_and_the_earlier_checkpoint_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (base, data, items) = toy(dir.path());
        let out = dir.path().join("rlhf");
        let gc = GuardConfig {
            eval_every: 2,
            samples: 16,
            patience: 2,
            min_gap: 0.0,
            z: 0.0,
            kl_budget: None,
        };
        let mut g = guard(&out, items, gc);
        let be = Arc::new(CpuBackend::new(1));
        let s = rl_hooked(be, &cfg(80), &base, &data, &out, false, false, &mut g).unwrap();
        let why = s.stopped.clone().expect("the guard fires");
        assert!(why.contains("reward model's score rose"), "{why}");
        assert!(s.step < 80, "stopped early: {s:?}");
        let best = &g.evals[g.best.unwrap()];
        let last = g.evals.last().unwrap();
        eprintln!(
            "guard fired at step {}: best step {} (rm {:.3}, judge {:.3}); last rm {:.3}, judge {:.3}",
            s.step, best.step, best.rm, best.judge, last.rm, last.judge
        );
        assert!(best.step < last.step);
        assert!(last.rm > best.rm && last.judge < best.judge);
        // The kept checkpoint is the best one by the judge, not the last.
        let ck = load_checkpoint(&g.best_dir()).unwrap();
        assert_eq!(ck.train["kind"], "rlhf-best");
        assert_eq!(ck.train["step"].as_u64(), Some(best.step));
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("rlhf.json")).unwrap()).unwrap();
        assert_eq!(report["best_step"].as_u64(), Some(best.step));
        assert!(report["samples"]["best"].is_string());
        assert!(std::fs::read_to_string(out.join("rlhf.svg"))
            .unwrap()
            .contains("held-out judge"));
    }

    #[test]
    fn the_kl_budget_stops_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let (base, data, items) = toy(dir.path());
        let out = dir.path().join("rlhf");
        let gc = GuardConfig {
            eval_every: 100,
            samples: 2,
            kl_budget: Some(1e-3),
            ..Default::default()
        };
        let mut g = guard(&out, items, gc);
        let mut c = cfg(60);
        c.loss.kl = 0.01;
        let be = Arc::new(CpuBackend::new(1));
        let s = rl_hooked(be, &c, &base, &data, &out, false, false, &mut g).unwrap();
        let why = s.stopped.expect("KL passes the budget");
        assert!(why.contains("KL"), "{why}");
        assert!(s.step < 60);
        // The starting policy was evaluated and kept as the best so far.
        assert_eq!(
            load_checkpoint(&g.best_dir()).unwrap().train["step"].as_u64(),
            Some(0)
        );
    }
}
