//! Held-out tool evals by question type (a development probe for the tools issue):
//! `tool_probe <checkpoint> [facts (88)] [code problems (48)]`. Greedy, 64 new tokens, the
//! speedrun's world, index and sandbox; prints `right/asked` per fact type and per code family.

use kiln_chat::tools::evals::run_tool_evals;
use kiln_chat::tools::lessons::{code_problems, FactWorld, DEFAULT_PLACES, DEFAULT_WORLD_SEED};
use std::collections::BTreeMap;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(ckpt) = args.get(1) else {
        return Err("usage: tool_probe <checkpoint> [facts (88)] [code problems (48)]".into());
    };
    let n_facts: usize = args.get(2).map_or(Ok(88), |s| s.parse())?;
    let n_code: usize = args.get(3).map_or(Ok(48), |s| s.parse())?;
    let m = kiln_chat::load::load_model(Path::new(ckpt), None, 2)?;
    let tokens = kiln_chat::load::chat_tokens(&m.tok, ckpt)?;
    let world = FactWorld::new(DEFAULT_PLACES, DEFAULT_WORLD_SEED);
    let wasm =
        kiln_data::fetch::source_dir(kiln_sandbox::SOURCE_NAME)?.join(kiln_sandbox::WASM_IN_SOURCE);
    let mut tools = kiln_chat::tools::toolbox::ToolBox {
        code: Some((
            kiln_sandbox::Sandbox::load(&wasm)?,
            kiln_sandbox::Limits::default(),
        )),
        search: Some(world.index([])),
    };
    // (right, asked) per question type.
    let mut by_type: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for q in world.fact_questions(true, 4242).iter().take(n_facts) {
        let s = run_tool_evals(
            &m.model,
            &m.tok,
            &tokens,
            &mut tools,
            &[],
            std::slice::from_ref(q),
            64,
        )?;
        let e = by_type
            .entry(format!("fact: {}", q.query.replace(&q.place, "_")))
            .or_default();
        e.0 += s.search_with_tools.correct;
        e.1 += 1;
    }
    for p in code_problems(n_code, 4242, true) {
        let s = run_tool_evals(
            &m.model,
            &m.tok,
            &tokens,
            &mut tools,
            std::slice::from_ref(&p),
            &[],
            64,
        )?;
        // The family is the program's shape, without the problem's values.
        let c = &p.code;
        let family = if c.starts_with("print([") && c.contains(".count(") {
            "items in a list"
        } else if c.contains(".count(") {
            "letters in a word"
        } else if c.contains("[::-1]") {
            "reverse a word"
        } else if c.contains("sum(") {
            "sum"
        } else if c.contains("**") {
            "power"
        } else {
            "product"
        };
        let e = by_type.entry(format!("code: {family}")).or_default();
        e.0 += s.code_with_tools.correct;
        e.1 += 1;
    }
    // The calls: made, and right (all questions together).
    let facts: Vec<_> = world
        .fact_questions(true, 4242)
        .into_iter()
        .take(n_facts)
        .collect();
    let code = code_problems(n_code, 4242, true);
    let s = run_tool_evals(&m.model, &m.tok, &tokens, &mut tools, &code, &facts, 64)?;
    for e in [
        &s.code_calls,
        &s.code_prints_answer,
        &s.search_calls,
        &s.search_finds_document,
    ] {
        println!("{:55} {}/{}", e.name, e.correct, e.total);
    }
    let mut total = BTreeMap::new();
    for (k, (r, t)) in &by_type {
        println!("{k:24} {r}/{t}");
        let e: &mut (usize, usize) = total.entry(k.split(':').next().unwrap_or("")).or_default();
        e.0 += r;
        e.1 += t;
    }
    for (k, (r, t)) in total {
        println!("{k} total: {r}/{t}");
    }
    Ok(())
}
