//! What `kiln pretrain` will train and evaluate on, written out for a peer implementation
//! (scripts/gpu/torch_parity.py) so that both learn from the same windows in the same order and,
//! optionally, from the same initial weights:
//!   OUT/train.u16 (or .u32)  `steps × batch × (seq+1)` token windows, in the order the loader
//!                            hands them to the training steps (inputs = [..seq], targets = [1..])
//!   OUT/val.u16 (or .u32)    the validation batches of every eval, same layout
//!   OUT/init.f32             the parameters `Model::new` draws for this seed (layout order)
//!   OUT/meta.json            shapes, dtype, and each tensor's name/shape/offset in init.f32
//! It calls the same functions `kiln pretrain` does (`load_shards`, `TokenData::from_documents`,
//! `Loader` with the run's seed, `val_batches`, `Model::new`), so with the same arguments the
//! data and the initial weights are those of the run (`--seed`, `--val-frac`, `--eval-batches`).
//!
//! `cargo run --release -p kiln-train --example parity_batches -- SHARDS OUT VOCAB LAYERS HEADS
//!  DIM CONTEXT BATCH STEPS SEED VAL_FRAC EVAL_BATCHES`

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_engine::{CpuBackend, Model, ModelConfig};
use kiln_train::loader::{val_batches, Loader, TokenData};
use kiln_train::pretrain::load_shards;

const USAGE: &str = "usage: parity_batches SHARDS OUT VOCAB LAYERS HEADS DIM CONTEXT BATCH STEPS SEED VAL_FRAC EVAL_BATCHES";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 12 {
        return Err(USAGE.into());
    }
    let num = |i: usize, name: &str| -> Result<usize, String> {
        args[i]
            .parse()
            .map_err(|_| format!("{name} {:?} is not a whole number ({USAGE})", args[i]))
    };
    let shards = PathBuf::from(&args[0]);
    let out = PathBuf::from(&args[1]);
    let (vocab, layers, heads, dim, context) = (
        num(2, "VOCAB")?,
        num(3, "LAYERS")?,
        num(4, "HEADS")?,
        num(5, "DIM")?,
        num(6, "CONTEXT")?,
    );
    let (batch, steps, seed) = (num(7, "BATCH")?, num(8, "STEPS")?, num(9, "SEED")? as u64);
    let val_frac: f32 = args[10]
        .parse()
        .map_err(|_| format!("VAL_FRAC {:?} is not a number", args[10]))?;
    let eval_batches = num(11, "EVAL_BATCHES")?;
    let t = context;

    let docs = load_shards(&shards)?;
    let data = TokenData::from_documents(&docs, val_frac, vocab)?;
    let wide = vocab > 1 << 16;
    let ext = if wide { "u32" } else { "u16" };
    std::fs::create_dir_all(&out)?;
    let write_ids = |name: &str, ids: &[u32]| -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(out.join(name))?);
        for &id in ids {
            if wide {
                f.write_all(&id.to_le_bytes())?;
            } else {
                f.write_all(&(id as u16).to_le_bytes())?;
            }
        }
        f.flush()
    };
    // a window is the inputs followed by the last target
    let windows = |x: &[u32], y: &[u32], into: &mut Vec<u32>| {
        for (xr, yr) in x.chunks(t).zip(y.chunks(t)) {
            into.extend_from_slice(xr);
            into.push(yr[t - 1]);
        }
    };

    let train_tokens = data.train.len();
    let mut loader = Loader::new(data.train, t, seed)?;
    let (mut x, mut y) = (vec![0u32; batch * t], vec![0u32; batch * t]);
    let mut train = Vec::with_capacity(steps * batch * (t + 1));
    for _ in 0..steps {
        loader.next_batch(&mut x, &mut y);
        windows(&x, &y, &mut train);
    }
    write_ids(&format!("train.{ext}"), &train)?;
    let vals = val_batches(&data.val, batch, t, eval_batches);
    let mut val = Vec::new();
    for (vx, vy) in &vals {
        windows(vx, vy, &mut val);
    }
    write_ids(&format!("val.{ext}"), &val)?;

    let cfg = ModelConfig::gpt2(vocab, layers, heads, dim, context);
    let model = Model::new(Arc::new(CpuBackend::new(1)), cfg, seed)?;
    let params = model.params_host();
    let mut f = std::io::BufWriter::new(std::fs::File::create(out.join("init.f32"))?);
    for p in &params {
        f.write_all(&p.to_le_bytes())?;
    }
    f.flush()?;
    let tensors: Vec<_> = model
        .layout
        .specs
        .iter()
        .map(|s| serde_json::json!({"name": s.name, "shape": s.shape, "offset": s.offset}))
        .collect();
    let meta = serde_json::json!({
        "dtype": ext, "steps": steps, "batch": batch, "seq": t, "val_batches": vals.len(),
        "vocab": vocab, "layers": layers, "heads": heads, "dim": dim, "context": context,
        "seed": seed, "val_frac": val_frac, "train_tokens": train_tokens,
        "val_tokens": data.val.len(), "epochs": loader.pos.epoch, "tensors": tensors,
    });
    std::fs::write(out.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    println!(
        "{}: {steps} steps × {batch} × {t} ({} training tokens, epoch {} at the end), {} val batches, {} params",
        out.display(),
        train_tokens,
        loader.pos.epoch,
        vals.len(),
        params.len()
    );
    Ok(())
}
