//! llama.cpp's tools for the tests that compare kiln with them (built by `bash
//! scripts/llama-cpp.sh`; absent on a clean machine, where those tests skip and say so).

use std::path::{Path, PathBuf};
use std::process::Command;

/// llama.cpp's `build/bin` holding every tool in `tools`: `KILN_LLAMA_CPP_BIN`, or the build
/// `scripts/llama-cpp.sh` makes for this CPU. `None` prints why the calling test is skipped.
pub fn bin(tools: &[&str]) -> Option<PathBuf> {
    let found = std::env::var("KILN_LLAMA_CPP_BIN")
        .ok()
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            ["avx512", "avx2"]
                .iter()
                .map(|isa| {
                    Path::new(&home).join(format!(".cache/kiln/llama.cpp-0.3.36-{isa}/build/bin"))
                })
                .find(|d| tools.iter().all(|t| d.join(t).is_file()))
        });
    if found.is_none() {
        eprintln!(
            "skipped: llama.cpp is not built (run `bash scripts/llama-cpp.sh`, or set KILN_LLAMA_CPP_BIN to its build/bin)"
        );
    }
    found
}

/// `llama-perplexity`'s final estimate for `model` on `text` (`args`: its context, chunks,
/// threads…).
///
/// llama.cpp writes its log from a worker thread, and a process that exits right after the last
/// line can lose it: once in CI the run printed 7 of 8 chunks, no final estimate, and exited 0.
/// Such a run is repeated (up to 3 tries); a failed run or a third miss fails the test.
pub fn perplexity(bin: &Path, model: &str, text: &str, args: &[&str]) -> f64 {
    let mut log = String::new();
    for _ in 0..3 {
        let o = Command::new(bin.join("llama-perplexity"))
            .args(["-m", model, "-f", text])
            .args(args)
            .output()
            .unwrap();
        log = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "llama-perplexity: {log}");
        let estimate = log
            .split("Final estimate: PPL = ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok());
        if let Some(ppl) = estimate {
            return ppl;
        }
    }
    panic!("no final estimate in llama-perplexity's output (3 runs): {log}")
}
