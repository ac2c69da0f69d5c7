//! `kiln data process | explain | tokenize` run as the real binary: the real WARC crawl, N local
//! processes sharing one output folder against one process, resume, and token shards.

use std::path::{Path, PathBuf};
use std::process::Command;

fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_ARRAY_TASK_COUNT")
        .env_remove("JOB_COMPLETION_INDEX");
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().expect("kiln runs");
    assert!(
        out.status.success(),
        "{c:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The real crawl in the fetched `pywb` source: missing data fails the test with the fetch
/// command (CI fetches first, `.ci/run`), never a silent pass.
fn iana() -> PathBuf {
    kiln_data::fetch::source_dir("pywb")
        .unwrap_or_else(|e| panic!("{e}"))
        .join("pywb-2.10.0/sample_archive/warcs/iana.warc.gz")
}

fn files_under(dir: &Path, sub: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn real_warc_processes_explains_and_resumes() {
    let warc = iana();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stdout = run_ok(
        kiln()
            .args(["data", "process", "--input"])
            .arg(&warc)
            .arg("--out")
            .arg(&out),
    );
    assert!(
        stdout.contains("gopher_quality") && stdout.contains("non_html="),
        "{stdout}"
    );
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
    let read = &stats["stages"][0];
    assert_eq!(read["docs_in"], 48, "48 responses in the crawl");
    assert_eq!(read["notes"]["warc_request_records"], 171);
    let kept = stats["stages"][9]["docs_out"].as_u64().unwrap();
    assert!(kept >= 1, "{stats}");
    let texts = kiln_data::read_text_column(&out.join("text/shard-00000.parquet"), "text").unwrap();
    assert_eq!(texts.len() as u64, kept);
    // Explain a dropped record and a kept one.
    let rejects = std::fs::read_to_string(out.join("rejects/filter-unit-00000.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
    let id = first["id"].as_str().unwrap();
    let explained = run_ok(kiln().args(["data", "explain", id, "--out"]).arg(&out));
    assert!(
        explained.contains(&format!("stage `{}`", first["stage"].as_str().unwrap())),
        "{explained}"
    );
    let kept_id =
        &kiln_data::read_text_column(&out.join("text/shard-00000.parquet"), "id").unwrap()[0];
    assert!(
        run_ok(kiln().args(["data", "explain", kept_id, "--out"]).arg(&out)).contains("kept in")
    );
    let missing = kiln()
        .args(["data", "explain", "no-such-id", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        !missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("not found")
    );
    // Rerun: nothing redone.
    let again = run_ok(
        kiln()
            .args(["data", "process", "--input"])
            .arg(&warc)
            .arg("--out")
            .arg(&out),
    );
    assert!(
        again.contains("0 units processed, 1 already done"),
        "{again}"
    );
}

#[test]
fn three_processes_give_the_same_output_as_one() {
    let warc = iana();
    let dir = tempfile::tempdir().unwrap();
    // Several units: the real crawl plus small HTML pages and a bad (truncated) WARC.
    let inputs = dir.path().join("inputs");
    std::fs::create_dir_all(inputs.join("site")).unwrap();
    std::fs::copy(&warc, inputs.join("a-iana.warc.gz")).unwrap();
    let crawl = std::fs::read(&warc).unwrap();
    std::fs::write(inputs.join("b-cut.warc.gz"), &crawl[..crawl.len() / 3]).unwrap();
    let para = "The river town grew beside the water, and its people built mills, bridges and a market hall that still stands in the square today. ";
    for k in 0..25 {
        let body: String = (0..8).map(|p| format!("<p>{para} Paragraph {p} of page {} tells about the harbour, the church and the ferry.</p>", k % 12)).collect();
        std::fs::write(
            inputs.join(format!("site/p{k:02}.html")),
            format!("<html><body><main>{body}</main></body></html>"),
        )
        .unwrap();
    }
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[input]\nhtml_files_per_unit = 5\n").unwrap();
    let one = dir.path().join("one");
    run_ok(
        kiln()
            .args(["data", "process", "--config"])
            .arg(&config)
            .arg("--input")
            .arg(&inputs)
            .arg("--out")
            .arg(&one),
    );
    let many = dir.path().join("many");
    let children: Vec<_> = (0..3)
        .map(|t| {
            let mut c = kiln();
            c.args(["data", "process", "--config"])
                .arg(&config)
                .arg("--input")
                .arg(&inputs)
                .arg("--out")
                .arg(&many);
            // Task index from the environment, as a Slurm array or Kubernetes indexed Job sets it.
            c.env("JOB_COMPLETION_INDEX", t.to_string())
                .env("KILN_TASKS", "3");
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let a = files_under(&one, "text");
    assert_eq!(a.len(), 7, "2 WARC units + 5 HTML units");
    let b = files_under(&many, "text");
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for ((name, _), _) in a.iter().zip(&b) {
        let ra = kiln_data::read_text_shard(&one.join("text").join(name)).unwrap();
        let rb = kiln_data::read_text_shard(&many.join("text").join(name)).unwrap();
        assert_eq!(ra, rb, "{name}");
    }
    assert_eq!(
        std::fs::read(one.join("stats.json")).unwrap(),
        std::fs::read(many.join("stats.json")).unwrap()
    );
    let stats = std::fs::read_to_string(one.join("stats.json")).unwrap();
    assert!(
        stats.contains("truncated_gzip") && stats.contains("\"duplicate\""),
        "{stats}"
    );
}

#[test]
fn tokenize_writes_bos_first_token_shards() {
    let dir = tempfile::tempdir().unwrap();
    let text_dir = dir.path().join("text");
    std::fs::create_dir_all(&text_dir).unwrap();
    let doc = |t: &str, id: &str| kiln_data::TextDoc {
        text: t.into(),
        id: id.into(),
        url: String::new(),
        language: "en".into(),
        language_score: 1.0,
    };
    kiln_data::write_text_shard(
        &text_dir.join("shard-00000.parquet"),
        &[doc("hello world", "a"), doc("", "b")],
    )
    .unwrap();
    kiln_data::write_text_shard(
        &text_dir.join("shard-00001.parquet"),
        &[doc("second shard here", "c")],
    )
    .unwrap();
    let tokens = dir.path().join("tokens");
    let out = run_ok(
        kiln()
            .args([
                "data",
                "tokenize",
                "--tokenizer",
                "gpt2",
                "--bos",
                "<|endoftext|>",
                "--input",
            ])
            .arg(&text_dir)
            .arg("--out")
            .arg(&tokens),
    );
    assert!(out.contains("3 documents"), "{out}");
    let s0 = kiln_tokenizer::shards::read_token_shard(&tokens.join("shard-00000.parquet")).unwrap();
    assert_eq!(s0, vec![vec![50256, 31373, 995], vec![50256]]);
    let s1 = kiln_tokenizer::shards::read_token_shard(&tokens.join("shard-00001.parquet")).unwrap();
    assert_eq!(s1[0][0], 50256);
    // Rerun skips finished shards; a missing BOS token is an error naming the fix.
    assert!(run_ok(
        kiln()
            .args([
                "data",
                "tokenize",
                "--tokenizer",
                "gpt2",
                "--bos",
                "<|endoftext|>",
                "--input"
            ])
            .arg(&text_dir)
            .arg("--out")
            .arg(&tokens)
    )
    .contains("2 shards already done"));
    let bad = kiln()
        .args(["data", "tokenize", "--tokenizer", "gpt2", "--input"])
        .arg(&text_dir)
        .arg("--out")
        .arg(dir.path().join("t2"))
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--bos"));
}

#[test]
fn bad_task_flags_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let out = kiln()
        .args(["data", "process", "--task", "3", "--tasks", "2", "--input"])
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("o"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("task 3 is not below the task count 2"));
    let cfg = kiln()
        .args(["data", "process", "--print-config"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&cfg.stdout);
    assert!(
        text.contains("[gopher_quality]")
            && text.contains("min_doc_words = 50")
            && text.contains("num_buckets = 14"),
        "{text}"
    );
}

#[test]
fn extract_prints_a_pages_main_text_or_why_it_was_dropped() {
    let page = "<html><head><title>t</title><script>var x = 1;</script></head><body>\
        <nav><a href='/'>Home</a> <a href='/about'>About us</a></nav>\
        <main><h1>Kilns</h1><p>A kiln is a thermally insulated chamber used to fire pottery.</p></main>\
        <footer>Copyright 2026 example.org</footer></body></html>";
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("page.html");
    std::fs::write(&f, page).unwrap();
    let text = run_ok(kiln().args(["data", "extract"]).arg(&f));
    assert!(text.contains("thermally insulated chamber"), "{text}");
    assert!(
        !text.contains("About us") && !text.contains("Copyright") && !text.contains("var x"),
        "{text}"
    );

    // The pipeline's real extraction on a news-like page: the share bar, related-links list and
    // cookie banner around the article body go; a boilerplate-named wrapper keeps its body.
    let news = "<body><div class='cookie-banner'>We use cookies. Accept all</div>\
        <div class='l-sidebar-fixed'><h1>Kiln prices rise</h1>\
        <p>Potters across the region paid more for firing this year, the guild said on Monday.</p>\
        <div class='share-bar'><a href='/s'>Share on social media</a></div>\
        <p>Electric kilns cost forty percent more to run than two years ago, members reported.</p>\
        <ul><li><a href='/r1'>Glazes explained</a></li><li><a href='/r2'>Clay bodies</a></li></ul>\
        </div></body>";
    let nf = dir.path().join("news.html");
    std::fs::write(&nf, news).unwrap();
    let text = run_ok(kiln().args(["data", "extract"]).arg(&nf));
    assert_eq!(
        text.trim_end(),
        "Kiln prices rise\nPotters across the region paid more for firing this year, the guild \
         said on Monday.\nElectric kilns cost forty percent more to run than two years ago, \
         members reported."
    );
    // --url runs the URL filter first, as the pipeline does: a banned word in the URL drops it.
    let ok = run_ok(
        kiln()
            .args(["data", "extract", "--url", "https://example.org/kilns"])
            .arg(&nf),
    );
    assert_eq!(ok, text);
    let out = kiln()
        .args(["data", "extract", "--url", "https://example.org/porn/kilns"])
        .arg(&nf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stage `url_filter`"), "{err}");

    // UTF-16 bytes declared as UTF-8 by the server: dropped as the pipeline drops it, exit 1.
    let bad = dir.path().join("bad.html");
    std::fs::write(&bad, [0xffu8, 0xfe, 0x00]).unwrap();
    let out = kiln().args(["data", "extract"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stage `extract`") && err.contains("undecodable"),
        "{err}"
    );
}
