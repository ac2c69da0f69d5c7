//! `kiln tok …`: train a BPE tokenizer, encode/decode with a trained or OpenAI vocabulary, and
//! view token boundaries. Parsing and printing only; the work is in kiln-tokenizer.

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use kiln_tokenizer::{corpus, SplitPattern, Tokenizer, TrainConfig};
use std::collections::HashSet;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum TokCommand {
    /// Train a byte-level BPE tokenizer on files/folders of text, save it, and compare its
    /// bytes/token on a held-out slice with GPT-2's and GPT-4's tokenizers.
    Train {
        /// Text files or folders (walked recursively; hidden entries skipped).
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        /// Final vocabulary size: 256 bytes + merges + special tokens.
        #[arg(long, default_value_t = 32_768)]
        vocab_size: usize,
        /// Split pattern: gpt2, gpt4, o200k, or a regex (fancy-regex syntax).
        #[arg(long, default_value = "gpt4")]
        pattern: String,
        /// Output folder (tokenizer.tiktoken + tokenizer.json).
        #[arg(long)]
        out: PathBuf,
        /// Special tokens appended after the merges (comma-separated); default: the chat tokens.
        #[arg(long, value_delimiter = ',')]
        special: Option<Vec<String>>,
        /// Skip binary files found in the inputs instead of failing.
        #[arg(long)]
        skip_binary: bool,
        /// Fraction of the corpus (its end) held out for the bytes/token comparison.
        #[arg(long, default_value_t = 0.02)]
        holdout: f64,
    },
    /// Encode text (stdin or --input) to token ids.
    Encode {
        /// A pretrained name (r50k_base, p50k_base, cl100k_base, o200k_base, gpt2) or a folder
        /// written by `kiln tok train`.
        #[arg(
            long = "tokenizer",
            alias = "vocab",
            value_name = "TOKENIZER",
            default_value = "cl100k_base"
        )]
        vocab: String,
        /// Print only the ids, separated by spaces (tiktoken's output); otherwise one
        /// `id<TAB>token` line per token.
        #[arg(long)]
        ids: bool,
        /// Special tokens to recognise in the text: `all`, or a comma-separated list. Default:
        /// none (special-token text is encoded as ordinary text).
        #[arg(long, value_delimiter = ',')]
        allow_special: Vec<String>,
        /// Read this file instead of stdin.
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Decode token ids (whitespace-separated, stdin or --input) to text.
    Decode {
        /// Pretrained name or trained tokenizer folder.
        #[arg(
            long = "tokenizer",
            alias = "vocab",
            value_name = "TOKENIZER",
            default_value = "cl100k_base"
        )]
        vocab: String,
        /// Write the exact bytes (lossless) instead of UTF-8 text with U+FFFD replacements.
        #[arg(long)]
        bytes: bool,
        /// Read this file instead of stdin.
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Show text with coloured token boundaries and ids, token count and bytes/token.
    View {
        /// Pretrained name or trained tokenizer folder.
        #[arg(
            long = "tokenizer",
            alias = "vocab",
            value_name = "TOKENIZER",
            default_value = "cl100k_base"
        )]
        vocab: String,
        /// The text (otherwise stdin or --input).
        #[arg(long)]
        text: Option<String>,
        /// Read this file instead of stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Colour: auto (when stdout is a terminal and NO_COLOR is unset), always, never.
        /// Without colour, tokens are separated by `|`.
        #[arg(long, value_enum, default_value_t = Color::Auto)]
        color: Color,
        /// Recognise all special tokens in the text.
        #[arg(long)]
        allow_special: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

pub fn run(command: TokCommand) -> anyhow::Result<()> {
    match command {
        TokCommand::Train {
            input,
            vocab_size,
            pattern,
            out,
            special,
            skip_binary,
            holdout,
        } => train(TrainArgs {
            input,
            vocab_size,
            pattern: SplitPattern::parse(&pattern),
            out,
            special,
            skip_binary,
            holdout,
        }),
        TokCommand::Encode {
            vocab,
            ids,
            allow_special,
            input,
        } => encode(&vocab, ids, &allow_special, input.as_deref()),
        TokCommand::Decode {
            vocab,
            bytes,
            input,
        } => decode(&vocab, bytes, input.as_deref()),
        TokCommand::View {
            vocab,
            text,
            input,
            color,
            allow_special,
        } => view(&vocab, text, input.as_deref(), color, allow_special),
    }
}

fn load(vocab: &str) -> anyhow::Result<Tokenizer> {
    Tokenizer::load_named(vocab).with_context(|| format!("loading tokenizer {vocab:?}"))
}

/// Text from a file or stdin; invalid UTF-8 is an error naming the line.
fn read_input(input: Option<&Path>) -> anyhow::Result<String> {
    let (name, bytes) = match input {
        Some(path) => (
            path.to_path_buf(),
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading stdin")?;
            (PathBuf::from("<stdin>"), bytes)
        }
    };
    Ok(corpus::utf8_text(&name, bytes)?)
}

struct TrainArgs {
    input: Vec<PathBuf>,
    vocab_size: usize,
    pattern: SplitPattern,
    out: PathBuf,
    special: Option<Vec<String>>,
    skip_binary: bool,
    holdout: f64,
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let mut cfg = TrainConfig {
        vocab_size: args.vocab_size,
        pattern: args.pattern,
        skip_binary: args.skip_binary,
        progress: std::io::stderr().is_terminal(),
        ..TrainConfig::default()
    };
    if let Some(special) = args.special {
        cfg.special_tokens = special.into_iter().filter(|s| !s.is_empty()).collect();
    }
    if !(0.0..0.5).contains(&args.holdout) {
        bail!("--holdout must be in [0, 0.5), got {}", args.holdout);
    }
    // Fail on a bad vocabulary size before reading any input.
    cfg.check()?;
    let started = std::time::Instant::now();
    let corpus = corpus::Corpus::read(&args.input, cfg.skip_binary, cfg.progress)?;
    let corpus_bytes = corpus.bytes();
    let (train_texts, held_out) = corpus.split_holdout(args.holdout);
    let train_bytes: usize = train_texts.iter().map(|t| t.len()).sum();
    if train_bytes == 0 {
        bail!("empty corpus: nothing left to train on after the held-out slice");
    }
    eprintln!(
        "corpus: {} files, {:.1} MB; training on {:.1} MB, holding out {:.2} MB",
        corpus.files,
        corpus_bytes as f64 / 1e6,
        train_bytes as f64 / 1e6,
        (corpus_bytes - train_bytes) as f64 / 1e6
    );
    let counter = kiln_tokenizer::count_texts(&train_texts, &cfg)?;
    let counted = started.elapsed();
    let tok = kiln_tokenizer::train_from_counts(counter, &cfg)?;
    let trained = started.elapsed();
    tok.save(&args.out)
        .with_context(|| format!("saving to {}", args.out.display()))?;
    println!(
        "trained {} tokens ({} merges + {} special) in {:.1}s (read+count {:.1}s, merges {:.1}s) -> {}",
        tok.vocab_size(),
        tok.n_ranks() - 256,
        tok.special_tokens().len(),
        trained.as_secs_f64(),
        counted.as_secs_f64(),
        (trained - counted).as_secs_f64(),
        args.out.display()
    );
    if held_out.is_empty() {
        return Ok(());
    }
    let held_bytes: usize = held_out.iter().map(|t| t.len()).sum();
    println!(
        "\nbytes/token on the held-out slice ({:.2} MB, the end of the corpus):",
        held_bytes as f64 / 1e6
    );
    println!(
        "{:<26} {:>8} {:>12} {:>12}",
        "tokenizer", "vocab", "tokens", "bytes/token"
    );
    let mut rows = vec![(format!("kiln ({})", args.out.display()), tok)];
    for (label, name) in [
        ("GPT-2 (r50k_base)", "gpt2"),
        ("GPT-4 (cl100k_base)", "cl100k_base"),
    ] {
        rows.push((label.to_string(), load(name)?));
    }
    for (label, t) in &rows {
        let n: usize = t
            .encode_batch_ordinary(&held_out)
            .iter()
            .map(Vec::len)
            .sum();
        println!(
            "{label:<26} {:>8} {n:>12} {:>12.3}",
            t.vocab_size(),
            held_bytes as f64 / n.max(1) as f64
        );
    }
    Ok(())
}

fn allowed<'a>(tok: &'a Tokenizer, names: &'a [String]) -> anyhow::Result<HashSet<&'a str>> {
    let mut set = HashSet::new();
    for name in names {
        if name == "all" {
            set.extend(tok.special_tokens().iter().map(|s| s.0.as_str()));
        } else if name == "none" || name.is_empty() {
        } else if tok.special_token_id(name).is_some() {
            set.insert(name.as_str());
        } else {
            let known: Vec<&str> = tok.special_tokens().iter().map(|s| s.0.as_str()).collect();
            bail!(
                "--allow-special: {name:?} is not a special token of this vocabulary (it has: {})",
                known.join(" ")
            );
        }
    }
    Ok(set)
}

/// A token's bytes for display: text when valid UTF-8, else `\xNN` escapes for the bytes.
fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes
            .utf8_chunks()
            .flat_map(|c| {
                let mut s = c.valid().to_string();
                for b in c.invalid() {
                    s.push_str(&format!("\\x{b:02x}"));
                }
                [s]
            })
            .collect(),
    }
}

fn encode(
    vocab: &str,
    ids_only: bool,
    allow: &[String],
    input: Option<&Path>,
) -> anyhow::Result<()> {
    let text = read_input(input)?;
    let tok = load(vocab)?;
    let allowed = allowed(&tok, allow)?;
    let ids = tok.encode(&text, &allowed);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if ids_only {
        let mut line = String::with_capacity(ids.len() * 6);
        for (k, id) in ids.iter().enumerate() {
            if k > 0 {
                line.push(' ');
            }
            line.push_str(&id.to_string());
        }
        writeln!(out, "{line}")?;
    } else {
        for &id in &ids {
            let bytes = tok.token_bytes(id).unwrap_or_default();
            writeln!(out, "{id}\t{:?}", show_bytes(bytes))?;
        }
    }
    out.flush()?;
    Ok(())
}

fn decode(vocab: &str, raw_bytes: bool, input: Option<&Path>) -> anyhow::Result<()> {
    let text = read_input(input)?;
    let tok = load(vocab)?;
    let mut ids = Vec::new();
    for (k, word) in text.split_whitespace().enumerate() {
        let id: u32 = word
            .parse()
            .with_context(|| format!("token {} ({word:?}) is not a token id", k + 1))?;
        if tok.token_bytes(id).is_none() {
            bail!(
                "token {} (id {id}) is not in the vocabulary {vocab:?} (ids 0..{})",
                k + 1,
                tok.vocab_size()
            );
        }
        ids.push(id);
    }
    let mut out = std::io::stdout().lock();
    if raw_bytes {
        out.write_all(&tok.decode_bytes(&ids))?;
    } else {
        out.write_all(tok.decode(&ids).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// Background colours cycled over tokens (256-colour palette, readable with black text).
const PALETTE: [u8; 6] = [153, 186, 217, 151, 223, 183];

fn view(
    vocab: &str,
    text: Option<String>,
    input: Option<&Path>,
    color: Color,
    allow_special: bool,
) -> anyhow::Result<()> {
    let text = match text {
        Some(t) => t,
        None => read_input(input)?,
    };
    let tok = load(vocab)?;
    let allowed: HashSet<&str> = if allow_special {
        tok.special_tokens().iter().map(|s| s.0.as_str()).collect()
    } else {
        HashSet::new()
    };
    let ids = tok.encode(&text, &allowed);
    let colored = match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let mut out = String::new();
    let mut id_line = String::new();
    for (k, &id) in ids.iter().enumerate() {
        let shown = show_bytes(tok.token_bytes(id).unwrap_or_default());
        // Make whitespace visible inside a coloured box; keep the line breaks.
        let shown = shown.replace('\t', "→   ").replace('\r', "␍");
        if colored {
            let bg = PALETTE[k % PALETTE.len()];
            for (n, part) in shown.split('\n').enumerate() {
                if n > 0 {
                    out.push_str(&format!("\x1b[48;5;{bg};30m↵\x1b[0m\n"));
                }
                if !part.is_empty() {
                    out.push_str(&format!("\x1b[48;5;{bg};30m{part}\x1b[0m"));
                }
            }
            id_line.push_str(&format!("\x1b[48;5;{bg};30m{id}\x1b[0m "));
        } else {
            if k > 0 {
                out.push('|');
            }
            out.push_str(&shown.replace('\n', "↵\n"));
            id_line.push_str(&format!("{id} "));
        }
    }
    let n_bytes = text.len();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{out}")?;
    writeln!(stdout)?;
    writeln!(stdout, "{}", id_line.trim_end())?;
    writeln!(
        stdout,
        "\n{} tokens, {} bytes, {:.2} bytes/token ({vocab})",
        ids.len(),
        n_bytes,
        n_bytes as f64 / ids.len().max(1) as f64
    )?;
    Ok(())
}
