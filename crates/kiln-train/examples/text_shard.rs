//! Text files → one token shard for `kiln pretrain` (scripts/gpu/prepare.sh uses it to ship a
//! tokenized fetched corpus to the GPU machine): each file is cut at blank lines into documents
//! of about `DOC_BYTES`, encoded with a tokenizer (a `kiln tok train` folder or a pretrained
//! name), `<|bos|>` (else `<|endoftext|>`) first.
//!
//! `cargo run --release -p kiln-train --example text_shard -- TOKENIZER OUT.parquet DOC_BYTES FILE…`

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return Err("usage: text_shard TOKENIZER OUT.parquet DOC_BYTES FILE…".into());
    }
    let tok = kiln_tokenizer::Tokenizer::load_named(&args[0])?;
    let bos = tok
        .special_token_id("<|bos|>")
        .or_else(|| tok.special_token_id("<|endoftext|>"))
        .ok_or_else(|| format!("tokenizer {} has no <|bos|> or <|endoftext|>", args[0]))?;
    let out = PathBuf::from(&args[1]);
    let doc_bytes: usize = args[2]
        .parse()
        .map_err(|_| format!("DOC_BYTES {:?} is not a number", args[2]))?;
    let mut docs: Vec<String> = Vec::new();
    for f in &args[3..] {
        let text = std::fs::read(f).map_err(|e| format!("{f}: {e}"))?;
        let text = String::from_utf8_lossy(&text).replace("\r\n", "\n");
        let mut cur = String::new();
        for para in text.split("\n\n") {
            if !cur.is_empty() && cur.len() + para.len() > doc_bytes {
                docs.push(std::mem::take(&mut cur));
            }
            cur.push_str(para);
            cur.push_str("\n\n");
        }
        if !cur.trim().is_empty() {
            docs.push(cur);
        }
    }
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let ids = kiln_tokenizer::shards::ShardEncoder::new(&tok, bos).encode(&refs);
    if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    kiln_tokenizer::shards::write_token_shard(&out, &ids)?;
    let n: usize = ids.iter().map(Vec::len).sum();
    let bytes: usize = docs.iter().map(String::len).sum();
    println!(
        "{}: {} documents, {n} tokens ({:.2} bytes/token)",
        out.display(),
        ids.len(),
        bytes as f64 / n.max(1) as f64
    );
    Ok(())
}
