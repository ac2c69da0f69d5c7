//! kiln's logits at every position of a token sequence on a GGUF model, as raw little-endian
//! f32 `[positions × vocab]` in OUT: the twin of dev/gguf/logits_dump.cpp (llama.cpp), compared
//! by dev/gguf/qwen-vs-llama-cpp.sh. The ids are given, so only the forward passes meet.
//! usage: cargo run --release -p kiln-engine --example gguf_logits -- MODEL.gguf IDS OUT.f32

use std::sync::Arc;

use kiln_engine::gguf::GgufFile;
use kiln_engine::llama::LlamaModel;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let [_, model, ids, out] = &a[..] else {
        eprintln!("usage: gguf_logits MODEL.gguf IDS(comma-separated) OUT.f32");
        std::process::exit(2);
    };
    let ids: Vec<u32> = ids.split(',').map(|i| i.parse().expect("an id")).collect();
    let file = GgufFile::open(std::path::Path::new(model)).unwrap();
    let m = LlamaModel::new(Arc::new(file)).unwrap();
    let mut s = m.session(ids.len());
    let all: Vec<usize> = (0..ids.len()).collect();
    let logits = m
        .forward_batch(&mut [&mut s], &vec![0; ids.len()], &ids, &all)
        .unwrap();
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(out, bytes).unwrap();
}
