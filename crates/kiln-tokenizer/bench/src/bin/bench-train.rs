//! Training: kiln-tokenizer vs the HF `tokenizers` BPE trainer on the same ≥ 100 MB of text, the
//! same GPT-4 split pattern, vocab 32,768 (incl. the 11 chat special tokens), all cores. Each
//! trainer runs in its own child process (so peak RSS is its own), alternating.
//!
//! `cargo run --release --bin bench-train -- [--mb 110] [--rounds 1]`

use kiln_tokenizer_bench::{documents, peak_rss};
use std::process::Command;
use std::time::Instant;

const VOCAB: usize = 32_768;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|k| args.get(k + 1))
        .cloned()
}

fn child(which: &str, mb: f64) {
    let docs = documents((mb * 1e6) as usize);
    let bytes: usize = docs.iter().map(String::len).sum();
    let specials: Vec<String> = kiln_tokenizer::CHAT_SPECIAL_TOKENS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let t = Instant::now();
    let vocab = match which {
        "kiln" => {
            let cfg = kiln_tokenizer::TrainConfig {
                vocab_size: VOCAB,
                pattern: kiln_tokenizer::SplitPattern::Gpt4,
                special_tokens: specials,
                ..Default::default()
            };
            kiln_tokenizer::train_from_texts(&docs, &cfg)
                .unwrap()
                .vocab_size()
        }
        _ => hf_train(&docs, specials),
    };
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"which\":\"{which}\",\"secs\":{secs},\"bytes\":{bytes},\"vocab\":{vocab},\"rss\":{}}}",
        peak_rss()
    );
}

fn hf_train(docs: &[String], specials: Vec<String>) -> usize {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{
        AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
        SplitDelimiterBehavior, TokenizerBuilder, TokenizerImpl,
    };
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(VOCAB)
        .min_frequency(0)
        .show_progress(false)
        .special_tokens(
            specials
                .into_iter()
                .map(|s| AddedToken::from(s, true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let split = Split::new(
        SplitPattern::Regex(kiln_tokenizer::GPT4_PATTERN.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .unwrap();
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ]);
    let mut tok: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)))
        .with_post_processor(None)
        .with_decoder(None)
        .build()
        .unwrap();
    tok.train(&mut trainer, docs.iter()).unwrap();
    tok.get_vocab_size(true)
}

fn main() {
    let mb: f64 = arg("--mb").map_or(110.0, |v| v.parse().unwrap());
    if let Some(which) = arg("--child") {
        child(&which, mb);
        return;
    }
    let rounds: usize = arg("--rounds").map_or(1, |v| v.parse().unwrap());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let exe = std::env::current_exe().unwrap();
    let mut results: Vec<(String, f64, f64, u64, usize)> = Vec::new();
    for _ in 0..rounds {
        for which in ["kiln", "hf"] {
            let out = Command::new(&exe)
                .args(["--child", which, "--mb", &mb.to_string()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{which}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8(out.stdout).unwrap();
            let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
            let r = (
                which.to_string(),
                v["secs"].as_f64().unwrap(),
                v["bytes"].as_f64().unwrap(),
                v["rss"].as_u64().unwrap(),
                v["vocab"].as_u64().unwrap() as usize,
            );
            println!(
                "{:<5} vocab {} on {:.1} MB: {:.1} s = {:.1} s per 100 MB per core, peak RSS {:.0} MB",
                r.0,
                r.4,
                r.2 / 1e6,
                r.1,
                r.1 * threads as f64 / (r.2 / 1e8),
                r.3 as f64 / 1e6
            );
            results.push(r);
        }
    }
    let best = |w: &str| {
        results
            .iter()
            .filter(|r| r.0 == w)
            .map(|r| r.1)
            .fold(f64::INFINITY, f64::min)
    };
    println!(
        "kiln vs HF tokenizers ({threads} threads, same text, GPT-4 pattern, vocab {VOCAB}): {:.2}x faster",
        best("hf") / best("kiln")
    );
}
