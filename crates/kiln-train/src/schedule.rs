//! Learning-rate schedule: linear warmup, constant, then a linear warmdown to a final fraction
//! (the shape nanochat uses). Returns a multiplier applied to every group's base learning rate.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub total_steps: usize,
    pub warmup_steps: usize,
    /// Fraction of the run (at the end) spent decaying.
    pub warmdown_frac: f32,
    /// Multiplier reached at the last step.
    pub final_frac: f32,
}

impl Schedule {
    /// Multiplier for 0-based `step`.
    pub fn lr_scale(&self, step: usize) -> f32 {
        if step < self.warmup_steps {
            return (step + 1) as f32 / self.warmup_steps as f32;
        }
        let total = self.total_steps.max(1);
        let warmdown = ((total as f32) * self.warmdown_frac).round() as usize;
        let start = total.saturating_sub(warmdown);
        if warmdown == 0 || step < start {
            return 1.0;
        }
        let prog = ((step - start) as f32 / warmdown as f32).min(1.0);
        1.0 - prog * (1.0 - self.final_frac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn shape() {
        let s = Schedule {
            total_steps: 100,
            warmup_steps: 10,
            warmdown_frac: 0.2,
            final_frac: 0.0,
        };
        assert!((s.lr_scale(0) - 0.1).abs() < 1e-6);
        assert_eq!(s.lr_scale(9), 1.0);
        assert_eq!(s.lr_scale(50), 1.0);
        assert_eq!(s.lr_scale(80), 1.0);
        assert!((s.lr_scale(90) - 0.5).abs() < 1e-6);
        assert!(s.lr_scale(99) < 0.1);
    }
}
