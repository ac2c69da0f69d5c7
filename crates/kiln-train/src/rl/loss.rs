//! The GRPO-family policy-gradient loss, as per-token weights for the engine's weighted
//! cross-entropy.
//!
//! For a response token with log-prob `lp` under the policy being trained, `old` under the policy
//! that sampled it and `ref` under the frozen reference, ratio `r = exp(lp - old)` and the group-
//! relative advantage `A` of its sequence, the per-token loss is
//!
//! ```text
//! l = -min(r·A, clip(r, 1-ε, 1+ε)·A) + β·k3,   k3 = exp(ref - lp) - (ref - lp) - 1
//! ```
//!
//! and the batch loss is `Σ f_t · l_t` with the normalisation `f_t` of [`LossKind`].
//!
//! The engine's loss is `Σ w_t · CE_t` with `CE_t = -lp_t`, whose gradient with respect to the
//! logits is `Σ w_t · (softmax - onehot)`. The RL loss depends on the logits only through `lp_t`, so
//! its gradient is `Σ (dL/dlp_t) · (onehot - softmax)`: the same as the engine's with
//! `w_t = -dL/dlp_t`. The clipped ratio cannot be written as a cross-entropy, but its gradient with
//! respect to `lp` is a per-token coefficient, so [`pg_loss`] returns those coefficients as the
//! weights. `dL/dlp_t = f_t · (-A·r·[unclipped term is the min] + β·(1 - exp(ref - lp)))`.
//! The PyTorch fixture test (`tests/rl_loss.rs`, `scripts/rl_loss_fixture.py`) checks that the
//! engine's cross-entropy with these weights gives autograd's gradient of `l`.

use serde::{Deserialize, Serialize};

/// How per-token losses are averaged into the batch loss (the GRPO family differs only here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// GRPO: mean over each sequence's tokens, then mean over sequences (long responses count
    /// less per token — the length bias Dr. GRPO points out).
    Grpo,
    /// Dr. GRPO: sum over tokens divided by `sequences × max_new` (a constant), and advantages not
    /// scaled by the group's std.
    DrGrpo,
    /// DAPO: token-level mean over all response tokens in the batch.
    Dapo,
}

impl LossKind {
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Grpo => "grpo",
            LossKind::DrGrpo => "dr-grpo",
            LossKind::Dapo => "dapo",
        }
    }

    /// Whether advantages are divided by the group's std by default (Dr. GRPO drops it).
    pub fn default_std_scale(self) -> bool {
        self != LossKind::DrGrpo
    }
}

/// The loss settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    pub kind: LossKind,
    /// ε of the clipped ratio.
    pub clip: f32,
    /// β of the k3 KL penalty to the reference (0 = no reference model).
    pub kl: f32,
    /// Response-length budget (Dr. GRPO's constant normaliser).
    pub max_new: usize,
}

/// Group-relative advantages: each reward minus its group's mean, divided by the group's std
/// (unbiased, + 1e-4, as TRL) when `std_scale`. `rewards` holds whole groups of `group`.
pub fn group_advantages(rewards: &[f32], group: usize, std_scale: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group) {
        let n = g.len() as f64;
        let mean = g.iter().map(|&r| r as f64).sum::<f64>() / n;
        let var = g.iter().map(|&r| (r as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        let div = if std_scale { var.sqrt() + 1e-4 } else { 1.0 };
        out.extend(g.iter().map(|&r| ((r as f64 - mean) / div) as f32));
    }
    out
}

/// One batch of responses for the loss: tokens of all sequences concatenated (`lens[s]` each).
pub struct PgBatch<'a> {
    /// Log-probs of the response tokens under the policy being trained.
    pub logp: &'a [f32],
    /// Under the policy that sampled them (`None`: the same policy, ratio 1 — the first update on
    /// a fresh batch).
    pub old_logp: Option<&'a [f32]>,
    /// Under the frozen reference (needed when `kl > 0`).
    pub ref_logp: Option<&'a [f32]>,
    /// Advantage per sequence.
    pub adv: &'a [f32],
    /// Response tokens per sequence.
    pub lens: &'a [usize],
    /// Per response token, whether the policy sampled it (`None`: all did). Tool outputs the
    /// rollout forced into a response are `false`: no loss, no weight, not counted by the
    /// normalisations.
    pub sampled: Option<&'a [bool]>,
}

/// The loss and what the engine needs to back-propagate it.
#[derive(Clone, Debug)]
pub struct PgLoss {
    pub loss: f64,
    /// Per-token engine weights `-dL/dlp` (same order as `logp`).
    pub weights: Vec<f32>,
    /// Mean k3 per response token (0 without a reference).
    pub kl: f64,
    /// Fraction of tokens whose clipped term was the min (no gradient from the ratio).
    pub clip_frac: f64,
}

/// The loss, its per-token weights, KL and clip fraction (module docs give the formulas).
pub fn pg_loss(b: &PgBatch, cfg: &LossConfig) -> PgLoss {
    let total: usize = b.lens.iter().sum();
    assert_eq!(b.logp.len(), total, "logp covers every response token");
    assert_eq!(b.adv.len(), b.lens.len(), "one advantage per sequence");
    let sampled = |t: usize| b.sampled.is_none_or(|m| m[t]);
    if let Some(m) = b.sampled {
        assert_eq!(
            m.len(),
            total,
            "the sampled mask covers every response token"
        );
    }
    // Tokens the loss counts, in all and per sequence.
    let n = (0..total).filter(|&t| sampled(t)).count();
    let seqs = b.lens.len().max(1) as f64;
    let (lo, hi) = (1.0 - cfg.clip as f64, 1.0 + cfg.clip as f64);
    let beta = cfg.kl as f64;
    let mut weights = vec![0f32; total];
    let (mut loss, mut kl, mut clipped) = (0f64, 0f64, 0usize);
    let mut t = 0;
    for (s, &len) in b.lens.iter().enumerate() {
        let own = (t..t + len).filter(|&i| sampled(i)).count();
        let f = match cfg.kind {
            LossKind::Grpo => 1.0 / (seqs * own.max(1) as f64),
            LossKind::DrGrpo => 1.0 / (seqs * cfg.max_new.max(1) as f64),
            LossKind::Dapo => 1.0 / n.max(1) as f64,
        };
        let a = b.adv[s] as f64;
        for _ in 0..len {
            if !sampled(t) {
                t += 1;
                continue;
            }
            let lp = b.logp[t] as f64;
            let old = b.old_logp.map_or(lp, |o| o[t] as f64);
            let r = (lp - old).exp();
            let (un, cl) = (r * a, r.clamp(lo, hi) * a);
            // The unclipped term carries the gradient when it is the min (ties included: there the
            // clip is inactive or both terms agree).
            let (surr, dsurr) = if un <= cl {
                (un, a * r)
            } else {
                clipped += 1;
                (cl, 0.0)
            };
            let mut l = -surr;
            let mut dl = -dsurr;
            if beta > 0.0 {
                let d = b.ref_logp.map_or(lp, |x| x[t] as f64) - lp;
                let k3 = d.exp() - d - 1.0;
                kl += k3;
                l += beta * k3;
                dl += beta * (1.0 - d.exp());
            }
            loss += f * l;
            weights[t] = (-f * dl) as f32;
            t += 1;
        }
    }
    PgLoss {
        loss,
        weights,
        kl: kl / n.max(1) as f64,
        clip_frac: clipped as f64 / n.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_are_centred_per_group_and_optionally_scaled() {
        let a = group_advantages(&[1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0], 4, false);
        assert_eq!(a, vec![0.5, -0.5, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0]);
        let s = group_advantages(&[1.0, 0.0], 2, true);
        // unbiased std of {1, 0} is 1/√2
        assert!((s[0] - 0.5 / (0.5f32.sqrt() + 1e-4)).abs() < 1e-5, "{s:?}");
    }

    #[test]
    fn on_policy_weights_are_the_advantage_times_the_normaliser() {
        let lp = [-1.0, -2.0, -0.5];
        let b = PgBatch {
            logp: &lp,
            old_logp: None,
            ref_logp: None,
            adv: &[2.0, -1.0],
            lens: &[2, 1],
            sampled: None,
        };
        let cfg = LossConfig {
            kind: LossKind::Dapo,
            clip: 0.2,
            kl: 0.0,
            max_new: 4,
        };
        let l = pg_loss(&b, &cfg);
        // ratio 1: w = A / n_tokens; a positive advantage raises the sampled token's log-prob
        assert_eq!(l.weights, vec![2.0 / 3.0, 2.0 / 3.0, -1.0 / 3.0]);
        assert!((l.loss - (-(2.0 + 2.0 - 1.0) / 3.0)).abs() < 1e-12);
        assert_eq!(l.clip_frac, 0.0);
    }

    /// Forced tokens (tool outputs) get no weight and leave every normalisation as if the
    /// response were only its sampled tokens.
    #[test]
    fn forced_tokens_are_left_out_of_the_loss_and_its_normalisations() {
        let cfg = |kind| LossConfig {
            kind,
            clip: 0.2,
            kl: 0.1,
            max_new: 4,
        };
        let (lp, rf) = ([-1.0, -9.0, -2.0, -0.5], [-1.5, -0.1, -2.5, -0.7]);
        let masked = PgBatch {
            logp: &lp,
            old_logp: None,
            ref_logp: Some(&rf),
            adv: &[2.0, -1.0],
            lens: &[3, 1],
            sampled: Some(&[true, false, true, true]),
        };
        let (lp2, rf2) = ([-1.0, -2.0, -0.5], [-1.5, -2.5, -0.7]);
        let plain = PgBatch {
            logp: &lp2,
            old_logp: None,
            ref_logp: Some(&rf2),
            adv: &[2.0, -1.0],
            lens: &[2, 1],
            sampled: None,
        };
        for kind in [LossKind::Grpo, LossKind::DrGrpo, LossKind::Dapo] {
            let (m, p) = (pg_loss(&masked, &cfg(kind)), pg_loss(&plain, &cfg(kind)));
            assert_eq!(m.weights[1], 0.0, "{kind:?}");
            let kept = [m.weights[0], m.weights[2], m.weights[3]];
            assert_eq!(kept.to_vec(), p.weights, "{kind:?}");
            assert!((m.loss - p.loss).abs() < 1e-12 && (m.kl - p.kl).abs() < 1e-12);
        }
    }
}
