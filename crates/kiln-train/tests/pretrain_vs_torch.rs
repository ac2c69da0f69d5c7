//! Learning parity with PyTorch, on the CPU: a tiny GPT-2 pretrained by `pretrain` gives the same
//! loss at every step and the same validation losses as PyTorch trained on the same windows in the
//! same order, from the same initial parameters, with the same AdamW, clipping and schedule
//! (`fixtures/pretrain_torch.jsonl`, written by scripts/gpu/torch_parity.py in f32). It guards
//! everything that decides what a step learns — initialization, data order, the model's math, the
//! loss normalization, gradient clipping, AdamW (bias correction, decoupled decay and which tensors
//! decay), the learning-rate schedule and the eval — against a second implementation. The device
//! check runs the same comparison on the GPU at GPT-2-124M scale (scripts/gpu/device-check.sh).
//!
//! To write the fixture again (after a deliberate change to one of those):
//! ```text
//! KILN_PARITY_KEEP=/tmp/pf cargo test --release -p kiln-train --test pretrain_vs_torch
//! cargo run --release -p kiln-train --example parity_batches -- /tmp/pf/tokens /tmp/pf/batches 61 2 2 32 32 4 40 7 0.1 2
//! python3 scripts/gpu/torch_parity.py --device cpu --init kiln --batches /tmp/pf/batches \
//!   --kiln-metrics /tmp/pf/run/metrics.jsonl --out crates/kiln-train/tests/fixtures/pretrain_torch.jsonl
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use kiln_engine::{ModelConfig, OptimizerConfig, Rng};
use kiln_train::pretrain::{load_shards, pretrain, Hooks, PretrainConfig};

const VOCAB: usize = 61;
const STEPS: usize = 40;

/// Documents with structure a small model picks up within a few dozen steps: each token mostly
/// follows from the previous one by a fixed rule, sometimes jumps at random.
fn documents() -> Vec<Vec<u32>> {
    let mut rng = Rng::new(2024);
    (0..48)
        .map(|_| {
            let len = 120 + (rng.next_u64() % 120) as usize;
            let mut doc = vec![0u32];
            let mut prev = 1 + (rng.next_u64() % (VOCAB as u64 - 1)) as u32;
            for _ in 0..len {
                doc.push(prev);
                prev = if rng.next_u64().is_multiple_of(5) {
                    1 + (rng.next_u64() % (VOCAB as u64 - 1)) as u32
                } else {
                    1 + (prev * 7 + 3) % (VOCAB as u32 - 1)
                };
            }
            doc
        })
        .collect()
}

fn config() -> PretrainConfig {
    PretrainConfig {
        model: ModelConfig::gpt2(VOCAB, 2, 2, 32, 32),
        optim: OptimizerConfig {
            lr: 3e-3,
            ..Default::default()
        },
        batch: 4,
        seq_len: 32,
        grad_accum: 1,
        steps: STEPS,
        warmup_steps: 4,
        warmdown_frac: 0.3,
        final_lr_frac: 0.1,
        eval_every: 10,
        eval_batches: 2,
        sample_every: 0,
        sample_tokens: 0,
        ckpt_every: STEPS,
        keep_ckpts: 1,
        seed: 7,
        val_frac: 0.1,
        threads: 2,
        tokenizer: None,
    }
}

/// `(step → loss, step → val loss)` from a metrics file in kiln's format.
fn curves(path: &Path) -> (BTreeMap<u64, f64>, BTreeMap<u64, f64>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (mut loss, mut val) = (BTreeMap::new(), BTreeMap::new());
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let step = r["step"].as_u64();
        if r["event"] == "eval" {
            val.insert(step.unwrap(), r["val_loss"].as_f64().unwrap());
        } else if let (Some(s), Some(l)) = (step, r["loss"].as_f64()) {
            loss.insert(s, l);
        }
    }
    (loss, val)
}

#[test]
fn pretraining_learns_what_pytorch_learns_step_for_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("KILN_PARITY_KEEP")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    // through a shard, as `kiln pretrain --data` and the fixture's parity_batches read it
    let shard = dir.join("tokens").join("train.parquet");
    std::fs::create_dir_all(shard.parent().unwrap()).unwrap();
    kiln_tokenizer::shards::write_token_shard(&shard, &documents()).unwrap();
    let docs = load_shards(&dir.join("tokens")).unwrap();
    let run = dir.join("run");
    let _ = std::fs::remove_dir_all(&run);
    pretrain(&config(), &docs, &run, None, &Hooks::default()).unwrap();

    let (kiln, kiln_val) = curves(&run.join("metrics.jsonl"));
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pretrain_torch.jsonl");
    let (torch, torch_val) = curves(&fixture);
    assert_eq!(kiln.len(), STEPS, "kiln logged every step");
    assert_eq!(torch.len(), STEPS, "the fixture has every step");
    assert_eq!(
        kiln_val.keys().collect::<Vec<_>>(),
        torch_val.keys().collect::<Vec<_>>(),
        "evals at the same steps"
    );
    // f32 on both sides, sums in different orders: 1.6e-7 at worst over these 40 steps (measured);
    // the rounding compounds over longer runs (2e-5 by step 60 of a wider model)
    let mut worst = (0u64, 0f64);
    for (s, k) in &kiln {
        let d = (k - torch[s]).abs() / torch[s].abs().max(1.0);
        if d > worst.1 {
            worst = (*s, d);
        }
    }
    for (s, k) in &kiln_val {
        let d = (k - torch_val[s]).abs() / torch_val[s].abs().max(1.0);
        assert!(
            d < 2e-5,
            "val loss at step {s}: kiln {k} vs PyTorch {}",
            torch_val[s]
        );
    }
    assert!(
        worst.1 < 2e-5,
        "training loss at step {}: kiln {} vs PyTorch {} (relative {:.2e})",
        worst.0,
        kiln[&worst.0],
        torch[&worst.0],
        worst.1
    );
    // and it learned: the structure above is worth well over a nat per token
    let first = kiln[&1];
    let last = kiln[&(STEPS as u64)];
    assert!(last < first - 1.0, "loss {first} → {last}");
}
