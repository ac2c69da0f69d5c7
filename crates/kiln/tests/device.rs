//! Binary-level tests for `--device` / `--precision` on `kiln pretrain`, `kiln sft`,
//! `kiln sample` and `kiln bench train`: without the `cuda` feature, `--device cuda` fails at once
//! with an error saying how to build it (nothing written); with the feature but no GPU it fails
//! with the driver error, not a panic; bad device/precision names are refused; `--device cpu`
//! trains exactly as before (same losses bit for bit as the default).

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kiln");

fn kiln(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("KILN_CUDA_PRECISION")
        .output()
        .expect("run kiln")
}

fn fails(args: &[&str]) -> String {
    let o = kiln(args);
    assert!(!o.status.success(), "kiln {args:?} should fail");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "kiln {args:?} panicked:\n{err}");
    err
}

fn shard(dir: &Path) -> String {
    let docs: Vec<Vec<u32>> = (0..40u32)
        .map(|d| {
            std::iter::once(0)
                .chain((0..40).map(|i| 1 + (i * 5 + d) % 31))
                .collect()
        })
        .collect();
    let p = dir.join("train.parquet");
    kiln_tokenizer::shards::write_token_shard(&p, &docs).unwrap();
    p.to_str().unwrap().to_string()
}

fn pretrain_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "pretrain",
        "--data",
        data,
        "--out",
        out,
        "--vocab-size",
        "32",
        "--layers",
        "1",
        "--heads",
        "2",
        "--dim",
        "16",
        "--context",
        "16",
        "--batch",
        "2",
        "--steps",
        "4",
        "--eval-every",
        "0",
        "--sample-every",
        "0",
        "--threads",
        "1",
        "--no-progress",
    ]
}

fn losses(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("event").is_none())
        .map(|v| v["loss"].to_string())
        .collect()
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_fails_fast_and_says_how_to_build() {
    let dir = tempfile::tempdir().unwrap();
    let data = shard(dir.path());
    let out = dir.path().join("run");
    let mut a = pretrain_args(&data, out.to_str().unwrap());
    a.extend(["--device", "cuda"]);
    let checks: Vec<Vec<&str>> = vec![
        a,
        vec!["bench", "train", "--preset", "gpu-gpt2-124m"],
        vec!["bench", "train", "--preset", "tiny", "--device", "cuda"],
        vec![
            "sample", "--ckpt", "nowhere", "--prompt", "x", "--device", "cuda",
        ],
        vec![
            "sft",
            "--base",
            "nowhere",
            "--mix",
            "nowhere.toml",
            "--device",
            "cuda",
        ],
        // the GPU preset defaults to cuda
        vec!["speedrun", "--preset", "gpt2-small", "--runs", "nowhere"],
    ];
    for args in checks {
        let err = fails(&args);
        assert!(
            err.contains("built without the cuda backend") && err.contains("--features cuda"),
            "kiln {args:?}: {err}"
        );
    }
    assert!(!out.exists(), "nothing is written before the device check");
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_without_a_gpu_is_a_clean_error() {
    // Only meaningful where no NVIDIA driver is present (CI, the 2-core machine).
    if Path::new("/proc/driver/nvidia").exists() {
        return;
    }
    let err = fails(&["bench", "train", "--preset", "tiny", "--device", "cuda"]);
    assert!(err.contains("cuda"), "{err}");
}

/// The GPU speedrun preset refuses the cpu before any work (its data stages run anywhere with
/// `--data-only`, tested with the smoke preset in tests/speedrun.rs).
#[test]
fn gpt2_small_speedrun_on_the_cpu_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let e = fails(&[
        "speedrun",
        "--preset",
        "gpt2-small",
        "--device",
        "cpu",
        "--runs",
        runs.to_str().unwrap(),
    ]);
    assert!(
        e.contains("--device cuda") && e.contains("--data-only"),
        "{e}"
    );
    assert!(!runs.exists(), "nothing written");
}

#[test]
fn bad_device_and_precision_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = shard(dir.path());
    let out = dir.path().join("run");
    let mut a = pretrain_args(&data, out.to_str().unwrap());
    a.extend(["--device", "tpu"]);
    // A closed set: clap names the choices.
    let e = fails(&a);
    assert!(e.contains("possible values: cpu, cuda"), "{e}");
    let mut a = pretrain_args(&data, out.to_str().unwrap());
    a.extend(["--precision", "bf16"]);
    let e = fails(&a);
    assert!(e.contains("--device cuda") && e.contains("f32"), "{e}");
    let e = fails(&["bench", "train", "--preset", "tiny", "--precision", "fp8"]);
    assert!(e.contains("possible values: bf16, tf32, f32"), "{e}");
}

#[test]
fn device_cpu_trains_exactly_as_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let data = shard(dir.path());
    let (a_out, b_out) = (dir.path().join("a"), dir.path().join("b"));
    let o = kiln(&pretrain_args(&data, a_out.to_str().unwrap()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut b = pretrain_args(&data, b_out.to_str().unwrap());
    b.extend(["--device", "cpu", "--precision", "f32"]);
    let o = kiln(&b);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (la, lb) = (losses(&a_out), losses(&b_out));
    assert_eq!(la.len(), 4);
    assert_eq!(la, lb);
    let k: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b_out.join("ckpt/step_000004/kiln.json")).unwrap())
            .unwrap();
    assert_eq!(k["train"]["device"], "cpu");
}
