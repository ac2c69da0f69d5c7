//! `kiln export gguf` on the real binary, with a model trained here in seconds (a 512-token BPE
//! tokenizer with the chat tokens, a 2-layer gpt2 pretrained for 200 steps on a small text):
//! - gguf-py (llama.cpp's own reader, PyPI gguf==0.19.0) reads every key/value and tensor of the
//!   F32, F16 and Q8_0 exports as kiln's reader does, and kiln's F16/Q8_0 bytes equal gguf-py's
//!   `quants.quantize` of the F32 export's tensors bit for bit, and gguf-py's GGUFWriter replaying
//!   the same key/values and tensors writes byte-identical files (tests/export_gguf.py). Like
//!   kiln-engine's tests/gguf_dequant.rs this needs a Python with gguf (`bash scripts/gguf-py.sh`,
//!   which CI runs) and fails saying so rather than skipping;
//! - llama.cpp itself (`scripts/llama-cpp.sh` builds it; CI does not, so the test prints why it
//!   skips when it is missing): `llama-tokenize` gives kiln's ids, and `llama-completion` at
//!   temperature 0 continues prompts with the same text as `kiln sample --temperature 0`, and
//!   `llama-perplexity` on the export gives the checkpoint's `kiln perplexity`;
//! - kiln's `modern` architecture is refused with the reasons.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[path = "common/cli.rs"]
mod cli;
use cli::{kiln, ok};

#[path = "common/llama_cpp.rs"]
mod llama_cpp;

use kiln_engine::gguf::{GgufFile, Value};

const STORY: &[&str] = &[
    "The old lighthouse keeper climbed the stairs every evening to light the lamp.",
    "Ships passed safely through the narrow channel because the light never failed.",
    "One winter night the storm broke the window, and the keeper fixed it with wood.",
    "In the morning the sea was calm, and the fishermen thanked the keeper for the light.",
    "The keeper's daughter learned to read the tides, the winds and the stars.",
    "She counted 12 ships on Monday, 7 on Tuesday and 31 on the last day of the year.",
];

struct Fixture {
    dir: PathBuf,
    run: String,
}

/// Trains the tokenizer and the model once for all tests of this file.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let docs: Vec<String> = (0..120)
            .map(|i| {
                (0..STORY.len())
                    .map(|j| STORY[(i + j) % STORY.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let corpus = dir.join("corpus.txt");
        std::fs::write(&corpus, docs.join("\n")).unwrap();
        let tok_dir = dir.join("tok");
        let tok_s = tok_dir.to_str().unwrap();
        ok(&[
            "tok",
            "train",
            "--input",
            corpus.to_str().unwrap(),
            "--vocab-size",
            "512",
            "--out",
            tok_s,
        ]);
        let tok = kiln_tokenizer::Tokenizer::load(&tok_dir).unwrap();
        let bos = tok.special_token_id("<|bos|>").unwrap();
        let ids: Vec<Vec<u32>> = docs
            .iter()
            .map(|d| {
                let mut v = vec![bos];
                v.extend(tok.encode_ordinary(d));
                v
            })
            .collect();
        let shard = dir.join("train.parquet");
        kiln_tokenizer::shards::write_token_shard(&shard, &ids).unwrap();
        let run = dir.join("run");
        ok(&[
            "pretrain",
            "--data",
            shard.to_str().unwrap(),
            "--tokenizer",
            tok_s,
            "--out",
            run.to_str().unwrap(),
            "--layers",
            "2",
            "--heads",
            "2",
            "--dim",
            "64",
            "--context",
            "64",
            "--batch",
            "8",
            "--steps",
            "200",
            "--warmup",
            "10",
            "--eval-every",
            "1000",
            "--eval-batches",
            "1",
            "--val-frac",
            "0.05",
            "--ckpt-every",
            "200",
            "--sample-every",
            "0",
            "--seed",
            "1",
            "--threads",
            "1",
            "--no-progress",
        ]);
        Fixture {
            dir,
            run: run.display().to_string(),
        }
    })
}

/// `kiln export gguf` of the fixture's model as `ty`; returns the file.
fn export(ty: &str) -> PathBuf {
    let f = fixture();
    let out = f.dir.join(format!("model-{ty}.gguf"));
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap();
    if !out.exists() {
        let s = ok(&[
            "export",
            "gguf",
            "--ckpt",
            &f.run,
            "--out",
            out.to_str().unwrap(),
            "--type",
            ty,
        ]);
        assert!(s.contains("gpt2") && s.contains("llama-bpe"), "{s}");
    }
    out
}

fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(*x as f64),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::Str(s) => json!(s),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
    }
}

/// `$KILN_PYTHON`, else the venv `scripts/gguf-py.sh` makes, else `python3`.
fn python() -> String {
    if let Ok(p) = std::env::var("KILN_PYTHON") {
        return p;
    }
    let venv = "/tmp/kiln-gguf-venv/bin/python";
    if Path::new(venv).is_file() {
        return venv.into();
    }
    "python3".into()
}

#[test]
fn gguf_py_reads_what_kiln_writes_and_encodes_the_same_bytes() {
    let py = python();
    let has_gguf = Command::new(&py)
        .args(["-c", "import gguf, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_gguf,
        "`{py}` cannot import gguf (llama.cpp's gguf-py): run `bash scripts/gguf-py.sh` (a venv with gguf==0.19.0 in /tmp/kiln-gguf-venv, which this test finds), or set KILN_PYTHON"
    );
    let files = [export("f32"), export("f16"), export("q8_0")];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/export_gguf.py");
    let o = Command::new(&py)
        .arg(&script)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{script:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let py_view: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for (key, path) in ["f32", "f16", "q8_0"].iter().zip(&files) {
        let g = GgufFile::open(path).unwrap();
        let theirs = &py_view[key];
        assert_eq!(theirs["alignment"], g.alignment, "{key}");
        let kv = theirs["kv"].as_object().unwrap();
        assert_eq!(kv.len(), g.metadata.len(), "{key}: key/value count");
        for (k, v) in &g.metadata {
            assert_eq!(kv.get(k), Some(&to_json(v)), "{key}: `{k}`");
        }
        let tensors = theirs["tensors"].as_object().unwrap();
        assert_eq!(tensors.len(), g.tensors.len(), "{key}: tensor count");
        for t in &g.tensors {
            let p = &tensors[&t.name];
            assert_eq!(p["dims"], serde_json::json!(t.dims), "{key}: {}", t.name);
            assert_eq!(p["start"], t.start, "{key}: {}", t.name);
            assert_eq!(p["n_bytes"], t.n_bytes, "{key}: {}", t.name);
            assert_eq!(
                kiln_engine::gguf::GgmlType::from_id(p["type"].as_u64().unwrap() as u32),
                Ok(t.ty),
                "{key}: {}",
                t.name
            );
        }
    }
    // 2 layers × 4 matrices + the token embedding, in each quantized file.
    assert_eq!(
        py_view["encoded_checked"],
        serde_json::json!({"F16": 9, "Q8_0": 9})
    );
    assert_eq!(py_view["encoded_mismatched"], serde_json::json!([]));
    // gguf-py's GGUFWriter, given the same key/values and tensors, writes the same bytes.
    assert_eq!(
        py_view["gguf_writer_identical"],
        serde_json::json!({"f32": true, "f16": true, "q8_0": true})
    );
    // The metadata a llama.cpp runtime needs.
    let g = GgufFile::open(&files[0]).unwrap();
    assert_eq!(g.str("general.architecture").unwrap(), "gpt2");
    assert_eq!(g.str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(g.u64("gpt2.block_count").unwrap(), 2);
    let n_tokens = g
        .get("tokenizer.ggml.tokens")
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        n_tokens,
        g.tensor("token_embd.weight").unwrap().dims[1] as usize
    );
    assert!(g
        .str("tokenizer.chat_template")
        .unwrap()
        .contains("<|assistant_start|>"));
}

/// The folder with llama.cpp's binaries that scripts/llama-cpp.sh builds, if it was built.
fn run_llama(bin: &Path, tool: &str, args: &[&str]) -> String {
    let o = Command::new(bin.join(tool)).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn llama_cpp_tokenizes_and_continues_greedily_like_kiln() {
    let Some(bin) = llama_cpp::bin(&["llama-completion", "llama-tokenize"]) else {
        return;
    };
    let f = fixture();
    let model = export("f32");
    let model_s = model.to_str().unwrap();
    let tok = kiln_tokenizer::Tokenizer::load(&f.dir.join("tok")).unwrap();
    let bos = tok.special_token_id("<|bos|>").unwrap();
    // Tokenization: BOS + kiln's ids, on the corpus and on text it never saw.
    let text = format!(
        "{} Unseen: naïve café, 東京, 2026-12-03 12:34; it's 'quoted' — ok?\n\n  indented\tTAB.",
        STORY.join("\n")
    );
    let got = run_llama(
        &bin,
        "llama-tokenize",
        &["-m", model_s, "-p", &text, "--ids", "--log-disable"],
    );
    let mut want = vec![bos];
    want.extend(tok.encode_ordinary(&text));
    let want = format!("{want:?}");
    assert_eq!(got.trim(), want, "llama-tokenize vs kiln");
    // Greedy continuations.
    let n = 32;
    for prompt in [
        "The old lighthouse",
        "She counted 12 ships",
        "In the morning the",
    ] {
        let out = ok(&[
            "sample",
            "--model",
            &f.run,
            "--prompt",
            prompt,
            "--max-tokens",
            &n.to_string(),
            "--temperature",
            "0",
            "--stats",
            "--threads",
            "1",
        ]);
        let (body, stats) = out.trim_end().rsplit_once('\n').unwrap();
        let stats: serde_json::Value = serde_json::from_str(stats).unwrap();
        let kiln_text = body.strip_prefix(prompt).unwrap();
        // llama-completion sometimes exits before its last text reaches stdout (the same
        // command gave 8 and then 39 characters, exit code 0): the longest of three runs.
        let run = || {
            run_llama(
                &bin,
                "llama-completion",
                &[
                    "-m",
                    model_s,
                    "-p",
                    prompt,
                    "-n",
                    &n.to_string(),
                    "--temp",
                    "0",
                    "-t",
                    "1",
                    "-no-cnv",
                    "--no-warmup",
                    "--special",
                    "--no-display-prompt",
                ],
            )
        };
        let llama = (0..3).map(|_| run()).max_by_key(String::len).unwrap();
        // llama-completion ends its output with a blank line.
        let llama_text = llama.strip_suffix("\n\n").unwrap_or(&llama);
        if stats["tokens"].as_u64() == Some(n) {
            assert_eq!(llama_text, kiln_text, "prompt {prompt:?}");
        } else {
            // kiln sample stops at <|bos|> (a new document); llama.cpp prints it and goes on.
            let rest = llama_text.strip_prefix(kiln_text);
            assert!(
                rest.is_some_and(|r| r.starts_with("<|bos|>")),
                "prompt {prompt:?}: kiln {kiln_text:?} vs llama.cpp {llama_text:?}"
            );
        }
    }
}

#[test]
fn perplexity_of_the_checkpoint_equals_llama_perplexity_of_its_export() {
    let Some(bin) = llama_cpp::bin(&["llama-perplexity"]) else {
        return;
    };
    let f = fixture();
    let model = export("f32");
    let text = f.dir.join("corpus.txt");
    let text_s = text.to_str().unwrap();
    // The model's context is 64 positions.
    let out = ok(&[
        "perplexity",
        "--model",
        &f.run,
        "--file",
        text_s,
        "--ctx",
        "64",
        "--chunks",
        "8",
        "--threads",
        "1",
        "--json",
    ]);
    let ours = serde_json::from_str::<serde_json::Value>(&out).unwrap()["perplexity"]
        .as_f64()
        .unwrap();
    let theirs = llama_cpp::perplexity(
        &bin,
        model.to_str().unwrap(),
        text_s,
        &["-c", "64", "--chunks", "8", "-t", "1"],
    );
    eprintln!("kiln checkpoint {ours:.4}, llama-perplexity on its f32 export {theirs:.4}");
    // f32 weights on both sides; ggml's GELU reads an f16 table, kiln computes tanh.
    assert!(
        (ours / theirs - 1.0).abs() < 1e-3,
        "kiln {ours} vs llama-perplexity {theirs}"
    );
}

#[test]
fn modern_is_refused_with_the_reasons() {
    let f = fixture();
    let tok = f.dir.join("tok");
    let model = kiln_engine::Model::new(
        std::sync::Arc::new(kiln_engine::CpuBackend::new(1)),
        kiln_engine::ModelConfig::modern(512, 1, 2, 2, 32, 16),
        1,
    )
    .unwrap();
    let ck = f.dir.join("modern");
    let rec = serde_json::json!({"config": {"tokenizer": tok}});
    kiln_engine::save_checkpoint(&ck, &model, None, &rec).unwrap();
    let out = f.dir.join("modern.gguf");
    let o = kiln(&[
        "export",
        "gguf",
        "--ckpt",
        ck.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("modern") && err.contains("QK-norm") && err.contains("arcee"),
        "{err}"
    );
    assert!(!out.exists());
}
