//! `kiln chat`: talk to a checkpoint in the terminal. Streams tokens as they are sampled, keeps the
//! multi-turn history, `/clear`, `/temp <t>`, `/system <text>`, and says when the context window
//! fills (old exchanges are dropped). `--once` reads one message from stdin and prints one reply
//! (for scripts and tests). `--base-prompt <file>` uses a base model as an assistant by continuing
//! a conversation-shaped document, stopping at the next turn marker.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use super::SamplingArgs;
use kiln_chat::load::{chat_tokens, load_model};
use kiln_chat::session::{base_model_reply, ChatSession, PieceKind};
use kiln_chat::tools::lessons::{FactWorld, DEFAULT_PLACES, DEFAULT_WORLD_SEED, TOOLS_SYSTEM};
use kiln_chat::tools::runtime::TurnLimits;
use kiln_chat::tools::search::SearchIndex;
use kiln_chat::tools::toolbox::ToolBox;

#[derive(Args)]
pub struct ChatArgs {
    /// Checkpoint folder (or a run folder with ckpt/latest), e.g. runs/speedrun/sft; a GGUF file
    /// or a released model's name (`kiln models list`).
    #[arg(long, alias = "ckpt")]
    pub model: PathBuf,
    /// Tokenizer folder or name [default: the one the run recorded].
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Read one message from stdin, print one reply, exit.
    #[arg(long)]
    pub once: bool,
    /// Use a base model: continue this conversation-shaped document (`User:` / `Assistant:` turns).
    #[arg(long)]
    pub base_prompt: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// A system message for the conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Tools the model may call: `code` (sandboxed Python), `search`, both (`code,search`) or
    /// `none`. Calls and outputs are shown dimmed.
    #[arg(long, value_delimiter = ',', default_value = "none")]
    pub tools: Vec<ToolName>,
    /// Search index folder (`kiln index build`) [default: the generated world of places the
    /// `tool_search` SFT lessons teach on].
    #[arg(long)]
    pub index: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolName {
    Code,
    Search,
    None,
}

/// The tools `--tools` asks for, searching `index` (or the generated world); `None` when it asks
/// for none. `kiln chat` and `kiln serve` share it.
pub fn toolbox(
    tools: &[ToolName],
    index: Option<&std::path::Path>,
) -> anyhow::Result<Option<ToolBox>> {
    let wants = |t| tools.contains(&t);
    if !wants(ToolName::Code) && !wants(ToolName::Search) {
        return Ok(None);
    }
    let code = if wants(ToolName::Code) {
        let wasm = kiln_data::fetch::source_dir(kiln_sandbox::SOURCE_NAME)?
            .join(kiln_sandbox::WASM_IN_SOURCE);
        Some((
            kiln_sandbox::Sandbox::load(&wasm)?,
            kiln_sandbox::Limits::default(),
        ))
    } else {
        None
    };
    let search = if wants(ToolName::Search) {
        Some(match index {
            Some(dir) => SearchIndex::load(dir)?,
            None => FactWorld::new(DEFAULT_PLACES, DEFAULT_WORLD_SEED).index([]),
        })
    } else {
        None
    };
    Ok(Some(ToolBox { code, search }))
}

fn read_stdin_all() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
    Ok(s)
}

pub fn run(a: ChatArgs, threads: usize) -> anyhow::Result<()> {
    let wants_tools = a.tools.iter().any(|t| *t != ToolName::None);
    // A GGUF file or a catalogue name (`smollm2-135m`) is a released model.
    if let Some(path) = kiln_data::models::resolve_model(&a.model.to_string_lossy())? {
        if wants_tools {
            bail!("--tools: released (GGUF) models were not trained on kiln's tool tokens; use a kiln checkpoint");
        }
        return super::gguf::chat(&path, &a);
    }
    let l = load_model(&a.model, a.tokenizer.as_deref(), threads)?;
    let sampling = a.sampling.params();
    let mut out = std::io::stdout();

    if let Some(doc_path) = &a.base_prompt {
        if wants_tools {
            bail!(
                "--tools needs a chat model's tool tokens; it does not combine with --base-prompt"
            );
        }
        let doc = std::fs::read_to_string(doc_path)
            .with_context(|| format!("reading {}", doc_path.display()))?;
        let bos = l
            .tok
            .special_token_id("<|bos|>")
            .or_else(|| l.tok.special_token_id("<|endoftext|>"));
        let mut history = doc.trim_end().to_string();
        let mut turn = |user: &str, seed: u64, out: &mut std::io::Stdout| -> anyhow::Result<()> {
            let reply = base_model_reply(
                &l.model,
                &l.tok,
                bos,
                &history,
                user,
                ("User:", "Assistant:"),
                &sampling,
                a.max_tokens,
                seed,
                |piece| {
                    if std::io::IsTerminal::is_terminal(&*out) {
                        let _ = write!(out, "{}", super::for_terminal(piece));
                    } else {
                        let _ = write!(out, "{piece}");
                    }
                    let _ = out.flush();
                },
            )?;
            writeln!(out)?;
            history = format!("{history}\nUser: {}\nAssistant: {reply}", user.trim());
            Ok(())
        };
        if a.once {
            let msg = read_stdin_all()?;
            return turn(&msg, a.seed, &mut out);
        }
        eprintln!(
            "base model as assistant (document {}); Ctrl-D to quit",
            doc_path.display()
        );
        let stdin = std::io::stdin();
        let mut seed = a.seed;
        loop {
            eprint!("> ");
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line.trim().is_empty() {
                continue;
            }
            seed += 1;
            turn(&line, seed, &mut out)?;
        }
    }

    let tokens = chat_tokens(&l.tok, &l.dir.display().to_string())?;
    let mut tools = toolbox(&a.tools, a.index.as_deref())?;
    let mut session = ChatSession::new(a.sampling.temperature, a.max_tokens, a.seed);
    session.sampling = sampling.clone();
    // With tools, the system message starts with the line the tool lessons were trained under;
    // the user's own system message follows it.
    let with_tools = tools.is_some();
    let system_of = move |user: Option<&str>| match (with_tools, user) {
        (true, Some(s)) => Some(format!("{TOOLS_SYSTEM}\n{s}")),
        (true, None) => Some(TOOLS_SYSTEM.to_string()),
        (false, s) => s.map(str::to_string),
    };
    session.conv.system = system_of(a.system.as_deref());
    // Dim tool calls and outputs on a terminal, and show control characters in what the model
    // and its tools wrote as escapes; plain text into a pipe or file.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (dim, reset) = if terminal {
        ("\x1b[2m", "\x1b[0m")
    } else {
        ("", "")
    };
    let shown = move |piece: &str| -> String {
        if terminal {
            super::for_terminal(piece).into_owned()
        } else {
            piece.to_string()
        }
    };
    let mut say =
        |session: &mut ChatSession, msg: &str, out: &mut std::io::Stdout| -> anyhow::Result<()> {
            let info = match tools.as_mut() {
                None => session.reply(&l.model, &l.tok, &tokens, msg.trim(), |piece| {
                    let _ = write!(out, "{}", shown(piece));
                    let _ = out.flush();
                })?,
                Some(tb) => session.reply_with_tools(
                    &l.model,
                    &l.tok,
                    &tokens,
                    tb,
                    &TurnLimits::default(),
                    msg.trim(),
                    |piece, kind| {
                        let _ = match kind {
                            PieceKind::Answer => write!(out, "{}", shown(piece)),
                            PieceKind::ToolName => write!(out, "\n{dim}[{piece}] "),
                            PieceKind::ToolCall => write!(out, "{}", shown(piece)),
                            PieceKind::ToolOutput => write!(
                                out,
                                "{reset}\n{dim}[output] {}{reset}\n",
                                shown(piece.trim_end())
                            ),
                        };
                        let _ = out.flush();
                    },
                )?,
            };
            writeln!(out)?;
            if info.dropped_exchanges > 0 {
                eprintln!(
                    "[context full: dropped the {} oldest exchange(s) to make room]",
                    info.dropped_exchanges
                );
            }
            if info.context_used * 10 >= info.context * 8 {
                eprintln!(
                    "[context {}/{} tokens used; /clear to start over]",
                    info.context_used, info.context
                );
            }
            if info.cut {
                eprintln!("[reply cut at {} tokens]", info.tokens);
            }
            Ok(())
        };
    if a.once {
        let msg = read_stdin_all()?;
        if msg.trim().is_empty() {
            bail!("--once: stdin was empty; pipe a message in, e.g. `echo hello | kiln chat --model … --once`");
        }
        return say(&mut session, &msg, &mut out);
    }
    eprintln!(
        "chatting with {} ({} params, context {}). Commands: /clear /temp <t> /system <text> /quit",
        l.dir.display(),
        l.model.num_params(),
        l.model.cfg.context
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            let (name, arg) = cmd
                .split_once(' ')
                .map_or((cmd, ""), |(n, r)| (n, r.trim()));
            match name {
                "clear" => {
                    session.clear();
                    eprintln!("[history cleared]");
                }
                "temp" => match arg.parse::<f32>() {
                    Ok(t) if t >= 0.0 => {
                        session.sampling.temperature = t;
                        eprintln!("[temperature {t}]");
                    }
                    _ => eprintln!("[usage: /temp <non-negative number>]"),
                },
                "system" => {
                    session.conv.system = system_of((!arg.is_empty()).then_some(arg));
                    session.clear();
                    eprintln!(
                        "[system message {}; history cleared]",
                        if arg.is_empty() { "removed" } else { "set" }
                    );
                }
                "quit" | "exit" => return Ok(()),
                _ => eprintln!("[unknown command /{name}; try /clear /temp /system /quit]"),
            }
            continue;
        }
        say(&mut session, line, &mut out)?;
    }
}
