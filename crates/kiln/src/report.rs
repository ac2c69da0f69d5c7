//! The speedrun's report card: `report.md` and a self-contained `report.html` (curves inline as
//! SVG, no scripts, no external files) with the plan, timings, tokens/s, eval numbers beside their
//! chance level (with the RL stage's held-out pass@1 before and after), the web data (documents per
//! source and per pipeline stage, three example documents with what was removed), the SFT mix
//! statistics, and base vs SFT samples on the same prompts.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

/// Everything the report shows.
pub struct RunInfo {
    pub name: String,
    pub run: PathBuf,
    pub plan: Value,
    /// (stage, seconds, skipped)
    pub timings: Vec<(String, f64, bool)>,
    pub eval: Value,
    pub mix: Value,
    pub corpus_docs: usize,
    pub corpus_tokens: usize,
    /// The web stage's summary (`kiln_train::speedrun::web::WebSummary` as JSON).
    pub web: Value,
    /// `kiln rlhf`'s outputs when the run folder has them ([`read_rlhf`]), else `Null`.
    pub rlhf: Value,
}

/// `<dir>/summary.json`, `<dir>/rlhf.json` and `<dir>/rlhf.svg` of a `kiln rlhf --out <dir>` run,
/// as `{"summary", "guard", "svg"}`; `Null` when there is none (RLHF is not a speedrun stage: run
/// it into `<run>/rlhf` and the next report card shows it).
pub fn read_rlhf(dir: &std::path::Path) -> Value {
    let json = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    };
    match (json("summary.json"), json("rlhf.json")) {
        (Some(summary), Some(guard)) => serde_json::json!({
            "summary": summary,
            "guard": guard,
            "svg": std::fs::read_to_string(dir.join("rlhf.svg")).unwrap_or_default(),
        }),
        _ => Value::Null,
    }
}

/// The RLHF section: what the guard did, the judge's win rate with its spread, and samples
/// before, at the best checkpoint and at the end.
fn rlhf_markdown(m: &mut String, r: &Value) {
    let (s, g) = (&r["summary"], &r["guard"]);
    let _ = writeln!(m, "\n## RLHF\n\nA reward model learned the scripted labeller's orderings (a simulator of a person); the policy was optimised against it with a KL leash, and the hack guard watched a held-out judge the policy never trained on.\n");
    let _ = writeln!(m, "| RLHF | value |\n|---|---|");
    let _ = writeln!(
        m,
        "| hack guard | {} |",
        s["fired"].as_str().unwrap_or("did not fire")
    );
    let _ = writeln!(
        m,
        "| best checkpoint by the judge | step {} (judge {} → {}) |",
        s["best_step"],
        num(&s["judge_start"], 3),
        num(&s["judge_best"], 3)
    );
    let _ = writeln!(
        m,
        "| reward model score on guard prompts | {} → {} |",
        num(&s["rm_start"], 3),
        num(&s["rm_last"], 3)
    );
    for (what, key) in [
        ("best checkpoint", "win_rate"),
        ("last policy", "win_rate_last"),
    ] {
        let w = &s[key];
        if w.is_object() {
            let _ = writeln!(
                m,
                "| judge win rate, {what} vs SFT (unseen prompts) | {} ± {} s.e., 95% CI [{}, {}], {} prompts (chance 0.5) |",
                num(&w["rate"], 3),
                num(&w["std_err"], 3),
                num(&w["ci95"][0], 3),
                num(&w["ci95"][1], 3),
                w["prompts"]
            );
        }
    }
    let sm = &g["samples"];
    let _ = writeln!(
        m,
        "\n**User:** {} (a guard prompt; sampled)\n",
        sm["prompt"].as_str().unwrap_or("")
    );
    for (who, k) in [
        ("before RLHF", "start"),
        ("at the best checkpoint", "best"),
        ("at the end (after the guard fired, if it did)", "last"),
    ] {
        let _ = writeln!(
            m,
            "- {who}: {}",
            sm[k].as_str().unwrap_or("").replace('\n', " ⏎ ")
        );
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or("–".to_string(), |x| format!("{x:.digits$}"))
}

/// One line chart as an inline SVG string (drawn by kiln-train's plot module, which also draws
/// the training curves).
pub fn svg_chart(title: &str, points: &[(f64, f64)], color: &str) -> String {
    kiln_train::plot::chart_svg(title, points, color)
}

fn curve(v: &Value) -> Vec<(f64, f64)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// (name, accuracy text, correct/total, chance)
fn score_rows(eval: &Value) -> Vec<(String, String, String, String)> {
    eval["sft"]["scores"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let (c, t) = (
                        s["correct"].as_u64().unwrap_or(0),
                        s["total"].as_u64().unwrap_or(0),
                    );
                    let acc = if t > 0 {
                        format!("{:.1}%", 100.0 * c as f64 / t as f64)
                    } else {
                        "–".into()
                    };
                    let chance = s["chance"].as_f64().map_or("–".into(), |x| {
                        if x > 0.0 {
                            format!("{:.0}%", x * 100.0)
                        } else {
                            "≈0%".into()
                        }
                    });
                    (
                        s["name"].as_str().unwrap_or("?").to_string(),
                        acc,
                        format!("{c}/{t}"),
                        chance,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What the report calls an RL task, and what a guess scores on it.
fn rl_task_row(task: &str) -> (String, &'static str) {
    match task {
        "arith-easy" => ("arithmetic, small operands (arith-easy)".into(), "≈0%"),
        "count-items" => (
            "counting the items of a list (count-items)".into(),
            "7.7% (one fixed guess in 3–15)",
        ),
        other => (other.to_string(), "–"),
    }
}

/// Tool use and honesty on held-out problems: the SFT model and the honesty-tuned one, with and
/// without tools (from `eval.json`'s `tools` and `honesty`).
fn tools_section(m: &mut String, e: &Value) {
    let t = &e["tools"];
    if !t.is_object() {
        return;
    }
    let rate = |s: &Value| {
        let (c, n) = (
            s["correct"].as_u64().unwrap_or(0),
            s["total"].as_u64().unwrap_or(0),
        );
        if n == 0 {
            "–".to_string()
        } else {
            format!("{:.0}% ({c}/{n})", 100.0 * c as f64 / n as f64)
        }
    };
    let _ = writeln!(
        m,
        "\n## Tools and honesty\n\nHeld-out problems only. Code: counting, spelling, big sums, products and powers, answered through sandboxed Python. Facts: questions about held-out invented places whose facts exist only in the search index. \"Unanswerable\": those same questions without tools. Base is the pretrained model, before any tool lesson; SFT is the model after the tool lessons; honesty is after knowledge probing and its \"I don't know\" lessons. The \"calls\" rows say where a tool answer goes wrong: whether the model called the tool, and whether the call itself was right (its program printed the answer; its search returned the place's own document).\n"
    );
    // Runs written before the base column have no `base` scores: the column is left out.
    let with_base = t["base"].is_object();
    let models: Vec<&str> = if with_base {
        vec!["base", "sft", "honesty"]
    } else {
        vec!["sft", "honesty"]
    };
    let _ = writeln!(
        m,
        "| eval |{} better |\n|---|{}---|",
        if with_base {
            " base | SFT | honesty |"
        } else {
            " SFT | honesty |"
        },
        "---|".repeat(models.len())
    );
    for (key, better) in [
        ("code_without_tools", "higher"),
        ("code_with_tools", "higher"),
        ("code_calls", "–"),
        ("code_prints_answer", "higher"),
        ("search_without_tools", "higher"),
        ("search_with_tools", "higher"),
        ("search_calls", "–"),
        ("search_finds_document", "higher"),
        ("dont_know", "higher"),
        ("confident_wrong", "lower"),
    ] {
        // Runs written before the calls rows have none of them.
        if models.iter().all(|k| !t[*k][key].is_object()) {
            continue;
        }
        let name = models
            .iter()
            .find_map(|k| t[*k][key]["name"].as_str())
            .unwrap_or(key);
        let cells: Vec<String> = models.iter().map(|k| rate(&t[*k][key])).collect();
        let _ = writeln!(m, "| {name} | {} | {better} |", cells.join(" | "));
    }
    let h = &e["honesty"];
    if h.is_object() {
        let _ = writeln!(
            m,
            "\nKnowledge probing: {} questions, 4 samples each → {} \"I don't know\" lessons (never right), {} kept answers (right at least half the time), {} left out (unsure).",
            h["probed"], h["dont_know_lessons"], h["known_lessons"], h["unsure"]
        );
    }
    for (model, key) in [("SFT", "sft"), ("honesty", "honesty")] {
        if let Some((q, r, _)) = t[key]["code_with_tools"]["examples"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|x| Some((x[0].as_str()?, x[1].as_str()?, ())))
        {
            let _ = writeln!(
                m,
                "\n- {model}, with tools — **{q}** → {}",
                r.replace('\n', " ⏎ ")
            );
        }
    }
}

fn mb(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |b| format!("{:.2}", b / 1e6))
}

/// The web stage: documents per source, in/kept/dropped per pipeline stage with the main reasons,
/// and three documents with what the pipeline removed from them.
fn data_section(m: &mut String, w: &Value, run: &std::path::Path) {
    if !w.is_object() {
        return;
    }
    let read_in = w["stages"]
        .as_array()
        .and_then(|a| a.first())
        .map_or(Value::Null, |s| s["docs_in"].clone());
    let pipeline = run.join("web").join("pipeline");
    let _ = writeln!(
        m,
        "\n## Data: the web stage\n\nWeb-like text from the fetched packages through kiln's pipeline (FineWeb's stages, as `kiln data process`): {} documents read, {} kept ({} MB). The tokenizer and the model train on {} of them ({} MB); {} documents ({} MB) are held out for the validation bits per byte, unseen by both. Pipeline output: `{}` (`kiln data explain --out {} ID` says why a document was dropped).\n",
        read_in,
        w["kept_docs"],
        mb(&w["kept_bytes"]),
        w["train_docs"],
        mb(&w["train_bytes"]),
        w["val_docs"],
        mb(&w["val_bytes"]),
        pipeline.display(),
        pipeline.display()
    );
    let _ = writeln!(
        m,
        "| source | documents in | kept | kept MB |\n|---|---|---|---|"
    );
    for s in w["sources"].as_array().into_iter().flatten() {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} |",
            s["source"].as_str().unwrap_or("?"),
            s["docs_in"],
            s["kept"],
            mb(&s["kept_bytes"])
        );
    }
    let _ = writeln!(
        m,
        "\n| stage | documents in | kept | dropped | main reasons |\n|---|---|---|---|---|"
    );
    for s in w["stages"].as_array().into_iter().flatten() {
        let (din, dout) = (
            s["docs_in"].as_u64().unwrap_or(0),
            s["docs_out"].as_u64().unwrap_or(0),
        );
        let mut reasons: Vec<(String, u64)> = s["dropped"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let why: Vec<String> = reasons
            .iter()
            .take(3)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            m,
            "| {} | {din} | {dout} | {} | {} |",
            s["stage"].as_str().unwrap_or("?"),
            din.saturating_sub(dout),
            why.join(", ")
        );
    }
    for (n, e) in w["examples"].as_array().into_iter().flatten().enumerate() {
        let _ = writeln!(
            m,
            "\n### {}. `{}` ({}): {}, {} bytes in → {} bytes kept\n",
            n + 1,
            e["id"].as_str().unwrap_or("?"),
            e["source"].as_str().unwrap_or("?"),
            e["outcome"].as_str().unwrap_or("?"),
            e["bytes_in"],
            e["bytes_out"]
        );
        let before_what = if e["source"].as_str().is_some_and(|s| s.contains("HTML")) {
            "before (the page's text, markup stripped)"
        } else {
            "before"
        };
        let _ = writeln!(m, "- {before_what}: {}", e["before"].as_str().unwrap_or(""));
        if let Some(after) = e["after"].as_str().filter(|a| !a.is_empty()) {
            let _ = writeln!(m, "- after: {after}");
        }
        let removed: Vec<String> = e["removed"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .map(|r| format!("«{r}»"))
            .collect();
        let count = e["removed_count"].as_u64().unwrap_or(0);
        let _ = writeln!(
            m,
            "- removed{}: {}",
            if count > removed.len() as u64 {
                format!(" ({count} lines, the first {})", removed.len())
            } else {
                String::new()
            },
            removed.join(" ")
        );
    }
}

/// Pretraining's model FLOPs utilization on a GPU run (the formula torch_ref.py and
/// `kiln bench train` use); `None` on the cpu, which has no such peak to quote.
fn pretrain_mfu(plan: &Value, eval: &Value) -> Option<f64> {
    if plan["device"].as_str() != Some("cuda") {
        return None;
    }
    let n = eval["base"]["params"].as_f64()?;
    let (l, t, c) = (
        plan["layers"].as_f64()?,
        plan["context"].as_f64()?,
        plan["dim"].as_f64()?,
    );
    let flops_per_token = 6.0 * n + 12.0 * l * t * c;
    Some(eval["base"]["tok_per_s"].as_f64()? * flops_per_token / 989e12)
}

fn markdown(i: &RunInfo) -> String {
    let e = &i.eval;
    let p = &i.plan;
    let mut m = String::new();
    let _ = writeln!(m, "# kiln report card: `{}`\n", i.name);
    let _ = writeln!(
        m,
        "Model: gpt2 {}L × {}d, {} heads, context {}, vocab {} ({} parameters). Pretraining text: {} documents, {} tokens. Budget {} min ({:?} preset) on {}.\n",
        p["layers"], p["dim"], p["heads"], p["context"], p["vocab"], e["base"]["params"], i.corpus_docs, i.corpus_tokens, p["minutes"], p["preset"].as_str().unwrap_or("?"),
        p["device"].as_str().unwrap_or("cpu")
    );
    let _ = writeln!(m, "## Evals\n\nTiny models score low; the point is a pipeline that measures. Chance level is shown beside each score.\n");
    let _ = writeln!(m, "| eval | model | score | chance |\n|---|---|---|---|");
    let _ = writeln!(
        m,
        "| validation bits per byte (held-out web text) | base | {} | – |",
        num(&e["base"]["val_bpb"], 4)
    );
    let _ = writeln!(
        m,
        "| chat validation loss (nats/trained token) | base | {} | – |",
        num(&e["sft"]["chat_val_loss_base"], 4)
    );
    let _ = writeln!(
        m,
        "| chat validation loss (nats/trained token) | SFT | {} | – |",
        num(&e["sft"]["chat_val_loss"], 4)
    );
    for (name, acc, ct, chance) in score_rows(e) {
        let _ = writeln!(m, "| {name} ({ct}) | SFT | {acc} | {chance} |");
    }
    // The RL stage (GRPO on the plan's task): its held-out pass@1 before and after.
    let r = &e["rl"];
    if r.is_object() {
        let pct = |v: &Value| {
            v.as_f64()
                .map_or("–".into(), |x| format!("{:.1}%", 100.0 * x))
        };
        // Runs from before the task was recorded trained on arith-easy.
        let task = r["task"].as_str().unwrap_or("arith-easy");
        let (what, chance) = rl_task_row(task);
        // The reasoning preset's RL starts from its cold start, not from the SFT model.
        let start = r["start"].as_str().unwrap_or("SFT");
        for (model, key) in [(start, "pass1_start"), ("RL", "pass1")] {
            let _ = writeln!(
                m,
                "| RL task: {what}, held-out pass@1 (greedy) | {model} | {} | {chance} |",
                pct(&r[key])
            );
        }
        // The share of sampled replies that are right (DeepSeek-R1's pass@1): runs before it
        // existed have no such keys and no row.
        for (model, key) in [(start, "pass1_sampled_start"), ("RL", "pass1_sampled")] {
            if r[key].is_number() {
                let _ = writeln!(
                    m,
                    "| RL task: {task}, held-out pass@1 (sampled, T = 1) | {model} | {} | {chance} |",
                    pct(&r[key])
                );
            }
        }
    }
    tools_section(&mut m, e);
    data_section(&mut m, &i.web, &i.run);
    let _ = writeln!(m, "\n## Throughput\n\n| stage | tokens/s |\n|---|---|");
    let _ = writeln!(
        m,
        "| pretrain | {} |\n| SFT | {} |",
        num(&e["base"]["tok_per_s"], 0),
        num(&e["sft"]["tok_per_s"], 0)
    );
    if let Some(mfu) = pretrain_mfu(p, e) {
        let _ = writeln!(
            m,
            "| pretrain MFU: (6N + 12·L·T·C) FLOPs per token × tokens/s ÷ 989 TFLOP/s (bf16 dense, H100/H200) | {:.1}% |",
            100.0 * mfu
        );
    }
    if r.is_object() {
        let _ = writeln!(
            m,
            "| RL rollouts (generated, batched KV cache) | {} |\n| RL updates | {} |",
            num(&r["rollout_tok_s"], 0),
            num(&r["train_tok_s"], 0)
        );
    }
    let _ = writeln!(m, "\n## Timings\n\n| stage | seconds |\n|---|---|");
    for (s, t, skipped) in &i.timings {
        let _ = writeln!(
            m,
            "| {s} | {} |",
            if *skipped {
                "skipped (output existed)".to_string()
            } else {
                format!("{t:.1}")
            }
        );
    }
    if let Some(srcs) = i.mix["sources"].as_array() {
        let _ = writeln!(m, "\n## SFT mix\n\n| source | train | val | malformed | rejected | too long |\n|---|---|---|---|---|---|");
        for s in srcs {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} |",
                s["kind"].as_str().unwrap_or("?"),
                s["train"],
                s["val"],
                s["malformed"],
                s["rejected"],
                s["too_long"]
            );
        }
        let _ = writeln!(
            m,
            "\nConversations cut to the context: {}; dropped (answer did not fit): {}.",
            i.mix["truncated"], i.mix["dropped"]
        );
    }
    let _ = writeln!(m, "\n## Samples (same prompts; greedy)\n");
    for s in e["samples"].as_array().into_iter().flatten() {
        let _ = writeln!(m, "**User:** {}\n", s["prompt"].as_str().unwrap_or(""));
        let _ = writeln!(
            m,
            "- base (as `User:`/`Assistant:` document): {}",
            s["base"].as_str().unwrap_or("").replace('\n', " ⏎ ")
        );
        let _ = writeln!(
            m,
            "- SFT: {}\n",
            s["sft"].as_str().unwrap_or("").replace('\n', " ⏎ ")
        );
    }
    if i.rlhf.is_object() {
        rlhf_markdown(&mut m, &i.rlhf);
        let _ = writeln!(m);
    }
    let _ = writeln!(
        m,
        "Curves: see report.html. Chat: `cargo run --release -p kiln -- chat --ckpt {}`",
        i.run.join("sft").display()
    );
    m
}

fn html(i: &RunInfo, md_tables: &str) -> String {
    let e = &i.eval;
    let c = &e["curves"];
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kiln report card: {}</title><style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.s{{background:#f6f6f6;padding:.5em;white-space:pre-wrap;font-family:monospace}}svg{{margin:4px}}</style></head><body>",
        esc(&i.name)
    );
    let _ = write!(h, "<h1>kiln report card: {}</h1>", esc(&i.name));
    let _ = write!(
        h,
        "<h2>Curves</h2><div>{}{}</div><div>{}{}</div>",
        svg_chart("pretraining loss", &curve(&c["pretrain_loss"]), "#c0392b"),
        svg_chart(
            "pretraining validation bits/byte",
            &curve(&c["pretrain_val_bpb"]),
            "#2c3e50"
        ),
        svg_chart(
            "SFT loss (trained tokens)",
            &curve(&c["sft_loss"]),
            "#27ae60"
        ),
        svg_chart(
            "SFT chat validation loss",
            &curve(&c["sft_val_loss"]),
            "#8e44ad"
        )
    );
    if let Some(svg) = i.rlhf["svg"].as_str().filter(|s| s.starts_with("<svg")) {
        let _ = write!(h, "<h2>RLHF curves</h2><div>{svg}</div>");
    }
    // Tables: the markdown's, converted line by line (the only markdown used is tables, headings,
    // bold and lists).
    let mut in_table = false;
    for line in md_tables.lines() {
        if line.starts_with('|') {
            if line.starts_with("|---") {
                continue;
            }
            if !in_table {
                h.push_str("<table>");
                in_table = true;
            }
            h.push_str("<tr>");
            for cell in line.trim_matches('|').split(" | ") {
                let _ = write!(h, "<td>{}</td>", esc(cell.trim()).replace('`', ""));
            }
            h.push_str("</tr>");
            continue;
        }
        if in_table {
            h.push_str("</table>");
            in_table = false;
        }
        if let Some(t) = line.strip_prefix("## ") {
            let _ = write!(h, "<h2>{}</h2>", esc(t));
        } else if let Some(t) = line.strip_prefix("### ") {
            let _ = write!(h, "<h3>{}</h3>", esc(t).replace('`', ""));
        } else if line.starts_with("# ") {
        } else if let Some(t) = line.strip_prefix("**User:** ") {
            let _ = write!(h, "<p><b>User:</b> {}</p>", esc(t));
        } else if let Some(t) = line.strip_prefix("- ") {
            let (who, text) = t.split_once(": ").unwrap_or(("", t));
            let _ = write!(
                h,
                "<div><i>{}</i><div class=\"s\">{}</div></div>",
                esc(who),
                esc(text).replace(" ⏎ ", "\n")
            );
        } else if !line.trim().is_empty() {
            let _ = write!(h, "<p>{}</p>", esc(line).replace('`', ""));
        }
    }
    if in_table {
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

/// Writes `report.md` and `report.html` into the run folder; returns their paths.
pub fn write(i: &RunInfo) -> anyhow::Result<(PathBuf, PathBuf)> {
    let md = markdown(i);
    let html = html(i, &md);
    let (mp, hp) = (i.run.join("report.md"), i.run.join("report.html"));
    kiln_data::write_atomic(&mp, md.as_bytes())
        .with_context(|| format!("writing {}", mp.display()))?;
    kiln_data::write_atomic(&hp, html.as_bytes())
        .with_context(|| format!("writing {}", hp.display()))?;
    Ok((mp, hp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_rows_show_each_model_and_older_runs_keep_two_columns() {
        let sc = |c: u64, n: u64, name: &str| json!({"name": name, "correct": c, "total": n});
        let model = |calls: u64, found: u64| {
            json!({
                "search_with_tools": sc(1, 24, "held-out facts, with search"),
                "search_calls": sc(calls, 24, "held-out facts: calls search"),
                "search_finds_document": sc(found, 24, "held-out facts: search finds the place's document"),
            })
        };
        let mut m = String::new();
        tools_section(
            &mut m,
            &json!({"tools": {"base": model(0, 0), "sft": model(24, 3), "honesty": model(24, 12)}}),
        );
        assert!(
            m.contains("| eval | base | SFT | honesty | better |"),
            "{m}"
        );
        assert!(
            m.contains("| held-out facts: search finds the place's document | 0% (0/24) | 12% (3/24) | 50% (12/24) | higher |"),
            "{m}"
        );
        assert!(
            !m.contains("code problems"),
            "rows no model has are left out: {m}"
        );
        // An eval.json written before the base column and the calls rows.
        let mut old = String::new();
        tools_section(
            &mut old,
            &json!({"tools": {"sft": {"search_with_tools": sc(0, 24, "held-out facts, with search")},
                              "honesty": {"search_with_tools": sc(1, 24, "held-out facts, with search")}}}),
        );
        assert!(
            old.contains("| eval | SFT | honesty | better |\n|---|---|---|---|"),
            "{old}"
        );
        assert!(
            old.contains("| held-out facts, with search | 0% (0/24) | 4% (1/24) | higher |"),
            "{old}"
        );
        assert!(!old.contains("calls search"), "{old}");
    }

    #[test]
    fn report_shows_numbers_and_is_self_contained() {
        let dir = tempfile::tempdir().unwrap();
        let info = RunInfo {
            name: "t".into(),
            run: dir.path().to_path_buf(),
            plan: json!({"layers": 2, "dim": 64, "heads": 2, "context": 128, "vocab": 512, "minutes": 1.5, "preset": "Smoke"}),
            timings: vec![
                ("pretrain".into(), 12.5, false),
                ("tokenizer".into(), 0.0, true),
            ],
            eval: json!({
                "base": {"val_bpb": 2.3456, "params": 1000, "tok_per_s": 5000.0},
                "sft": {"chat_val_loss_base": 4.0, "chat_val_loss": 3.25, "tok_per_s": 4000.0,
                        "scores": [{"name": "MMLU", "correct": 11, "total": 40, "chance": 0.25}]},
                "samples": [{"prompt": "Who are you?", "base": "a <b>", "sft": "I am Kiln."}],
                "rl": {"task": "count-items", "pass1_start": 0.1, "pass1": 0.25, "pass1_sampled_start": 0.05, "pass1_sampled": 0.125, "rollout_tok_s": 900.0, "train_tok_s": 3000.0},
                "curves": {"pretrain_loss": [[1, 5.0], [2, 4.0]], "pretrain_val_bpb": [], "sft_loss": [[1, 3.0]], "sft_val_loss": []}
            }),
            mix: json!({"sources": [{"kind": "identity", "train": 9, "val": 1, "malformed": 0, "rejected": 0, "too_long": 0}], "truncated": 2, "dropped": 1}),
            corpus_docs: 10,
            corpus_tokens: 1234,
            web: json!({
                "kept_docs": 10, "kept_bytes": 12000, "train_docs": 9, "train_bytes": 11000,
                "val_docs": 1, "val_bytes": 1000,
                "sources": [{"source": "evals: owt", "docs_in": 12, "kept": 10, "kept_bytes": 12000}],
                "stages": [
                    {"stage": "read", "docs_in": 12, "docs_out": 12, "dropped": {}},
                    {"stage": "fineweb", "docs_in": 10, "docs_out": 8, "dropped": {"line_punct_ratio": 2}}
                ],
                "examples": [
                    {"id": "python3.11/html/a.html", "source": "python-doc: HTML pages", "outcome": "kept",
                     "bytes_in": 5000, "bytes_out": 900, "before": "Navigation ⏎ Text", "after": "Text",
                     "removed": ["Navigation"], "removed_count": 40},
                    {"id": "text_compression/RandomWordsDataset/3", "source": "evals: text_compression",
                     "outcome": "dropped at gopher_quality: gopher_enough_stop_words", "bytes_in": 80,
                     "bytes_out": 0, "before": "apple door quietly", "after": "",
                     "removed": ["the whole document"], "removed_count": 1}
                ]
            }),
            rlhf: json!({"summary": {"fired": "hack guard: the reward model's score rose", "best_step": 10,
                "judge_start": -0.5, "judge_best": 0.25, "rm_start": 0.1, "rm_last": 2.0,
                "win_rate": {"rate": 0.625, "std_err": 0.05, "ci95": [0.52, 0.72], "prompts": 24}},
                "guard": {"samples": {"start": "fish", "best": "a pelican!", "last": "pelican pelican"}},
                "svg": "<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>"}),
        };
        let (mp, hp) = write(&info).unwrap();
        let md = std::fs::read_to_string(mp).unwrap();
        assert!(md.contains("| validation bits per byte (held-out web text) | base | 2.3456 |"));
        assert!(
            md.contains("| fineweb | 10 | 8 | 2 | line_punct_ratio 2 |"),
            "{md}"
        );
        assert!(md.contains("| evals: owt | 12 | 10 | 0.01 |"), "{md}");
        assert!(
            md.contains("- removed (40 lines, the first 1): «Navigation»"),
            "{md}"
        );
        assert!(md.contains("dropped at gopher_quality"), "{md}");
        assert!(md.contains("| MMLU (11/40) | SFT | 27.5% | 25% |"));
        assert!(md.contains("| tokenizer | skipped (output existed) |"));
        assert!(
            md.contains("| RL task: counting the items of a list (count-items), held-out pass@1 (greedy) | RL | 25.0% | 7.7% (one fixed guess in 3–15) |"),
            "{md}"
        );
        assert!(
            md.contains("held-out pass@1 (sampled, T = 1) | SFT | 5.0% |"),
            "{md}"
        );
        assert!(
            md.contains("| 0.625 ± 0.050 s.e., 95% CI [0.520, 0.720], 24 prompts"),
            "{md}"
        );
        assert!(md.contains("- at the best checkpoint: a pelican!"), "{md}");
        let h = std::fs::read_to_string(hp).unwrap();
        assert_eq!(h.matches("<svg").count(), 5);
        assert!(h.contains("a &lt;b&gt;"), "sample text is escaped");
        assert!(h.contains("<h3>1. python3.11/html/a.html"), "{h}");
        assert!(!h.contains("<script") && !h.contains("src=\"http"));
    }
}
