//! Checkpoint folders of a training run: `<out>/ckpt/step_NNNNNN/` plus a `latest` pointer, the
//! newest `keep` of them kept. One place for pretraining and SFT (and every later loop), so all of
//! them resume, prune and point at their latest checkpoint the same way.

use std::path::{Path, PathBuf};

use kiln_engine::{save_checkpoint, Backend, Trainer};
use serde_json::Value;

use crate::error::TrainError;

/// The checkpoint folder of a run's output folder.
pub fn ckpt_root(out: &Path) -> PathBuf {
    out.join("ckpt")
}

fn step_name(step: u64) -> String {
    format!("step_{step:06}")
}

/// The checkpoint `<root>/latest` points at, if any.
pub fn latest(root: &Path) -> Option<PathBuf> {
    std::fs::read_to_string(root.join("latest"))
        .ok()
        .map(|n| root.join(n.trim()))
}

/// Save the trainer (model + optimizer) and `state` as `<root>/step_NNNNNN`, point `latest` at it
/// (atomically: a crash leaves the previous pointer), then delete all but the newest `keep`.
pub fn save_step<B: Backend>(
    root: &Path,
    step: u64,
    tr: &Trainer<B>,
    state: &Value,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let name = step_name(step);
    let dir = root.join(&name);
    save_checkpoint(&dir, &tr.model, Some(&tr.opt), state)?;
    write_latest(root, &name)?;
    prune(root, keep)?;
    Ok(dir)
}

/// Write `v` as pretty JSON, atomically (a crash leaves the old file or none, never half).
pub fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(v).map_err(|source| TrainError::Json {
        path: path.display().to_string(),
        source,
    })?;
    write_atomic(path, text.as_bytes())
}

/// Read a JSON file into `T`, naming the file on failure.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| TrainError::Json {
        path: path.display().to_string(),
        source,
    })
}

/// kiln-data's atomic write (temp file + fsync + rename), naming the file on failure.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    kiln_data::write_atomic(path, bytes).map_err(|e| TrainError::io(path, e))
}

fn write_latest(root: &Path, name: &str) -> Result<(), TrainError> {
    write_atomic(&root.join("latest"), name.as_bytes())
}
fn prune(root: &Path, keep: usize) -> Result<(), TrainError> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| TrainError::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step_"))
        })
        .collect();
    steps.sort();
    let keep = keep.max(1);
    if steps.len() > keep {
        for p in &steps[..steps.len() - keep] {
            std::fs::remove_dir_all(p).map_err(|e| TrainError::io(p, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for s in [1u64, 20, 300] {
            std::fs::create_dir_all(dir.path().join(step_name(s))).unwrap();
        }
        prune(dir.path(), 2).unwrap();
        assert!(!dir.path().join(step_name(1)).exists());
        assert!(dir.path().join(step_name(20)).exists());
        assert!(dir.path().join(step_name(300)).exists());
        write_latest(dir.path(), &step_name(300)).unwrap();
        assert_eq!(latest(dir.path()), Some(dir.path().join(step_name(300))));
    }
}
