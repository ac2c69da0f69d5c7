//! A random-init checkpoint for probes that train from scratch (the tools issue's copy probes):
//! `random_init <out> <tokenizer> <layers> <dim> [gpt2|modern] [web-train.parquet]`.
//!
//! `<tokenizer>` is a tokenizer folder, or `world512`: a 512-id BPE learned from the search
//! world's training documents and questions (as `crates/kiln/tests/tools.rs` does), or
//! `webworld<N>`: an N-id BPE learned from a web text shard plus those documents. Writes
//! `<out>/base` (context 192, 4 heads) and, for a learned tokenizer, `<out>/tok`.

use kiln_chat::tools::lessons::{FactWorld, DEFAULT_PLACES, DEFAULT_WORLD_SEED};
use kiln_engine::{save_checkpoint, CpuBackend, Model, ModelConfig};
use kiln_tokenizer::{Tokenizer, TrainConfig};
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        return Err(
            "usage: random_init <out> <tokenizer|world512|webworldN> <layers> <dim> [gpt2|modern] [web.parquet]"
                .into(),
        );
    }
    let out = Path::new(&a[1]);
    let (mode, layers, dim): (&str, usize, usize) = (&a[2], a[3].parse()?, a[4].parse()?);
    let modern = a.get(5).map(String::as_str) == Some("modern");
    std::fs::create_dir_all(out)?;
    let world = FactWorld::new(DEFAULT_PLACES, DEFAULT_WORLD_SEED);
    let mut world_texts: Vec<String> = world
        .places
        .iter()
        .zip(world.documents())
        .filter(|(p, _)| !FactWorld::is_held_out(p))
        .map(|(_, (_, text))| text)
        .collect();
    world_texts.extend(
        world
            .fact_questions(false, 7)
            .into_iter()
            .map(|q| q.question),
    );
    let (tok, tok_path) = if mode == "world512" || mode.starts_with("webworld") {
        let (vocab, texts) = match mode.strip_prefix("webworld") {
            None => (512, world_texts),
            Some(n) => {
                let shard = a.get(6).ok_or("webworldN needs a web text shard")?;
                let mut t: Vec<String> = kiln_data::read_text_shard(Path::new(shard))?
                    .into_iter()
                    .map(|d| d.text)
                    .collect();
                t.extend(world_texts);
                (n.parse()?, t)
            }
        };
        let cfg = TrainConfig {
            vocab_size: vocab,
            ..Default::default()
        };
        let tok = kiln_tokenizer::train_from_texts(&texts, &cfg)?;
        let dir = out.join("tok");
        tok.save(&dir)?;
        (tok, std::fs::canonicalize(dir)?)
    } else {
        (
            Tokenizer::load(Path::new(mode))?,
            std::fs::canonicalize(mode)?,
        )
    };
    let vocab = tok.vocab_size();
    let config = if modern {
        ModelConfig::modern(vocab, layers, 4, 4, dim, 192)
    } else {
        ModelConfig::gpt2(vocab, layers, 4, dim, 192)
    };
    let model = Model::new(std::sync::Arc::new(CpuBackend::new(1)), config, 1)?;
    save_checkpoint(
        &out.join("base"),
        &model,
        None,
        &serde_json::json!({"kind": "base", "config": {"tokenizer": tok_path}}),
    )?;
    Ok(())
}
