//! Checkpoint folders of a training run: `<out>/ckpt/step_NNNNNN/` plus a `latest` pointer, the
//! newest `keep` of them kept. One place for pretraining and SFT (and every later loop), so all of
//! them resume, prune and point at their latest checkpoint the same way.

use std::io::Write;
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

/// Resolve `--resume` (a checkpoint dir, or a run dir / `ckpt` dir with a `latest` pointer).
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf, TrainError> {
    if path.join("kiln.json").exists() || path.join("config.json").exists() {
        return Ok(path.to_path_buf());
    }
    for dir in [path.join("ckpt"), path.to_path_buf()] {
        let latest = dir.join("latest");
        if latest.exists() {
            let name = std::fs::read_to_string(&latest).map_err(|e| TrainError::io(&latest, e))?;
            return Ok(dir.join(name.trim()));
        }
    }
    Err(TrainError::Config(format!(
        "{}: not a checkpoint (no kiln.json) and no ckpt/latest pointer",
        path.display()
    )))
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

fn write_latest(root: &Path, name: &str) -> Result<(), TrainError> {
    let path = root.join("latest");
    let io = |e| TrainError::io(&path, e);
    let mut tmp = tempfile::NamedTempFile::new_in(root).map_err(io)?;
    tmp.write_all(name.as_bytes()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(&path).map_err(|e| io(e.error))?;
    Ok(())
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
