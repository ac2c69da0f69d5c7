//! `kiln tok …` end to end through the real binary: tiktoken ids, train → encode → decode,
//! view, and every bad input of issue 2 (clear error naming the file, non-zero exit, no output).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kiln(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn err(out: &Output) -> String {
    assert!(!out.status.success(), "should fail");
    assert!(out.stdout.is_empty(), "failed run printed output");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const CORPUS: &str = "The quick brown fox jumps over the lazy dog. It's a dog's life!\n\
    def tokenize(text):\n    return [t for t in text.split()]\n\
    Numbers 12345 and 2026-11-26, emoji 🎉, 中文 text.\n";

/// Pseudo-random words from syllables: enough distinct pairs for a few hundred merges.
fn words(seed: u64, n: usize) -> String {
    const SYL: [&str; 16] = [
        "ka", "to", "ri", "mon", "sel", "va", "qu", "zen", "ther", "ing", "ed", "pre", "un", "lo",
        "str", "ae",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = String::new();
    for k in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for s in 0..1 + (x % 4) {
            out.push_str(SYL[((x >> (8 * s)) % 16) as usize]);
        }
        out.push(if k % 12 == 11 { '\n' } else { ' ' });
    }
    out
}

fn write_corpus(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for k in 0..20 {
        let text = CORPUS.repeat(k + 1) + &words(k as u64, 400);
        std::fs::write(dir.join(format!("doc{k}.txt")), text).unwrap();
    }
    std::fs::write(dir.join("sub/more.md"), CORPUS.repeat(30)).unwrap();
}

fn train_args<'a>(input: &'a str, out: &'a str, vocab: &'a str) -> Vec<&'a str> {
    vec![
        "tok",
        "train",
        "--input",
        input,
        "--vocab-size",
        vocab,
        "--out",
        out,
    ]
}

#[test]
fn encode_ids_are_tiktokens() {
    // Reference ids from tiktoken (cl100k_base, o200k_base, gpt2).
    let out = kiln(
        &["tok", "encode", "--tokenizer", "cl100k_base", "--ids"],
        b"hello world",
    );
    assert_eq!(ok(&out), "15339 1917\n");
    let out = kiln(
        &["tok", "encode", "--tokenizer", "o200k_base", "--ids"],
        b"hello world",
    );
    assert_eq!(ok(&out), "24912 2375\n");
    let out = kiln(
        &["tok", "encode", "--vocab", "gpt2", "--ids"],
        b"hello world",
    );
    assert_eq!(ok(&out), "31373 995\n");
    // Special text stays ordinary unless allowed.
    let text = b"a<|endoftext|>";
    let plain = ok(&kiln(&["tok", "encode", "--ids"], text));
    assert!(!plain.contains("100257"), "{plain}");
    let special = ok(&kiln(
        &["tok", "encode", "--ids", "--allow-special", "all"],
        text,
    ));
    assert_eq!(special, "64 100257\n");
    // Without --ids: one id and token per line.
    let lines = ok(&kiln(&["tok", "encode"], b"hello world"));
    assert_eq!(lines, "15339\t\"hello\"\n1917\t\" world\"\n");
}

#[test]
fn train_then_encode_decode_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    write_corpus(&corpus);
    let out_dir = dir.path().join("tok");
    let mut args = train_args(corpus.to_str().unwrap(), out_dir.to_str().unwrap(), "400");
    args.extend(["--pattern", "gpt4", "--holdout", "0.1"]);
    let stdout = ok(&kiln(&args, b""));
    assert!(stdout.contains("trained 400 tokens"), "{stdout}");
    for row in ["GPT-2 (r50k_base)", "GPT-4 (cl100k_base)", "bytes/token"] {
        assert!(stdout.contains(row), "missing {row}: {stdout}");
    }
    assert!(out_dir.join("tokenizer.tiktoken").is_file());
    assert!(out_dir.join("tokenizer.json").is_file());
    let vocab = out_dir.to_str().unwrap();
    let ids = ok(&kiln(
        &["tok", "encode", "--tokenizer", vocab, "--ids"],
        CORPUS.as_bytes(),
    ));
    assert!(ids.split_whitespace().count() < CORPUS.len() / 2, "{ids}");
    let text = ok(&kiln(
        &["tok", "decode", "--tokenizer", vocab],
        ids.as_bytes(),
    ));
    assert_eq!(text, CORPUS);
    // The chat special tokens follow the merges: <|bos|> is id 400 - 11.
    let bos = ok(&kiln(
        &[
            "tok",
            "encode",
            "--vocab",
            vocab,
            "--ids",
            "--allow-special",
            "<|bos|>",
        ],
        b"<|bos|>",
    ));
    assert_eq!(bos, "389\n");
}

#[test]
fn view_shows_boundaries_ids_and_counts() {
    let out = kiln(
        &[
            "tok",
            "view",
            "--vocab",
            "cl100k_base",
            "--color",
            "never",
            "--text",
            "hello world",
        ],
        b"",
    );
    let stdout = ok(&out);
    assert!(stdout.contains("hello| world"), "{stdout}");
    assert!(stdout.contains("15339 1917"), "{stdout}");
    assert!(
        stdout.contains("2 tokens, 11 bytes, 5.50 bytes/token"),
        "{stdout}"
    );
    let out = kiln(
        &["tok", "view", "--color", "always"],
        "naïve 🎉\n".as_bytes(),
    );
    let stdout = ok(&out);
    assert!(stdout.contains("\x1b[48;5;"), "{stdout}");
}

#[test]
fn bad_training_input_fails_cleanly_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = out_dir.to_str().unwrap();
    let corpus = dir.path().join("corpus");
    write_corpus(&corpus);
    let input = corpus.to_str().unwrap();

    // Missing file.
    let missing = dir.path().join("nope.txt");
    let e = err(&kiln(
        &train_args(missing.to_str().unwrap(), out, "300"),
        b"",
    ));
    assert!(e.contains("nope.txt"), "{e}");

    // A binary file inside a folder ...
    std::fs::write(
        corpus.join("sub/image.png"),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    )
    .unwrap();
    let e = err(&kiln(&train_args(input, out, "300"), b""));
    assert!(e.contains("image.png") && e.contains("binary"), "{e}");
    // ... is skipped on request.
    let mut args = train_args(input, out, "300");
    args.push("--skip-binary");
    ok(&kiln(&args, b""));
    std::fs::remove_dir_all(&out_dir).unwrap();
    std::fs::remove_file(corpus.join("sub/image.png")).unwrap();

    // Invalid UTF-8: file and line.
    std::fs::write(
        corpus.join("bad.txt"),
        b"line one\nline two \xc3\x28 oops\n",
    )
    .unwrap();
    let e = err(&kiln(&train_args(input, out, "300"), b""));
    assert!(e.contains("bad.txt:2: invalid UTF-8"), "{e}");
    std::fs::remove_file(corpus.join("bad.txt")).unwrap();

    // Empty corpus.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("a.txt"), "").unwrap();
    let e = err(&kiln(&train_args(empty.to_str().unwrap(), out, "300"), b""));
    assert!(e.contains("empty corpus"), "{e}");

    // Vocab below 256 + specials.
    let e = err(&kiln(&train_args(input, out, "260"), b""));
    assert!(e.contains("260") && e.contains("267"), "{e}");

    // Nothing was written by any failed run.
    assert!(!out_dir.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn corrupt_vocab_and_bad_ids_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    write_corpus(&corpus);
    let vocab_dir = dir.path().join("tok");
    let vocab = vocab_dir.to_str().unwrap();
    ok(&kiln(
        &train_args(corpus.to_str().unwrap(), vocab, "300"),
        b"",
    ));
    let rank_file = vocab_dir.join("tokenizer.tiktoken");
    let good = std::fs::read_to_string(&rank_file).unwrap();

    let mut lines: Vec<&str> = good.lines().collect();
    lines[41] = "@@@ 41";
    std::fs::write(&rank_file, lines.join("\n") + "\n").unwrap();
    let e = err(&kiln(&["tok", "encode", "--vocab", vocab, "--ids"], b"hi"));
    assert!(e.contains("tokenizer.tiktoken:42:"), "{e}");

    std::fs::write(&rank_file, &good[..good.len() / 2]).unwrap();
    let e = err(&kiln(&["tok", "encode", "--vocab", vocab, "--ids"], b"hi"));
    assert!(
        e.contains("tokenizer.tiktoken:") && e.contains("truncated"),
        "{e}"
    );

    let e = err(&kiln(
        &["tok", "encode", "--vocab", "cl99k", "--ids"],
        b"hi",
    ));
    assert!(e.contains("cl99k"), "{e}");
    let e = err(&kiln(&["tok", "encode", "--ids"], b"ok\n\xff\n"));
    assert!(e.contains("<stdin>:2: invalid UTF-8"), "{e}");
    let e = err(&kiln(&["tok", "decode"], b"15339 99999999"));
    assert!(e.contains("99999999"), "{e}");
    let e = err(&kiln(&["tok", "decode"], b"15339 x"));
    assert!(e.contains("\"x\""), "{e}");
}
