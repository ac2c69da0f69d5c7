//! Runs the real `kiln` binary: `kiln speedrun --preset smoke` once (shared by the tests here),
//! from a temp folder outside the repository, then checks the report card (its web-data section
//! too), the web stage's held-out validation text, the configs written beside the run, that a
//! rerun skips every stage, `kiln chat --once` (SFT and base-prompt modes), and `kiln sft`'s
//! bad-input errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// The fetched corpora the smoke run reads: missing data fails the test with the fetch command
/// (CI fetches first, `.ci/run`), never a silent pass.
fn require_data() {
    for source in [
        "chitchat",
        "evals",
        "gsm8k",
        "pywb",
        "python-doc",
        "python-wasm",
    ] {
        kiln_data::fetch::source_dir(source).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The smoke run's folder (run once per test binary).
fn smoke() -> &'static Path {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let t = std::time::Instant::now();
        // From a folder outside the repository, as an installed binary runs: the default configs
        // are compiled in, the data folder comes from the environment.
        let out = kiln()
            .current_dir(dir.path())
            .env("KILN_DATA_DIR", kiln_data::fetch::data_dir())
            .args(["speedrun", "--preset", "smoke", "--no-progress", "--runs"])
            .arg(dir.path())
            .output()
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "speedrun failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("chat --model"),
            "prints how to chat:\n{stdout}"
        );
        // The 3-minute goal is a benchmark figure, not an assertion (the host is shared).
        eprintln!("smoke speedrun: {secs:.1} s");
        let run = dir.path().join("smoke");
        (dir, run)
    })
    .1
}

/// `--data-only` stops after the data stages; the same command then finishes the run on a data
/// folder that holds only what the later stages read (chitchat, gsm8k, python-wasm, evals: no web
/// sources), as on a GPU machine without the corpora.
#[test]
fn data_only_then_train_without_the_web_sources() {
    require_data();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let run = |data: &Path, extra: &[&str]| {
        let out = kiln()
            .current_dir(dir.path())
            .env("KILN_DATA_DIR", data)
            .args(["speedrun", "--preset", "smoke", "--no-progress", "--runs"])
            .arg(&runs)
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "speedrun {extra:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let full = kiln_data::fetch::data_dir();
    let stdout = run(&full, &["--data-only"]);
    assert!(stdout.contains("data stages done"), "{stdout}");
    let smoke = runs.join("smoke");
    assert!(smoke.join("tokens/train.parquet").is_file());
    assert!(!smoke.join("base").exists(), "no training yet");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(smoke.join("plan.json")).unwrap()).unwrap();
    assert_eq!(
        plan["seconds_per_step"], 0.0,
        "steps are planned where it trains"
    );

    // a data folder with the four later-stage sources only (links to the fetched ones)
    let pruned = dir.path().join("data");
    std::fs::create_dir_all(pruned.join("raw")).unwrap();
    for source in ["chitchat", "gsm8k", "python-wasm", "evals"] {
        std::os::unix::fs::symlink(
            kiln_data::fetch::source_dir(source).unwrap(),
            pruned.join("raw").join(source),
        )
        .unwrap();
    }
    let stdout = run(&pruned, &[]);
    assert!(stdout.contains("report card"), "{stdout}");
    assert!(smoke.join("report.md").is_file());
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(smoke.join("plan.json")).unwrap()).unwrap();
    assert!(plan["pretrain_steps"].as_u64().unwrap() >= 20, "{plan}");
    assert_eq!(plan["device"], "cpu");
}

#[test]
fn smoke_speedrun_writes_report_card_and_reruns_skip() {
    require_data();
    let run = smoke();
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    for needle in [
        "validation bits per byte",
        "chat validation loss",
        "MMLU (",
        "GSM8K (",
        "arithmetic (held out) (",
        "held-out pass@1 (greedy) | RL |",
        "RL rollouts",
        "tokens/s",
        "## Samples",
        "## Data: the web stage",
        "| web crawl (WARC) |",
        "| python-doc: HTML pages |",
        "| gopher_quality |",
        "### 1. ",
        "### 3. ",
        "- removed",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle:?}:\n{md}");
    }
    // The web stage's output stays in the run; validation documents never train.
    let shard = |name: &str| kiln_data::read_text_shard(&run.join("web").join(name)).unwrap();
    let (train, val) = (shard("train.parquet"), shard("val.parquet"));
    assert!(
        train.len() > 100 && !val.is_empty(),
        "{} / {}",
        train.len(),
        val.len()
    );
    let train_ids: std::collections::HashSet<&str> = train.iter().map(|d| d.id.as_str()).collect();
    assert!(val.iter().all(|d| !train_ids.contains(d.id.as_str())));
    assert!(run.join("web/pipeline/stats.json").is_file());
    // The compiled-in configs, written beside the run for editing.
    for f in [
        "sft-mix.toml",
        "persona.toml",
        "base-prompt.txt",
        "pipeline.toml",
    ] {
        assert!(run.join("configs").join(f).is_file(), "configs/{f}");
    }
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 4, "four inline charts");
    assert!(!html.contains("<script"));
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    let bpb = eval["base"]["val_bpb"].as_f64().unwrap();
    assert!(bpb > 0.5 && bpb < 8.0, "bpb {bpb}");
    let (v0, v1) = (
        eval["sft"]["chat_val_loss_base"].as_f64().unwrap(),
        eval["sft"]["chat_val_loss"].as_f64().unwrap(),
    );
    assert!(v1 < v0, "SFT lowers the chat validation loss: {v0} -> {v1}");
    assert_eq!(eval["samples"].as_array().unwrap().len(), 4);

    // Rerun: every stage's output exists, so everything is skipped and it is quick.
    let t = std::time::Instant::now();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = kiln()
        .current_dir(elsewhere.path())
        .env("KILN_DATA_DIR", kiln_data::fetch::data_dir())
        .args(["speedrun", "--preset", "smoke", "--no-progress", "--runs"])
        .arg(run.parent().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        (2..10).all(|i| !stdout.contains(&format!("[{i}/10]"))),
        "stages rerun:\n{stdout}"
    );
    eprintln!("rerun: {:.1} s", t.elapsed().as_secs_f64());
    let md2 = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(
        !md2.contains("| pretrain | skipped"),
        "the first run's timing is kept:\n{md2}"
    );
}

fn chat_once(args: &[&str], input: &str) -> std::process::Output {
    let mut child = kiln()
        // Not the repository: nothing may be found through a relative path.
        .current_dir(std::env::temp_dir())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn chat_once_replies_from_sft_and_base_prompt_modes() {
    require_data();
    let run = smoke();
    let sft = run.join("sft");
    let out = chat_once(
        &[
            "chat",
            "--model",
            sft.to_str().unwrap(),
            "--once",
            "--temperature",
            "0",
            "--max-tokens",
            "20",
        ],
        "Who are you?\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(!reply.trim().is_empty());
    assert!(
        !reply.contains("<|"),
        "no control tokens in the reply: {reply}"
    );
    // Greedy is deterministic.
    let again = chat_once(
        &[
            "chat",
            "--model",
            sft.to_str().unwrap(),
            "--once",
            "--temperature",
            "0",
            "--max-tokens",
            "20",
        ],
        "Who are you?\n",
    );
    assert_eq!(reply, String::from_utf8_lossy(&again.stdout));

    let base = run.join("base");
    let doc = run.join("configs/base-prompt.txt");
    let out = chat_once(
        &[
            "chat",
            "--model",
            base.to_str().unwrap(),
            "--base-prompt",
            doc.to_str().unwrap(),
            "--once",
            "--max-tokens",
            "30",
        ],
        "hello",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("\nUser:"),
        "stops at the next turn marker"
    );

    // `--ckpt` is the old spelling, kept as a hidden alias for one release.
    let empty = chat_once(&["chat", "--ckpt", sft.to_str().unwrap(), "--once"], "  \n");
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("stdin was empty"));
}

#[test]
fn sft_bad_inputs_fail_clearly() {
    require_data();
    let run = smoke();
    let dir = tempfile::tempdir().unwrap();
    let base = run.join("base");
    // A malformed line: skipped and counted by default, an error naming file:line with --strict.
    let convs = dir.path().join("c.jsonl");
    std::fs::write(
        &convs,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"hello\"}]}\n{oops\n",
    )
    .unwrap();
    let mix = dir.path().join("mix.toml");
    std::fs::write(
        &mix,
        "val_fraction = 0.0\n[[source]]\nkind = \"jsonl\"\nfile = \"c.jsonl\"\n",
    )
    .unwrap();
    let o = kiln()
        .args([
            "sft",
            "--model",
            base.to_str().unwrap(),
            "--mix",
            mix.to_str().unwrap(),
            "--strict",
            "--steps",
            "1",
            "--no-progress",
            "--out",
        ])
        .arg(dir.path().join("o1"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("c.jsonl:2"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = kiln()
        .args([
            "sft",
            "--model",
            base.to_str().unwrap(),
            "--mix",
            mix.to_str().unwrap(),
            "--steps",
            "2",
            "--batch",
            "1",
            "--no-progress",
            "--out",
        ])
        .arg(dir.path().join("o2"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("malformed    1"), "{stdout}");
    assert!(dir.path().join("o2/ckpt/latest").exists());
    // A tokenizer without the chat tokens.
    let o = kiln()
        .args([
            "sft",
            "--model",
            base.to_str().unwrap(),
            "--mix",
            mix.to_str().unwrap(),
            "--tokenizer",
            "gpt2",
            "--out",
        ])
        .arg(dir.path().join("o3"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("<|bos|>") && err.contains("chat tokens"),
        "{err}"
    );
}

/// `kiln bench loop`: both sides measured in the same run, the ratio printed (one short round).
#[test]
fn bench_loop_times_the_speedrun_loop_beside_the_bare_step() {
    let out = kiln()
        .current_dir(std::env::temp_dir())
        .args(["bench", "loop", "--rounds", "1", "--steps", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "bench_tok_s",
        "loop_step_tok_s",
        "bench_wall_tok_s",
        "loop_wall_tok_s",
    ] {
        let v = r[key].as_array().unwrap_or_else(|| panic!("{key}: {r}"));
        assert!(v.len() == 1 && v[0].as_f64().unwrap() > 0.0, "{key}: {r}");
    }
    let ratio = r["ratio_step"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio.is_finite(), "{r}");
}
