//! kiln's greedy continuation of a prompt on a GGUF model, one JSON line: the prompt's ids (BOS
//! as the file asks, special tokens parsed, as llama-completion tokenizes) and per step the
//! chosen id with its logit and the runner-up's id and logit. dev/gguf/greedy_top2.cpp prints
//! the same for llama.cpp; dev/gguf/vs-llama-cpp.sh compares the two.
//! usage: cargo run --release -p kiln-chat --example gguf_greedy -- MODEL.gguf N_TOKENS PROMPT

use kiln_chat::gguf_model::GgufChatModel;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let [_, model, n, prompt] = &a[..] else {
        eprintln!("usage: gguf_greedy MODEL.gguf N_TOKENS PROMPT");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N_TOKENS");
    let m = GgufChatModel::load(std::path::Path::new(model)).unwrap();
    let ids = m.encode_prompt(prompt, true);
    let mut s = m.model.session(ids.len() + n);
    let seq = vec![0; ids.len()];
    let mut logits = m
        .model
        .forward_batch(&mut [&mut s], &seq, &ids, &[ids.len() - 1])
        .unwrap();
    let mut steps = Vec::new();
    for i in 0..n {
        let (mut top, mut second) = (0, 1);
        if logits[second] > logits[top] {
            (top, second) = (second, top);
        }
        for (j, &l) in logits.iter().enumerate().skip(2) {
            if l > logits[top] {
                second = top;
                top = j;
            } else if l > logits[second] {
                second = j;
            }
        }
        steps.push(format!(
            "[{top},{},{second},{}]",
            logits[top], logits[second]
        ));
        if m.stop.contains(&(top as u32)) || i + 1 == n {
            break;
        }
        logits = m.model.forward(&mut s, top as u32).unwrap().to_vec();
    }
    println!("{{\"prompt\":{ids:?},\"steps\":[{}]}}", steps.join(","));
}
