//! `kiln tool code` run as the real binary: prints exactly what the model sees, exits 0 when the
//! program ran and 1 when Python raised or the sandbox stopped it, and never crashes or hangs.
//! `kiln index build` + `kiln tool search` on a small written corpus and on the real WARC crawl.
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
        os("KSK ceremony materials"),
    ]);
    assert!(
        hits.starts_with("[1] http://www.iana.org/domains/root\n"),
        "{hits}"
    );
    assert!(!hits.contains("[2]"));
}
