//! The single `(name, shape)` table that lays out every parameter in one contiguous buffer.
//! Gradients and optimizer moments use the same layout (same offsets). Names follow Hugging Face
//! GPT-2 (`wte.weight`, `h.0.attn.c_attn.weight`, …) but weights are stored torch-`Linear` style
//! `[out, in]`; the HF Conv1D transposition happens only in the checkpoint code.

use crate::config::{Arch, ModelConfig};

/// How the optimizer treats a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Token/position embedding table.
    Embedding,
    /// Untied output head.
    Head,
    /// A hidden 2-D weight (Muon's domain).
    Matrix,
    /// Norm gains and biases.
    Vector,
}

#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
    pub kind: ParamKind,
}

/// `(offset, len)` of a tensor in the parameter buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    pub off: usize,
    pub len: usize,
}

/// Offsets of one transformer block's tensors (absent ones are `None`).
#[derive(Clone, Debug, Default)]
pub struct LayerSlots {
    pub ln1_w: Option<Slot>,
    pub ln1_b: Option<Slot>,
    pub qkv_w: Slot,
    pub qkv_b: Option<Slot>,
    pub proj_w: Slot,
    pub proj_b: Option<Slot>,
    pub ln2_w: Option<Slot>,
    pub ln2_b: Option<Slot>,
    pub fc_w: Slot,
    pub fc_b: Option<Slot>,
    pub fcp_w: Slot,
    pub fcp_b: Option<Slot>,
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub specs: Vec<ParamSpec>,
    pub total: usize,
    pub wte: Slot,
    pub wpe: Option<Slot>,
    pub layers: Vec<LayerSlots>,
    pub lnf_w: Option<Slot>,
    pub lnf_b: Option<Slot>,
    /// Untied head `[vocab, n_embd]`; `None` means tied to `wte`.
    pub lm_head: Option<Slot>,
}

impl Layout {
    pub fn new(cfg: &ModelConfig) -> Layout {
        let mut specs = Vec::new();
        let mut total = 0usize;
        let mut add = |name: String, shape: Vec<usize>, kind: ParamKind| -> Slot {
            let len = shape.iter().product();
            let s = Slot { off: total, len };
            specs.push(ParamSpec {
                name,
                shape,
                offset: total,
                len,
                kind,
            });
            total += len;
            s
        };
        let (c, v) = (cfg.n_embd, cfg.vocab_size);
        let qkv = (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim();
        let gpt2 = cfg.arch == Arch::Gpt2;
        let wte = add("wte.weight".into(), vec![v, c], ParamKind::Embedding);
        let wpe = gpt2.then(|| {
            add(
                "wpe.weight".into(),
                vec![cfg.context, c],
                ParamKind::Embedding,
            )
        });
        let mut layers = Vec::new();
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("h.{i}.{s}");
            let mut l = LayerSlots::default();
            if gpt2 {
                l.ln1_w = Some(add(p("ln_1.weight"), vec![c], ParamKind::Vector));
                l.ln1_b = Some(add(p("ln_1.bias"), vec![c], ParamKind::Vector));
            }
            l.qkv_w = add(p("attn.c_attn.weight"), vec![qkv, c], ParamKind::Matrix);
            if gpt2 {
                l.qkv_b = Some(add(p("attn.c_attn.bias"), vec![qkv], ParamKind::Vector));
            }
            l.proj_w = add(
                p("attn.c_proj.weight"),
                vec![c, cfg.n_head * cfg.head_dim()],
                ParamKind::Matrix,
            );
            if gpt2 {
                l.proj_b = Some(add(p("attn.c_proj.bias"), vec![c], ParamKind::Vector));
                l.ln2_w = Some(add(p("ln_2.weight"), vec![c], ParamKind::Vector));
                l.ln2_b = Some(add(p("ln_2.bias"), vec![c], ParamKind::Vector));
            }
            l.fc_w = add(p("mlp.c_fc.weight"), vec![4 * c, c], ParamKind::Matrix);
            if gpt2 {
                l.fc_b = Some(add(p("mlp.c_fc.bias"), vec![4 * c], ParamKind::Vector));
            }
            l.fcp_w = add(p("mlp.c_proj.weight"), vec![c, 4 * c], ParamKind::Matrix);
            if gpt2 {
                l.fcp_b = Some(add(p("mlp.c_proj.bias"), vec![c], ParamKind::Vector));
            }
            layers.push(l);
        }
        let (lnf_w, lnf_b) = if gpt2 {
            (
                Some(add("ln_f.weight".into(), vec![c], ParamKind::Vector)),
                Some(add("ln_f.bias".into(), vec![c], ParamKind::Vector)),
            )
        } else {
            (None, None)
        };
        let lm_head = (!gpt2).then(|| add("lm_head.weight".into(), vec![v, c], ParamKind::Head));
        Layout {
            specs,
            total,
            wte,
            wpe,
            layers,
            lnf_w,
            lnf_b,
            lm_head,
        }
    }

    pub fn get(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }
}
