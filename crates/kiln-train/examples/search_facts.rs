//! Held-out facts with search, on more questions than the speedrun's 24 (a development probe
//! for the tools issue): `search_facts <checkpoint> [questions] [places]`. Prints, as JSON, how
//! many greedy replies hold the answer, with the first three as examples.

use kiln_chat::tools::lessons::{FactWorld, DEFAULT_PLACES, DEFAULT_WORLD_SEED};
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(ckpt) = args.get(1) else {
        return Err("usage: search_facts <checkpoint> [questions (96)] [places]".into());
    };
    let n: usize = args.get(2).map_or(Ok(96), |s| s.parse())?;
    let places: usize = args.get(3).map_or(Ok(DEFAULT_PLACES), |s| s.parse())?;
    let m = kiln_chat::load::load_model(Path::new(ckpt), None, 2)?;
    let tokens = kiln_chat::load::chat_tokens(&m.tok, ckpt)?;
    let world = FactWorld::new(places, DEFAULT_WORLD_SEED);
    let mut tools = kiln_chat::tools::toolbox::ToolBox {
        code: None,
        search: Some(world.index([])),
    };
    let facts: Vec<_> = world
        .fact_questions(true, 4242)
        .into_iter()
        .take(n)
        .collect();
    let s = kiln_chat::tools::evals::run_tool_evals(
        &m.model,
        &m.tok,
        &tokens,
        &mut tools,
        &[],
        &facts,
        64,
    )?;
    println!(
        "{}",
        serde_json::json!({"checkpoint": ckpt, "questions": facts.len(), "right": s.search_with_tools.correct,
            "examples": s.search_with_tools.examples})
    );
    Ok(())
}
