//! Checkpoints: a directory with `model.safetensors` (weights), `config.json` (for `gpt2` the
//! Hugging Face GPT-2 config, so HF tools read it; for `modern` kiln's config), `kiln.json`
//! (kiln config, optimizer config/step, and the trainer's opaque state: step, data position, RNG)
//! and `optimizer.safetensors` (AdamW/Muon moments). For `gpt2` the weights use the HF GPT-2 names
//! and Conv1D layout (`[in, out]`), so a released GPT-2 `model.safetensors` + `config.json` loads
//! directly (the `transformer.` prefix and non-float buffers are accepted).
//!
//! Atomicity: everything is written into a sibling temp directory, fsynced, then renamed into
//! place; a process killed mid-write leaves the previous checkpoint untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::backend::Backend;
use crate::config::{Arch, ModelConfig};
use crate::model::Model;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::params::Layout;
use crate::safetensors;
use crate::EngineError;

/// Optimizer state as stored.
#[derive(Clone, Debug)]
pub struct OptState {
    pub cfg: OptimizerConfig,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
}

/// A loaded checkpoint (host memory).
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub config: ModelConfig,
    /// Parameters in layout order.
    pub params: Vec<f32>,
    pub optimizer: Option<OptState>,
    /// The trainer's state (whatever it saved), `Null` for a bare HF model.
    pub train: Value,
}

impl Checkpoint {
    /// Build the model on a backend.
    pub fn into_model<B: Backend>(
        &self,
        backend: std::sync::Arc<B>,
    ) -> Result<Model<B>, EngineError> {
        Model::from_host(backend, self.config.clone(), &self.params)
    }
}

/// HF GPT-2 stores these as Conv1D `[in, out]`; kiln stores `[out, in]`.
fn is_conv1d(name: &str) -> bool {
    name.ends_with("attn.c_attn.weight")
        || name.ends_with("attn.c_proj.weight")
        || name.ends_with("mlp.c_fc.weight")
        || name.ends_with("mlp.c_proj.weight")
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

fn hf_gpt2_config(c: &ModelConfig) -> Value {
    json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": c.vocab_size,
        "n_positions": c.context,
        "n_ctx": c.context,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "layer_norm_epsilon": c.norm_eps,
        "activation_function": "gelu_new",
        "tie_word_embeddings": true,
    })
}

fn from_hf_gpt2_config(v: &Value, path: &Path) -> Result<ModelConfig, EngineError> {
    let get = |k: &str| {
        v[k].as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| EngineError::ckpt(path, format!("missing field `{k}`")))
    };
    let mut c = ModelConfig::gpt2(
        get("vocab_size")?,
        get("n_layer")?,
        get("n_head")?,
        get("n_embd")?,
        get("n_positions")?,
    );
    if let Some(e) = v["layer_norm_epsilon"].as_f64() {
        c.norm_eps = e as f32;
    }
    Ok(c)
}

fn write_json(path: &Path, v: &Value) -> Result<(), EngineError> {
    let s = serde_json::to_vec_pretty(v).map_err(|e| EngineError::ckpt(path, e.to_string()))?;
    safetensors::write_atomic(path, &s)
}

/// Save `model` (and optionally the optimizer and the trainer's state) to `dir`, atomically:
/// every file is written into a sibling temp directory ([`stage_files`]), which then replaces
/// `dir` by rename ([`publish`]). A process killed at any point leaves `dir` as it was.
pub fn save_checkpoint<B: Backend>(
    dir: &Path,
    model: &Model<B>,
    opt: Option<&Optimizer<B>>,
    train: &Value,
) -> Result<(), EngineError> {
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ckpt".into());
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    stage_files(&tmp, model, opt, train)?;
    publish(&tmp, dir, parent, &name)
}

/// Write every file of a checkpoint into the (fresh) directory `tmp`.
fn stage_files<B: Backend>(
    tmp: &Path,
    model: &Model<B>,
    opt: Option<&Optimizer<B>>,
    train: &Value,
) -> Result<(), EngineError> {
    let cfg = &model.cfg;
    let host = model.params_host();
    let gpt2 = cfg.arch == Arch::Gpt2;
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for s in &model.layout.specs {
        let data = &host[s.offset..s.offset + s.len];
        if gpt2 && is_conv1d(&s.name) {
            owned.push((
                s.name.clone(),
                vec![s.shape[1], s.shape[0]],
                transpose(data, s.shape[0], s.shape[1]),
            ));
        } else {
            owned.push((s.name.clone(), s.shape.clone(), data.to_vec()));
        }
    }
    let refs: Vec<(&str, &[usize], &[f32])> = owned
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice()))
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::write(&tmp.join("model.safetensors"), &refs, &meta)?;
    drop(owned);

    let config_json = if gpt2 {
        hf_gpt2_config(cfg)
    } else {
        let mut v = serde_json::to_value(cfg).map_err(|e| EngineError::ckpt(tmp, e.to_string()))?;
        v["model_type"] = json!("kiln-modern");
        v
    };
    write_json(&tmp.join("config.json"), &config_json)?;

    let mut kiln = json!({ "format": "kiln-checkpoint-v1", "config": cfg, "train": train });
    if let Some(opt) = opt {
        let (m, v, step) = opt.state_host(&model.backend);
        let shape = [m.len()];
        safetensors::write(
            &tmp.join("optimizer.safetensors"),
            &[("m", &shape, &m), ("v", &shape, &v)],
            &BTreeMap::new(),
        )?;
        kiln["optimizer"] = json!({ "config": opt.cfg, "step": step });
    }
    write_json(&tmp.join("kiln.json"), &kiln)?;
    Ok(())
}

/// Swap the complete `tmp` directory into place as `dir` (`parent`/`name`).
fn publish(tmp: &Path, dir: &Path, parent: &Path, name: &str) -> Result<(), EngineError> {
    // fsync the directory entries, then swap into place
    if let Ok(f) = std::fs::File::open(tmp) {
        let _ = f.sync_all();
    }
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(dir, &old).map_err(|e| EngineError::io(dir, e))?;
        std::fs::rename(tmp, dir).map_err(|e| EngineError::io(dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| EngineError::io(&old, e))?;
    } else {
        std::fs::rename(tmp, dir).map_err(|e| EngineError::io(dir, e))?;
    }
    if let Ok(f) = std::fs::File::open(parent) {
        let _ = f.sync_all();
    }
    Ok(())
}

/// Load a kiln checkpoint directory or a Hugging Face GPT-2 directory (`config.json` +
/// `model.safetensors`).
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint, EngineError> {
    let kiln_path = dir.join("kiln.json");
    let (config, kiln) = if kiln_path.exists() {
        let s = std::fs::read(&kiln_path).map_err(|e| EngineError::io(&kiln_path, e))?;
        let v: Value = serde_json::from_slice(&s)
            .map_err(|e| EngineError::ckpt(&kiln_path, format!("bad JSON: {e}")))?;
        let c: ModelConfig = serde_json::from_value(v["config"].clone())
            .map_err(|e| EngineError::ckpt(&kiln_path, format!("bad `config`: {e}")))?;
        (c, Some(v))
    } else {
        let p = dir.join("config.json");
        let s = std::fs::read(&p).map_err(|e| EngineError::io(&p, e))?;
        let v: Value = serde_json::from_slice(&s)
            .map_err(|e| EngineError::ckpt(&p, format!("bad JSON: {e}")))?;
        if v["model_type"] != "gpt2" {
            return Err(EngineError::ckpt(
                &p,
                format!(
                    "model_type {} is not gpt2 and there is no kiln.json",
                    v["model_type"]
                ),
            ));
        }
        (from_hf_gpt2_config(&v, &p)?, None)
    };
    config
        .validate()
        .map_err(|e| EngineError::ckpt(dir, e.to_string()))?;
    let layout = Layout::new(&config);
    let wpath = dir.join("model.safetensors");
    let (tensors, _) = safetensors::read(&wpath)?;
    let mut by_name: BTreeMap<String, safetensors::Tensor> = BTreeMap::new();
    for t in tensors {
        let name = t
            .name
            .strip_prefix("transformer.")
            .unwrap_or(&t.name)
            .to_string();
        by_name.insert(name, t);
    }
    let gpt2 = config.arch == Arch::Gpt2;
    let mut params = vec![0f32; layout.total];
    for s in &layout.specs {
        let t = by_name
            .get(&s.name)
            .ok_or_else(|| EngineError::ckpt(&wpath, format!("missing tensor `{}`", s.name)))?;
        let dst = &mut params[s.offset..s.offset + s.len];
        if gpt2 && is_conv1d(&s.name) {
            if t.shape != [s.shape[1], s.shape[0]] {
                return Err(EngineError::ckpt(
                    &wpath,
                    format!(
                        "tensor `{}` has shape {:?}, expected {:?}",
                        s.name,
                        t.shape,
                        [s.shape[1], s.shape[0]]
                    ),
                ));
            }
            dst.copy_from_slice(&transpose(&t.data, s.shape[1], s.shape[0]));
        } else {
            if t.shape != s.shape {
                return Err(EngineError::ckpt(
                    &wpath,
                    format!(
                        "tensor `{}` has shape {:?}, expected {:?}",
                        s.name, t.shape, s.shape
                    ),
                ));
            }
            dst.copy_from_slice(&t.data);
        }
    }
    let mut optimizer = None;
    let mut train = Value::Null;
    if let Some(k) = kiln {
        train = k["train"].clone();
        if !k["optimizer"].is_null() {
            let op = dir.join("optimizer.safetensors");
            let (ts, _) = safetensors::read(&op)?;
            let get = |n: &str| {
                ts.iter()
                    .find(|t| t.name == n)
                    .map(|t| t.data.clone())
                    .ok_or_else(|| EngineError::ckpt(&op, format!("missing `{n}`")))
            };
            let (m, v) = (get("m")?, get("v")?);
            if m.len() != layout.total || v.len() != layout.total {
                return Err(EngineError::ckpt(
                    &op,
                    format!(
                        "moments have {} floats, model has {}",
                        m.len(),
                        layout.total
                    ),
                ));
            }
            let cfg: OptimizerConfig = serde_json::from_value(k["optimizer"]["config"].clone())
                .map_err(|e| EngineError::ckpt(&kiln_path, format!("bad optimizer config: {e}")))?;
            let step = k["optimizer"]["step"].as_u64().unwrap_or(0);
            optimizer = Some(OptState { cfg, m, v, step });
        }
    }
    Ok(Checkpoint {
        config,
        params,
        optimizer,
        train,
    })
}

/// The checkpoint folder `path` names: a checkpoint itself (`kiln.json`, or a Hugging Face
/// `config.json` folder), or a run folder / `ckpt` folder whose `latest` file names the newest.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf, EngineError> {
    if path.join("kiln.json").exists() || path.join("config.json").exists() {
        return Ok(path.to_path_buf());
    }
    for dir in [path.join("ckpt"), path.to_path_buf()] {
        let latest = dir.join("latest");
        if latest.exists() {
            let name = std::fs::read_to_string(&latest).map_err(|e| EngineError::io(&latest, e))?;
            return Ok(dir.join(name.trim()));
        }
    }
    Err(EngineError::ckpt(
        path,
        "not a checkpoint (no kiln.json) and no ckpt/latest pointer",
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::CpuBackend;

    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let bytes = std::fs::read(e.path()).unwrap();
                (e.file_name().to_string_lossy().into_owned(), bytes)
            })
            .collect();
        v.sort();
        v
    }

    /// The crash guarantee at the seam where it is made: a process killed after writing any part
    /// of a new checkpoint (everything staged, nothing published) leaves the checkpoint already
    /// under that name byte for byte as it was and loadable; the next save replaces it whole.
    /// (`crates/kiln/tests/engine.rs` SIGKILLs the real binary during checkpoint writes.)
    #[test]
    fn a_save_killed_before_publishing_leaves_the_previous_checkpoint() {
        let be = Arc::new(CpuBackend::new(1));
        let cfg = ModelConfig::gpt2(37, 2, 2, 16, 8);
        let old = Model::new(be.clone(), cfg.clone(), 1).unwrap();
        let new = Model::new(be, cfg, 2).unwrap();
        assert_ne!(old.params_host(), new.params_host());
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        save_checkpoint(&dir, &old, None, &json!({"step": 1})).unwrap();
        let before = files(&dir);

        // every file of the next checkpoint staged, then the process "dies" (no publish); and a
        // file left half-written in the staging directory
        let tmp = root.path().join(".ckpt.tmp-999999");
        std::fs::create_dir_all(&tmp).unwrap();
        stage_files(&tmp, &new, None, &json!({"step": 2})).unwrap();
        let half = std::fs::read(tmp.join("model.safetensors")).unwrap();
        std::fs::write(tmp.join("model.safetensors"), &half[..half.len() / 2]).unwrap();

        assert_eq!(files(&dir), before, "the published checkpoint is untouched");
        let c = load_checkpoint(&dir).unwrap();
        assert_eq!(c.params, old.params_host());
        assert_eq!(c.train, json!({"step": 1}));

        // the next save (another process) publishes a complete checkpoint under the name
        save_checkpoint(&dir, &new, None, &json!({"step": 2})).unwrap();
        let c = load_checkpoint(&dir).unwrap();
        assert_eq!(c.params, new.params_host());
        assert_eq!(c.train, json!({"step": 2}));
    }

    #[test]
    fn atomic_file_writes_replace_whole_files_and_leave_no_temp_files() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("latest");
        safetensors::write_atomic(&p, b"step_000004").unwrap();
        safetensors::write_atomic(&p, b"step_8").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"step_8");
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["latest"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644, "readable like a plain File::create");
        }
    }
}
