//! Exact token ids against llama.cpp's tokenizer:
//! - its own vocab test vectors (`models/ggml-vocab-*.gguf` with `.inp`/`.out` in the
//!   llama-cpp-python 0.3.36 sdist, `kiln data fetch --set llama-cpp`), tokenized as llama.cpp's
//!   test-tokenizer-0 does (no BOS, special tokens not parsed). The vocabs kiln supports —
//!   byte-level BPE: gpt-2, starcoder, refact (SmolLM2's pre-tokenizer), llama-bpe, qwen2;
//!   SentencePiece: llama-spm, phi-3 — must match every case; the others are listed with their
//!   result (`--nocapture`);
//! - Gemma-3-270M's own 262,144-token SentencePiece vocab (`kiln models fetch gemma-3-270m`):
//!   ids written by `llama-tokenize` (dev/gguf/vocab-fixture.py) for llama-spm's test texts and
//!   kiln's own (tests/fixtures/vocab-texts.json: chat markup, whitespace runs, scripts, emoji),
//!   the latter also with special tokens parsed.

use std::path::PathBuf;

use kiln_chat::gguf_model::vocab_from;
use kiln_engine::gguf::GgufFile;
use kiln_tokenizer::GgufTokenizer;

fn data_dir() -> PathBuf {
    std::env::var_os("KILN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data"))
}

fn models_dir() -> PathBuf {
    let src = data_dir().join("raw/llama-cpp");
    assert!(
        src.join(".kiln-ok").is_file(),
        "{} is not fetched: run `kiln data fetch --set llama-cpp` (needs cmake and scikit-build-core)",
        src.display()
    );
    src.join("llama_cpp_python-0.3.36/vendor/llama.cpp/models")
}

fn load(path: &std::path::Path) -> Result<GgufTokenizer, String> {
    let file = GgufFile::open(path).map_err(|e| e.to_string())?;
    GgufTokenizer::new(&vocab_from(&file).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

/// test-tokenizer-0.cpp's split of an `.inp` file: pieces between separators.
fn cases(inp: &str) -> Vec<&str> {
    let sep = "\n__ggml_vocab_test__\n";
    let mut texts = Vec::new();
    let mut rest = inp;
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
    texts
}

/// The number of cases and the failing ones, or why the vocab does not load.
fn check(name: &str) -> Result<(usize, Vec<String>), String> {
    let path = models_dir().join(format!("ggml-vocab-{name}.gguf"));
    let tok = load(&path)?;
    let inp = std::fs::read_to_string(path.with_extension("gguf.inp")).unwrap();
    let out = std::fs::read_to_string(path.with_extension("gguf.out")).unwrap();
    let texts = cases(&inp);
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
fn supported_vocabs_match_llama_cpp_exactly() {
    for name in [
        "gpt-2",
        "starcoder",
        "refact",
        "llama-bpe",
        "qwen2",
        "llama-spm",
        "phi-3",
    ] {
        let (n, failures) = check(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            failures.is_empty(),
            "{name}: {} of {n} cases differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    // Not supported: report what they do (run with --nocapture to see).
    for name in [
        "deepseek-llm",
        "deepseek-coder",
        "command-r",
        "falcon",
        "mpt",
        "qwen35",
        "bert-bge",
        "gemma-4",
    ] {
        match check(name) {
            Ok((n, f)) => println!("{name}: {} of {n} cases match", n - f.len()),
            Err(e) => println!("{name}: {e}"),
        }
    }
}

#[test]
fn gemma3_vocab_matches_llama_tokenize() {
    let model = data_dir().join("models/gemma-3-270m.gguf");
    assert!(
        model.is_file(),
        "{} is missing: run `kiln models fetch gemma-3-270m`",
        model.display()
    );
    let tok = load(&model).unwrap();
    assert_eq!(tok.vocab_size(), 262_144);
    assert!(tok.add_bos, "Gemma's file asks for BOS");
    let spm_inp =
        std::fs::read_to_string(models_dir().join("ggml-vocab-llama-spm.gguf.inp")).unwrap();
    let spm_cases = cases(&spm_inp);
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let own: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("vocab-texts.json")).unwrap())
            .unwrap();
    let expected = std::fs::read_to_string(fixtures.join("gemma-3-270m.vocab.jsonl")).unwrap();
    let (mut n, mut failures) = (0, Vec::new());
    for line in expected.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = match (v["case"].as_u64(), v["own"].as_u64()) {
            (Some(i), _) => spm_cases[i as usize],
            (_, Some(i)) => own[i as usize].as_str(),
            _ => panic!("fixture line without a case: {line}"),
        };
        let parse_special = v["parse_special"].as_bool().unwrap();
        let want: Vec<u32> = v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, parse_special);
        if got != want {
            failures.push(format!(
                "{text:?} (parse_special {parse_special}): got {got:?}, llama.cpp {want:?}"
            ));
        }
        // Ids decode back to the text (except `▁`, which SentencePiece reads as a space).
        if !text.contains('▁') {
            assert_eq!(tok.decode(&got), text, "round trip of {text:?}");
        }
        n += 1;
    }
    assert!(n > 100, "{n} fixture cases");
    assert!(
        failures.is_empty(),
        "{} of {n} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
