//! SFT data mixes described by a TOML file (`configs/sft-mix.toml`): which conversation sources,
//! how many of each, and the validation split. Sources:
//!
//! - `chitchat`: the chitchat-dataset's multi-turn human chats (first speaker = user);
//! - `evals`: chat-format samples `{"input":[messages],"ideal":…}` from the OpenAI evals registry;
//! - `identity`: conversations generated from a persona file ([`crate::identity`]);
//! - `arithmetic`: generated problems with worked steps ([`crate::arith`]);
//! - `task`: an RL task's training problems answered directly, a cold start before RL
//!   ([`crate::tasks`]);
//! - `tool_code`: questions answered by calling the code tool ([`crate::tools::lessons`]);
//! - `tool_search`: questions about a generated world of places, answered by searching its
//!   documents ([`crate::tools::lessons::FactWorld`]; the index is rebuilt from the same seed);
//! - `jsonl`: kiln's own conversation format, one [`Conversation`] per line.
//!
//! Bad input is counted, never silently lost: malformed lines are skipped and counted with the
//! first error kept (`strict` turns the first one into an error); conversations with an empty or
//! missing assistant turn are rejected and counted.

use crate::format::{Content, Conversation, Message, Role};
use crate::identity::Persona;
use kiln_engine::Rng;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The mix file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Fraction of each source held out for validation loss.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    #[serde(rename = "source")]
    pub sources: Vec<SourceConfig>,
}

fn default_seed() -> u64 {
    1
}
fn default_val_fraction() -> f64 {
    0.05
}

/// One `[[source]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    Chitchat {
        /// Fetched data source name (folder under `<data>/raw/`).
        #[serde(default = "chitchat_source")]
        source: String,
        #[serde(default = "chitchat_file")]
        file: String,
        limit: usize,
        /// Keep at most this many messages per conversation (even, ends with the assistant).
        #[serde(default = "default_max_messages")]
        max_messages: usize,
    },
    Evals {
        #[serde(default = "evals_source")]
        source: String,
        #[serde(default = "evals_dir")]
        dir: String,
        /// Task folders to use (empty: all).
        #[serde(default)]
        include: Vec<String>,
        /// Task folders never to use (eval sets must stay out of training).
        #[serde(default)]
        exclude: Vec<String>,
        /// Lines read per file at most.
        #[serde(default = "default_per_file")]
        per_file: usize,
        limit: usize,
        /// Samples longer than this many characters are skipped (counted).
        #[serde(default = "default_max_chars")]
        max_chars: usize,
    },
    Identity {
        /// Persona TOML, relative to the mix file.
        persona: String,
        count: usize,
    },
    Arithmetic {
        count: usize,
    },
    /// An RL task's training problems answered directly (`The answer is X.`): a cold start
    /// before RL ([`crate::tasks::TaskKind::cold_start_conversations`]).
    Task {
        /// A task name (`arith`, `arith-easy`, `two-digit-sums`, `word`, `countdown`, `count-items`).
        task: String,
        count: usize,
    },
    #[serde(rename = "tool_code")]
    ToolCode {
        count: usize,
    },
    #[serde(rename = "tool_search")]
    ToolSearch {
        count: usize,
        /// Places in the generated world (the search index holds one document per place).
        #[serde(default = "default_places")]
        places: usize,
        #[serde(default = "default_world_seed")]
        world_seed: u64,
    },
    Jsonl {
        /// kiln conversation JSONL, relative to the mix file.
        file: String,
        #[serde(default = "usize_max")]
        limit: usize,
    },
}

fn chitchat_source() -> String {
    "chitchat".into()
}
fn chitchat_file() -> String {
    "chitchat_dataset/dataset.json".into()
}
fn evals_source() -> String {
    "evals".into()
}
fn evals_dir() -> String {
    "evals/registry/data".into()
}
fn default_max_messages() -> usize {
    8
}
fn default_per_file() -> usize {
    20
}
fn default_max_chars() -> usize {
    1500
}
fn default_places() -> usize {
    crate::tools::lessons::DEFAULT_PLACES
}
fn default_world_seed() -> u64 {
    crate::tools::lessons::DEFAULT_WORLD_SEED
}
fn usize_max() -> usize {
    usize::MAX
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Chitchat { .. } => "chitchat",
            SourceConfig::Evals { .. } => "evals",
            SourceConfig::Identity { .. } => "identity",
            SourceConfig::Arithmetic { .. } => "arithmetic",
            SourceConfig::Task { .. } => "task",
            SourceConfig::ToolCode { .. } => "tool_code",
            SourceConfig::ToolSearch { .. } => "tool_search",
            SourceConfig::Jsonl { .. } => "jsonl",
        }
    }
}

/// Errors loading a mix.
#[derive(Debug, thiserror::Error)]
pub enum MixError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The caller's `source_dir` could not resolve a fetched source (its message says why).
    #[error("{0}")]
    Source(String),
    #[error("{0}")]
    Persona(#[from] crate::identity::PersonaError),
    #[error("malformed input (strict mode): {0}")]
    Strict(String),
    #[error("{path}: val_fraction must be in [0, 0.5], got {value}")]
    ValFraction { path: PathBuf, value: f64 },
}

/// What happened to one source's input.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceStats {
    pub kind: String,
    pub train: usize,
    pub val: usize,
    /// Lines or records that could not be parsed.
    pub malformed: usize,
    /// Parsed but unusable: empty/missing assistant turn, wrong turn order.
    pub rejected: usize,
    /// Skipped for length (`max_chars`).
    pub too_long: usize,
    /// The first malformed/rejected record, with its file and line.
    pub first_error: Option<String>,
}

/// The loaded mix: shuffled training and validation conversations plus per-source statistics.
#[derive(Debug, Clone, Default)]
pub struct Mix {
    pub train: Vec<Conversation>,
    pub val: Vec<Conversation>,
    pub stats: Vec<SourceStats>,
}

struct Collector {
    stats: SourceStats,
    strict: bool,
    out: Vec<Conversation>,
}

impl Collector {
    fn malformed(&mut self, at: String) -> Result<(), MixError> {
        if self.strict {
            return Err(MixError::Strict(at));
        }
        self.stats.malformed += 1;
        self.stats.first_error.get_or_insert(at);
        Ok(())
    }
    /// Validates and keeps (or rejects and counts) one conversation.
    fn push(&mut self, conv: Conversation, at: impl FnOnce() -> String) -> Result<(), MixError> {
        match conv.validate(true) {
            Ok(()) => {
                self.out.push(conv);
                Ok(())
            }
            Err(e) => {
                let msg = format!("{}: {e}", at());
                if self.strict {
                    return Err(MixError::Strict(msg));
                }
                self.stats.rejected += 1;
                self.stats.first_error.get_or_insert(msg);
                Ok(())
            }
        }
    }
}

impl MixConfig {
    pub fn load(path: &Path) -> Result<Self, MixError> {
        let text = std::fs::read_to_string(path).map_err(|source| MixError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: MixConfig = toml::from_str(&text).map_err(|e| MixError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if !(0.0..=0.5).contains(&cfg.val_fraction) {
            return Err(MixError::ValFraction {
                path: path.to_path_buf(),
                value: cfg.val_fraction,
            });
        }
        for (i, src) in cfg.sources.iter().enumerate() {
            if let SourceConfig::Task { task, .. } = src {
                if let Err(e) = task.parse::<crate::tasks::TaskKind>() {
                    return Err(MixError::Parse {
                        path: path.to_path_buf(),
                        message: format!("source {} (kind = \"task\"): {e}", i + 1),
                    });
                }
            }
        }
        Ok(cfg)
    }

    /// Loads every source. Relative `persona`/`jsonl` paths resolve against `base_dir` (the mix
    /// file's folder); a fetched source (`chitchat`, `evals` kinds name one) is found by
    /// `source_dir(name)`, the caller's resolver (the binary uses kiln-data's fetch folders), whose
    /// error message is passed on. `scale` multiplies every limit/count (the speedrun's presets
    /// shrink the mix with it).
    pub fn build(
        &self,
        base_dir: &Path,
        source_dir: &dyn Fn(&str) -> Result<PathBuf, String>,
        scale: f64,
        strict: bool,
    ) -> Result<Mix, MixError> {
        let mut mix = Mix::default();
        let scaled = |n: usize| -> usize {
            if n == usize::MAX {
                n
            } else {
                ((n as f64 * scale).round() as usize).max(1)
            }
        };
        for (i, src) in self.sources.iter().enumerate() {
            let seed = self.seed.wrapping_add(i as u64 * 1_000_003);
            let mut col = Collector {
                stats: SourceStats {
                    kind: src.kind().to_string(),
                    ..Default::default()
                },
                strict,
                out: Vec::new(),
            };
            match src {
                SourceConfig::Chitchat {
                    source,
                    file,
                    limit,
                    max_messages,
                } => {
                    let path = source_dir(source).map_err(MixError::Source)?.join(file);
                    load_chitchat(&path, *max_messages, &mut col)?;
                    shuffle_take(&mut col.out, seed, scaled(*limit));
                }
                SourceConfig::Evals {
                    source,
                    dir,
                    include,
                    exclude,
                    per_file,
                    limit,
                    max_chars,
                } => {
                    let root = source_dir(source).map_err(MixError::Source)?.join(dir);
                    load_evals(&root, include, exclude, *per_file, *max_chars, &mut col)?;
                    shuffle_take(&mut col.out, seed, scaled(*limit));
                }
                SourceConfig::Identity { persona, count } => {
                    let persona = Persona::load(&base_dir.join(persona))?;
                    for c in persona.conversations(scaled(*count), seed) {
                        col.push(c, || "identity".into())?;
                    }
                }
                SourceConfig::Arithmetic { count } => {
                    for c in crate::arith::conversations(scaled(*count), seed) {
                        col.push(c, || "arithmetic".into())?;
                    }
                }
                SourceConfig::Task { task, count } => {
                    let kind: crate::tasks::TaskKind = task
                        .parse()
                        .map_err(|e: crate::tasks::UnknownTask| MixError::Source(e.to_string()))?;
                    for c in kind.cold_start_conversations(scaled(*count), seed) {
                        col.push(c, || format!("task {task}"))?;
                    }
                }
                SourceConfig::ToolCode { count } => {
                    for c in crate::tools::lessons::code_conversations(scaled(*count), seed) {
                        col.push(c, || "tool_code".into())?;
                    }
                }
                SourceConfig::ToolSearch {
                    count,
                    places,
                    world_seed,
                } => {
                    let world = crate::tools::lessons::FactWorld::new(*places, *world_seed);
                    let index = world.index([]);
                    for c in world.search_conversations(&index, scaled(*count), seed) {
                        col.push(c, || "tool_search".into())?;
                    }
                }
                SourceConfig::Jsonl { file, limit } => {
                    load_jsonl(&base_dir.join(file), &mut col)?;
                    shuffle_take(&mut col.out, seed, scaled(*limit));
                }
            }
            let (mut stats, mut convs) = (col.stats, col.out);
            // Hold out a slice of every source so validation covers each kind of conversation.
            let n_val = if convs.len() >= 2 {
                ((convs.len() as f64 * self.val_fraction).ceil() as usize).min(convs.len() - 1)
            } else {
                0
            };
            let mut rng = Rng::new(seed ^ 0x7A1);
            rng.shuffle(&mut convs);
            mix.val.extend(convs.drain(..n_val));
            stats.val = n_val;
            stats.train = convs.len();
            mix.train.extend(convs);
            tracing::info!(
                kind = stats.kind,
                train = stats.train,
                val = stats.val,
                malformed = stats.malformed,
                rejected = stats.rejected,
                too_long = stats.too_long,
                "SFT source loaded"
            );
            if let Some(e) = &stats.first_error {
                tracing::warn!("{}: first skipped record: {e}", stats.kind);
            }
            mix.stats.push(stats);
        }
        Rng::new(self.seed).shuffle(&mut mix.train);
        Ok(mix)
    }
}

fn shuffle_take(convs: &mut Vec<Conversation>, seed: u64, limit: usize) {
    Rng::new(seed).shuffle(convs);
    convs.truncate(limit);
}

fn read(path: &Path) -> Result<String, MixError> {
    std::fs::read_to_string(path).map_err(|source| MixError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// chitchat-dataset: `{id: {"messages": [[{"text","sender",…}, …], …], …}}`, one inner list per
/// turn (consecutive messages of one sender). The first sender plays the user.
fn load_chitchat(path: &Path, max_messages: usize, col: &mut Collector) -> Result<(), MixError> {
    let text = read(path)?;
    let root: Value = serde_json::from_str(&text).map_err(|e| MixError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let Some(map) = root.as_object() else {
        return Err(MixError::Parse {
            path: path.to_path_buf(),
            message: "expected a JSON object of conversations".into(),
        });
    };
    for (id, conv) in map {
        let at = || format!("{}: conversation {id}", path.display());
        let Some(turns) = conv.get("messages").and_then(Value::as_array) else {
            col.malformed(format!("{}: no `messages` array", at()))?;
            continue;
        };
        let mut msgs: Vec<(String, String)> = Vec::new(); // (sender, text)
        let mut bad = None;
        for (ti, turn) in turns.iter().enumerate() {
            for m in turn.as_array().into_iter().flatten() {
                match (
                    m.get("sender").and_then(Value::as_str),
                    m.get("text").and_then(Value::as_str),
                ) {
                    (Some(s), Some(t)) => match msgs.last_mut() {
                        Some((ls, lt)) if ls == s => {
                            lt.push('\n');
                            lt.push_str(t.trim());
                        }
                        _ => msgs.push((s.to_string(), t.trim().to_string())),
                    },
                    _ => bad = Some(format!("turn {ti}: message without `sender`/`text`")),
                }
            }
        }
        if let Some(b) = bad {
            col.malformed(format!("{}: {b}", at()))?;
            continue;
        }
        let mut keep = msgs.len().min(max_messages);
        keep -= keep % 2;
        let messages = msgs
            .into_iter()
            .take(keep.max(1))
            .enumerate()
            .map(|(i, (_, t))| {
                if i % 2 == 0 {
                    Message::user(t)
                } else {
                    Message::assistant(t)
                }
            })
            .collect();
        col.push(Conversation::new(messages), at)?;
    }
    Ok(())
}

/// All `*.jsonl` under `root`, sorted, filtered by their first folder below `root`.
fn evals_files(
    root: &Path,
    include: &[String],
    exclude: &[String],
) -> Result<Vec<PathBuf>, MixError> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|source| MixError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in rd {
            let entry = entry.map_err(|source| MixError::Io {
                path: dir.clone(),
                source,
            })?;
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "jsonl") {
                let task = p
                    .strip_prefix(root)
                    .ok()
                    .and_then(|r| r.components().next())
                    .map(|c| c.as_os_str().to_string_lossy().to_string())
                    .unwrap_or_default();
                if (include.is_empty() || include.contains(&task)) && !exclude.contains(&task) {
                    files.push(p);
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

/// One evals sample → a conversation (system messages, few-shot `example_user`/`example_assistant`
/// turns, the prompt, and `ideal` as the assistant's answer). Err = why the line is malformed.
pub fn evals_sample(v: &Value) -> Result<Conversation, String> {
    let input = v
        .get("input")
        .and_then(Value::as_array)
        .ok_or("no `input` message list")?;
    let ideal = match v.get("ideal") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .first()
            .and_then(Value::as_str)
            .ok_or("`ideal` list without a string")?
            .to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err("no `ideal` answer".into()),
    };
    let mut conv = Conversation::default();
    let mut system = Vec::new();
    for (i, m) in input.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or(format!("input[{i}]: no `role`"))?;
        let content = m
            .get("content")
            .and_then(Value::as_str)
            .ok_or(format!("input[{i}]: `content` is not a string"))?;
        let role = match (role, m.get("name").and_then(Value::as_str)) {
            ("system", Some("example_user")) | ("user", _) => Role::User,
            ("system", Some("example_assistant")) | ("assistant", _) => Role::Assistant,
            ("system", _) if conv.messages.is_empty() => {
                system.push(content.to_string());
                continue;
            }
            ("system", _) => Role::User,
            (other, _) => return Err(format!("input[{i}]: unknown role `{other}`")),
        };
        match conv.messages.last_mut() {
            Some(last) if last.role == role => {
                let joined = format!("{}\n\n{content}", last.content.text());
                last.content = Content::Text(joined);
            }
            _ => conv.messages.push(Message {
                role,
                content: content.into(),
            }),
        }
    }
    if conv.messages.is_empty() {
        // Some tasks put the whole prompt in system messages: the last one is the question.
        let q = system.pop().ok_or("`input` has no messages")?;
        conv.messages.push(Message::user(q));
    }
    if !system.is_empty() {
        conv.system = Some(system.join("\n\n"));
    }
    conv.messages.push(Message::assistant(ideal));
    Ok(conv)
}

fn load_evals(
    root: &Path,
    include: &[String],
    exclude: &[String],
    per_file: usize,
    max_chars: usize,
    col: &mut Collector,
) -> Result<(), MixError> {
    for file in evals_files(root, include, exclude)? {
        // Read lazily: the registry is ~600 MB and only the first `per_file` samples are used.
        let f = std::fs::File::open(&file).map_err(|source| MixError::Io {
            path: file.clone(),
            source,
        })?;
        // Only the first `per_file` lines are looked at, usable or not.
        for (ln, line) in std::io::BufRead::lines(std::io::BufReader::new(f))
            .enumerate()
            .take(per_file)
        {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    col.malformed(format!("{}:{}: {e}", file.display(), ln + 1))?;
                    break;
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{}:{}", file.display(), ln + 1);
            let conv = match serde_json::from_str::<Value>(&line)
                .map_err(|e| e.to_string())
                .and_then(|v| evals_sample(&v))
            {
                Ok(c) => c,
                Err(e) => {
                    col.malformed(format!("{}: {e}", at()))?;
                    continue;
                }
            };
            let chars = conv.system.as_ref().map_or(0, String::len)
                + conv
                    .messages
                    .iter()
                    .map(|m| m.content.text().len())
                    .sum::<usize>();
            if chars > max_chars {
                col.stats.too_long += 1;
                continue;
            }
            col.push(conv, at)?;
        }
    }
    Ok(())
}

/// kiln's JSONL: one [`Conversation`] per line.
pub fn load_jsonl_file(
    path: &Path,
    strict: bool,
) -> Result<(Vec<Conversation>, SourceStats), MixError> {
    let mut col = Collector {
        stats: SourceStats {
            kind: "jsonl".into(),
            ..Default::default()
        },
        strict,
        out: Vec::new(),
    };
    load_jsonl(path, &mut col)?;
    Ok((col.out, col.stats))
}

fn load_jsonl(path: &Path, col: &mut Collector) -> Result<(), MixError> {
    let text = read(path)?;
    for (ln, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), ln + 1);
        match serde_json::from_str::<Conversation>(line) {
            Ok(c) => col.push(c, at)?,
            Err(e) => col.malformed(format!("{}: {e}", at()))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn evals_sample_maps_roles_and_ideal() {
        let v: Value = serde_json::from_str(
            r#"{"input":[{"role":"system","content":"S"},{"role":"system","name":"example_user","content":"1+1"},
            {"role":"system","name":"example_assistant","content":"2"},{"role":"user","content":"2+2"}],"ideal":["4","four"]}"#,
        )
        .unwrap();
        let c = evals_sample(&v).unwrap();
        assert_eq!(c.system.as_deref(), Some("S"));
        let only_system: Value = serde_json::json!({"input": [{"role": "system", "content": "rules"}, {"role": "system", "content": "Q?"}], "ideal": "A"});
        let c2 = evals_sample(&only_system).unwrap();
        assert_eq!(
            (c2.system.as_deref(), c2.messages[0].content.text().as_str()),
            (Some("rules"), "Q?")
        );
        c2.validate(true).unwrap();
        assert_eq!(c.messages.len(), 4);
        assert_eq!(c.messages[3], Message::assistant("4"));
        c.validate(true).unwrap();
        assert!(evals_sample(&serde_json::json!({"input": "x", "ideal": "y"})).is_err());
    }

    /// For mixes without fetched sources.
    fn no_fetched(name: &str) -> Result<PathBuf, String> {
        Err(format!("{name}: no fetched sources in this test"))
    }

    fn write_mix(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("mix.toml");
        fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn task_source_gives_cold_start_conversations_and_names_a_bad_task() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_mix(
            dir.path(),
            "[[source]]\nkind = \"task\"\ntask = \"arith-easy\"\ncount = 200\n",
        );
        let mix = MixConfig::load(&p)
            .unwrap()
            .build(dir.path(), &no_fetched, 1.0, true)
            .unwrap();
        let all: Vec<_> = mix.train.iter().chain(&mix.val).collect();
        assert_eq!(all.len(), 200);
        assert!(all
            .iter()
            .all(|c| c.messages[1].content.text().starts_with("The answer is ")));
        let bad = write_mix(
            dir.path(),
            "[[source]]\nkind = \"arithmetic\"\ncount = 5\n[[source]]\nkind = \"task\"\ntask = \"gsm9k\"\ncount = 5\n",
        );
        let e = MixConfig::load(&bad).unwrap_err().to_string();
        assert!(
            e.contains("mix.toml") && e.contains("source 2") && e.contains("arith-easy"),
            "{e}"
        );
    }

    #[test]
    fn malformed_lines_are_counted_and_strict_fails() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("c.jsonl"),
            concat!(
                r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#,
                "\n{not json\n",
                r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":""}]}"#,
                "\n",
                r#"{"messages":[{"role":"user","content":"only a question"}]}"#,
                "\n",
                r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#,
                "\n"
            ),
        )
        .unwrap();
        let p = write_mix(
            dir.path(),
            "val_fraction = 0.0\n[[source]]\nkind = \"jsonl\"\nfile = \"c.jsonl\"\n",
        );
        let cfg = MixConfig::load(&p).unwrap();
        let mix = cfg.build(dir.path(), &no_fetched, 1.0, false).unwrap();
        let s = &mix.stats[0];
        assert_eq!((s.train, s.malformed, s.rejected), (2, 1, 2));
        assert!(
            s.first_error.as_deref().unwrap().contains("c.jsonl:2"),
            "{:?}",
            s.first_error
        );
        let err = cfg.build(dir.path(), &no_fetched, 1.0, true).unwrap_err();
        assert!(err.to_string().contains("c.jsonl:2"), "{err}");
    }

    #[test]
    fn generated_sources_split_into_train_and_val() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("p.toml"),
            "name='Kiln'\ncreator='the kiln project'\ndescription='a small model.'\ntraining='Books.'\n",
        )
        .unwrap();
        let p = write_mix(
            dir.path(),
            "seed = 3\nval_fraction = 0.1\n[[source]]\nkind='identity'\npersona='p.toml'\ncount=40\n[[source]]\nkind='arithmetic'\ncount=100\n",
        );
        let mix = MixConfig::load(&p)
            .unwrap()
            .build(dir.path(), &no_fetched, 0.5, false)
            .unwrap();
        assert_eq!(mix.stats[0].train + mix.stats[0].val, 20);
        assert_eq!(mix.stats[1].val, 5);
        assert_eq!(mix.train.len() + mix.val.len(), 70);
    }

    #[test]
    fn tool_sources_make_tool_lessons() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_mix(
            dir.path(),
            "val_fraction = 0.0\n[[source]]\nkind='tool_code'\ncount=30\n[[source]]\nkind='tool_search'\ncount=20\nplaces=40\n",
        );
        let mix = MixConfig::load(&p)
            .unwrap()
            .build(dir.path(), &no_fetched, 1.0, false)
            .unwrap();
        assert_eq!((mix.stats[0].train, mix.stats[1].train), (30, 20));
        let has = |c: &Conversation, f: fn(&crate::format::Segment) -> bool| match &c.messages[1]
            .content
        {
            Content::Segments(s) => s.iter().any(f),
            Content::Text(_) => false,
        };
        use crate::format::Segment;
        let code = mix
            .train
            .iter()
            .filter(|c| has(c, |s| matches!(s, Segment::Python(_))))
            .count();
        let search = mix
            .train
            .iter()
            .filter(|c| has(c, |s| matches!(s, Segment::Search(_))))
            .count();
        assert_eq!((code, search), (30, 20));
    }

    #[test]
    fn unknown_keys_and_bad_fraction_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_mix(
            dir.path(),
            "[[source]]\nkind='arithmetic'\ncount=1\ncolour='red'\n",
        );
        assert!(MixConfig::load(&p)
            .unwrap_err()
            .to_string()
            .contains("colour"));
        let p = write_mix(
            dir.path(),
            "val_fraction = 0.9\n[[source]]\nkind='arithmetic'\ncount=1\n",
        );
        assert!(MixConfig::load(&p)
            .unwrap_err()
            .to_string()
            .contains("val_fraction"));
    }

    #[test]
    fn real_chitchat_and_evals_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_mix(
            dir.path(),
            "[[source]]\nkind='chitchat'\nlimit=100\n[[source]]\nkind='evals'\ninclude=['simple_math','coqa']\nlimit=30\nper_file=10\nmax_chars=100000\n",
        );
        let mix = MixConfig::load(&p)
            .unwrap()
            .build(
                dir.path(),
                &|s| Ok(crate::fetched_source_for_test(s)),
                1.0,
                false,
            )
            .unwrap();
        assert_eq!(mix.stats[0].train + mix.stats[0].val, 100);
        // ~3150 of 7168 chitchat conversations have a single turn: rejected, counted.
        assert!(mix.stats[0].rejected > 1000, "{:?}", mix.stats[0]);
        assert!(
            mix.stats[1].train + mix.stats[1].val >= 20,
            "{:?}",
            mix.stats[1]
        );
    }
}
