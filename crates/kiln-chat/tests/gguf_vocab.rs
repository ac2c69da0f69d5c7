//! Exact token ids against llama.cpp's own vocab test vectors (`models/ggml-vocab-*.gguf` with
//! `.inp`/`.out` in the llama-cpp-python 0.3.36 sdist, `kiln data fetch --set llama-cpp`):
//! tokenized as llama.cpp's test-tokenizer-0 does (no BOS, special tokens not parsed). The vocabs
//! kiln supports (gpt-2, starcoder, refact — SmolLM2's pre-tokenizer — llama-bpe, qwen2) must match
//! every case; the others are listed with their result.

use std::path::PathBuf;

use kiln_chat::gguf_model::vocab_from;
use kiln_engine::gguf::GgufFile;
use kiln_tokenizer::GgufTokenizer;

fn models_dir() -> PathBuf {
    let data = std::env::var_os("KILN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data"));
    let src = data.join("raw/llama-cpp");
    assert!(
        src.join(".kiln-ok").is_file(),
        "{} is not fetched: run `kiln data fetch --set llama-cpp` (needs cmake and scikit-build-core)",
        src.display()
    );
    src.join("llama_cpp_python-0.3.36/vendor/llama.cpp/models")
}

/// The number of cases and the failing ones, or why the vocab does not load.
fn check(name: &str) -> Result<(usize, Vec<String>), String> {
    let path = models_dir().join(format!("ggml-vocab-{name}.gguf"));
    let file = GgufFile::open(&path).map_err(|e| e.to_string())?;
    let tok = GgufTokenizer::new(&vocab_from(&file).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let inp = std::fs::read_to_string(path.with_extension("gguf.inp")).unwrap();
    let out = std::fs::read_to_string(path.with_extension("gguf.out")).unwrap();
    // test-tokenizer-0.cpp's split: pieces between separators, none after a trailing one.
    let sep = "\n__ggml_vocab_test__\n";
    let mut texts = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(sep) {
            Some(i) => {
                texts.push(&rest[..i]);
                rest = &rest[i + sep.len()..];
            }
            None => {
                texts.push(rest);
                break;
            }
        }
    }
    let want: Vec<&str> = out.lines().collect();
    assert_eq!(texts.len(), want.len(), "{name}: .inp/.out case counts");
    let mut failures = Vec::new();
    for (text, want) in texts.iter().zip(want) {
        let want: Vec<u32> = want
            .split_whitespace()
            .map(|t| t.parse().unwrap())
            .collect();
        let got = tok.encode(text, false);
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, llama.cpp {want:?}"));
        }
    }
    Ok((texts.len(), failures))
}

#[test]
fn supported_byte_level_vocabs_match_llama_cpp_exactly() {
    for name in ["gpt-2", "starcoder", "refact", "llama-bpe", "qwen2"] {
        let (n, failures) = check(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            failures.is_empty(),
            "{name}: {} of {n} cases differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    // Not supported yet: report what they do (run with --nocapture to see).
    for name in [
        "deepseek-llm",
        "deepseek-coder",
        "command-r",
        "falcon",
        "mpt",
    ] {
        match check(name) {
            Ok((n, f)) => println!("{name}: {} of {n} cases match", n - f.len()),
            Err(e) => println!("{name}: {e}"),
        }
    }
}
