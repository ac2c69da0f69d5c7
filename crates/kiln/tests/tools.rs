//! `kiln tool code` run as the real binary: prints exactly what the model sees, exits 0 when the
//! program ran and 1 when Python raised or the sandbox stopped it, and never crashes or hangs.
//! `kiln index build` + `kiln tool search` on a small written corpus and on the real WARC crawl.
//! A tiny model trained on the search lessons answers held-out facts through search.
//! Needs `kiln data fetch` (python-wasm, pywb).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tool_code(program: &[u8], extra: &[&str]) -> (i32, String, Duration) {
    kiln_data::fetch::source_dir("python-wasm").unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["tool", "code"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln runs");
    child.stdin.take().unwrap().write_all(program).unwrap();
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().expect("exited, not killed by a signal");
    (
        code,
        String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        t.elapsed(),
    )
}

#[test]
fn a_program_that_runs_exits_zero_with_its_output() {
    let (code, out, _) = tool_code(b"print(sum(range(101)), 'strawberry'.count('r'))\n", &[]);
    assert_eq!((code, out.as_str()), (0, "5050 3\n"));
}

#[test]
fn python_errors_exit_one_with_the_traceback_on_stdout() {
    let (code, out, _) = tool_code(b"print('hi')\nraise ValueError('nope')\n", &[]);
    assert_eq!(code, 1);
    assert!(out.starts_with("hi\n"), "{out}");
    assert!(out.ends_with("ValueError: nope\n"), "{out}");
    let (code, out, _) = tool_code(b"def (", &[]);
    assert_eq!(code, 1);
    assert!(out.contains("SyntaxError"), "{out}");
    let (code, out, _) = tool_code(b"\xff\xfe\n", &[]);
    assert_eq!(code, 1);
    assert!(out.contains("not valid UTF-8"), "{out}");
}

#[test]
fn the_sandbox_stopping_a_program_exits_one_with_the_reason() {
    let (code, out, took) = tool_code(b"while True:\n    pass\n", &[]);
    assert_eq!((code, out.as_str()), (1, "stopped: CPU limit\n"));
    assert!(took < Duration::from_secs(60), "{took:?}");
    let (code, out, _) = tool_code(
        b"while True:\n    print('x' * 50)\n",
        &["--output-bytes", "100"],
    );
    assert_eq!(code, 1);
    assert!(
        out.ends_with("[output truncated at 100 bytes]\nstopped: output limit\n"),
        "{out}"
    );
    let (code, out, took) = tool_code(
        b"s = 'a' * 10**7\nwhile True:\n    t = s + 'b'\n",
        &["--time-limit-secs", "1", "--fuel", "12000000000"],
    );
    assert_eq!((code, out.as_str()), (1, "stopped: time limit\n"));
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (code, out, _) = tool_code(b"print(open('/etc/passwd').read())\n", &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FileNotFoundError") && !out.contains("root:"),
        "{out}"
    );
}

#[test]
fn an_empty_program_runs_and_prints_nothing() {
    assert_eq!(tool_code(b"", &[]).0, 0);
    assert_eq!(tool_code(b"", &[]).1, "");
}

fn kiln_ok(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("kiln runs");
    assert!(
        out.status.success(),
        "{args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn search_finds_a_fact_that_exists_only_in_the_indexed_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let doc = |id: &str, url: &str, text: &str| kiln_data::TextDoc {
        text: text.into(),
        id: id.into(),
        url: url.into(),
        language: "en".into(),
        language_score: 1.0,
    };
    let shards = dir.path().join("text");
    kiln_data::write_text_shard(
        &shards.join("shard-00000.parquet"),
        &[
            doc(
                "d1",
                "https://example.org/zorvath",
                "The Zorvath kiln was built in 1742 by Ada Quill.",
            ),
            doc("d2", "", "Otters hold hands while they sleep."),
        ],
    )
    .unwrap();
    let index = dir.path().join("index");
    let built = kiln_ok(&[
        os("index"),
        os("build"),
        os("--input"),
        shards.as_os_str(),
        os("--out"),
        index.as_os_str(),
    ]);
    assert!(
        built.contains("indexed 2 documents as 2 passages"),
        "{built}"
    );
    let search = |q: &str| {
        kiln_ok(&[
            os("tool"),
            os("search"),
            os("--index"),
            index.as_os_str(),
            os(q),
        ])
    };
    assert_eq!(
        search("who built the Zorvath kiln?"),
        "[1] https://example.org/zorvath\nThe Zorvath kiln was built in 1742 by Ada Quill.\n"
    );
    // A document without a url is cited by its id.
    assert!(search("otters").starts_with("[1] d2\n"));
    assert_eq!(search("xylophone"), "no results for: xylophone\n");
    assert_eq!(search(""), "empty query: give some words to search for\n");
}

#[test]
fn search_over_the_real_crawl() {
    let warc = kiln_data::fetch::source_dir("pywb")
        .unwrap_or_else(|e| panic!("{e}"))
        .join("pywb-2.10.0/sample_archive/warcs/iana.warc.gz");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    kiln_ok(&[
        os("data"),
        os("process"),
        os("--input"),
        warc.as_os_str(),
        os("--out"),
        out.as_os_str(),
    ]);
    let index = dir.path().join("index");
    kiln_ok(&[
        os("index"),
        os("build"),
        os("--input"),
        out.join("text").as_os_str(),
        os("--out"),
        index.as_os_str(),
    ]);
    let hits = kiln_ok(&[
        os("tool"),
        os("search"),
        os("--index"),
        index.as_os_str(),
        os("-k"),
        os("1"),
        // The sentence is in the page's prose. (The page's "KSK Ceremony Materials" is only a
        // link in a list of links: the extractor drops it as navigation, as trafilatura with
        // FineWeb's settings does on the same page.)
        os("operator of the Key Signing Key for the DNS root zone"),
    ]);
    assert!(
        hits.starts_with("[1] http://www.iana.org/domains/root\n"),
        "{hits}"
    );
    assert!(!hits.contains("[2]"));
}

/// The claim end to end, through the real binary: a tiny model, trained from random
/// weights on nothing but the `tool_search` lessons, answers questions about *held-out* places —
/// places whose facts appear in no training conversation, only in the search index — by calling
/// search and reading the answer out of the result. Only the text after the last tool output
/// counts (the tool output itself holds the answer, so matching all of stdout would prove nothing).
#[test]
fn a_trained_model_answers_held_out_facts_through_search() {
    use kiln_chat::tools::lessons::{FactWorld, DEFAULT_PLACES, DEFAULT_WORLD_SEED};
    use kiln_engine::{save_checkpoint, CpuBackend, Model, ModelConfig};
    let dir = tempfile::tempdir().unwrap();
    let world = FactWorld::new(DEFAULT_PLACES, DEFAULT_WORLD_SEED);
    // The tokenizer learns its pieces from the training places' documents and questions, so a
    // held-out name is made of pieces (syllables) seen in training, as a new name would be for
    // any real tokenizer, rather than one whole token no lesson ever showed the model.
    let mut corpus = String::new();
    for (p, (_, text)) in world.places.iter().zip(world.documents()) {
        if !FactWorld::is_held_out(p) {
            corpus.push_str(&text);
            corpus.push('\n');
        }
    }
    for q in world.fact_questions(false, 7) {
        corpus.push_str(&q.question);
        corpus.push('\n');
    }
    std::fs::write(dir.path().join("corpus.txt"), &corpus).unwrap();
    let tok = dir.path().join("tok");
    let p = |x: &std::path::Path| x.to_str().unwrap().to_string();
    let tok_s = p(&tok);
    let corpus_s = p(&dir.path().join("corpus.txt"));
    kiln_ok(&[
        os("tok"),
        os("train"),
        os("--input"),
        os(&corpus_s),
        os("--vocab-size"),
        os("512"),
        os("--out"),
        os(&tok_s),
    ]);
    let model = Model::new(
        std::sync::Arc::new(CpuBackend::new(1)),
        ModelConfig::gpt2(512 + 64, 2, 4, 128, 192),
        1,
    )
    .unwrap();
    let base = dir.path().join("base");
    save_checkpoint(
        &base,
        &model,
        None,
        &serde_json::json!({"kind": "base", "config": {"tokenizer": tok}}),
    )
    .unwrap();
    let mix = dir.path().join("mix.toml");
    std::fs::write(
        &mix,
        "seed = 1\nval_fraction = 0.02\n[[source]]\nkind = \"tool_search\"\ncount = 6000\n",
    )
    .unwrap();
    let sft = dir.path().join("sft");
    let t = Instant::now();
    kiln_ok(&[
        os("sft"),
        os("--model"),
        base.as_os_str(),
        os("--mix"),
        mix.as_os_str(),
        os("--out"),
        sft.as_os_str(),
        os("--steps"),
        os("1200"),
        os("--batch"),
        os("16"),
        os("--lr"),
        os("3e-3"),
        os("--warmup"),
        os("20"),
        os("--eval-every"),
        os("200"),
        os("--ckpt-every"),
        os("10000"),
        os("--no-progress"),
    ]);
    eprintln!("sft took {:?}", t.elapsed());
    let held_out = world.fact_questions(true, 3);
    assert!(held_out.len() >= 8);
    let mut right = 0;
    let mut seen = Vec::new();
    for q in held_out.iter().step_by(held_out.len() / 8).take(8) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["chat", "--once", "--tools", "search", "--temperature", "0"])
            .args(["--max-tokens", "64", "--threads", "1", "--model"])
            .arg(&sft)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(q.question.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let called = text.contains("[search] ");
        let answer = text.rsplit("[output] ").next().unwrap_or("");
        let answer = answer.split_once('\n').map(|x| x.1).unwrap_or("");
        if called && q.is_correct(answer) {
            right += 1;
        }
        seen.push(format!("{} ({}) →\n{text}", q.question, q.answer));
    }
    eprintln!("{right}/8 right\n{}", seen.join("\n"));
    assert!(
        right >= 5,
        "{right}/8 held-out facts answered through search\n{}",
        seen.join("\n")
    );
}
