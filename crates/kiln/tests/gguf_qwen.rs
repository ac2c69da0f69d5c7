//! `kiln perplexity` on the real binary, with the tiny random-weight qwen2 and qwen3 models of
//! kiln-engine's fixtures (tests/fixtures/qwen, written by dev/gguf/qwen-fixtures.sh):
//! - llama.cpp's `llama-perplexity` on the same file, text, context and chunks gives the same
//!   perplexity (`scripts/llama-cpp.sh` builds it; CI does not, so the test prints why it skips
//!   when it is missing). Over hundreds of scored positions this checks the qwen2/qwen3 forward
//!   passes, the tokenizer and the chunking rule against llama.cpp at once;
//! - a text too short for two chunks is an error saying how many tokens it needs, a context
//!   longer than the model's one naming both.

use std::path::{Path, PathBuf};

#[path = "common/cli.rs"]
mod cli;
use cli::kiln;

#[path = "common/llama_cpp.rs"]
mod llama_cpp;

fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kiln-engine/tests/fixtures/qwen")
        .join(format!("{arch}-tiny.gguf"))
}

/// A few kilobytes of plain English (the byte-level vocab makes ~1 token per byte).
fn text() -> String {
    let lines = [
        "The old lighthouse keeper climbed the stairs every evening to light the lamp.",
        "Ships passed safely through the narrow channel because the light never failed.",
        "One winter night the storm broke the window, and the keeper fixed it with wood.",
        "In the morning the sea was calm, and the fishermen thanked the keeper.",
    ];
    (0..10)
        .flat_map(|i| lines.iter().map(move |l| format!("{l} ({i})")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The folder with llama.cpp's binaries that scripts/llama-cpp.sh builds, if it was built.
#[test]
fn perplexity_equals_llama_perplexity_on_tiny_qwen_models() {
    let Some(bin) = llama_cpp::bin(&["llama-perplexity"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("text.txt");
    std::fs::write(&file, text()).unwrap();
    let file = file.to_str().unwrap();
    for arch in ["qwen2", "qwen3"] {
        let model = fixture(arch);
        let model = model.to_str().unwrap();
        let o = kiln(&[
            "perplexity",
            "--model",
            model,
            "--file",
            file,
            "--ctx",
            "128",
            "--chunks",
            "8",
            "--threads",
            "1",
            "--json",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let k: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            (k["chunks"].as_u64(), k["scored"].as_u64()),
            (Some(8), Some(8 * 63))
        );
        let theirs = llama_cpp::perplexity(
            &bin,
            model,
            file,
            &["-c", "128", "--chunks", "8", "-t", "1"],
        );
        let ours = k["perplexity"].as_f64().unwrap();
        eprintln!("{arch}: kiln {ours:.4}, llama.cpp {theirs:.4}");
        // llama.cpp rounds activations to f16 before F16 products; kiln keeps f32.
        assert!(
            (ours / theirs - 1.0).abs() < 1e-3,
            "{arch}: kiln {ours} vs llama-perplexity {theirs}"
        );
    }
}

#[test]
fn too_short_a_text_is_an_error_naming_the_tokens_needed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("short.txt");
    std::fs::write(&file, "Too short to score.").unwrap();
    let o = kiln(&[
        "perplexity",
        "--model",
        fixture("qwen2").to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--ctx",
        "64",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("at least 128"), "{err}");
}

#[test]
fn a_ctx_past_the_models_context_is_an_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("text.txt");
    std::fs::write(&file, text()).unwrap();
    // The tiny models' context_length is 4096.
    let o = kiln(&[
        "perplexity",
        "--model",
        fixture("qwen3").to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--ctx",
        "8192",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("--ctx 8192") && err.contains("4096"), "{err}");
}
