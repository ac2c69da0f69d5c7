//! A kiln model's weights and hyperparameters as a llama.cpp model in a [`GgufWriter`]: the
//! architecture key/values and the tensors under llama.cpp's names. (The tokenizer and chat
//! template keys come from kiln-tokenizer and kiln-chat; `kiln_chat::gguf_export` puts it together.)
//!
//! kiln `gpt2` is llama.cpp's `gpt2` (src/models/gpt2.cpp), the same function term by term:
//! learned token + position embeddings added; per block pre-LayerNorm (weight and bias, eps from
//! `gpt2.attention.layer_norm_epsilon`) → fused QKV with bias (`attn_qkv`, rows Q, K, V as kiln's
//! `c_attn`) → causal softmax attention scaled by 1/√head_dim → output projection with bias →
//! residual; pre-LayerNorm → up (bias) → GELU, tanh form → down (bias) → residual; final LayerNorm;
//! the head tied to the token embedding (no `output.weight`, so llama.cpp reuses `token_embd`).
//! One numeric difference remains: ggml's CPU GELU reads a table of f16 values (GGML_GELU_FP16 in
//! ggml-cpu/vec.h) where kiln computes tanh in f32, so logits differ in the low bits.
//!
//! kiln `modern` has no llama.cpp architecture computing the same function ([`MODERN_MISMATCH`]).

use super::quant::GgmlType;
use super::write::GgufWriter;
use super::{bad, GgufError};
use crate::config::{Arch, ModelConfig};
use crate::params::Layout;

/// Why kiln's `modern` architecture cannot be exported: what the nearest llama.cpp
/// architectures (llama.cpp 0.3.36's src/models/*.cpp) compute differently.
pub const MODERN_MISMATCH: &str = "kiln's `modern` architecture has no llama.cpp equivalent, so it cannot be exported: it needs parameter-free RMSNorm, per-head QK RMSNorm before RoPE, a non-gated relu² MLP, an untied head and a final logit soft-cap together. The nearest llama.cpp architectures each differ: `arcee` (RMSNorm, relu² MLP, GQA, untied head) has no QK-norm and no soft-cap; `nemotron` and `jais2` (relu² MLP) use LayerNorm with bias and no QK-norm; `gemma2`/`gemma3` (QK-norm in gemma3, soft-cap) use a gated GELU MLP, scale the embeddings by √n_embd and add post-norms; `muse-glimmer` (QK-norm, soft-cap) normalises the embeddings and has a gated SiLU MLP, post-norms and an attention gate. QK-norm is not a linear map, so no weight rewrite can hide it. Export a `gpt2` model (what `kiln speedrun` trains), or train with `--arch gpt2`";

/// The weight type of the 2-D matrices; vectors (norms, biases) and the position embedding stay
/// F32, as llama.cpp's convert_hf_to_gguf.py keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportType {
    F32,
    F16,
    Q8_0,
}

impl ExportType {
    fn ggml(self) -> GgmlType {
        match self {
            ExportType::F32 => GgmlType::F32,
            ExportType::F16 => GgmlType::F16,
            ExportType::Q8_0 => GgmlType::Q8_0,
        }
    }
    /// `general.file_type` (llama.h's `llama_ftype`: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7).
    fn file_type(self) -> u32 {
        match self {
            ExportType::F32 => 0,
            ExportType::F16 => 1,
            ExportType::Q8_0 => 7,
        }
    }
}

/// What [`add_model`] wrote.
#[derive(Debug, Clone, Default)]
pub struct ExportSummary {
    /// (GGUF tensor name, type) in file order.
    pub tensors: Vec<(String, GgmlType)>,
    /// Matrices whose rows are not whole Q8_0 blocks, written as F16 instead (as
    /// convert_hf_to_gguf.py falls back).
    pub fell_back_to_f16: Vec<String>,
}

/// The llama.cpp architecture name kiln's `arch` exports as, or why it cannot.
pub fn llama_cpp_arch(arch: Arch) -> Result<&'static str, GgufError> {
    match arch {
        Arch::Gpt2 => Ok("gpt2"),
        Arch::Modern => Err(bad("general.architecture", MODERN_MISMATCH)),
    }
}

/// Add `cfg`'s architecture key/values and its tensors (`params` in kiln's layout order) to `w`.
pub fn add_model(
    w: &mut GgufWriter,
    cfg: &ModelConfig,
    params: &[f32],
    ty: ExportType,
) -> Result<ExportSummary, GgufError> {
    let arch = llama_cpp_arch(cfg.arch)?;
    cfg.validate()
        .map_err(|e| bad("model config", e.to_string()))?;
    let layout = Layout::new(cfg);
    if params.len() != layout.total {
        return Err(bad(
            "model parameters",
            format!(
                "{} floats, but the config's layout has {}",
                params.len(),
                layout.total
            ),
        ));
    }
    let u32_of = |v: usize, what: &str| {
        u32::try_from(v).map_err(|_| bad(format!("{arch}.{what}"), format!("{v} exceeds u32")))
    };
    w.set_str("general.architecture", arch)?;
    w.set_u32("general.file_type", ty.file_type())?;
    w.set_u32("general.quantization_version", 2)?;
    w.set_u32(
        &format!("{arch}.context_length"),
        u32_of(cfg.context, "context_length")?,
    )?;
    w.set_u32(
        &format!("{arch}.embedding_length"),
        u32_of(cfg.n_embd, "embedding_length")?,
    )?;
    w.set_u32(
        &format!("{arch}.feed_forward_length"),
        u32_of(4 * cfg.n_embd, "feed_forward_length")?,
    )?;
    w.set_u32(
        &format!("{arch}.block_count"),
        u32_of(cfg.n_layer, "block_count")?,
    )?;
    w.set_u32(
        &format!("{arch}.attention.head_count"),
        u32_of(cfg.n_head, "attention.head_count")?,
    )?;
    w.set_u32(
        &format!("{arch}.attention.head_count_kv"),
        u32_of(cfg.n_kv_head, "attention.head_count_kv")?,
    )?;
    w.set_f32(
        &format!("{arch}.attention.layer_norm_epsilon"),
        cfg.norm_eps,
    )?;

    let mut summary = ExportSummary::default();
    // kiln's name → (GGUF name, is a matrix). kiln stores matrices `[out, in]` row-major, which is
    // GGUF's `[in, out]` (dims[0] contiguous): the bytes go across unchanged.
    let mut names: Vec<(String, String, bool)> = vec![
        ("wte.weight".into(), "token_embd.weight".into(), true),
        ("wpe.weight".into(), "position_embd.weight".into(), false),
    ];
    for i in 0..cfg.n_layer {
        let k = |s: &str| format!("h.{i}.{s}");
        let g = |s: &str| format!("blk.{i}.{s}");
        for (kiln, gguf, matrix) in [
            ("ln_1.weight", "attn_norm.weight", false),
            ("ln_1.bias", "attn_norm.bias", false),
            ("attn.c_attn.weight", "attn_qkv.weight", true),
            ("attn.c_attn.bias", "attn_qkv.bias", false),
            ("attn.c_proj.weight", "attn_output.weight", true),
            ("attn.c_proj.bias", "attn_output.bias", false),
            ("ln_2.weight", "ffn_norm.weight", false),
            ("ln_2.bias", "ffn_norm.bias", false),
            ("mlp.c_fc.weight", "ffn_up.weight", true),
            ("mlp.c_fc.bias", "ffn_up.bias", false),
            ("mlp.c_proj.weight", "ffn_down.weight", true),
            ("mlp.c_proj.bias", "ffn_down.bias", false),
        ] {
            names.push((k(kiln), g(gguf), matrix));
        }
    }
    names.push(("ln_f.weight".into(), "output_norm.weight".into(), false));
    names.push(("ln_f.bias".into(), "output_norm.bias".into(), false));
    if names.len() != layout.specs.len() {
        return Err(bad(
            "model parameters",
            format!(
                "the {arch} export maps {} tensors but the layout has {}",
                names.len(),
                layout.specs.len()
            ),
        ));
    }
    for (kiln, gguf, matrix) in names {
        let spec = layout.get(&kiln).ok_or_else(|| {
            bad(
                "model parameters",
                format!("no tensor `{kiln}` in the layout"),
            )
        })?;
        let values = &params[spec.offset..spec.offset + spec.len];
        let dims: Vec<u64> = spec.shape.iter().rev().map(|&d| d as u64).collect();
        let mut t = if matrix { ty.ggml() } else { GgmlType::F32 };
        if !dims[0].is_multiple_of(t.block_elems() as u64) {
            summary.fell_back_to_f16.push(gguf.clone());
            t = GgmlType::F16;
        }
        w.add_f32(&gguf, &dims, t, values)?;
        summary.tensors.push((gguf, t));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{dequantize, GgufFile};

    #[test]
    fn gpt2_tensors_carry_kiln_weights_under_llama_cpp_names() {
        let cfg = ModelConfig::gpt2(100, 2, 2, 32, 16);
        let layout = Layout::new(&cfg);
        let params: Vec<f32> = (0..layout.total).map(|i| (i % 97) as f32 * 0.01).collect();
        let mut w = GgufWriter::new();
        let s = add_model(&mut w, &cfg, &params, ExportType::F32).unwrap();
        assert!(s.fell_back_to_f16.is_empty());
        let g = GgufFile::from_bytes(w.to_bytes()).unwrap();
        assert_eq!(g.str("general.architecture").unwrap(), "gpt2");
        assert_eq!(g.u64("gpt2.feed_forward_length").unwrap(), 128);
        assert_eq!(g.u64("gpt2.context_length").unwrap(), 16);
        assert_eq!(
            g.f64("gpt2.attention.layer_norm_epsilon").unwrap() as f32,
            1e-5
        );
        // Every kiln tensor, bit for bit, under its llama.cpp name and shape; no output.weight.
        assert_eq!(g.tensors.len(), layout.specs.len());
        assert!(g.tensor("output.weight").is_none());
        let qkv = g.tensor("blk.1.attn_qkv.weight").unwrap();
        assert_eq!(qkv.dims, vec![32, 96]);
        let spec = layout.get("h.1.attn.c_attn.weight").unwrap();
        let got = dequantize(qkv.ty, g.tensor_bytes(qkv), spec.len).unwrap();
        assert_eq!(got, &params[spec.offset..spec.offset + spec.len]);
        assert_eq!(
            g.tensor("blk.0.ffn_down.weight").unwrap().dims,
            vec![128, 32]
        );
        assert_eq!(g.tensor("position_embd.weight").unwrap().dims, vec![32, 16]);
    }

    #[test]
    fn q8_0_keeps_vectors_f32_and_falls_back_on_odd_rows() {
        // n_embd 48: rows of 48 are not whole Q8_0 blocks; ffn_down rows (192) are.
        let cfg = ModelConfig::gpt2(50, 1, 2, 48, 8);
        let params = vec![0.5f32; Layout::new(&cfg).total];
        let mut w = GgufWriter::new();
        let s = add_model(&mut w, &cfg, &params, ExportType::Q8_0).unwrap();
        let ty = |n: &str| s.tensors.iter().find(|t| t.0 == n).unwrap().1;
        assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q8_0);
        assert_eq!(ty("blk.0.attn_qkv.weight"), GgmlType::F16);
        assert_eq!(ty("blk.0.attn_qkv.bias"), GgmlType::F32);
        assert_eq!(ty("position_embd.weight"), GgmlType::F32);
        assert!(s
            .fell_back_to_f16
            .contains(&"token_embd.weight".to_string()));
    }

    #[test]
    fn modern_is_refused_with_the_reasons() {
        let cfg = ModelConfig::modern(64, 1, 2, 2, 32, 8);
        let params = vec![0f32; Layout::new(&cfg).total];
        let e = add_model(&mut GgufWriter::new(), &cfg, &params, ExportType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("QK-norm") && e.contains("arcee") && e.contains("gpt2"),
            "{e}"
        );
    }
}
