//! Checkpoint folders of a training run: `<out>/ckpt/step_NNNNNN/` plus a `latest` pointer, the
//! newest `keep` of them kept. One place for pretraining and SFT (and every later loop), so all of
//! them resume, prune and point at their latest checkpoint the same way.

use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use kiln_chat::format::ChatTokens;
use kiln_engine::{load_checkpoint, save_checkpoint, Backend, CpuBackend, Model, Trainer};
use kiln_tokenizer::Tokenizer;
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

/// A checkpoint loaded on the cpu with the tokenizer its run recorded.
pub struct LoadedModel {
    pub model: Model<CpuBackend>,
    pub tok: Tokenizer,
    /// The checkpoint folder it came from.
    pub dir: PathBuf,
}

/// Loads a checkpoint (or a run folder's latest) and the tokenizer its run recorded (or
/// `tokenizer`), checking that the two belong together.
pub fn load_model(
    ckpt: &Path,
    tokenizer: Option<&str>,
    threads: usize,
) -> Result<LoadedModel, TrainError> {
    let dir = resolve_checkpoint(ckpt)?;
    let ck = load_checkpoint(&dir)?;
    let tok_name = match (tokenizer, ck.train["config"]["tokenizer"].as_str()) {
        (Some(t), _) | (None, Some(t)) => t.to_string(),
        _ => {
            return Err(TrainError::Config(format!(
                "{}: the run recorded no tokenizer; pass --tokenizer",
                dir.display()
            )))
        }
    };
    let tok = Tokenizer::load_named(&tok_name)?;
    if tok.vocab_size() > ck.config.vocab_size {
        return Err(TrainError::Config(format!(
            "tokenizer {tok_name:?} has {} tokens but the model's vocabulary is {}: they do not belong together",
            tok.vocab_size(),
            ck.config.vocab_size
        )));
    }
    let model = ck.into_model(Arc::new(CpuBackend::new(threads)))?;
    Ok(LoadedModel { model, tok, dir })
}

/// The chat tokens of `tok`, or an error that says what to do.
pub fn chat_tokens(tok: &Tokenizer, what: &str) -> Result<ChatTokens, TrainError> {
    ChatTokens::from_codec(tok).map_err(|e| {
        TrainError::Config(format!("{what}: this tokenizer cannot render conversations ({e}); train one with `kiln tok train`, which adds the chat tokens"))
    })
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

/// temp file in the same folder + fsync + rename: readers see the old bytes or the new, never half.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let io = |e| TrainError::io(path, e);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
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
