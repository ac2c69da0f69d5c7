//! The reward model against PyTorch (fixture written by scripts/rm_fixture.py, committed): on
//! kiln-engine's parity checkpoints (gpt2 and modern), a scalar head on each row's last token,
//! two orderings → four Bradley–Terry pairs; rewards, loss, the head's gradient and every trunk
//! gradient must match autograd (1e-4 of each tensor's largest magnitude, or of 1% of the largest
//! gradient when that is larger: see `rel_floor`). This checks
//! the engine's `forward_hidden`/`backward_hidden` too.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_engine::safetensors::{read, Tensor};
use kiln_engine::{load_checkpoint, CpuBackend, OptimizerConfig};
use kiln_train::rm::{Head, RewardModel};

const LENS: [usize; 5] = [16, 9, 12, 5, 14];
const ORDERINGS: [&[usize]; 2] = [&[2, 0, 1], &[3, 4]];

fn get<'a>(ts: &'a [Tensor], name: &str) -> &'a Tensor {
    ts.iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("fixture lacks {name}"))
}

/// max |a - b| / max(max |b|, floor). Bradley–Terry only sees reward differences, so the gradient
/// of anything that shifts every reward alike (the head's bias, gpt2's final-norm bias) is zero in
/// exact arithmetic: PyTorch's f64 gives ~1e-17, kiln's f32 ~1e-8. Those are measured against a
/// floor of 1% of the largest gradient instead of their own (zero) scale.
fn rel_floor(a: &[f32], b: &[f32], floor: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(floor)
        .max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    rel_floor(a, b, 0.0)
}

fn check(arch: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let ck = load_checkpoint(&root.join("../kiln-engine/tests/fixtures").join(arch)).unwrap();
    let (ex, _) = read(&root.join(format!("tests/fixtures/rm/{arch}.safetensors"))).unwrap();
    let t = get(&ex, "inputs").shape[1];
    let x: Vec<u32> = get(&ex, "inputs").data.iter().map(|&v| v as u32).collect();
    let rows: Vec<Vec<u32>> = LENS
        .iter()
        .enumerate()
        .map(|(r, &n)| x[r * t..r * t + n].to_vec())
        .collect();
    let head: Head = serde_json::from_value(serde_json::json!({
        "weight": get(&ex, "head.weight").data,
        "bias": get(&ex, "head.bias").data[0],
    }))
    .unwrap();
    let model = ck.into_model(Arc::new(CpuBackend::new(1))).unwrap();
    let mut rm = RewardModel::new(model, 5, t, OptimizerConfig::default(), Some(head), 0).unwrap();
    let pairs: Vec<(usize, usize)> = ORDERINGS
        .iter()
        .flat_map(|o| (0..o.len()).flat_map(move |i| (i + 1..o.len()).map(move |j| (o[i], o[j]))))
        .collect();
    rm.zero_grad();
    let (loss, r) = rm.accumulate(&rows, &pairs, pairs.len() as f64).unwrap();
    let e = rel(&r, &get(&ex, "rewards").data);
    assert!(e < 1e-4, "{arch}: rewards rel err {e}");
    let want = get(&ex, "loss").data[0] as f64;
    assert!(
        ((loss - want) / want).abs() < 1e-4,
        "{arch}: loss {loss} vs {want}"
    );
    let hg = rm.head_grad();
    let c = hg.len() - 1;
    let e = rel(&hg[..c], &get(&ex, "grad.head.weight").data);
    assert!(e < 1e-4, "{arch}: head weight grad rel err {e}");
    let floor = 1e-2
        * ex.iter()
            .filter(|t| t.name.starts_with("grad."))
            .flat_map(|t| t.data.iter())
            .fold(0f32, |m, x| m.max(x.abs()));
    let e = rel_floor(&hg[c..], &get(&ex, "grad.head.bias").data, floor);
    assert!(e < 1e-4, "{arch}: head bias grad rel err {e}");
    let grads = rm.tr.grads_host();
    let mut worst = 0f32;
    for s in &rm.tr.model.layout.specs {
        let g = &grads[s.offset..s.offset + s.len];
        match ex.iter().find(|t| t.name == format!("grad.{}", s.name)) {
            Some(want) => {
                let e = rel_floor(g, &want.data, floor);
                assert!(e < 1e-4, "{arch}: grad {} rel err {e}", s.name);
                worst = worst.max(e);
            }
            // The LM head takes no part in the reward.
            None => assert!(g.iter().all(|&v| v == 0.0), "{arch}: {} moved", s.name),
        }
    }
    eprintln!("{arch}: loss {loss:.6} (torch {want:.6}), worst gradient rel err {worst:.2e}");
    // Scoring alone gives the same rewards.
    let again = rm.score(&rows).unwrap();
    assert!(rel(&again, &r) < 1e-6);
}

#[test]
fn bradley_terry_rewards_loss_and_gradients_match_pytorch_gpt2() {
    check("gpt2");
}

#[test]
fn bradley_terry_rewards_loss_and_gradients_match_pytorch_modern() {
    check("modern");
}
