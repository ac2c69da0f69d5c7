//! Dequantization bit-exact with llama.cpp's gguf-py (PyPI `gguf==0.19.0`): tests/gguf_dequant.py
//! writes gguf-py's output for the first tensor of every type in both fetched models and for random
//! blocks of every type kiln reads; this test compares every f32 bit. It needs a Python with gguf
//! (`scripts/gguf-py.sh` makes one) and the fetched models, and fails saying how to get them
//! rather than skipping.

use std::path::PathBuf;
use std::process::Command;

use kiln_engine::gguf::{quant::dequantize, GgmlType, GgufFile};

/// `$KILN_PYTHON`, else the venv `scripts/gguf-py.sh` makes, else `python3`.
fn python() -> String {
    if let Ok(p) = std::env::var("KILN_PYTHON") {
        return p;
    }
    let venv = "/tmp/kiln-gguf-venv/bin/python";
    if std::path::Path::new(venv).is_file() {
        return venv.into();
    }
    "python3".into()
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let py = python();
    let ok = Command::new(&py)
        .args(["-c", "import gguf, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{py}` cannot import gguf (llama.cpp's gguf-py): run `bash scripts/gguf-py.sh` (a venv with gguf==0.19.0 in /tmp/kiln-gguf-venv, which this test finds), or set KILN_PYTHON to a Python that has it"
    );
    let mut models = Vec::new();
    for name in ["smollm2-135m", "gemma-3-270m"] {
        let p = kiln_data::models::resolve_model(name)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap();
        models.push(p);
    }
    let dir = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/gguf_dequant.py");
    let st = Command::new(&py)
        .arg(&script)
        .arg(dir.path())
        .args(&models)
        .status()
        .unwrap();
    assert!(st.success(), "{script:?} failed");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for case in index.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ty = GgmlType::from_id(case["type"].as_u64().unwrap() as u32).unwrap();
        let n = case["n"].as_u64().unwrap() as usize;
        let raw = std::fs::read(dir.path().join(format!("{name}.in"))).unwrap();
        let want: Vec<u32> = std::fs::read(dir.path().join(format!("{name}.out")))
            .unwrap()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let got = dequantize(ty, &raw, n).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let bad = got.iter().zip(&want).position(|(g, w)| g.to_bits() != *w);
        assert!(
            bad.is_none(),
            "{name} ({ty:?}): element {} is {} but gguf-py gives {}",
            bad.unwrap(),
            got[bad.unwrap()],
            f32::from_bits(want[bad.unwrap()])
        );
        seen.insert(format!("{ty:?}"));
    }
    assert_eq!(seen.len(), 10, "types covered: {seen:?}");
    // And the reader agrees with gguf-py on the table: every tensor of both files opens.
    for m in &models {
        let g = GgufFile::open(m).unwrap();
        assert!(!g.tensors.is_empty());
    }
}
