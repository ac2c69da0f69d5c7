//! The reward model: the transformer trunk of a kiln checkpoint plus a scalar head on the last
//! token (`r = w · h_last + b`, `h_last` the final-norm hidden state), trained with the
//! Bradley–Terry loss over every pair an ordering implies (InstructGPT scores all K samples of a
//! prompt once and uses all K(K-1)/2 pairs).
//!
//! The engine's LM-head cross-entropy cannot give this loss's gradient, so the head lives here on
//! the host (C + 1 floats) and talks to the engine through [`Trainer::forward_hidden`] /
//! [`Trainer::backward_hidden`]: read the hidden states, compute rewards and `dL/dr`, send
//! `dL/dh = dL/dr · w` at each row's last token back through the trunk. The PyTorch fixture test
//! (`tests/rm_bt.rs`, `scripts/rm_fixture.py`) checks rewards, loss and every gradient.
//!
//! Submodules: [`prefs`] (the preference file), [`person`] (the scripted labeller, a simulator of
//! a person), [`label`] (the labelling UI's state, testable without a terminal).

pub mod label;
pub mod person;
pub mod prefs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kiln_chat::format::{render_for_completion, ChatTokens, Codec, Conversation, Message};
use kiln_engine::{
    load_checkpoint, resolve_checkpoint, Backend, CpuBackend, Model, OptimizerConfig, Rng, Trainer,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::checkpoint::save_step;
use crate::device::{with_backend, DeviceSpec, OnBackend, TrainBackend};
use crate::error::TrainError;
use crate::metrics::MetricsLog;
use crate::plot::{write_svg, Series};
use prefs::Ordering;

/// The Bradley–Terry loss `Σ_pairs -log σ(r_better - r_worse) / norm` and its gradient w.r.t.
/// each reward.
pub fn bt_loss(rewards: &[f32], pairs: &[(usize, usize)], norm: f64) -> (f64, Vec<f32>) {
    let mut d = vec![0f64; rewards.len()];
    let mut loss = 0f64;
    for &(a, z) in pairs {
        let x = rewards[a] as f64 - rewards[z] as f64;
        // -log σ(x) = softplus(-x), written so neither branch overflows
        loss += (-x).max(0.0) + (-x.abs()).exp().ln_1p();
        let s = 1.0 / (1.0 + x.exp()); // σ(-x) = -dL/dx
        d[a] -= s / norm;
        d[z] += s / norm;
    }
    (loss / norm, d.into_iter().map(|x| x as f32).collect())
}

/// Pairwise accuracy: the share of pairs whose better sample scores higher (ties count half).
pub fn pair_accuracy(rewards: &[f32], pairs: &[(usize, usize)]) -> f64 {
    let hit: f64 = pairs
        .iter()
        .map(|&(a, z)| match rewards[a].partial_cmp(&rewards[z]) {
            Some(std::cmp::Ordering::Greater) => 1.0,
            Some(std::cmp::Ordering::Equal) => 0.5,
            _ => 0.0,
        })
        .sum();
    hit / pairs.len().max(1) as f64
}

/// The scalar head and its AdamW moments (host side; `C + 1` floats, bias last).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Head {
    pub weight: Vec<f32>,
    pub bias: f32,
    #[serde(default)]
    m: Vec<f32>,
    #[serde(default)]
    v: Vec<f32>,
    #[serde(default)]
    step: u64,
}

impl Head {
    fn new(c: usize, seed: u64) -> Head {
        let mut rng = Rng::new(seed ^ 0x4EAD);
        let std = 1.0 / (c as f64).sqrt();
        Head {
            weight: (0..c).map(|_| (rng.normal() * std) as f32).collect(),
            bias: 0.0,
            m: vec![0.0; c + 1],
            v: vec![0.0; c + 1],
            step: 0,
        }
    }

    /// AdamW on `[w, b]` with the trunk's settings (decay on the weight only).
    fn adamw(&mut self, g: &[f32], cfg: &OptimizerConfig) {
        let n = self.weight.len();
        if self.m.len() != n + 1 {
            self.m = vec![0.0; n + 1];
            self.v = vec![0.0; n + 1];
        }
        self.step += 1;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let c1 = 1.0 - b1.powi(self.step as i32);
        let c2 = 1.0 - b2.powi(self.step as i32);
        for (i, &gi) in g.iter().enumerate().take(n + 1) {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * gi;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * gi * gi;
            let upd = cfg.lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + cfg.eps);
            if i < n {
                self.weight[i] -= upd + cfg.lr * cfg.weight_decay * self.weight[i];
            } else {
                self.bias -= upd;
            }
        }
    }
}

/// A reward model on a backend: a [`Trainer`] for `rows × t` token rows and the scalar head.
pub struct RewardModel<B: Backend> {
    pub tr: Trainer<B>,
    pub head: Head,
    /// Head gradient `[dw, db]`, accumulated like the trunk's.
    head_grad: Vec<f32>,
    x: Vec<u32>,
}

impl<B: Backend> RewardModel<B> {
    /// Wrap a trunk (any kiln model; its LM head is ignored) with `head` (`None`: a fresh one).
    pub fn new(
        model: Model<B>,
        rows: usize,
        t: usize,
        optim: OptimizerConfig,
        head: Option<Head>,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let c = model.cfg.n_embd;
        let head = head.unwrap_or_else(|| Head::new(c, seed));
        if head.weight.len() != c {
            return Err(TrainError::Config(format!(
                "reward head has {} weights but the trunk's width is {c}",
                head.weight.len()
            )));
        }
        let tr = Trainer::new(model, rows, t, optim)?;
        Ok(RewardModel {
            head_grad: vec![0.0; c + 1],
            x: vec![0; rows * t],
            tr,
            head,
        })
    }

    /// Rows per forward.
    pub fn rows(&self) -> usize {
        self.tr.b
    }

    /// Tokens per row; longer rows keep their last `t` tokens (the scored token is the last).
    pub fn t(&self) -> usize {
        self.tr.t
    }

    /// Forward `rows` (at most [`RewardModel::rows`]); returns the hidden states and, per row,
    /// the index of its last token.
    fn forward(&mut self, rows: &[Vec<u32>]) -> Result<(Vec<f32>, Vec<usize>), TrainError> {
        let (b, t) = (self.tr.b, self.tr.t);
        assert!(rows.len() <= b, "{} rows for a batch of {b}", rows.len());
        self.x.fill(0);
        let mut last = Vec::with_capacity(rows.len());
        for (r, ids) in rows.iter().enumerate() {
            if ids.is_empty() {
                return Err(TrainError::Data("an empty sequence has no reward".into()));
            }
            let ids = &ids[ids.len().saturating_sub(t)..];
            self.x[r * t..r * t + ids.len()].copy_from_slice(ids);
            last.push(r * t + ids.len() - 1);
        }
        let h = self.tr.forward_hidden(&self.x)?;
        Ok((h, last))
    }

    fn rewards_of(&self, h: &[f32], last: &[usize]) -> Vec<f32> {
        let c = self.head.weight.len();
        last.iter()
            .map(|&p| {
                let hp = &h[p * c..(p + 1) * c];
                hp.iter()
                    .zip(&self.head.weight)
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    + self.head.bias
            })
            .collect()
    }

    /// Rewards of token sequences (any number; batched by [`RewardModel::rows`]).
    pub fn score(&mut self, seqs: &[Vec<u32>]) -> Result<Vec<f32>, TrainError> {
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(self.tr.b) {
            let (h, last) = self.forward(chunk)?;
            out.extend(self.rewards_of(&h, &last));
        }
        Ok(out)
    }

    /// Forward + backward of the Bradley–Terry loss over `pairs` of `rows` (indices into `rows`),
    /// divided by `norm`; gradients are *added* (trunk and head). Returns the loss and the rewards.
    pub fn accumulate(
        &mut self,
        rows: &[Vec<u32>],
        pairs: &[(usize, usize)],
        norm: f64,
    ) -> Result<(f64, Vec<f32>), TrainError> {
        let (h, last) = self.forward(rows)?;
        let r = self.rewards_of(&h, &last);
        let (loss, dr) = bt_loss(&r, pairs, norm);
        let c = self.head.weight.len();
        let mut dh = vec![0f32; h.len()];
        for (i, &p) in last.iter().enumerate() {
            let hp = &h[p * c..(p + 1) * c];
            for k in 0..c {
                dh[p * c + k] = dr[i] * self.head.weight[k];
                self.head_grad[k] += dr[i] * hp[k];
            }
            self.head_grad[c] += dr[i];
        }
        self.tr.backward_hidden(&self.x, &dh)?;
        Ok((loss, r))
    }

    pub fn zero_grad(&mut self) {
        self.tr.zero_grad();
        self.head_grad.fill(0.0);
    }

    /// Head gradient `[dw.., db]` (for tests).
    pub fn head_grad(&self) -> &[f32] {
        &self.head_grad
    }

    /// Clip (trunk and head together) and step both optimizers; returns the gradient norm.
    pub fn step(&mut self) -> f32 {
        let trunk = self.tr.clip_grad(None);
        let head2: f32 = self.head_grad.iter().map(|g| g * g).sum();
        let norm = (trunk * trunk + head2).sqrt();
        if let Some(mx) = self.tr.opt.cfg.grad_clip {
            if norm > mx && norm.is_finite() {
                let s = mx / (norm + 1e-6);
                self.tr.clip_grad(Some(trunk * s));
                self.head_grad.iter_mut().for_each(|g| *g *= s);
            }
        }
        if norm.is_finite() {
            self.tr.optimizer_step(1.0);
            let cfg = self.tr.opt.cfg.clone();
            let g = self.head_grad.clone();
            self.head.adamw(&g, &cfg);
        }
        norm
    }
}

/// One labelled prompt as token rows (prompt + sample + `<|assistant_end|>`), and its pairs.
#[derive(Clone, Debug)]
pub struct RmItem {
    pub rows: Vec<Vec<u32>>,
    pub pairs: Vec<(usize, usize)>,
}

/// The prompt rendered as a chat prompt (ending at `<|assistant_start|>`).
pub fn render_prompt(
    prompt: &str,
    codec: &dyn Codec,
    tokens: &ChatTokens,
) -> Result<Vec<u32>, TrainError> {
    let conv = Conversation::new(vec![Message::user(prompt.to_string())]);
    render_for_completion(&conv, codec, tokens).map_err(|e| TrainError::Data(e.to_string()))
}

/// A prompt and a response as the reward model reads them: the chat prompt, the response's
/// tokens, `<|assistant_end|>` (the scored token).
pub fn render_pair(prompt: &[u32], response: &[u32], tokens: &ChatTokens) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    ids.extend_from_slice(response);
    ids.push(tokens.assistant_end);
    ids
}

/// Render orderings for the reward model.
pub fn render_orderings(
    orderings: &[Ordering],
    codec: &dyn Codec,
    tokens: &ChatTokens,
) -> Result<Vec<RmItem>, TrainError> {
    orderings
        .iter()
        .map(|o| {
            let p = render_prompt(&o.prompt, codec, tokens)?;
            Ok(RmItem {
                rows: o
                    .samples
                    .iter()
                    .map(|s| render_pair(&p, &codec.encode_text(s), tokens))
                    .collect(),
                pairs: o.pairs(),
            })
        })
        .collect()
}

/// Whether a prompt is held out (about `frac` of prompts, by a hash of the text, so every
/// ordering of one prompt lands on the same side and the split does not depend on file order).
pub fn is_held_out(prompt: &str, frac: f64) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    ((h >> 11) % 10_000) as f64 / 10_000.0 < frac
}

/// Everything that defines a reward-model run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RmConfig {
    pub steps: usize,
    /// Orderings per optimizer step.
    pub orderings_per_step: usize,
    /// Rows per forward (raised to the largest ordering; whole orderings per micro-batch).
    pub micro_batch: usize,
    pub optim: OptimizerConfig,
    pub eval_every: usize,
    pub ckpt_every: usize,
    pub seed: u64,
    pub threads: usize,
    /// Tokenizer recorded in the checkpoint (the policy's must match it).
    pub tokenizer: Option<String>,
}

impl Default for RmConfig {
    fn default() -> Self {
        RmConfig {
            steps: 150,
            orderings_per_step: 8,
            micro_batch: 16,
            optim: OptimizerConfig {
                lr: 1e-4,
                weight_decay: 0.0,
                grad_clip: Some(1.0),
                ..Default::default()
            },
            eval_every: 50,
            ckpt_every: 100,
            seed: 1,
            threads: 2,
            tokenizer: None,
        }
    }
}

/// What a reward-model run did.
#[derive(Clone, Debug, Serialize)]
pub struct RmSummary {
    pub step: u64,
    pub train_pairs: usize,
    pub held_out_pairs: usize,
    /// Held-out pairwise accuracy before training and at the end (`None`: no held-out pairs).
    pub acc_start: Option<f64>,
    pub acc: Option<f64>,
    /// Chance level of pairwise accuracy.
    pub chance: f64,
    pub train_loss_last: f64,
    pub seconds: f64,
    pub last_ckpt: PathBuf,
    /// When the held-out orderings came from the scripted labeller: the accuracy of its own
    /// noiseless utility on them, the best any reward model can expect (its noise flips pairs).
    pub sim_ceiling: Option<f64>,
}

fn accuracy<B: Backend>(rm: &mut RewardModel<B>, items: &[RmItem]) -> Result<f64, TrainError> {
    let (mut hit, mut n) = (0f64, 0usize);
    for it in items {
        let r = rm.score(&it.rows)?;
        hit += pair_accuracy(&r, &it.pairs) * it.pairs.len() as f64;
        n += it.pairs.len();
    }
    Ok(hit / n.max(1) as f64)
}

/// Train a reward model from the checkpoint `model` (its trunk) on `train`, evaluating held-out
/// pairwise accuracy on `held`, on the device `spec` names.
pub fn rm_train_on(
    spec: &DeviceSpec,
    cfg: &RmConfig,
    model: &Path,
    train: &[RmItem],
    held: &[RmItem],
    out: &Path,
) -> Result<RmSummary, TrainError> {
    struct Run<'a>(&'a RmConfig, &'a Path, &'a [RmItem], &'a [RmItem], &'a Path);
    impl OnBackend for Run<'_> {
        type Output = RmSummary;
        fn run<B: TrainBackend>(self, be: Arc<B>) -> Result<RmSummary, TrainError> {
            rm_train_with(be, self.0, self.1, self.2, self.3, self.4)
        }
    }
    with_backend(spec, cfg.threads, Run(cfg, model, train, held, out))
}

/// [`rm_train_on`] on a given backend.
pub fn rm_train_with<B: TrainBackend>(
    be: Arc<B>,
    cfg: &RmConfig,
    model_path: &Path,
    train: &[RmItem],
    held: &[RmItem],
    out: &Path,
) -> Result<RmSummary, TrainError> {
    if train.is_empty() {
        return Err(TrainError::Data("no training orderings".into()));
    }
    if cfg.steps == 0 || cfg.orderings_per_step == 0 || cfg.micro_batch == 0 {
        return Err(TrainError::Config(
            "steps, orderings per step and micro batch must be positive".into(),
        ));
    }
    let start = Instant::now();
    let base = resolve_checkpoint(model_path)?;
    let ck = load_checkpoint(&base)?;
    let longest = train
        .iter()
        .chain(held)
        .flat_map(|i| i.rows.iter().map(Vec::len))
        .max()
        .unwrap_or(1);
    let t = longest.min(ck.config.context);
    if longest > t {
        tracing::warn!(
            "the longest sample has {longest} tokens; the reward model reads the last {t} (the model's context)"
        );
    }
    if let Some(bad) = train
        .iter()
        .chain(held)
        .flat_map(|i| i.rows.iter().flatten())
        .find(|&&id| id as usize >= ck.config.vocab_size)
    {
        return Err(TrainError::Data(format!(
            "token id {bad} ≥ the model's vocabulary of {}: the tokenizer does not belong to this checkpoint",
            ck.config.vocab_size
        )));
    }
    let rows = cfg.micro_batch.max(
        train
            .iter()
            .chain(held)
            .map(|i| i.rows.len())
            .max()
            .unwrap_or(1),
    );
    let model: Model<B> = ck.into_model(be)?;
    let mut rm = RewardModel::new(model, rows, t, cfg.optim.clone(), None, cfg.seed)?;
    drop(ck);
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let root = out.join("ckpt");
    let mut metrics = MetricsLog::open(&out.join("metrics.jsonl"), None)?;
    let train_pairs: usize = train.iter().map(|i| i.pairs.len()).sum();
    let held_pairs: usize = held.iter().map(|i| i.pairs.len()).sum();
    metrics.write(&json!({"event": "start", "step": 0, "train_orderings": train.len(), "train_pairs": train_pairs,
        "held_out_orderings": held.len(), "held_out_pairs": held_pairs, "config": cfg}))?;
    let acc_start = if held.is_empty() {
        None
    } else {
        Some(accuracy(&mut rm, held)?)
    };
    if let Some(a) = acc_start {
        tracing::info!("reward model held-out pairwise accuracy before training: {a:.3} ({held_pairs} pairs, chance 0.5)");
        metrics.write(&json!({"event": "eval", "step": 0, "acc": a}))?;
    }
    let mut rng = Rng::new(cfg.seed);
    let mut perm: Vec<usize> = (0..train.len()).collect();
    let mut pos = perm.len();
    let (mut losses, mut accs) = (Vec::new(), Vec::new());
    if let Some(a) = acc_start {
        accs.push((0.0, a));
    }
    let (mut acc, mut last_loss) = (acc_start, f64::NAN);
    let mut last_ckpt = PathBuf::new();
    for step in 1..=cfg.steps as u64 {
        let mut batch = Vec::with_capacity(cfg.orderings_per_step);
        for _ in 0..cfg.orderings_per_step.min(train.len()) {
            if pos == perm.len() {
                rng.shuffle(&mut perm);
                pos = 0;
            }
            batch.push(&train[perm[pos]]);
            pos += 1;
        }
        let norm = batch.iter().map(|i| i.pairs.len()).sum::<usize>().max(1) as f64;
        rm.zero_grad();
        let (mut loss, mut hit) = (0f64, 0f64);
        // Whole orderings per micro-batch: one forward gives every reward a pair needs.
        let mut i = 0;
        while i < batch.len() {
            let (mut rows, mut pairs) = (Vec::new(), Vec::new());
            while i < batch.len() && rows.len() + batch[i].rows.len() <= rm.rows() {
                let o = rows.len();
                rows.extend(batch[i].rows.iter().cloned());
                pairs.extend(batch[i].pairs.iter().map(|&(a, z)| (a + o, z + o)));
                i += 1;
            }
            let (l, r) = rm.accumulate(&rows, &pairs, norm)?;
            loss += l;
            hit += pair_accuracy(&r, &pairs) * pairs.len() as f64;
        }
        let gn = rm.step();
        if !(loss.is_finite() && gn.is_finite()) {
            return Err(TrainError::NonFinite {
                what: "loss",
                step,
                loss: loss as f32,
                last_ckpt: last_ckpt.display().to_string(),
            });
        }
        last_loss = loss;
        losses.push((step as f64, loss));
        metrics.write(
            &json!({"step": step, "loss": loss, "train_acc": hit / norm, "grad_norm": gn,
            "elapsed_s": start.elapsed().as_secs_f64()}),
        )?;
        let last = step as usize == cfg.steps;
        if !held.is_empty()
            && (last || (cfg.eval_every > 0 && (step as usize).is_multiple_of(cfg.eval_every)))
        {
            let a = accuracy(&mut rm, held)?;
            tracing::info!("rm step {step}: loss {loss:.4}, held-out pairwise accuracy {a:.3}");
            metrics.write(&json!({"event": "eval", "step": step, "acc": a}))?;
            accs.push((step as f64, a));
            acc = Some(a);
        }
        if last || (cfg.ckpt_every > 0 && (step as usize).is_multiple_of(cfg.ckpt_every)) {
            let state = json!({"kind": "rm", "step": step, "head": rm.head, "held_out_acc": acc,
                "config": cfg, "base": base});
            last_ckpt = save_step(&root, step, &rm.tr, &state, 2)?;
            write_svg(
                &out.join("rm.svg"),
                &[
                    Series {
                        title: "Bradley–Terry loss",
                        points: &losses,
                    },
                    Series {
                        title: "held-out pairwise accuracy (chance 0.5)",
                        points: &accs,
                    },
                ],
            )?;
        }
    }
    Ok(RmSummary {
        step: cfg.steps as u64,
        train_pairs,
        held_out_pairs: held_pairs,
        acc_start,
        acc,
        chance: 0.5,
        train_loss_last: last_loss,
        seconds: start.elapsed().as_secs_f64(),
        last_ckpt,
        sim_ceiling: None,
    })
}

/// A trained reward model on the cpu, for scoring (`rows` per forward), and the tokenizer its
/// run recorded.
pub fn load_reward_model(
    path: &Path,
    threads: usize,
    rows: usize,
) -> Result<(RewardModel<CpuBackend>, Option<String>), TrainError> {
    let dir = resolve_checkpoint(path)?;
    let ck = load_checkpoint(&dir)?;
    if ck.train.get("kind").and_then(Value::as_str) != Some("rm") {
        return Err(TrainError::Config(format!(
            "{}: not a reward model (train it with `kiln rm train`)",
            dir.display()
        )));
    }
    let head: Head =
        serde_json::from_value(ck.train["head"].clone()).map_err(|source| TrainError::Json {
            path: dir.join("kiln.json").display().to_string(),
            source,
        })?;
    let tok = ck.train["config"]["tokenizer"].as_str().map(str::to_string);
    let t = ck.config.context;
    let model = ck.into_model(Arc::new(CpuBackend::new(threads)))?;
    let rm = RewardModel::new(model, rows, t, OptimizerConfig::default(), Some(head), 0)?;
    Ok((rm, tok))
}

/// A reward-model run as the CLI describes it.
#[derive(Clone, Debug)]
pub struct RmJob {
    /// The checkpoint whose trunk starts the reward model (usually the SFT policy's).
    pub model: PathBuf,
    /// Preference files (orderings or pairs).
    pub prefs: Vec<PathBuf>,
    pub out: PathBuf,
    /// Tokenizer folder or name; `None`: the one the model's run recorded.
    pub tokenizer: Option<String>,
    /// Share of prompts held out for the pairwise accuracy.
    pub held_out: f64,
    pub train: RmConfig,
}

/// The tokenizer a checkpoint's run recorded (or `given`), loaded, and its name.
pub fn checkpoint_tokenizer(
    model: &Path,
    given: Option<&str>,
) -> Result<(kiln_tokenizer::Tokenizer, String), TrainError> {
    let name = match given {
        Some(t) => t.to_string(),
        None => {
            let dir = resolve_checkpoint(model)?;
            load_checkpoint(&dir)?.train["config"]["tokenizer"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| {
                    TrainError::Config(format!(
                        "{}: the run recorded no tokenizer; pass --tokenizer",
                        dir.display()
                    ))
                })?
        }
    };
    let tok = kiln_tokenizer::Tokenizer::load_named(&name)?;
    let abs = std::fs::canonicalize(&name)
        .map(|p| p.display().to_string())
        .unwrap_or(name);
    Ok((tok, abs))
}

/// Read the preference files, split prompts into train and held out, train on `spec`.
pub fn run_job(job: &RmJob, spec: &DeviceSpec) -> Result<RmSummary, TrainError> {
    let (tok, tok_name) = checkpoint_tokenizer(&job.model, job.tokenizer.as_deref())?;
    let tokens = kiln_chat::load::chat_tokens(&tok, &format!("model {}", job.model.display()))?;
    let mut all = Vec::new();
    for p in &job.prefs {
        all.extend(prefs::read_prefs(p)?);
    }
    let (held, train): (Vec<Ordering>, Vec<Ordering>) = all
        .into_iter()
        .partition(|o| is_held_out(&o.prompt, job.held_out));
    tracing::info!(
        "{} orderings for training, {} held out (by prompt)",
        train.len(),
        held.len()
    );
    let ceiling = sim_ceiling(&held);
    let train = render_orderings(&train, &tok, &tokens)?;
    let held_items = render_orderings(&held, &tok, &tokens)?;
    let cfg = RmConfig {
        tokenizer: Some(tok_name),
        ..job.train.clone()
    };
    let mut s = rm_train_on(spec, &cfg, &job.model, &train, &held_items, &job.out)?;
    s.sim_ceiling = ceiling;
    Ok(s)
}

/// The scripted labeller's noiseless pairwise accuracy on its own orderings (`None` unless every
/// ordering is its own).
pub fn sim_ceiling(orderings: &[Ordering]) -> Option<f64> {
    if orderings.is_empty() || orderings.iter().any(|o| o.labeller != person::SIM_LABELLER) {
        return None;
    }
    let p = person::SimulatedPerson::default();
    let (mut hit, mut n) = (0.0, 0usize);
    for o in orderings {
        let u: Vec<f32> = o
            .samples
            .iter()
            .map(|s| p.utility(&o.prompt, s) as f32)
            .collect();
        hit += pair_accuracy(&u, &o.pairs()) * o.pairs().len() as f64;
        n += o.pairs().len();
    }
    Some(hit / n.max(1) as f64)
}

/// Score `responses` to `prompt` with the reward model at `rm` (its recorded tokenizer).
pub fn score_texts(
    rm: &Path,
    prompt: &str,
    responses: &[String],
    threads: usize,
) -> Result<Vec<f32>, TrainError> {
    let (mut m, tok) = load_reward_model(rm, threads, responses.len().clamp(1, 16))?;
    let tok = tok.ok_or_else(|| {
        TrainError::Config(format!(
            "{}: the reward model recorded no tokenizer",
            rm.display()
        ))
    })?;
    let tok = kiln_tokenizer::Tokenizer::load_named(&tok)?;
    let tokens = kiln_chat::load::chat_tokens(&tok, &format!("reward model {}", rm.display()))?;
    let p = render_prompt(prompt, &tok, &tokens)?;
    let rows: Vec<Vec<u32>> = responses
        .iter()
        .map(|r| render_pair(&p, &tok.encode_text(r), &tokens))
        .collect();
    m.score(&rows)
}

/// Pairwise accuracy of the reward model at `rm` on preference files, and the pair count.
pub fn score_prefs(
    rm: &Path,
    files: &[PathBuf],
    threads: usize,
) -> Result<(f64, usize), TrainError> {
    let (mut m, tok) = load_reward_model(rm, threads, 16)?;
    let tok = tok.ok_or_else(|| {
        TrainError::Config(format!(
            "{}: the reward model recorded no tokenizer",
            rm.display()
        ))
    })?;
    let tok = kiln_tokenizer::Tokenizer::load_named(&tok)?;
    let tokens = kiln_chat::load::chat_tokens(&tok, &format!("reward model {}", rm.display()))?;
    let mut all = Vec::new();
    for p in files {
        all.extend(prefs::read_prefs(p)?);
    }
    let items = render_orderings(&all, &tok, &tokens)?;
    let pairs = items.iter().map(|i| i.pairs.len()).sum();
    Ok((accuracy(&mut m, &items)?, pairs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_chat::format::testing::ByteCodec;
    use kiln_engine::{save_checkpoint, ModelConfig};
    use person::{synthetic_samples, SimulatedPerson};

    /// Scripted-labeller orderings of synthetic answers to `n` made-up prompts.
    fn sim_orderings(n: usize, seed: u64) -> Vec<Ordering> {
        let person = SimulatedPerson::default();
        let mut rng = Rng::new(seed);
        let topics = [
            "pelicans", "otters", "lanterns", "rivers", "castles", "tigers", "pianos",
        ];
        (0..n)
            .map(|i| {
                let p = format!("write a joke about {} number {i}", topics[i % topics.len()]);
                let s = synthetic_samples(&p, 4, &mut rng);
                person.order(&p, &s, &mut rng)
            })
            .collect()
    }

    #[test]
    fn a_tiny_reward_model_learns_the_simulated_persons_orderings() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let be = Arc::new(CpuBackend::new(1));
        let model = Model::new(be.clone(), ModelConfig::gpt2(265, 1, 2, 32, 160), 3).unwrap();
        save_checkpoint(&base, &model, None, &json!({"step": 0})).unwrap();
        let codec = ByteCodec {
            with_specials: true,
        };
        let tokens = ChatTokens::from_codec(&codec).unwrap();
        let all = sim_orderings(400, 5);
        let (held, train): (Vec<Ordering>, Vec<Ordering>) =
            all.into_iter().partition(|o| is_held_out(&o.prompt, 0.2));
        // The ceiling: the person's own noiseless utility against its noisy orderings.
        let person = SimulatedPerson::default();
        let (mut hit, mut n) = (0.0, 0);
        for o in &held {
            let u: Vec<f32> = o
                .samples
                .iter()
                .map(|s| person.utility(&o.prompt, s) as f32)
                .collect();
            hit += pair_accuracy(&u, &o.pairs()) * o.pairs().len() as f64;
            n += o.pairs().len();
        }
        let ceiling = hit / n as f64;
        let train = render_orderings(&train, &codec, &tokens).unwrap();
        let held = render_orderings(&held, &codec, &tokens).unwrap();
        let cfg = RmConfig {
            steps: 150,
            orderings_per_step: 8,
            micro_batch: 16,
            threads: 1,
            eval_every: 50,
            ckpt_every: 0,
            optim: OptimizerConfig {
                lr: 3e-3,
                weight_decay: 0.0,
                grad_clip: Some(1.0),
                ..Default::default()
            },
            ..Default::default()
        };
        let out = dir.path().join("rm");
        let s = rm_train_with(be, &cfg, &base, &train, &held, &out).unwrap();
        eprintln!("{s:?}");
        let (a0, a) = (s.acc_start.unwrap(), s.acc.unwrap());
        assert!(s.held_out_pairs > 100, "{s:?}");
        // 1 layer, width 32, 150 steps (seconds on one core): well above chance (0.5; one
        // standard error over these ~600 pairs is 0.02), below the ceiling.
        assert!(
            a > 0.6 && a > a0 + 0.05,
            "held-out pairwise accuracy {a0:.3} -> {a:.3} (ceiling {ceiling:.3})"
        );
        eprintln!("held-out pairwise accuracy {a0:.3} -> {a:.3}, chance 0.5, ceiling {ceiling:.3}");
        // The saved reward model scores as the trained one did.
        let (mut rm, _) = load_reward_model(&out, 1, 4).unwrap();
        let r = rm.score(&held[0].rows).unwrap();
        assert_eq!(r.len(), held[0].rows.len());
        assert!(std::fs::read_to_string(out.join("rm.svg"))
            .unwrap()
            .contains("pairwise"));
    }

    #[test]
    fn bt_gradient_matches_finite_differences() {
        let r = [0.3f32, -1.2, 2.0, 0.1];
        let pairs = [(2, 0), (2, 1), (0, 1), (1, 3)];
        let (l, d) = bt_loss(&r, &pairs, 4.0);
        for i in 0..4 {
            let mut p = r;
            p[i] += 1e-3;
            let (lp, _) = bt_loss(&p, &pairs, 4.0);
            p[i] -= 2e-3;
            let (lm, _) = bt_loss(&p, &pairs, 4.0);
            let fd = (lp - lm) / 2e-3;
            assert!((fd - d[i] as f64).abs() < 1e-4, "{i}: {fd} vs {}", d[i]);
        }
        assert!(l > 0.0);
        assert_eq!(pair_accuracy(&r, &pairs), 0.75);
        // Large margins neither overflow nor lose the loss.
        let (big, _) = bt_loss(&[0.0, 200.0], &[(0, 1)], 1.0);
        assert!((big - 200.0).abs() < 1e-9);
    }
}
