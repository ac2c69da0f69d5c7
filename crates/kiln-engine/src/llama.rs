//! Inference for GGUF decoder-only transformers of the Llama family, on the cpu, against a KV
//! cache per sequence. Four architectures from `general.architecture`, one forward pass:
//! - `llama` (SmolLM2, Llama 2/3, TinyLlama): RMSNorm, RoPE with the file's base and rotary dims
//!   (llama.cpp's "normal" layout: adjacent pairs, since the converter permuted Q/K into it),
//!   grouped-query attention, SwiGLU, tied or untied output;
//! - `qwen2` (Qwen2, Qwen2.5): `llama` with biases on the Q, K and V products and RoPE in the NeoX
//!   layout (halves, not pairs: llama.cpp's `LLAMA_ROPE_TYPE_NEOX` for qwen2);
//! - `qwen3`: `llama` with per-head RMSNorm of Q and K before RoPE (QK-norm, as Gemma 3), NeoX
//!   RoPE, and heads of `attention.key_length` (Qwen3-0.6B: 16 heads of 128 on a width of 1024);
//! - `gemma3`: the embedding scaled by √d, RMSNorm before *and* after attention and the MLP (the
//!   file's norm weights already hold Gemma's `1 + w`: llama.cpp multiplies by them as stored),
//!   per-head RMSNorm of Q and K (QK-norm), RoPE in the NeoX layout (halves, not pairs), GeGLU
//!   (GELU, tanh form), head size from `attention.key_length`, attention scale 1/√head size,
//!   sliding-window (local) layers and global layers (pattern and window from metadata, else
//!   llama.cpp's defaults: every 6th layer global), a RoPE base per kind of layer, tied output and
//!   optional final logit soft-capping.
//!
//! One forward pass serves everything ([`LlamaModel::forward_batch`]): a batch of tokens, each
//! extending one session at its next position — a whole prompt (prefill in one pass), one token
//! of each of many sequences ([`LlamaBatch`], the [`BatchDecoder`] for servers and rollouts), or
//! a single token ([`LlamaModel::forward`]). Weights stay quantized in the memory map; every
//! product quantizes its activations to 8 bits once and runs integer dot kernels against the
//! weight blocks, each weight row read once for the whole batch ([`crate::cpu::quant`]).

use std::sync::Arc;

use rayon::prelude::*;

use crate::batch::BatchDecoder;
use crate::cpu::attn::{self, PANEL};
use crate::cpu::quant::{qmatmul, qmatmul_many, x8, QActs, QIsa, QJob};
use crate::cpu::vmath;
use crate::gguf::quant::dequantize_into;
use crate::gguf::{GgufError, GgufFile, TensorInfo, Value};
use crate::EngineError;

/// The architectures [`LlamaModel`] runs (`general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

const SUPPORTED_ARCHS: &str = "llama, qwen2, qwen3, gemma3";

impl Arch {
    /// RoPE rotates the pairs (i, i + dims/2) instead of adjacent pairs: the architectures whose
    /// converter keeps the checkpoint's Q/K order (llama.cpp's `llama_model_rope_type`).
    fn neox_rope(self) -> bool {
        matches!(self, Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3)
    }
    /// Per-head RMSNorm of Q and K before RoPE (`attn_q_norm`, `attn_k_norm`).
    fn qk_norm(self) -> bool {
        matches!(self, Arch::Qwen3 | Arch::Gemma3)
    }
}

/// Hyperparameters from `<arch>.*` metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub arch: Arch,
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_dims: usize,
    pub eps: f32,
    /// Multiplies the scores q·k (before softmax).
    pub attn_scale: f32,
    /// Local (sliding-window) layers see the last `sliding_window` positions, themselves
    /// included; global layers see all. `None`: every layer is global.
    pub sliding_window: Option<usize>,
    /// Per layer: local (true) or global.
    pub local: Vec<bool>,
    /// RoPE of global layers: base and position scale (1/linear scaling factor).
    pub rope_base: f32,
    pub rope_scale: f32,
    /// RoPE of local layers.
    pub rope_base_local: f32,
    /// Logits become `cap·tanh(logit/cap)`.
    pub final_logit_softcap: Option<f32>,
}

struct Layer {
    attn_norm: Vec<f32>,
    q: TensorInfo,
    k: TensorInfo,
    v: TensorInfo,
    o: TensorInfo,
    /// Biases added to the Q, K and V products (Qwen2's; optional in every architecture, as
    /// llama.cpp loads them).
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    /// QK-norm weights (`head_dim` each), Qwen3 and Gemma 3.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    /// Norms of the attention and MLP outputs before the residual add, Gemma 3.
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: TensorInfo,
    up: TensorInfo,
    down: TensorInfo,
    post_ffn_norm: Option<Vec<f32>>,
}

/// A loaded model: the mapped file and its tensors by role.
pub struct LlamaModel {
    file: Arc<GgufFile>,
    pub config: LlamaConfig,
    embd: TensorInfo,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: TensorInfo,
}

/// Repack the weight matrices of the layers (`blk.*`), the output head and the token embedding
/// into the decode layout of [`crate::cpu::quant::x8`] where their type has one (Q4_0, Q4_1,
/// Q8_0): 1.4–2.8× the 4-bit kernels' rate on one thread, 2× Q8_0's hot (AMD Zen 4,
/// `qmatvec_bench`), and each group read once for all rows of a batched decode step. The
/// embedding's rows are read back through the group layout ([`LlamaModel::forward_batch`]).
/// Returns how many matrices were repacked (none for a file map, which is read-only).
pub fn repack_weights(file: &mut GgufFile) -> usize {
    file.repack_rows8(|t| {
        t.name.starts_with("blk.") || t.name == "output.weight" || t.name == "token_embd.weight"
    })
}

fn bad(field: impl Into<String>, msg: impl Into<String>) -> EngineError {
    EngineError::Gguf(GgufError::Bad {
        field: field.into(),
        msg: msg.into(),
    })
}

impl LlamaModel {
    /// Read `path` into memory ([`GgufFile::load`]), repack its Q4_0/Q4_1 weight matrices for
    /// decode ([`repack_weights`]) and build the model; the file stays reachable through
    /// [`file`](Self::file) (vocabulary, chat template).
    pub fn load(path: &std::path::Path) -> Result<LlamaModel, EngineError> {
        let mut file = GgufFile::load(path)?;
        repack_weights(&mut file);
        LlamaModel::new(Arc::new(file))
    }

    /// The GGUF this model reads its weights from.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// Build from an open GGUF whose `general.architecture` is one of [`Arch`]'s.
    pub fn new(file: Arc<GgufFile>) -> Result<LlamaModel, EngineError> {
        let arch_name = file.str("general.architecture")?.to_string();
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            other => {
                return Err(bad(
                    "general.architecture",
                    format!("`{other}` is not supported (supported: {SUPPORTED_ARCHS})"),
                ))
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let u = |k: &str| -> Result<usize, EngineError> {
            let v = file.u64(&key(k))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v < 1 << 24)
                .ok_or_else(|| bad(key(k), format!("{v} is out of range")))
        };
        let u_opt = |k: &str| file.get(&key(k)).map(|_| u(k)).transpose();
        let f_opt = |k: &str| -> Result<Option<f32>, EngineError> {
            match file.get(&key(k)) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|v| v.is_finite())
                    .map(|v| Some(v as f32))
                    .ok_or_else(|| bad(key(k), "not a finite number")),
            }
        };
        let d_model = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_kv_head = u_opt("attention.head_count_kv")?.unwrap_or(n_head);
        if n_head % n_kv_head != 0 {
            return Err(bad(
                key("attention.head_count_kv"),
                format!("{n_kv_head} kv heads do not divide {n_head} heads"),
            ));
        }
        // Gemma's heads are not d_model / n_head wide: the file says (key_length).
        let head_dim = match u_opt("attention.key_length")? {
            Some(h) => h,
            None if d_model % n_head == 0 => d_model / n_head,
            None => {
                return Err(bad(
                    key("attention.head_count"),
                    format!("{n_head} heads do not divide d_model {d_model}"),
                ))
            }
        };
        if let Some(vl) = u_opt("attention.value_length")? {
            if vl != head_dim {
                return Err(bad(
                    key("attention.value_length"),
                    format!("{vl} differs from the key length {head_dim} (not supported)"),
                ));
            }
        }
        let rope_dims = u_opt("rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(bad(
                key("rope.dimension_count"),
                format!("{rope_dims} must be even and at most the head size {head_dim}"),
            ));
        }
        let n_layer = u("block_count")?;
        // Every layer has several tensors: a count beyond the table is corrupt, and would size
        // per-layer buffers before any tensor is looked up.
        if n_layer > file.tensors.len() {
            return Err(bad(
                key("block_count"),
                format!(
                    "{n_layer} layers but the file has {} tensors",
                    file.tensors.len()
                ),
            ));
        }
        let rope_base = f_opt("rope.freq_base")?.unwrap_or(10000.0);
        // Linear RoPE scaling applies to the global layers (llama.cpp: freq_scale = 1/factor).
        let rope_scale = match file.get(&key("rope.scaling.type")).and_then(Value::as_str) {
            None | Some("none") => 1.0,
            Some("linear") => match f_opt("rope.scaling.factor")? {
                Some(f) if f > 0.0 => 1.0 / f,
                _ => 1.0,
            },
            Some(other) => {
                return Err(bad(
                    key("rope.scaling.type"),
                    format!("`{other}` is not supported (supported: none, linear)"),
                ))
            }
        };
        let (sliding_window, local, rope_base_local, attn_scale, final_logit_softcap) = match arch {
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => (
                None,
                vec![false; n_layer],
                rope_base,
                1.0 / (head_dim as f32).sqrt(),
                None,
            ),
            Arch::Gemma3 => {
                let window = u_opt("attention.sliding_window")?;
                // The pattern: an array of per-layer flags, or a period whose last layer is
                // global (llama.cpp's default period for gemma3: 6).
                let local = match file.get(&key("attention.sliding_window_pattern")) {
                    Some(Value::Array(a)) => {
                        let flags: Option<Vec<bool>> = a.iter().map(Value::as_bool).collect();
                        match flags {
                            Some(f) if f.len() == n_layer => f,
                            _ => {
                                return Err(bad(
                                    key("attention.sliding_window_pattern"),
                                    format!("expected {n_layer} booleans"),
                                ))
                            }
                        }
                    }
                    Some(_) => {
                        let p = u("attention.sliding_window_pattern")?;
                        (0..n_layer).map(|l| l % p < p - 1).collect()
                    }
                    None => (0..n_layer).map(|l| l % 6 < 5).collect(),
                };
                let local = if window.is_some() {
                    local
                } else {
                    vec![false; n_layer]
                };
                // Gemma 3 27B scales by d_model / heads instead of the head size (gemma_pytorch's
                // query_pre_attn_scalar, as llama.cpp infers it from the layer count).
                let scale_dim = if n_layer == 62 {
                    d_model / n_head
                } else {
                    head_dim
                };
                (
                    window,
                    local,
                    f_opt("rope.freq_base_swa")?.unwrap_or(10000.0),
                    1.0 / (scale_dim as f32).sqrt(),
                    f_opt("final_logit_softcapping")?.filter(|&c| c > 0.0),
                )
            }
        };
        let embd = tensor(&file, "token_embd.weight", &[d_model])?;
        let vocab = embd.dims[1] as usize;
        let config = LlamaConfig {
            arch,
            n_layer,
            d_model,
            n_head,
            n_kv_head,
            head_dim,
            d_ff: u("feed_forward_length")?,
            vocab,
            context: u("context_length")?,
            rope_dims,
            eps: file.f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            attn_scale,
            sliding_window,
            local,
            rope_base,
            rope_scale,
            rope_base_local,
            final_logit_softcap,
        };
        let c = &config;
        let qd = n_head * head_dim;
        let kv = n_kv_head * head_dim;
        let gemma = arch == Arch::Gemma3;
        let mut layers = Vec::with_capacity(c.n_layer);
        for l in 0..c.n_layer {
            let t = |n: &str, dims: &[usize]| tensor(&file, &format!("blk.{l}.{n}.weight"), dims);
            let norm = |n: &str, len: usize| vector(&file, &format!("blk.{l}.{n}.weight"), len);
            let gemma_norm = |n: &str, len: usize| gemma.then(|| norm(n, len)).transpose();
            let qk_norm = |n: &str| arch.qk_norm().then(|| norm(n, head_dim)).transpose();
            let bias = |n: &str, len: usize| {
                let name = format!("blk.{l}.{n}.bias");
                file.tensor(&name)
                    .map(|_| vector(&file, &name, len))
                    .transpose()
            };
            layers.push(Layer {
                attn_norm: norm("attn_norm", d_model)?,
                q: t("attn_q", &[d_model, qd])?,
                k: t("attn_k", &[d_model, kv])?,
                v: t("attn_v", &[d_model, kv])?,
                o: t("attn_output", &[qd, d_model])?,
                q_bias: bias("attn_q", qd)?,
                k_bias: bias("attn_k", kv)?,
                v_bias: bias("attn_v", kv)?,
                q_norm: qk_norm("attn_q_norm")?,
                k_norm: qk_norm("attn_k_norm")?,
                post_attn_norm: gemma_norm("post_attention_norm", d_model)?,
                ffn_norm: norm("ffn_norm", d_model)?,
                gate: t("ffn_gate", &[d_model, c.d_ff])?,
                up: t("ffn_up", &[d_model, c.d_ff])?,
                down: t("ffn_down", &[c.d_ff, d_model])?,
                post_ffn_norm: gemma_norm("post_ffw_norm", d_model)?,
            });
        }
        // The integer kernels take activations in blocks of 32 and whole weight blocks per row.
        for (name, cols) in [
            ("embedding_length", d_model),
            ("feed_forward_length", c.d_ff),
            ("attention.head_count × key_length", qd),
        ] {
            if !cols.is_multiple_of(32) {
                return Err(bad(key(name), format!("{cols} is not a multiple of 32")));
            }
        }
        for (l, w) in layers.iter().enumerate() {
            for (t, cols) in [
                (&w.q, d_model),
                (&w.k, d_model),
                (&w.v, d_model),
                (&w.o, qd),
                (&w.gate, d_model),
                (&w.up, d_model),
                (&w.down, c.d_ff),
            ] {
                if !cols.is_multiple_of(t.ty.block_elems()) {
                    return Err(bad(
                        format!("blk.{l} tensor type"),
                        format!("{:?} blocks do not divide rows of {cols}", t.ty),
                    ));
                }
            }
        }
        let out_norm = vector(&file, "output_norm.weight", d_model)?;
        // llama.cpp's qwen2 would add it to the logits; no released file has one, so rather
        // than carry an untested path, refuse.
        if file.tensor("output.bias").is_some() {
            return Err(bad(
                "tensor `output.bias`",
                "an output bias is not supported",
            ));
        }
        // No output matrix: the head is tied to the embedding.
        let output = match file.tensor("output.weight") {
            Some(_) => tensor(&file, "output.weight", &[d_model, vocab])?,
            None => embd.clone(),
        };
        Ok(LlamaModel {
            file,
            config,
            embd,
            layers,
            out_norm,
            output,
        })
    }

    /// A fresh KV cache holding up to `max_len` positions (capped by the model's context).
    pub fn session(&self, max_len: usize) -> LlamaSession {
        let c = &self.config;
        let len = max_len.min(c.context).max(1);
        let kv = c.n_kv_head * c.head_dim;
        let panels = len.div_ceil(PANEL);
        LlamaSession {
            k: vec![0.0; c.n_layer * panels * PANEL * kv],
            v: vec![0.0; c.n_layer * len * kv],
            max_len: len,
            panels,
            pos: 0,
            logits: vec![0.0; c.vocab],
        }
    }

    /// Run `token` at the session's next position; returns the next-token logits. The same
    /// code as prompts and batches ([`forward_batch`](Self::forward_batch)) with one token.
    pub fn forward<'s>(
        &self,
        s: &'s mut LlamaSession,
        token: u32,
    ) -> Result<&'s [f32], EngineError> {
        let logits = self.forward_batch(&mut [&mut *s], &[0], &[token], &[0])?;
        s.logits.copy_from_slice(&logits);
        Ok(&s.logits)
    }

    /// Weight bytes read per decoded token: every layer matrix and the output head (the
    /// embedding is one row per token). For the decode-vs-bandwidth figure.
    pub fn weight_bytes_per_token(&self) -> usize {
        let mats = self
            .layers
            .iter()
            .flat_map(|w| [&w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down]);
        mats.chain([&self.output])
            .map(|t| self.file.tensor_bytes(t).len())
            .sum()
    }

    /// Run a batch of tokens through the model: `tokens[i]` extends session `seq[i]`
    /// (`sessions[seq[i]]`), at that session's next position — a session's tokens must be in
    /// order; they may be a whole prompt (prefill in one pass, causal attention over it) or one
    /// token each of many sessions (batched decode), or both. Returns the logits of the tokens
    /// listed in `outputs` (indices into `tokens`), `[outputs.len(), vocab]`.
    ///
    /// Every weight matrix is read once for the whole batch ([`qmatmul`]); the activations are
    /// quantized to 8-bit blocks once per product, as llama.cpp does.
    pub fn forward_batch(
        &self,
        sessions: &mut [&mut LlamaSession],
        seq: &[usize],
        tokens: &[u32],
        outputs: &[usize],
    ) -> Result<Vec<f32>, EngineError> {
        self.forward_rows(sessions, seq, tokens, outputs, false)
    }

    /// Run a prompt (or the rest of one) into `s` after what it holds, in passes of up to
    /// [`PREFILL_CHUNK`] tokens; returns the logits after its last token. Each token's result is
    /// independent of how the prompt was split (batch-invariant kernels, [`QActs`]), so a prompt
    /// run after a cached prefix gives the same bits as the whole prompt run at once.
    pub fn prefill(&self, s: &mut LlamaSession, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let mut logits = Vec::new();
        let pieces = tokens.len().div_ceil(PREFILL_CHUNK);
        for (i, piece) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            let seq = vec![0; piece.len()];
            // Only the last piece's last token needs the head (49,152 rows on SmolLM2).
            let out: &[usize] = if i + 1 == pieces {
                &[piece.len() - 1]
            } else {
                &[]
            };
            logits = self.forward_rows(&mut [&mut *s], &seq, piece, out, true)?;
        }
        Ok(logits)
    }

    fn forward_rows(
        &self,
        sessions: &mut [&mut LlamaSession],
        seq: &[usize],
        tokens: &[u32],
        outputs: &[usize],
        batch_invariant: bool,
    ) -> Result<Vec<f32>, EngineError> {
        let c = &self.config;
        let n = tokens.len();
        if seq.len() != n || outputs.iter().any(|&o| o >= n) {
            return Err(EngineError::Shape(format!(
                "forward_batch: {n} tokens, {} sequence ids, outputs {outputs:?}",
                seq.len()
            )));
        }
        // Each token's position: its session's length plus the earlier tokens for it here.
        let mut next: Vec<usize> = sessions.iter().map(|s| s.pos).collect();
        let mut pos = Vec::with_capacity(n);
        for (&t, &sq) in tokens.iter().zip(seq) {
            let s = sessions.get(sq).ok_or_else(|| {
                EngineError::Shape(format!("forward_batch: session {sq} of {}", next.len()))
            })?;
            let p = next[sq];
            if t as usize >= c.vocab {
                return Err(EngineError::TokenOutOfRange {
                    id: t,
                    pos: p,
                    vocab: c.vocab,
                });
            }
            if p >= s.max_len {
                return Err(EngineError::Config(format!(
                    "context full: {} positions (the KV cache's size)",
                    s.max_len
                )));
            }
            pos.push(p);
            next[sq] = p + 1;
        }
        let (d, hd, ff) = (c.d_model, c.head_dim, c.d_ff);
        let (qd, kvd) = (c.n_head * hd, c.n_kv_head * hd);
        let gemma = c.arch == Arch::Gemma3;
        let neox = c.arch.neox_rope();
        let isa = QIsa::current();
        let visa = vmath::isa();
        let mut x = vec![0f32; n * d];
        let rb = self.embd.ty.row_bytes(d);
        let bytes = self.file.tensor_bytes(&self.embd);
        // A repacked embedding (it is also the tied head) gives each token's row back in the
        // file's layout first.
        let file_ty = self.embd.ty.file_type();
        let mut row = Vec::new();
        for (x, &t) in x.chunks_exact_mut(d).zip(tokens) {
            let t = t as usize;
            let src = if file_ty != self.embd.ty {
                let (g, group) = (t / x8::GROUP, x8::GROUP * rb);
                row.resize(rb, 0);
                x8::row_of_group(
                    file_ty,
                    &bytes[g * group..][..group],
                    t % x8::GROUP,
                    d,
                    &mut row,
                );
                &row[..]
            } else {
                &bytes[t * rb..]
            };
            dequantize_into(file_ty, src, x).map_err(EngineError::Backend)?;
        }
        if gemma {
            let s = (d as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }
        let mut h = vec![0f32; n * d];
        let mut q = vec![0f32; n * qd];
        let mut k = vec![0f32; n * kvd];
        let mut v = vec![0f32; n * kvd];
        let mut att = vec![0f32; n * qd];
        let mut proj = vec![0f32; n * d];
        let mut g = vec![0f32; n * ff];
        let mut up = vec![0f32; n * ff];
        let mut acts = QActs::new();
        acts.batch_invariant = batch_invariant;
        let mm = |w: &TensorInfo, acts: &QActs, out: &mut [f32]| {
            qmatmul(
                isa,
                w.ty,
                self.file.tensor_bytes(w),
                out.len() / acts.rows,
                acts,
                out,
            )
        };
        // Products of the same activations in one parallel region (`qmatmul_many`).
        let mm_many = |ws: &[&TensorInfo], acts: &QActs, outs: Vec<&mut [f32]>| {
            let mut jobs: Vec<QJob> = ws
                .iter()
                .zip(outs)
                .map(|(w, out)| QJob {
                    ty: w.ty,
                    w: self.file.tensor_bytes(w),
                    rows: out.len() / acts.rows,
                    out,
                })
                .collect();
            qmatmul_many(isa, &mut jobs, acts)
        };
        let group = c.n_head / c.n_kv_head;
        // RoPE's (cos, sin) per token, once for all heads and layers (per element they were
        // ~2.5% of decode time): one table for global layers, one for local ones if their
        // base differs.
        let half = c.rope_dims / 2;
        let rope_table = |base: f32, scale: f32| -> Vec<(f32, f32)> {
            pos.iter()
                .flat_map(|&p| {
                    (0..half).map(move |i| {
                        let theta =
                            p as f32 * scale * base.powf(-2.0 * i as f32 / c.rope_dims as f32);
                        let (sin, cos) = theta.sin_cos();
                        (cos, sin)
                    })
                })
                .collect()
        };
        let rope_global = rope_table(c.rope_base, c.rope_scale);
        let rope_local = if c.local.iter().any(|&l| l) {
            rope_table(c.rope_base_local, 1.0)
        } else {
            Vec::new()
        };
        for (l, w) in self.layers.iter().enumerate() {
            let local = c.local[l];
            let rope_cs = if local { &rope_local } else { &rope_global };
            rmsnorm_rows(&x, &w.attn_norm, c.eps, &mut h);
            acts.quantize(&h, n, d);
            mm_many(&[&w.q, &w.k, &w.v], &acts, vec![&mut q, &mut k, &mut v]);
            for (x, b) in [
                (&mut q, &w.q_bias),
                (&mut k, &w.k_bias),
                (&mut v, &w.v_bias),
            ] {
                if let Some(b) = b {
                    x.chunks_exact_mut(b.len())
                        .for_each(|row| row.iter_mut().zip(b).for_each(|(x, b)| *x += b));
                }
            }
            for i in 0..n {
                let qi = &mut q[i * qd..(i + 1) * qd];
                let ki = &mut k[i * kvd..(i + 1) * kvd];
                if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
                    rmsnorm_rows_in_place(qi, qn, c.eps);
                    rmsnorm_rows_in_place(ki, kn, c.eps);
                }
                let cs = &rope_cs[i * half..(i + 1) * half];
                if neox {
                    rope_neox(qi, hd, cs);
                    rope_neox(ki, hd, cs);
                } else {
                    rope(qi, hd, cs);
                    rope(ki, hd, cs);
                }
                let s = &mut sessions[seq[i]];
                let at = (l * s.max_len + pos[i]) * kvd;
                s.v[at..at + kvd].copy_from_slice(&v[i * kvd..(i + 1) * kvd]);
                let (p, lane) = (pos[i] / PANEL, pos[i] % PANEL);
                for (kh, kr) in k[i * kvd..(i + 1) * kvd].chunks_exact(hd).enumerate() {
                    let at = ((l * c.n_kv_head + kh) * s.panels + p) * hd * PANEL + lane;
                    for (d, &x) in kr.iter().enumerate() {
                        s.k[at + d * PANEL] = x;
                    }
                }
            }
            // Causal attention: token i sees its session's positions 0..=pos[i] (its own
            // earlier tokens in this batch were written to the cache above), a local layer
            // only the last `sliding_window` of them. Tasks of a few rows and one KV head; within
            // one, the rows of a session and the heads of the KV group form tiles of query
            // vectors (`attn::attend`, whose results do not depend on the tiling).
            let caches: Vec<(&[f32], &[f32], usize)> = sessions
                .iter()
                .map(|s| {
                    let kp = s.panels * PANEL * kvd;
                    let r = l * s.max_len * kvd..(l + 1) * s.max_len * kvd;
                    (&s.k[l * kp..(l + 1) * kp], &s.v[r], s.panels)
                })
                .collect();
            let window = c.sliding_window.filter(|_| local);
            let tile = attn::tile_vectors(visa);
            let task_rows = (tile / group).max(1);
            // One task per (rows, KV head): a decode step has one row, and with tasks per row
            // only, its whole attention ran on one thread while the others waited (at 2k
            // positions SmolLM2 reads as many K/V bytes per token as weight bytes). Each task
            // returns its heads' outputs, placed after the parallel loop (no shared writes).
            let chunks = n.div_ceil(task_rows);
            let parts: Vec<(usize, usize, Vec<f32>)> = (0..chunks * c.n_kv_head)
                .into_par_iter()
                .map(|task| {
                    let (ti, kh) = (task / c.n_kv_head, task % c.n_kv_head);
                    let i0 = ti * task_rows;
                    let rows = task_rows.min(n - i0);
                    // rows × the group's query heads × head size
                    let mut out = vec![0f32; rows * group * hd];
                    vmath::with_isa_here(visa, || {
                        let mut a = 0;
                        while a < rows {
                            let sq = seq[i0 + a];
                            let b = (a..rows).find(|&r| seq[i0 + r] != sq).unwrap_or(rows);
                            let (lk, lv, panels) = caches[sq];
                            let vecs: Vec<(usize, usize)> = (a..b)
                                .flat_map(|r| (0..group).map(move |g| (r, kh * group + g)))
                                .collect();
                            for t in vecs.chunks(tile) {
                                let first = |r: usize| {
                                    window.map_or(0, |w| (pos[i0 + r] + 1).saturating_sub(w))
                                };
                                let base =
                                    t.iter().map(|&(r, _)| first(r)).min().unwrap() / PANEL * PANEL;
                                let end = t.iter().map(|&(r, _)| pos[i0 + r]).max().unwrap() + 1;
                                let (p0, p1) = (base / PANEL, end.div_ceil(PANEL));
                                let lo: Vec<usize> =
                                    t.iter().map(|&(r, _)| first(r) - base).collect();
                                let hi: Vec<usize> =
                                    t.iter().map(|&(r, _)| pos[i0 + r] + 1 - base).collect();
                                let qt: Vec<f32> = t
                                    .iter()
                                    .flat_map(|&(r, h)| {
                                        let at = (i0 + r) * qd + h * hd;
                                        q[at..at + hd].iter().copied()
                                    })
                                    .collect();
                                let ks = (kh * panels + p0) * hd * PANEL
                                    ..(kh * panels + p1) * hd * PANEL;
                                let mut scores = vec![0f32; t.len() * (p1 - p0) * PANEL];
                                let mut o = vec![0f32; t.len() * hd];
                                attn::attend(
                                    &qt,
                                    &lk[ks],
                                    &lv[base * kvd + kh * hd..],
                                    kvd,
                                    &lo,
                                    &hi,
                                    c.attn_scale,
                                    &mut scores,
                                    &mut o,
                                );
                                for (&(r, h), o) in t.iter().zip(o.chunks_exact(hd)) {
                                    let at = (r * group + h - kh * group) * hd;
                                    out[at..at + hd].copy_from_slice(o);
                                }
                            }
                            a = b;
                        }
                    });
                    (i0, kh, out)
                })
                .collect();
            for (i0, kh, out) in parts {
                for (r, heads) in out.chunks_exact(group * hd).enumerate() {
                    let at = (i0 + r) * qd + kh * group * hd;
                    att[at..at + group * hd].copy_from_slice(heads);
                }
            }
            acts.quantize(&att, n, qd);
            mm(&w.o, &acts, &mut proj);
            if let Some(pn) = &w.post_attn_norm {
                rmsnorm_rows_in_place(&mut proj, pn, c.eps);
            }
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
            rmsnorm_rows(&x, &w.ffn_norm, c.eps, &mut h);
            acts.quantize(&h, n, d);
            mm_many(&[&w.gate, &w.up], &acts, vec![&mut g, &mut up]);
            if gemma {
                geglu(&mut g, &up);
            } else {
                swiglu(&mut g, &up);
            }
            acts.quantize(&g, n, ff);
            mm(&w.down, &acts, &mut proj);
            if let Some(pn) = &w.post_ffn_norm {
                rmsnorm_rows_in_place(&mut proj, pn, c.eps);
            }
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
        }
        for (sq, s) in sessions.iter_mut().enumerate() {
            s.pos = next[sq];
        }
        // The head only for the rows asked for (a prompt needs its last token's logits).
        let m = outputs.len();
        if m == 0 {
            return Ok(Vec::new());
        }
        let mut hx = vec![0f32; m * d];
        for (o, &i) in hx.chunks_exact_mut(d).zip(outputs) {
            rmsnorm(&x[i * d..(i + 1) * d], &self.out_norm, c.eps, o);
        }
        // The head's rows are the outputs asked for, not the tokens of the pass: a prefill asks
        // for one, however the prompt was split, so the decode kernels keep its result
        // independent of the split, and one row is 2–3× faster through them than through the
        // batch-invariant ones (the fused kernels need no unpacked copy of the 49,152 rows).
        acts.batch_invariant = false;
        acts.quantize(&hx, m, d);
        let mut logits = vec![0f32; m * c.vocab];
        mm(&self.output, &acts, &mut logits);
        if let Some(cap) = c.final_logit_softcap {
            logits.iter_mut().for_each(|l| *l = cap * (*l / cap).tanh());
        }
        Ok(logits)
    }
}

/// The KV cache and position of one sequence.
#[derive(Clone)]
pub struct LlamaSession {
    k: Vec<f32>,
    v: Vec<f32>,
    max_len: usize,
    /// Key panels per layer and KV head (`max_len` rounded up to [`PANEL`]): the keys are
    /// `[layer][kv head][panel][head dim][PANEL]` (`attn`'s layout), the values
    /// `[layer][position][kv head × head dim]`.
    panels: usize,
    pos: usize,
    logits: Vec<f32>,
}

impl LlamaSession {
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn capacity(&self) -> usize {
        self.max_len
    }
    /// Forget the sequence; the cache's memory is kept (positions past `pos` are never read).
    pub fn reset(&mut self) {
        self.pos = 0;
    }
}

/// [`BatchDecoder`] over a llama model: `slots` KV caches stepped together, so each weight
/// matrix is read once per step for all of them, and prompts prefilled in one pass
/// ([`LlamaModel::forward_batch`]). [`SequentialLlama`](crate::batch::SequentialLlama) is the
/// reference it is tested against.
pub struct LlamaBatch<'m> {
    model: &'m LlamaModel,
    sessions: Vec<LlamaSession>,
    capacity: usize,
}

/// Prompts longer than this are prefilled in pieces (bounds the activations' memory).
const PREFILL_CHUNK: usize = 512;

impl<'m> LlamaBatch<'m> {
    pub fn new(model: &'m LlamaModel, slots: usize, capacity: usize) -> Self {
        let sessions: Vec<LlamaSession> = (0..slots).map(|_| model.session(capacity)).collect();
        let capacity = sessions.first().map_or(0, LlamaSession::capacity);
        LlamaBatch {
            model,
            sessions,
            capacity,
        }
    }

    fn check_slot(&self, slot: usize) -> Result<(), EngineError> {
        crate::batch::check_slot(slot, self.sessions.len())
    }

    /// Runs `tokens` into `slot` after what it holds, in pieces of [`PREFILL_CHUNK`]; returns the
    /// logits after the last one. On an error the slot is emptied (its cache is half-written).
    fn run_after(&mut self, slot: usize, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let s = &mut self.sessions[slot];
        self.model.prefill(s, tokens).inspect_err(|_| s.reset())
    }
}

impl BatchDecoder for LlamaBatch<'_> {
    fn slots(&self) -> usize {
        self.sessions.len()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn vocab(&self) -> usize {
        self.model.config.vocab
    }
    fn len(&self, slot: usize) -> usize {
        self.sessions[slot].pos()
    }
    fn prefill(&mut self, slot: usize, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        self.check_slot(slot)?;
        if prompt.is_empty() {
            return Err(EngineError::Shape("empty prompt".into()));
        }
        self.sessions[slot].reset();
        self.run_after(slot, prompt)
    }
    fn prefill_reusing(
        &mut self,
        slot: usize,
        keep: usize,
        prompt: &[u32],
    ) -> Result<Vec<f32>, EngineError> {
        self.check_slot(slot)?;
        crate::batch::check_reuse(keep, self.sessions[slot].pos, prompt)?;
        // Positions past `keep` are overwritten before anything reads them.
        self.sessions[slot].pos = keep;
        self.run_after(slot, &prompt[keep..])
    }
    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        crate::batch::check_step(slots, tokens, self.sessions.len())?;
        for &s in slots {
            if self.sessions[s].pos() == 0 {
                return Err(EngineError::Shape(format!(
                    "step: slot {s} is empty (prefill it first)"
                )));
            }
        }
        // Disjoint mutable borrows of the stepped slots, in the caller's order.
        let mut by_slot: Vec<Option<&mut LlamaSession>> =
            self.sessions.iter_mut().map(Some).collect();
        let mut refs: Vec<&mut LlamaSession> = slots
            .iter()
            .map(|&s| by_slot[s].take().expect("slots are distinct"))
            .collect();
        let seq: Vec<usize> = (0..slots.len()).collect();
        self.model.forward_batch(&mut refs, &seq, tokens, &seq)
    }
    fn fork(&mut self, src: usize, dst: usize) -> Result<(), EngineError> {
        self.check_slot(src)?;
        self.check_slot(dst)?;
        if src != dst {
            let (s, d) = if src < dst {
                let (a, b) = self.sessions.split_at_mut(dst);
                (&a[src], &mut b[0])
            } else {
                let (a, b) = self.sessions.split_at_mut(src);
                (&b[0], &mut a[dst])
            };
            // Only the filled positions: the rest is never read.
            let c = &self.model.config;
            let kvd = c.n_kv_head * c.head_dim;
            let used = s.pos.div_ceil(PANEL) * c.head_dim * PANEL;
            for l in 0..c.n_layer {
                let r = l * s.max_len * kvd..(l * s.max_len + s.pos) * kvd;
                d.v[r.clone()].copy_from_slice(&s.v[r]);
                for kh in 0..c.n_kv_head {
                    let at = (l * c.n_kv_head + kh) * s.panels * c.head_dim * PANEL;
                    d.k[at..at + used].copy_from_slice(&s.k[at..at + used]);
                }
            }
            d.pos = s.pos;
        }
        Ok(())
    }
    fn clear(&mut self, slot: usize) {
        self.sessions[slot].reset();
    }
}

/// A 2-D tensor named `name` whose dims are exactly `[cols, rows?]` (`dims.len() == 1`: any rows).
fn tensor(file: &GgufFile, name: &str, dims: &[usize]) -> Result<TensorInfo, EngineError> {
    let t = file
        .tensor(name)
        .ok_or_else(|| bad(format!("tensor `{name}`"), "missing"))?;
    let ok = t.dims.len() == 2
        && t.dims[0] as usize == dims[0]
        && (dims.len() == 1 || t.dims[1] as usize == dims[1]);
    if !ok {
        return Err(bad(
            format!("tensor `{name}` dims"),
            format!("{:?}, expected {dims:?}", t.dims),
        ));
    }
    Ok(t.clone())
}

/// A 1-D tensor of `n` values, dequantized.
fn vector(file: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, EngineError> {
    let t = file
        .tensor(name)
        .ok_or_else(|| bad(format!("tensor `{name}`"), "missing"))?;
    if t.dims != [n as u64] {
        return Err(bad(
            format!("tensor `{name}` dims"),
            format!("{:?}, expected [{n}]", t.dims),
        ));
    }
    let mut v = vec![0.0; n];
    dequantize_into(t.ty, file.tensor_bytes(t), &mut v)
        .map_err(|m| bad(format!("tensor `{name}`"), m))?;
    Ok(v)
}

fn rmsnorm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (x, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        rmsnorm(x, w, eps, o);
    }
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let s = 1.0 / (ms + eps).sqrt();
    out.iter_mut()
        .zip(x.iter().zip(w))
        .for_each(|(o, (x, w))| *o = x * s * w);
}

/// RMSNorm of each `w.len()`-wide row of `x`, in place (Gemma's QK-norm per head, post-norms).
fn rmsnorm_rows_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for row in x.chunks_exact_mut(d) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let s = 1.0 / (ms + eps).sqrt();
        row.iter_mut().zip(w).for_each(|(x, w)| *x = *x * s * w);
    }
}

/// Rotate the pairs (i, i + dims/2) of every head's first `2·cs.len()` values (the NeoX layout
/// llama.cpp uses for Gemma, Qwen and most architectures converted without Llama's permute).
fn rope_neox(x: &mut [f32], head_dim: usize, cs: &[(f32, f32)]) {
    let half = cs.len();
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(cos, sin)) in cs.iter().enumerate() {
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos - b * sin;
            head[i + half] = a * sin + b * cos;
        }
    }
}

/// Rotate adjacent pairs of every head's first `2·cs.len()` values by the angles whose
/// (cos, sin) are `cs` (`pos · base^(−2i/dims)`).
fn rope(x: &mut [f32], head_dim: usize, cs: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(cos, sin)) in cs.iter().enumerate() {
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * cos - b * sin;
            head[2 * i + 1] = a * sin + b * cos;
        }
    }
}

vmath::simd_fn! {
    /// `g = silu(g) · up`, vectorized (`vmath::exp`; libm's `expf` per element was a call each).
    fn swiglu(g: &mut [f32], up: &[f32]) {
        for (g, u) in g.iter_mut().zip(up) {
            *g = *g / (1.0 + vmath::exp(-*g)) * u;
        }
    }
}

vmath::simd_fn! {
    /// `g = gelu(g) · up` with GELU's tanh form (`tanh u = 1 − 2/(e^{2u} + 1)` over
    /// `vmath::exp`). llama.cpp looks GELU up in a table by the input rounded to f16; this is
    /// the formula itself, at most ~1e-3 apart.
    fn geglu(g: &mut [f32], up: &[f32]) {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        for (g, u) in g.iter_mut().zip(up) {
            let x = *g;
            let t = SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x);
            let tanh = 1.0 - 2.0 / (vmath::exp(2.0 * t) + 1.0);
            *g = 0.5 * x * (1.0 + tanh) * u;
        }
    }
}
