//! Inference for GGUF models of the `llama` architecture (SmolLM2, Llama 2/3, TinyLlama): RMSNorm,
//! RoPE with the file's base and rotary dims (llama.cpp's "normal" layout: adjacent pairs, since
//! the converter permuted Q/K into it), grouped-query attention, SwiGLU, tied or untied output;
//! one token at a time against a KV cache, on the cpu.
//!
//! Weights stay quantized in the memory map. A matrix–vector product dots Q8_0 and Q4_1 rows
//! block by block in f32 (portable code the compiler vectorizes) and dequantizes other types one
//! row at a time into a small buffer; rows are split over rayon's pool. (The int8 dot kernels
//! with run-time AVX2/AVX-512 dispatch of issue 13 are the later, faster path.)

use std::sync::Arc;

use rayon::prelude::*;

use crate::gguf::quant::dequantize_into;
use crate::gguf::GgmlType;
use crate::gguf::{GgufError, GgufFile, TensorInfo};
use crate::EngineError;

/// Hyperparameters from `llama.*` metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_base: f32,
    pub rope_dims: usize,
    pub eps: f32,
}

struct Layer {
    attn_norm: Vec<f32>,
    q: TensorInfo,
    k: TensorInfo,
    v: TensorInfo,
    o: TensorInfo,
    ffn_norm: Vec<f32>,
    gate: TensorInfo,
    up: TensorInfo,
    down: TensorInfo,
}

/// A loaded `llama` model: the mapped file and its tensors by role.
pub struct LlamaModel {
    file: Arc<GgufFile>,
    pub config: LlamaConfig,
    embd: TensorInfo,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: TensorInfo,
}

fn bad(field: impl Into<String>, msg: impl Into<String>) -> EngineError {
    EngineError::Gguf(GgufError::Bad {
        field: field.into(),
        msg: msg.into(),
    })
}

impl LlamaModel {
    /// Build from an open GGUF whose `general.architecture` is `llama`.
    pub fn new(file: Arc<GgufFile>) -> Result<LlamaModel, EngineError> {
        let arch = file.str("general.architecture")?;
        if arch != "llama" {
            return Err(bad(
                "general.architecture",
                format!("`{arch}` is not supported yet (supported: llama)"),
            ));
        }
        let u = |k: &str| -> Result<usize, EngineError> {
            let v = file.u64(&format!("llama.{k}"))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v < 1 << 24)
                .ok_or_else(|| bad(format!("llama.{k}"), format!("{v} is out of range")))
        };
        let d_model = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_kv_head = file
            .get("llama.attention.head_count_kv")
            .map(|_| u("attention.head_count_kv"))
            .transpose()?
            .unwrap_or(n_head);
        if d_model % n_head != 0 || n_head % n_kv_head != 0 {
            return Err(bad(
                "llama.attention.head_count",
                format!("{n_head} heads / {n_kv_head} kv heads do not divide d_model {d_model}"),
            ));
        }
        let head_dim = d_model / n_head;
        let rope_dims = file
            .get("llama.rope.dimension_count")
            .map(|_| u("rope.dimension_count"))
            .transpose()?
            .unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(bad(
                "llama.rope.dimension_count",
                format!("{rope_dims} must be even and at most the head size {head_dim}"),
            ));
        }
        let embd = tensor(&file, "token_embd.weight", &[d_model])?;
        let vocab = embd.dims[1] as usize;
        let config = LlamaConfig {
            n_layer: u("block_count")?,
            d_model,
            n_head,
            n_kv_head,
            head_dim,
            d_ff: u("feed_forward_length")?,
            vocab,
            context: u("context_length")?,
            rope_base: file
                .get("llama.rope.freq_base")
                .and_then(|v| v.as_f64())
                .unwrap_or(10000.0) as f32,
            rope_dims,
            eps: file.f64("llama.attention.layer_norm_rms_epsilon")? as f32,
        };
        let c = &config;
        let kv = n_kv_head * head_dim;
        let mut layers = Vec::with_capacity(c.n_layer);
        for l in 0..c.n_layer {
            let t = |n: &str, dims: &[usize]| tensor(&file, &format!("blk.{l}.{n}.weight"), dims);
            layers.push(Layer {
                attn_norm: vector(&file, &format!("blk.{l}.attn_norm.weight"), d_model)?,
                q: t("attn_q", &[d_model, d_model])?,
                k: t("attn_k", &[d_model, kv])?,
                v: t("attn_v", &[d_model, kv])?,
                o: t("attn_output", &[d_model, d_model])?,
                ffn_norm: vector(&file, &format!("blk.{l}.ffn_norm.weight"), d_model)?,
                gate: t("ffn_gate", &[d_model, c.d_ff])?,
                up: t("ffn_up", &[d_model, c.d_ff])?,
                down: t("ffn_down", &[c.d_ff, d_model])?,
            });
        }
        let out_norm = vector(&file, "output_norm.weight", d_model)?;
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
        LlamaSession {
            k: vec![0.0; c.n_layer * len * kv],
            v: vec![0.0; c.n_layer * len * kv],
            max_len: len,
            pos: 0,
            logits: vec![0.0; c.vocab],
        }
    }

    /// Run `token` at the session's next position; returns the next-token logits.
    pub fn forward<'s>(
        &self,
        s: &'s mut LlamaSession,
        token: u32,
    ) -> Result<&'s [f32], EngineError> {
        let c = &self.config;
        if token as usize >= c.vocab {
            return Err(EngineError::TokenOutOfRange {
                id: token,
                pos: s.pos,
                vocab: c.vocab,
            });
        }
        if s.pos >= s.max_len {
            return Err(EngineError::Config(format!(
                "context full: {} positions (the KV cache's size)",
                s.max_len
            )));
        }
        let (d, hd, kvd) = (c.d_model, c.head_dim, c.n_kv_head * c.head_dim);
        let pos = s.pos;
        let mut x = vec![0f32; d];
        let rb = self.embd.ty.row_bytes(d);
        let bytes = self.file.tensor_bytes(&self.embd);
        dequantize_into(self.embd.ty, &bytes[token as usize * rb..], &mut x)
            .map_err(EngineError::Backend)?;
        let mut h = vec![0f32; d];
        let mut q = vec![0f32; d];
        let mut att = vec![0f32; d];
        let mut proj = vec![0f32; d];
        let mut g = vec![0f32; c.d_ff];
        let mut up = vec![0f32; c.d_ff];
        let mut scores = vec![0f32; pos + 1];
        let group = c.n_head / c.n_kv_head;
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, w) in self.layers.iter().enumerate() {
            rmsnorm(&x, &w.attn_norm, c.eps, &mut h);
            let base = (l * s.max_len + pos) * kvd;
            self.matvec(&w.q, &h, &mut q);
            self.matvec(&w.k, &h, &mut s.k[base..base + kvd]);
            self.matvec(&w.v, &h, &mut s.v[base..base + kvd]);
            rope(&mut q, hd, c.rope_dims, c.rope_base, pos);
            rope(
                &mut s.k[base..base + kvd],
                hd,
                c.rope_dims,
                c.rope_base,
                pos,
            );
            let layer_k = &s.k[l * s.max_len * kvd..];
            let layer_v = &s.v[l * s.max_len * kvd..];
            for head in 0..c.n_head {
                let qh = &q[head * hd..(head + 1) * hd];
                let kh = (head / group) * hd;
                for (t, sc) in scores.iter_mut().enumerate() {
                    let k = &layer_k[t * kvd + kh..t * kvd + kh + hd];
                    *sc = dot(qh, k) * scale;
                }
                softmax(&mut scores);
                let out = &mut att[head * hd..(head + 1) * hd];
                out.fill(0.0);
                for (t, &p) in scores.iter().enumerate() {
                    let v = &layer_v[t * kvd + kh..t * kvd + kh + hd];
                    out.iter_mut().zip(v).for_each(|(o, v)| *o += p * v);
                }
            }
            self.matvec(&w.o, &att, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
            rmsnorm(&x, &w.ffn_norm, c.eps, &mut h);
            self.matvec(&w.gate, &h, &mut g);
            self.matvec(&w.up, &h, &mut up);
            g.iter_mut()
                .zip(&up)
                .for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u);
            self.matvec(&w.down, &g, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
        }
        rmsnorm(&x, &self.out_norm, c.eps, &mut h);
        self.matvec(&self.output, &h, &mut s.logits);
        s.pos += 1;
        Ok(&s.logits)
    }

    /// y = W x, W stored as `y.len()` quantized rows of `x.len()` elements.
    fn matvec(&self, w: &TensorInfo, x: &[f32], y: &mut [f32]) {
        let cols = x.len();
        let rb = w.ty.row_bytes(cols);
        let bytes = self.file.tensor_bytes(w);
        y.par_chunks_mut(64).enumerate().for_each(|(ci, ys)| {
            let mut row = vec![0f32; cols];
            for (i, y) in ys.iter_mut().enumerate() {
                let r = ci * 64 + i;
                let rbytes = &bytes[r * rb..(r + 1) * rb];
                *y = match w.ty {
                    GgmlType::Q8_0 => dot_q8_0(rbytes, x),
                    GgmlType::Q4_1 => dot_q4_1(rbytes, x),
                    _ => {
                        // Shapes were checked at load, so the row is whole.
                        dequantize_into(w.ty, rbytes, &mut row).expect("row bytes checked at load");
                        dot(&row, x)
                    }
                };
            }
        });
    }
}

/// The KV cache and position of one sequence.
#[derive(Clone)]
pub struct LlamaSession {
    k: Vec<f32>,
    v: Vec<f32>,
    max_len: usize,
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

/// Row · x for a Q8_0 row, block by block without a dequantized copy: d · Σ qᵢxᵢ.
fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut sum = 0.0;
    for (b, x) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
        let d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        let mut acc = [0f32; 8];
        for (q, x) in b[2..].chunks_exact(8).zip(x.chunks_exact(8)) {
            for i in 0..8 {
                acc[i] += (q[i] as i8) as f32 * x[i];
            }
        }
        sum += d * acc.iter().sum::<f32>();
    }
    sum
}

/// Row · x for a Q4_1 row: Σ (d·qᵢ + m)·xᵢ = d · Σ qᵢxᵢ + m · Σ xᵢ per block.
fn dot_q4_1(row: &[u8], x: &[f32]) -> f32 {
    let mut sum = 0.0;
    for (b, x) in row.chunks_exact(20).zip(x.chunks_exact(32)) {
        let h = |at: usize| half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32();
        let (d, m) = (h(0), h(2));
        let (lo, hi) = x.split_at(16);
        let (mut qx, mut sx) = ([0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let q = b[4 + j];
            qx[j] = (q & 0xF) as f32 * lo[j] + (q >> 4) as f32 * hi[j];
            sx[j] = lo[j] + hi[j];
        }
        sum += d * qx.iter().sum::<f32>() + m * sx.iter().sum::<f32>();
    }
    sum
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler vectorize (a single running sum is a serial chain).
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + ar.iter().zip(br).map(|(x, y)| x * y).sum::<f32>()
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let s = 1.0 / (ms + eps).sqrt();
    out.iter_mut()
        .zip(x.iter().zip(w))
        .for_each(|(o, (x, w))| *o = x * s * w);
}

/// Rotate adjacent pairs of the first `dims` of every head by `pos · base^(−2i/dims)`.
fn rope(x: &mut [f32], head_dim: usize, dims: usize, base: f32, pos: usize) {
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..dims / 2 {
            let theta = pos as f32 * base.powf(-2.0 * i as f32 / dims as f32);
            let (sin, cos) = theta.sin_cos();
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * cos - b * sin;
            head[2 * i + 1] = a * sin + b * cos;
        }
    }
}

fn softmax(x: &mut [f32]) {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0.0;
    x.iter_mut().for_each(|v| {
        *v = (*v - m).exp();
        sum += *v;
    });
    x.iter_mut().for_each(|v| *v /= sum);
}
