//! `kiln sample` and `kiln chat` on a released GGUF model (`--model x.gguf` or a catalogue name
//! such as `smollm2-135m`): parsing and printing only; the model, tokenizer, template and decode
//! loop live in `kiln_chat::gguf_model`.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{bail, Context};
use kiln_chat::gguf_model::GgufChatModel;

use super::chat::ChatArgs;
use super::sample::SampleArgs;

/// Prints the bytes of streamed tokens as soon as they form whole UTF-8 characters.
struct Stream<'a> {
    m: &'a GgufChatModel,
    pending: Vec<u8>,
}

impl Stream<'_> {
    fn push(&mut self, id: u32, out: &mut impl Write) {
        self.pending.extend(self.m.tok.decode_bytes(&[id]));
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(), // invalid for good: print it lossily
        };
        let _ = write!(out, "{}", String::from_utf8_lossy(&self.pending[..valid]));
        let _ = out.flush();
        self.pending.drain(..valid);
    }
}

fn load(path: &Path) -> anyhow::Result<GgufChatModel> {
    let t0 = std::time::Instant::now();
    let m = GgufChatModel::load(path).with_context(|| format!("loading {}", path.display()))?;
    tracing::info!(
        "{}: {:?}, {} layers, d {}, vocab {}, loaded in {:.2}s",
        path.display(),
        m.model.config.arch,
        m.model.config.n_layer,
        m.model.config.d_model,
        m.model.config.vocab,
        t0.elapsed().as_secs_f64()
    );
    Ok(m)
}

pub fn sample(path: &Path, a: &SampleArgs) -> anyhow::Result<()> {
    let m = load(path)?;
    let text = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => bail!("give --prompt or --prompt-file"),
    };
    // A raw prompt is user text: special-token strings in it stay text.
    let mut ids = m.encode_prompt(&text, false);
    if a.no_bos && m.tok.add_bos {
        ids.remove(0);
    }
    let mut out = std::io::stdout();
    for i in 0..a.num_samples {
        if a.num_samples > 1 {
            println!("--- sample {} ---", i + 1);
        }
        print!("{text}");
        let mut st = Stream {
            m: &m,
            pending: vec![],
        };
        let t0 = std::time::Instant::now();
        let new = m.generate(
            &ids,
            a.max_tokens,
            &a.sampling.params(),
            a.seed + i as u64,
            |id| st.push(id, &mut out),
        )?;
        let secs = t0.elapsed().as_secs_f64();
        println!();
        tracing::info!(
            "{} prompt + {} new tokens in {secs:.2}s ({:.1} tokens/s overall)",
            ids.len(),
            new.len(),
            (ids.len() + new.len()) as f64 / secs
        );
        if a.stats {
            println!(
                "{}",
                serde_json::json!({"sample": "stats", "device": "cpu", "prompt_tokens": ids.len(),
                    "tokens": new.len(), "seconds": secs})
            );
        }
    }
    Ok(())
}

pub fn chat(path: &Path, a: &ChatArgs) -> anyhow::Result<()> {
    let m = load(path)?;
    let mut history: Vec<(String, String)> = Vec::new();
    if let Some(s) = &a.system {
        history.push(("system".into(), s.clone()));
    }
    let mut out = std::io::stdout();
    let mut turn = |history: &mut Vec<(String, String)>, msg: &str, seed: u64| {
        history.push(("user".into(), msg.trim().to_string()));
        let prompt = m.render(history)?;
        // The rendered template carries the special tokens; the user's words went in as text.
        let ids = m.encode_prompt(&prompt, true);
        let mut st = Stream {
            m: &m,
            pending: vec![],
        };
        let new = m.generate(&ids, a.max_tokens, &a.sampling.params(), seed, |id| {
            st.push(id, &mut out)
        })?;
        let _ = writeln!(out);
        history.push(("assistant".into(), m.tok.decode(&new)));
        anyhow::Ok(())
    };
    if a.once {
        let mut msg = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut msg)?;
        if msg.trim().is_empty() {
            bail!("--once: stdin was empty; pipe a message in");
        }
        return turn(&mut history, &msg, a.seed);
    }
    eprintln!("chatting with {} (Ctrl-D to quit, /clear)", path.display());
    let stdin = std::io::stdin();
    let mut seed = a.seed;
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        match line.trim() {
            "" => continue,
            "/clear" => history.retain(|(r, _)| r == "system"),
            "/quit" | "/exit" => return Ok(()),
            l => {
                seed += 1;
                turn(&mut history, l, seed)?;
            }
        }
    }
}
