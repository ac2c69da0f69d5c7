//! Metrics as JSON Lines (one object per event, flushed per line) and the bits-per-byte metric.
//! On resume the log is cut back to the resumed step so it reads like one uninterrupted run.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::TrainError;

pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Open for appending; if `keep_upto_step` is given, drop records with a larger `step` first.
    pub fn open(path: &Path, keep_upto_step: Option<u64>) -> Result<MetricsLog, TrainError> {
        let io = |e| TrainError::io(path, e);
        if let Some(max) = keep_upto_step {
            if path.exists() {
                let text = std::fs::read_to_string(path).map_err(io)?;
                let kept: String = text
                    .lines()
                    .filter(|l| {
                        serde_json::from_str::<Value>(l)
                            .ok()
                            .and_then(|v| v["step"].as_u64())
                            .is_some_and(|s| s <= max)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                kiln_data::write_atomic(path, kept.as_bytes())
                    .map_err(|e| TrainError::io(path, e))?;
            }
        } else if path.exists() {
            std::fs::remove_file(path).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn write(&mut self, v: &Value) -> Result<(), TrainError> {
        let line = format!("{v}\n");
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| TrainError::io(&self.path, e))?;
        self.file.flush().map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Read every record of a metrics file.
pub fn read_metrics(path: &Path) -> Result<Vec<Value>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Bits per byte: `Σ nats / (ln 2 · Σ bytes)` over targets whose byte length is non-zero
/// (special tokens have no bytes and are excluded from both sums, as in nanochat).
pub fn bits_per_byte(losses: &[f32], targets: &[u32], token_bytes: &[u32]) -> (f64, u64) {
    let mut nats = 0f64;
    let mut bytes = 0u64;
    for (l, &t) in losses.iter().zip(targets) {
        let nb = token_bytes.get(t as usize).copied().unwrap_or(0);
        if nb > 0 {
            nats += *l as f64;
            bytes += nb as u64;
        }
    }
    (nats, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn bpb_and_resume_truncation() {
        let (n, b) = bits_per_byte(&[1.0, 2.0, 3.0], &[0, 1, 2], &[0, 2, 4]);
        assert_eq!((n, b), (5.0, 6));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        let mut m = MetricsLog::open(&p, None).unwrap();
        for s in 1..=5 {
            m.write(&serde_json::json!({"step": s, "loss": 1.0}))
                .unwrap();
        }
        drop(m);
        let mut m = MetricsLog::open(&p, Some(3)).unwrap();
        m.write(&serde_json::json!({"step": 4, "loss": 2.0}))
            .unwrap();
        let recs = read_metrics(&p).unwrap();
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[3]["loss"], 2.0);
    }
}
