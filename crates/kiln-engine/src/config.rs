//! Model configuration: architecture family and sizes, validation, parameter/memory estimates.

use serde::{Deserialize, Serialize};

use crate::EngineError;

/// Architecture family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// GPT-2: learned positions, LayerNorm (with bias), GELU-tanh, tied head, biases everywhere.
    Gpt2,
    /// nanochat-style: RoPE, QK-norm, parameter-free RMSNorm, ReLU², untied head, GQA, no biases,
    /// logit soft-cap.
    Modern,
}

impl std::str::FromStr for Arch {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gpt2" => Ok(Arch::Gpt2),
            "modern" => Ok(Arch::Modern),
            _ => Err(EngineError::Config(format!(
                "unknown arch `{s}` (expected gpt2 or modern)"
            ))),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::Gpt2 => "gpt2",
            Arch::Modern => "modern",
        })
    }
}

/// Everything that fixes the parameter layout and the forward computation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Key/value heads (GQA); must divide `n_head`. Always `n_head` for gpt2.
    pub n_kv_head: usize,
    pub n_embd: usize,
    /// Maximum sequence length (positions).
    pub context: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f32,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    /// `z = cap * tanh(logits / cap)` before the softmax (modern only).
    #[serde(default)]
    pub logit_softcap: Option<f32>,
}

fn default_eps() -> f32 {
    1e-5
}
fn default_theta() -> f32 {
    10000.0
}

impl ModelConfig {
    /// GPT-2 shaped config.
    pub fn gpt2(
        vocab_size: usize,
        n_layer: usize,
        n_head: usize,
        n_embd: usize,
        context: usize,
    ) -> Self {
        ModelConfig {
            arch: Arch::Gpt2,
            vocab_size,
            n_layer,
            n_head,
            n_kv_head: n_head,
            n_embd,
            context,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            logit_softcap: None,
        }
    }

    /// Modern config (soft-cap 15 as in nanochat).
    pub fn modern(
        vocab_size: usize,
        n_layer: usize,
        n_head: usize,
        n_kv_head: usize,
        n_embd: usize,
        context: usize,
    ) -> Self {
        ModelConfig {
            arch: Arch::Modern,
            vocab_size,
            n_layer,
            n_head,
            n_kv_head,
            n_embd,
            context,
            norm_eps: 1e-6,
            rope_theta: 10000.0,
            logit_softcap: Some(15.0),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::Config(m));
        if self.vocab_size == 0
            || self.n_layer == 0
            || self.n_head == 0
            || self.n_embd == 0
            || self.context == 0
        {
            return bad(format!("all sizes must be positive: {self:?}"));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_embd {} is not divisible by n_head {}",
                self.n_embd, self.n_head
            ));
        }
        if self.n_kv_head == 0 || !self.n_head.is_multiple_of(self.n_kv_head) {
            return bad(format!(
                "n_kv_head {} must divide n_head {}",
                self.n_kv_head, self.n_head
            ));
        }
        if self.arch == Arch::Gpt2 && self.n_kv_head != self.n_head {
            return bad("gpt2 has no GQA: n_kv_head must equal n_head".into());
        }
        if self.arch == Arch::Modern && !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "RoPE needs an even head dim, got {}",
                self.head_dim()
            ));
        }
        if let Some(c) = self.logit_softcap {
            if c.is_nan() || c <= 0.0 {
                return bad(format!("logit_softcap must be > 0, got {c}"));
            }
        }
        if self.vocab_size > u32::MAX as usize {
            return bad("vocab too large".into());
        }
        Ok(())
    }

    /// Number of parameters (from the same table that lays out the buffer).
    pub fn num_params(&self) -> usize {
        crate::params::Layout::new(self).total
    }

    /// Bytes of activations kept by one training step at batch `b` (`t = context`), an estimate
    /// that matches what [`crate::Trainer`] allocates (f32).
    pub fn activation_floats(&self, b: usize, t: usize) -> usize {
        let c = self.n_embd;
        let bt = b * t;
        let qkv = (self.n_head + 2 * self.n_kv_head) * self.head_dim();
        let probs = b * self.n_head * t * t;
        let per_layer = bt
            * (c + c + 2 + qkv * 2 + (self.n_head + self.n_kv_head) + c + c + c + 2 + 4 * c * 2)
            + probs;
        let grads_scratch = bt * (c * 3 + qkv * 2 + 8 * c);
        self.n_layer * per_layer + bt * (c * 2 + 2) + bt * self.vocab_size + bt * 2 + grads_scratch
    }

    /// Estimated bytes for training at batch `b` × context: params + grads + 2 moments + activations.
    pub fn train_bytes(&self, b: usize) -> u64 {
        let p = self.num_params() as u64;
        (4 * p + self.activation_floats(b, self.context) as u64) * 4
    }
}

/// Available memory in bytes (Linux `MemAvailable`), if known.
pub fn available_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuse (with the estimate) when `need` bytes exceed what the machine has available.
pub fn check_memory(need: u64) -> Result<(), EngineError> {
    if let Some(avail) = available_memory() {
        if need > avail {
            return Err(EngineError::OutOfMemory {
                need_mb: need >> 20,
                avail_mb: avail >> 20,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn validation_names_the_problem() {
        let mut c = ModelConfig::gpt2(100, 2, 3, 16, 8);
        assert!(c.validate().unwrap_err().to_string().contains("divisible"));
        c.n_head = 4;
        c.n_kv_head = 4;
        c.validate().unwrap();
        let m = ModelConfig::modern(100, 2, 4, 3, 16, 8);
        assert!(m.validate().unwrap_err().to_string().contains("n_kv_head"));
        // GPT-2 124M has 124,439,808 parameters (tied head).
        assert_eq!(
            ModelConfig::gpt2(50257, 12, 12, 768, 1024).num_params(),
            124_439_808
        );
    }
    #[test]
    fn memory_check_refuses_absurd_models() {
        let c = ModelConfig::gpt2(50257, 200, 64, 8192, 4096);
        let err = check_memory(c.train_bytes(64)).unwrap_err();
        assert!(err.to_string().contains("MiB"), "{err}");
    }
}
