//! The kernel-level trait every backend implements (cpu here, cuda in `cuda/`): the complete list
//! of operations the model and optimizer code in this crate call. Model code never touches memory
//! directly; it names regions of backend buffers with [`View`]s and calls these ops.
//!
//! Conventions (binding for every implementation):
//! - All tensors are f32, row-major, contiguous. Shapes are given by explicit dimensions.
//! - A [`View`] is `len` f32s at offset `off` (in elements) of a buffer. Views passed as outputs are
//!   written through a shared reference (like a device pointer); the caller guarantees that an
//!   output view never overlaps any other view of the same call (the cpu backend checks this).
//! - "accumulate" outputs are added to (`+=`), "overwrite" outputs are replaced; each op says which.
//! - Token ids and per-token weights are host slices (`&[u32]`, `&[f32]`); a device backend copies
//!   them itself. Scalars that must come back to the host (`sum_squares`) return host values.
//! - Ops are synchronous from the caller's point of view: a `read` after an op sees its result.
//!
//! Attention dims: q/k/v are packed per token as `[q heads (n_head*hd) | k heads (n_kv*hd) |
//! v heads (n_kv*hd)]` (the GPT-2 `c_attn` layout when `n_kv == n_head`); query head `h` reads kv
//! head `h / (n_head / n_kv)` (GQA).

use crate::EngineError;

/// A region of a backend buffer: `len` f32 elements starting at element `off`.
pub struct View<'a, Buf> {
    pub buf: &'a Buf,
    pub off: usize,
    pub len: usize,
}

impl<Buf> Clone for View<'_, Buf> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Buf> Copy for View<'_, Buf> {}

impl<'a, Buf> View<'a, Buf> {
    pub fn new(buf: &'a Buf, off: usize, len: usize) -> Self {
        View { buf, off, len }
    }
    /// A sub-view `[start, start + len)` relative to this view.
    pub fn sub(&self, start: usize, len: usize) -> Self {
        assert!(
            start + len <= self.len,
            "sub-view {start}+{len} out of {}",
            self.len
        );
        View {
            buf: self.buf,
            off: self.off + start,
            len,
        }
    }
}

/// Normalization flavour for [`Backend::norm_forward`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `(x - mean) * rstd * w + b`; stats = (mean, rstd) per row.
    LayerNorm,
    /// `x * rstd` (times `w` if given); stats = (0, rstd) per row. `rstd = 1/sqrt(mean(x²) + eps)`.
    RmsNorm,
}

/// Pointwise activation for [`Backend::act_forward`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// GELU, tanh approximation (GPT-2's `gelu_new`).
    GeluTanh,
    /// `relu(x)²`.
    ReluSq,
}

/// Matmul arithmetic of a backend (storage is f32 on every backend; the cpu backend computes in
/// f32 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Plain f32 (on cuda: SGEMM, matches the cpu backend to ~1e-5).
    F32,
    /// TF32 tensor cores, fp32 accumulation.
    Tf32,
    /// bf16 tensor cores, fp32 accumulation.
    Bf16,
}

impl Precision {
    /// The name `FromStr` accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, EngineError> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(EngineError::Config(format!(
                "unknown precision `{s}` (f32, tf32 or bf16)"
            ))),
        }
    }
}

/// Shape of a matmul: `C[m,n] = alpha * op(A)[m,k] @ op(B)[k,n] + beta * C`.
/// `trans_a`: A is stored `[k,m]`; `trans_b`: B is stored `[n,k]` (a torch `Linear` weight).
#[derive(Clone, Copy, Debug)]
pub struct MatDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// Dimensions for the attention ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    /// Batch rows.
    pub b: usize,
    /// Query tokens per row in this call.
    pub t: usize,
    pub n_head: usize,
    pub n_kv: usize,
    pub head_dim: usize,
}

impl AttnDims {
    /// Floats per token of the packed qkv layout.
    pub fn qkv_width(&self) -> usize {
        (self.n_head + 2 * self.n_kv) * self.head_dim
    }
    /// Floats per token of the attention output.
    pub fn out_width(&self) -> usize {
        self.n_head * self.head_dim
    }
}

/// Where a KV-cache slot's first positions are stored: positions `0..len` of the slot are read
/// from slot `slot` (a sample forked from a prompt's slot shares the prompt's K/V instead of a
/// copy; a slot may name itself). `len == 0`: none shared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedPrefix {
    pub slot: usize,
    pub len: usize,
}

/// Per-head query/key preparation for the `modern` architecture ([`Backend::qk_prep_forward`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QkPrep {
    /// Parameter-free RMSNorm of each q and k head vector (QK-norm), epsilon.
    pub qk_norm_eps: Option<f32>,
    /// Rotary embedding base (rotate-half convention, pairs `(i, i + hd/2)`).
    pub rope_theta: Option<f32>,
    /// Absolute position of the first token in this call (KV-cache decode).
    pub pos0: usize,
}

/// AdamW hyper-parameters for one [`Backend::adamw`] call (one parameter group).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count (for bias correction).
    pub step: u64,
}

/// The kernel-level operations. See the module docs for conventions.
pub trait Backend: Send + Sync {
    /// One device allocation of f32s.
    type Buf: Send + Sync;

    /// Short name for logs (`cpu`, `cuda`).
    fn name(&self) -> &'static str;

    // ---- device facts (defaults: a backend on host memory that runs synchronously) --------
    /// Device and arithmetic, for logs and reports (`cpu (2 threads, f32)`).
    fn label(&self) -> String {
        format!("{} ({} matmuls)", self.name(), self.precision().as_str())
    }
    /// Matmul arithmetic (storage is f32 everywhere).
    fn precision(&self) -> Precision {
        Precision::F32
    }
    /// Block until all queued work is done (timing); a synchronous backend returns at once.
    fn synchronize(&self) {}
    /// Whether [`Backend::attention_rows`] reads shared prefixes ([`SharedPrefix`]); without
    /// it a decoder copies a forked slot's cache instead.
    fn shares_kv_prefix(&self) -> bool {
        false
    }
    /// Peak bytes of device memory held by this backend so far (`None` on host memory: see the
    /// process's peak RSS instead).
    fn peak_device_bytes(&self) -> Option<u64> {
        None
    }
    /// Device memory in use as the driver reports it (context included), if there is a device.
    fn device_used_bytes(&self) -> Option<u64> {
        None
    }
    /// Refuse (with the estimate) when `need` bytes will not fit where this backend allocates
    /// (default: the host's available memory).
    fn check_fits(&self, need: u64) -> Result<(), EngineError> {
        crate::config::check_memory(need)
    }

    /// A zero-filled buffer of `len` f32s.
    fn alloc(&self, len: usize) -> Result<Self::Buf, EngineError>;
    /// Length in f32s.
    fn buf_len(&self, buf: &Self::Buf) -> usize;
    /// Host → device: `dst = src` (`src.len() == dst.len`).
    fn write(&self, dst: View<Self::Buf>, src: &[f32]);
    /// Device → host: `dst = src`.
    fn read(&self, src: View<Self::Buf>, dst: &mut [f32]);

    // ---- elementwise / reductions -------------------------------------------------------
    /// `dst[i] = value`.
    fn fill(&self, dst: View<Self::Buf>, value: f32);
    /// `dst = src` (same length, non-overlapping).
    fn copy(&self, dst: View<Self::Buf>, src: View<Self::Buf>);
    /// `y += alpha * x`.
    fn axpy(&self, y: View<Self::Buf>, alpha: f32, x: View<Self::Buf>);
    /// `x *= s`.
    fn scale(&self, x: View<Self::Buf>, s: f32);
    /// `Σ x²` (accumulated in f64), returned to the host.
    fn sum_squares(&self, x: View<Self::Buf>) -> f64;

    // ---- linear algebra -----------------------------------------------------------------
    /// `c = alpha * op(a) @ op(b) + beta * c` (see [`MatDims`]); `beta == 0` never reads `c`.
    fn matmul(
        &self,
        c: View<Self::Buf>,
        a: View<Self::Buf>,
        b: View<Self::Buf>,
        d: MatDims,
        alpha: f32,
        beta: f32,
    );
    /// `logits = a @ b` (`beta == 0`) for the LM head, whose result is consumed by
    /// [`Backend::cross_entropy`] (or read back). A backend may hold the logits in reduced
    /// precision (the cuda backend in bf16 keeps them as bf16 only, as PyTorch autocast does;
    /// any f32 access sees the bf16-rounded values); the default is [`Backend::matmul`].
    fn matmul_logits(
        &self,
        c: View<Self::Buf>,
        a: View<Self::Buf>,
        b: View<Self::Buf>,
        d: MatDims,
    ) {
        self.matmul(c, a, b, d, 1.0, 0.0);
    }
    /// [`Backend::matmul`], then (if `bias` is given) `c[r, :] += bias` for the `d.m` rows of
    /// `d.n`: the projection of a `Linear` layer. A backend may fuse the two (the cuda backend's
    /// cuBLASLt bias epilogue); the default runs `matmul` and `add_bias`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_bias(
        &self,
        c: View<Self::Buf>,
        a: View<Self::Buf>,
        b: View<Self::Buf>,
        bias: Option<View<Self::Buf>>,
        d: MatDims,
        alpha: f32,
        beta: f32,
    ) {
        self.matmul(c, a, b, d, alpha, beta);
        if let Some(bias) = bias {
            self.add_bias(c, bias, d.m, d.n);
        }
    }
    /// `out = res + op(a) @ op(b) (+ bias)` over the first `d.m * d.n` floats (`out`, `res` do
    /// not overlap): a residual connection's projection. A backend may fuse it (the cuda backend
    /// reads `res` as cuBLASLt's C); the default is [`Backend::copy`] then
    /// [`Backend::matmul_bias`] with `beta = 1`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_bias_residual(
        &self,
        out: View<Self::Buf>,
        res: View<Self::Buf>,
        a: View<Self::Buf>,
        b: View<Self::Buf>,
        bias: Option<View<Self::Buf>>,
        d: MatDims,
    ) {
        let mn = d.m * d.n;
        self.copy(out.sub(0, mn), res.sub(0, mn));
        self.matmul_bias(out, a, b, bias, d, 1.0, 1.0);
    }
    /// Overwrite `pre = op(a) @ op(b) (+ bias)` and `out = act(pre)` (`d.m * d.n` floats each,
    /// distinct buffers regions): an MLP's first projection and its activation. A backend may
    /// fuse them (the cuda backend's cuBLASLt GELU epilogue); the default runs
    /// [`Backend::matmul_bias`] and [`Backend::act_forward`].
    #[allow(clippy::too_many_arguments)]
    fn matmul_bias_act(
        &self,
        act: Act,
        out: View<Self::Buf>,
        pre: View<Self::Buf>,
        a: View<Self::Buf>,
        b: View<Self::Buf>,
        bias: Option<View<Self::Buf>>,
        d: MatDims,
    ) {
        let mn = d.m * d.n;
        self.matmul_bias(pre, a, b, bias, d, 1.0, 0.0);
        self.act_forward(act, out.sub(0, mn), pre.sub(0, mn));
    }
    /// The backward of [`Backend::matmul_bias_act`]'s activation fused with the matmul producing
    /// its output gradient: overwrite `dpre = act'(pre) * (op(a) @ op(b))` (`d.m * d.n`), and if
    /// `dbias` is given accumulate `dbias += Σ_r dpre[r, :]`. `dact` (`d.m * d.n`) is scratch:
    /// its contents afterwards are unspecified. The default runs [`Backend::matmul`] into `dact`,
    /// [`Backend::act_backward`] and [`Backend::bias_backward`].
    #[allow(clippy::too_many_arguments)]
    fn matmul_act_backward(
        &self,
        act: Act,
        dpre: View<Self::Buf>,
        dact: View<Self::Buf>,
        dbias: Option<View<Self::Buf>>,
        a: View<Self::Buf>,
        b: View<Self::Buf>,
        pre: View<Self::Buf>,
        d: MatDims,
    ) {
        let mn = d.m * d.n;
        self.matmul(dact, a, b, d, 1.0, 0.0);
        self.act_backward(act, dpre.sub(0, mn), dact.sub(0, mn), pre.sub(0, mn));
        if let Some(dbias) = dbias {
            self.bias_backward(dbias, dpre, d.m, d.n);
        }
    }
    /// A `Linear` layer's parameter gradients from its output gradient `a` (`d.k` rows of `d.m`,
    /// read transposed: `d.trans_a`) and its input `b`: accumulate the weight gradient
    /// `dw += op(a) @ op(b)` and, if `dbias` is given, `dbias += Σ_r a[r, :]`. A backend may fuse
    /// them (the cpu backend sums the output gradient while packing it for the product); the
    /// default runs [`Backend::matmul`] and [`Backend::bias_backward`].
    fn matmul_wgrad_bias(
        &self,
        dw: View<Self::Buf>,
        dbias: Option<View<Self::Buf>>,
        a: View<Self::Buf>,
        b: View<Self::Buf>,
        d: MatDims,
    ) {
        wgrad_then_bias_backward(self, dw, dbias, a, b, d)
    }
    /// `out[r, :] += bias` for `rows` rows of `cols`.
    fn add_bias(&self, out: View<Self::Buf>, bias: View<Self::Buf>, rows: usize, cols: usize);
    /// Accumulate: `dbias += Σ_r dout[r, :]`.
    fn bias_backward(
        &self,
        dbias: View<Self::Buf>,
        dout: View<Self::Buf>,
        rows: usize,
        cols: usize,
    );

    // ---- embedding ----------------------------------------------------------------------
    /// Overwrite `out[b*t + i, :] = wte[ids[b*t + i], :] + wpe[pos0 + i, :]` (wpe optional);
    /// `ids.len() == rows`, `t` = tokens per batch row. Ids are validated by the caller.
    #[allow(clippy::too_many_arguments)]
    fn embedding_forward(
        &self,
        out: View<Self::Buf>,
        wte: View<Self::Buf>,
        wpe: Option<View<Self::Buf>>,
        ids: &[u32],
        t: usize,
        pos0: usize,
        c: usize,
    );
    /// Accumulate: `dwte[ids[r]] += dout[r]`, `dwpe[r % t] += dout[r]`.
    fn embedding_backward(
        &self,
        dwte: View<Self::Buf>,
        dwpe: Option<View<Self::Buf>>,
        dout: View<Self::Buf>,
        ids: &[u32],
        t: usize,
        c: usize,
    );

    // ---- normalization ------------------------------------------------------------------
    /// Overwrite `out` and `stats` (`2*rows`: mean, rstd per row) for `rows` rows of `cols`.
    #[allow(clippy::too_many_arguments)]
    fn norm_forward(
        &self,
        kind: NormKind,
        out: View<Self::Buf>,
        stats: View<Self::Buf>,
        inp: View<Self::Buf>,
        weight: Option<View<Self::Buf>>,
        bias: Option<View<Self::Buf>>,
        rows: usize,
        cols: usize,
        eps: f32,
    );
    /// Accumulate into `dinp`, `dweight`, `dbias` (all `+=`), given the forward's `inp`, `stats`.
    #[allow(clippy::too_many_arguments)]
    fn norm_backward(
        &self,
        kind: NormKind,
        dinp: View<Self::Buf>,
        dweight: Option<View<Self::Buf>>,
        dbias: Option<View<Self::Buf>>,
        dout: View<Self::Buf>,
        inp: View<Self::Buf>,
        stats: View<Self::Buf>,
        weight: Option<View<Self::Buf>>,
        rows: usize,
        cols: usize,
    );

    // ---- activation ---------------------------------------------------------------------
    /// Overwrite `out = act(inp)`.
    fn act_forward(&self, act: Act, out: View<Self::Buf>, inp: View<Self::Buf>);
    /// Overwrite `dinp = act'(inp) * dout`.
    fn act_backward(
        &self,
        act: Act,
        dinp: View<Self::Buf>,
        dout: View<Self::Buf>,
        inp: View<Self::Buf>,
    );

    // ---- attention ----------------------------------------------------------------------
    /// Overwrite `out` (packed qkv, `[b*t, qkv_width]`) with `inp` where each q and k head is
    /// RMS-normalized (no weight) and then rotated (RoPE) at position `pos0 + i`; v is copied.
    /// `stats` (`b*t*(n_head+n_kv)`) receives each head's rstd.
    fn qk_prep_forward(
        &self,
        out: View<Self::Buf>,
        stats: View<Self::Buf>,
        inp: View<Self::Buf>,
        d: AttnDims,
        p: QkPrep,
    );
    /// Overwrite `dinp` from `dout` (inverse rotation, then RMSNorm backward; v passes through).
    fn qk_prep_backward(
        &self,
        dinp: View<Self::Buf>,
        dout: View<Self::Buf>,
        inp: View<Self::Buf>,
        stats: View<Self::Buf>,
        d: AttnDims,
        p: QkPrep,
    );
    /// Floats of backend-defined scratch that [`Backend::attention_forward`] saves for backward.
    fn attention_scratch_len(&self, d: AttnDims) -> usize;
    /// Causal softmax attention with scale `1/sqrt(hd)`: overwrite `out` (`[b*t, n_head*hd]`) and
    /// `scratch` from packed `qkv` (`[b*t, qkv_width]`).
    fn attention_forward(
        &self,
        out: View<Self::Buf>,
        scratch: View<Self::Buf>,
        qkv: View<Self::Buf>,
        d: AttnDims,
    );
    /// Overwrite `dqkv` (`[b*t, qkv_width]`) from `dout`, given the forward's `qkv`, `scratch`.
    fn attention_backward(
        &self,
        dqkv: View<Self::Buf>,
        dout: View<Self::Buf>,
        qkv: View<Self::Buf>,
        scratch: View<Self::Buf>,
        d: AttnDims,
    );
    /// KV-cache attention for decode/prefill: tokens `pos0..pos0+t` of each row. Writes the new
    /// k/v (from packed `qkv`) into `k_cache`/`v_cache` (`[b, max_t, n_kv, hd]`) at `pos0 + i`,
    /// then overwrites `out` with causal attention over cache positions `0..=pos0+i`.
    #[allow(clippy::too_many_arguments)]
    fn attention_cached(
        &self,
        out: View<Self::Buf>,
        qkv: View<Self::Buf>,
        k_cache: View<Self::Buf>,
        v_cache: View<Self::Buf>,
        d: AttnDims,
        pos0: usize,
        max_t: usize,
    );

    // ---- ragged decode: one token per row, each row at its own position ---------------------
    // A batched decoder steps sequences that sit at different positions (continuous batching,
    // RL groups of different prompt lengths). The defaults run the position-dependent ops above
    // once per row on sub-views, so a backend needs nothing new to decode ragged batches; the
    // cpu backend overrides them with one parallel pass each.

    /// [`Backend::embedding_forward`] for `ids.len()` rows of one token each, row `i` at position
    /// `pos[i]`: overwrite `out[i, :] = wte[ids[i], :] + wpe[pos[i], :]` (wpe optional).
    fn embedding_rows(
        &self,
        out: View<Self::Buf>,
        wte: View<Self::Buf>,
        wpe: Option<View<Self::Buf>>,
        ids: &[u32],
        pos: &[usize],
        c: usize,
    ) {
        embedding_per_row(self, out, wte, wpe, ids, pos, c)
    }
    /// [`Backend::qk_prep_forward`] for `d.b` rows of one token each (`d.t == 1`), row `i` at
    /// position `pos[i]` (`p.pos0` is ignored).
    fn qk_prep_rows(
        &self,
        out: View<Self::Buf>,
        stats: View<Self::Buf>,
        inp: View<Self::Buf>,
        d: AttnDims,
        p: QkPrep,
        pos: &[usize],
    ) {
        qk_prep_per_row(self, out, stats, inp, d, p, pos)
    }
    /// [`Backend::attention_cached`] for `d.b` rows of one token each (`d.t == 1`): row `i` writes
    /// its k/v into cache slot `slots[i]` (of `[slots, max_t, n_kv, hd]`) at position `pos[i]`
    /// and attends over positions `0..=pos[i]`, those below `prefix[i].len` stored in slot
    /// `prefix[i].slot` (`prefix` empty, or only on a backend that [`shares_kv_prefix`]: every
    /// row reads its own slot). Slots are distinct.
    ///
    /// [`shares_kv_prefix`]: Backend::shares_kv_prefix
    #[allow(clippy::too_many_arguments)]
    fn attention_rows(
        &self,
        out: View<Self::Buf>,
        qkv: View<Self::Buf>,
        k_cache: View<Self::Buf>,
        v_cache: View<Self::Buf>,
        d: AttnDims,
        slots: &[usize],
        pos: &[usize],
        prefix: &[SharedPrefix],
        max_t: usize,
    ) {
        assert!(
            prefix.iter().all(|p| p.len == 0),
            "{}: attention_rows does not read shared prefixes",
            self.name()
        );
        attention_per_row(self, out, qkv, k_cache, v_cache, d, slots, pos, max_t)
    }

    // ---- loss ---------------------------------------------------------------------------
    /// Softmax cross-entropy over `rows` rows of `vocab` logits, optional soft-cap
    /// `z = cap * tanh(x / cap)`. Overwrites `losses[r] = -log softmax(z_r)[targets[r]]`
    /// (unweighted, nats). If `grad_scale` is `Some(s)`, the logits are overwritten in place by
    /// `d(s * Σ_r weights[r] * losses[r]) / d logits` (the fused classifier of llm.c).
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        logits: View<Self::Buf>,
        losses: View<Self::Buf>,
        targets: &[u32],
        weights: &[f32],
        rows: usize,
        vocab: usize,
        softcap: Option<f32>,
        grad_scale: Option<f32>,
    );

    // ---- optimizer ----------------------------------------------------------------------
    /// One AdamW step on a group (decoupled weight decay `p -= lr*wd*p`), updating moments `m`, `v`.
    fn adamw(
        &self,
        p: View<Self::Buf>,
        g: View<Self::Buf>,
        m: View<Self::Buf>,
        v: View<Self::Buf>,
        h: AdamHyper,
    );
    /// [`Backend::adamw`] on several groups of the same buffers, `(off, len, weight_decay)` each
    /// (`h.weight_decay` is ignored). A backend may run them as one launch; the default calls
    /// [`Backend::adamw`] per group, in order.
    fn adamw_groups(&self, bufs: [&Self::Buf; 4], groups: &[(usize, usize, f32)], h: AdamHyper) {
        let [p, g, m, v] = bufs;
        for &(off, len, weight_decay) in groups {
            self.adamw(
                View::new(p, off, len),
                View::new(g, off, len),
                View::new(m, off, len),
                View::new(v, off, len),
                AdamHyper { weight_decay, ..h },
            );
        }
    }
}

/// [`Backend::matmul_wgrad_bias`] as two passes: [`Backend::matmul`], then
/// [`Backend::bias_backward`] (the default, and a backend's fallback where it cannot fuse).
pub(crate) fn wgrad_then_bias_backward<B: Backend + ?Sized>(
    be: &B,
    dw: View<B::Buf>,
    dbias: Option<View<B::Buf>>,
    a: View<B::Buf>,
    b: View<B::Buf>,
    d: MatDims,
) {
    assert!(
        d.trans_a,
        "matmul_wgrad_bias reads the output gradient transposed"
    );
    be.matmul(dw, a, b, d, 1.0, 1.0);
    if let Some(dbias) = dbias {
        be.bias_backward(dbias, a, d.k, d.m);
    }
}

/// [`Backend::embedding_rows`] as one [`Backend::embedding_forward`] per row (the default).
pub(crate) fn embedding_per_row<B: Backend + ?Sized>(
    be: &B,
    out: View<B::Buf>,
    wte: View<B::Buf>,
    wpe: Option<View<B::Buf>>,
    ids: &[u32],
    pos: &[usize],
    c: usize,
) {
    for (i, &p) in pos.iter().enumerate() {
        be.embedding_forward(out.sub(i * c, c), wte, wpe, &ids[i..=i], 1, p, c);
    }
}

/// [`Backend::qk_prep_rows`] as one [`Backend::qk_prep_forward`] per row (the default).
pub(crate) fn qk_prep_per_row<B: Backend + ?Sized>(
    be: &B,
    out: View<B::Buf>,
    stats: View<B::Buf>,
    inp: View<B::Buf>,
    d: AttnDims,
    p: QkPrep,
    pos: &[usize],
) {
    let (wq, nqk) = (d.qkv_width(), d.n_head + d.n_kv);
    let d1 = AttnDims { b: 1, t: 1, ..d };
    for (i, &p0) in pos.iter().enumerate() {
        be.qk_prep_forward(
            out.sub(i * wq, wq),
            stats.sub(i * nqk, nqk),
            inp.sub(i * wq, wq),
            d1,
            QkPrep { pos0: p0, ..p },
        );
    }
}

/// [`Backend::attention_rows`] as one [`Backend::attention_cached`] per row on its slot's part
/// of the cache (the default).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_per_row<B: Backend + ?Sized>(
    be: &B,
    out: View<B::Buf>,
    qkv: View<B::Buf>,
    k_cache: View<B::Buf>,
    v_cache: View<B::Buf>,
    d: AttnDims,
    slots: &[usize],
    pos: &[usize],
    max_t: usize,
) {
    let (wq, wo) = (d.qkv_width(), d.out_width());
    let per_slot = max_t * d.n_kv * d.head_dim;
    let d1 = AttnDims { b: 1, t: 1, ..d };
    for (i, (&s, &p)) in slots.iter().zip(pos).enumerate() {
        be.attention_cached(
            out.sub(i * wo, wo),
            qkv.sub(i * wq, wq),
            k_cache.sub(s * per_slot, per_slot),
            v_cache.sub(s * per_slot, per_slot),
            d1,
            p,
            max_t,
        );
    }
}
