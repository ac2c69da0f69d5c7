//! Runs the real `kiln` binary: `kiln rl` on a tiny random model with a freshly trained tokenizer
//! (a few steps: the outputs, the summary line and resume), and its bad inputs — an unknown task,
//! a group of 1, a tokenizer without the chat tokens.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use kiln_engine::{save_checkpoint, CpuBackend, Model, ModelConfig};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .unwrap()
}

/// A 300-token tokenizer (with the chat tokens) and a random 1-layer model that records it.
fn tiny(dir: &Path) -> String {
    let text = dir.join("corpus.txt");
    std::fs::write(
        &text,
        "What is 12 + 7? The answer is 19. Compute 40 - 3. The answer is 37.\n".repeat(50),
    )
    .unwrap();
    let tok = dir.join("tok");
    let o = kiln(&[
        "tok",
        "train",
        "--input",
        text.to_str().unwrap(),
        "--vocab-size",
        "300",
        "--out",
        tok.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let model = Model::new(
        Arc::new(CpuBackend::new(1)),
        ModelConfig::gpt2(320, 1, 2, 32, 128),
        1,
    )
    .unwrap();
    let ck = dir.join("sft");
    save_checkpoint(
        &ck,
        &model,
        None,
        &serde_json::json!({"kind": "sft", "config": {"tokenizer": tok}}),
    )
    .unwrap();
    ck.display().to_string()
}

/// `kiln rl` with small settings (`extra` adds `--steps`, `--group` and the rest).
fn rl_args<'a>(model: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "rl",
        "--model",
        model,
        "--task",
        "arith",
        "--out",
        out,
        "--prompts-per-step",
        "2",
        "--max-new",
        "8",
        "--eval-problems",
        "3",
        "--threads",
        "1",
        "--no-progress",
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn rl_runs_writes_curves_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let out = dir.path().join("rl").display().to_string();
    let o = kiln(&rl_args(
        &model,
        &out,
        &[
            "--steps", "3", "--group", "4", "--loss", "grpo", "--kl", "0.01",
        ],
    ));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("step 3  held-out pass@1") && stdout.contains("rollouts"),
        "{stdout}"
    );
    let m = std::fs::read_to_string(Path::new(&out).join("metrics.jsonl")).unwrap();
    assert_eq!(m.lines().filter(|l| l.contains("reward_mean")).count(), 3);
    assert!(Path::new(&out).join("rl.svg").exists());
    // The run records the tokenizer, so the result chats like any other checkpoint.
    let o = kiln(&rl_args(
        &model,
        &out,
        &["--steps", "4", "--group", "4", "--resume"],
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("step 4 "));
    let m = std::fs::read_to_string(Path::new(&out).join("metrics.jsonl")).unwrap();
    assert_eq!(m.lines().filter(|l| l.contains("reward_mean")).count(), 4);
}

#[test]
fn rl_bad_inputs_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let out = dir.path().join("o").display().to_string();
    // An unknown task: clap lists the tasks.
    let mut a = rl_args(&model, &out, &["--steps", "1", "--group", "4"]);
    a[4] = "gsm9k";
    let o = kiln(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("gsm9k") && err.contains("arith, arith-easy, two-digit-sums, word, countdown"),
        "{err}"
    );
    // A group of 1.
    let o = kiln(&rl_args(&model, &out, &["--steps", "1", "--group", "1"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("at least 2 samples"),
        "{err}"
    );
    // A tokenizer without the chat tokens (GPT-2's).
    let o = kiln(&rl_args(
        &model,
        &out,
        &["--steps", "1", "--group", "4", "--tokenizer", "gpt2"],
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("chat tokens"), "{err}");
}
