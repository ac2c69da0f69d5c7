//! Runs the real `kiln` binary through RLHF on a tiny random model with a freshly trained
//! tokenizer: `kiln label --simulate` (the scripted labeller) and `--import`, `kiln rm train`,
//! `kiln rm score`, `kiln rlhf` (outputs: curves, samples, the best checkpoint, the win rate), and
//! the bad inputs — an ordering over fewer than 2 samples, a malformed pair file, a reward model
//! whose tokenizer is not the policy's.

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

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tokenizer(dir: &Path, name: &str, text: &str) -> String {
    let corpus = dir.join(format!("{name}.txt"));
    std::fs::write(&corpus, text.repeat(40)).unwrap();
    let tok = dir.join(name);
    ok(&kiln(&[
        "tok",
        "train",
        "--input",
        corpus.to_str().unwrap(),
        "--vocab-size",
        "300",
        "--out",
        tok.to_str().unwrap(),
    ]));
    tok.display().to_string()
}

/// A tiny random policy that records its tokenizer; returns its folder.
fn policy(d: &Path, tok: &str) -> String {
    let model = Model::new(
        Arc::new(CpuBackend::new(1)),
        ModelConfig::gpt2(320, 1, 2, 32, 96),
        1,
    )
    .unwrap();
    let sft = d.join("sft");
    save_checkpoint(
        &sft,
        &model,
        None,
        &serde_json::json!({"kind": "sft", "config": {"tokenizer": tok}}),
    )
    .unwrap();
    sft.display().to_string()
}

#[test]
fn a_killed_labelling_session_keeps_every_saved_ordering() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok = tokenizer(d, "tok", "Why did the pelican fly? It wanted a fish.\n");
    let sft = policy(d, &tok);
    let prefs = d.join("prefs.jsonl");
    let prompts = d.join("prompts.txt");
    let lines: Vec<String> = (0..400)
        .map(|i| format!("write a joke about fish {i}"))
        .collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "label",
            "--ckpt",
            &sft,
            "--prompts",
            prompts.to_str().unwrap(),
            "--out",
            prefs.to_str().unwrap(),
            "--simulate",
            "--samples",
            "3",
            "--max-new",
            "8",
        ])
        .spawn()
        .unwrap();
    // Kill it (SIGKILL) while it is appending: once a few orderings are in.
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&prefs).map_or(0, |t| t.lines().count()) < 5 {
        assert!(t0.elapsed().as_secs() < 120, "no orderings written");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(37));
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&prefs).unwrap();
    assert!(text.ends_with('\n'), "no half line");
    let n = kiln_train::rm::prefs::read_prefs(&prefs).unwrap().len();
    assert!((5..400).contains(&n), "{n} orderings");
    // Continuing labels only what is left.
    let o = kiln(&[
        "label",
        "--ckpt",
        &sft,
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        prefs.to_str().unwrap(),
        "--simulate",
        "--samples",
        "3",
        "--max-new",
        "8",
    ]);
    ok(&o);
    assert_eq!(
        kiln_train::rm::prefs::read_prefs(&prefs).unwrap().len(),
        400
    );
}

#[test]
fn label_rm_and_rlhf_run_end_to_end_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok = tokenizer(
        d,
        "tok",
        "Why did the pelican fly? It wanted a fish. The cat sat on the mat!\n",
    );
    let sft = policy(d, &tok);
    let sft = sft.as_str();
    let prompts = d.join("prompts.txt");
    let topics = [
        "pelicans", "cats", "owls", "trains", "boats", "moons", "kites", "frogs",
    ];
    let lines: Vec<String> = topics
        .iter()
        .flat_map(|t| {
            [
                format!("write a joke about {t}"),
                format!("tell me a story about {t}"),
            ]
        })
        .collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let prompts = prompts.to_str().unwrap();
    let prefs = d.join("prefs.jsonl");
    let prefs = prefs.to_str().unwrap();
    let label = |extra: &[&str]| {
        let mut a = vec![
            "label",
            "--ckpt",
            sft,
            "--prompts",
            prompts,
            "--out",
            prefs,
            "--max-new",
            "12",
        ];
        a.extend_from_slice(extra);
        kiln(&a)
    };
    assert!(err(&label(&["--samples", "1", "--simulate"])).contains("at least 2 samples"));
    let out = ok(&label(&["--samples", "3", "--simulate", "--rounds", "2"]));
    assert!(out.contains("simulator of a person"), "{out}");
    let n = std::fs::read_to_string(prefs).unwrap().lines().count();
    assert!(n >= 20, "{n} orderings");
    // A second session has nothing left to do: every prompt is in the file.
    ok(&label(&["--samples", "3", "--simulate"]));
    assert_eq!(std::fs::read_to_string(prefs).unwrap().lines().count(), n);

    let pairs = d.join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"prompt\":\"q\",\"chosen\":\"a fish!\",\"rejected\":\"fish fish\"}\n{\"prompt\":\"q\",\"chosen\":\"a\"}\n",
    )
    .unwrap();
    let e = err(&kiln(&[
        "label",
        "--import",
        pairs.to_str().unwrap(),
        "--out",
        prefs,
    ]));
    assert!(
        e.contains("pairs.jsonl:2") && e.contains("\"rejected\""),
        "{e}"
    );

    let rm = d.join("rm");
    let rm = rm.to_str().unwrap();
    let out = ok(&kiln(&[
        "rm",
        "train",
        "--model",
        sft,
        "--prefs",
        prefs,
        "--out",
        rm,
        "--steps",
        "6",
        "--eval-every",
        "3",
        "--threads",
        "1",
        "--held-out",
        "0.3",
    ]));
    assert!(
        out.contains("held-out pairwise accuracy") && out.contains("chance 0.5"),
        "{out}"
    );
    assert!(Path::new(rm).join("rm.svg").exists());
    let out = ok(&kiln(&[
        "rm",
        "score",
        "--rm",
        rm,
        "--prompt",
        "write a joke about pelicans",
        "--response",
        "A pelican flew!",
        "pelican pelican pelican",
        "--threads",
        "1",
    ]));
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = ok(&kiln(&[
        "rm",
        "score",
        "--rm",
        rm,
        "--prefs",
        prefs,
        "--threads",
        "1",
    ]));
    assert!(out.contains("pairwise accuracy"), "{out}");

    let rlhf = d.join("rlhf");
    let rlhf_s = rlhf.to_str().unwrap();
    let run = |rm: &str, out: &str| {
        kiln(&[
            "rlhf",
            "--policy",
            sft,
            "--rm",
            rm,
            "--out",
            out,
            "--prompts",
            prompts,
            "--steps",
            "4",
            "--guard-every",
            "2",
            "--group",
            "2",
            "--prompts-per-step",
            "2",
            "--max-new",
            "8",
            "--guard-samples",
            "2",
            "--guard-prompts",
            "3",
            "--test-prompts",
            "3",
            "--win-samples",
            "2",
            "--threads",
            "1",
            "--no-progress",
        ])
    };
    let out = ok(&run(rm, rlhf_s));
    assert!(
        out.contains("win rate") && out.contains("best checkpoint"),
        "{out}"
    );
    for f in [
        "rlhf.json",
        "rlhf.svg",
        "summary.json",
        "metrics.jsonl",
        "best/kiln.json",
    ] {
        assert!(rlhf.join(f).exists(), "{f}");
    }

    // A reward model that reads another tokenizer's ids cannot score this policy.
    let other = tokenizer(
        d,
        "tok2",
        "Completely different words: zebra quartz vortex jam.\n",
    );
    let rm2 = d.join("rm2");
    ok(&kiln(&[
        "rm",
        "train",
        "--model",
        sft,
        "--tokenizer",
        &other,
        "--prefs",
        prefs,
        "--out",
        rm2.to_str().unwrap(),
        "--steps",
        "1",
        "--threads",
        "1",
    ]));
    let e = err(&run(
        rm2.to_str().unwrap(),
        d.join("rlhf2").to_str().unwrap(),
    ));
    assert!(e.contains("tokenizer") && e.contains("differ"), "{e}");
}
