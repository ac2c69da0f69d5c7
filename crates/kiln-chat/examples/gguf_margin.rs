//! Where kiln's greedy choice parts from another engine's continuation, and by how much kiln's
//! top two logits differ there (a near-tie or a real disagreement). Used with
//! dev/gguf/vs-llama-cpp.sh's output.
//! usage: cargo run --release -p kiln-chat --example gguf_margin -- MODEL.gguf PROMPT CONTINUATION

use kiln_chat::gguf_model::GgufChatModel;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let m = GgufChatModel::load(std::path::Path::new(&a[1])).unwrap();
    let prompt = m.encode_prompt(&a[2], false);
    let cont = m.tok.encode(&a[3], false);
    let mut s = m.model.session(prompt.len() + cont.len() + 1);
    let mut logits = Vec::new();
    for &t in &prompt {
        logits = m.model.forward(&mut s, t).unwrap().to_vec();
    }
    for (i, &want) in cont.iter().enumerate() {
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]));
        let (top, second) = (idx[0], idx[1]);
        if top as u32 != want {
            println!(
                "token {i}: kiln picks {:?} ({:.3}), the other engine {:?} ({:.3}); kiln's top-2 gap {:.3}",
                m.tok.decode(&[top as u32]),
                logits[top],
                m.tok.decode(&[want]),
                logits[want as usize],
                logits[top] - logits[second]
            );
            return;
        }
        logits = m.model.forward(&mut s, want).unwrap().to_vec();
    }
    println!("all {} tokens agree", cont.len());
}
