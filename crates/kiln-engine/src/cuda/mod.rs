//! The cuda backend (feature `cuda`): [`CudaBackend`] implements [`Backend`] on one NVIDIA GPU.
//!
//! - cudarc with dynamic loading: `libcuda`, `libcublas` and `libnvrtc` are opened at run time,
//!   so the crate builds and links on a machine without CUDA.
//! - Kernels (`kernels.cu`, f32) are compiled once per process with NVRTC for the device's
//!   compute capability; no headers are needed. Each has its CPU twin in `cpu/kernels.rs`, and
//!   the device script (`scripts/gpu/device-check.sh`) compares the two backends.
//! - Matmuls go to cuBLAS. Storage is f32 (the trait's type, so master weights, gradients and
//!   optimizer moments are f32); [`Precision`] picks the arithmetic: `F32` (exact SGEMM, used for
//!   parity), `Tf32`, or `Bf16` (`cublasGemmEx` with `CUBLAS_COMPUTE_32F_FAST_16BF`: operands
//!   rounded to bf16, fp32 accumulation). Choice and why: the trait is f32-only and the model code
//!   is shared; keeping activations in f32 costs memory bandwidth (see the notes in
//!   `scripts/gpu/NOTES.md`) but needs no trait change.
//! - bf16 operands ([`Bf16Gemm`]): by default each operand region is converted once to bf16
//!   (`k_to_bf16`) into a per-buffer shadow copy and the GEMM is bf16 × bf16 → f32; the copy is
//!   reused until any op writes to that buffer (every op marks the buffers it writes, [`dirty`]),
//!   so weights convert once per optimizer step and an activation or gradient once for both of its
//!   matmuls. `KILN_CUDA_WCACHE=0` converts on every call; `KILN_CUDA_BF16OPS=0` hands cuBLAS the
//!   f32 operands with `CUBLAS_COMPUTE_32F_FAST_16BF` (the first version).
//! - Attention is flash-style (no T×T matrix): online softmax forward saving the log-sum-exp,
//!   backward recomputing probabilities in two kernels (dQ per query; dK/dV per key, summing a GQA
//!   group's query heads without atomics). [`AttnKernel`]: `v2`/`v1` in f32 on CUDA cores (the f32
//!   and tf32 default, exact to ~1e-6), `tc` on tensor cores (`attention_tc.cu`: bf16 operands,
//!   fp32 accumulation; self-tested against v2 on first use and replaced by v2 with a warning if
//!   they disagree) and `tc2` (the same math on bf16 copies of q/k/v and dout kept in the attention
//!   scratch, cp.async double-buffered tiles; the bf16 default for head dims in [`TC_HEAD_DIMS`] on
//!   sm_80+, falling back to tc, then v2).
//! - One stream; every op is enqueued on it and `read`/`sum_squares` synchronize, which gives the
//!   trait's "synchronous from the caller's view" semantics. Buffers come from a small pool keyed
//!   by length, so per-step allocations (decode logits) do not hit `cuMemAlloc`/`cuMemFree`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::{
    result as drv, CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use crate::backend::{Act, AdamHyper, AttnDims, Backend, MatDims, NormKind, QkPrep, View};
use crate::EngineError;

/// CUDA C of every kernel but training attention (prelude + kernels.cu).
pub const BASE_SOURCE: &str = concat!(include_str!("prelude.cu"), include_str!("kernels.cu"));
/// CUDA C of the flash-attention templates (prelude + attention.cu); see [`attention_source`].
pub const ATTN_SOURCE: &str = concat!(
    include_str!("prelude.cu"),
    include_str!("attention.cu"),
    include_str!("attention_tc.cu")
);

/// Head dims with a flash-attention instantiation (each compiled on first use).
pub const ATTN_HEAD_DIMS: [usize; 5] = [8, 16, 32, 64, 128];

/// Head dims with a tensor-core ("tc") attention instantiation (HD 128 would need more than 48 KiB
/// of static shared memory and spills in dK/dV; it uses v2).
pub const TC_HEAD_DIMS: [usize; 3] = [16, 32, 64];

/// Which training-attention kernels run (`KILN_CUDA_ATTN=v1|v2|tc|tc2` forces one at start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernel {
    /// One thread per row, f32 (the first version).
    V1,
    /// Two threads per row, register-resident operands, f32: the exact path.
    V2,
    /// Tensor cores (bf16 mma.sync, fp32 accumulation), FlashAttention-2 style.
    Tc,
    /// tc's math on bf16 copies of q/k/v and dout (in the scratch), cp.async double-buffered.
    Tc2,
}

impl AttnKernel {
    pub fn name(self) -> &'static str {
        match self {
            AttnKernel::V1 => "v1",
            AttnKernel::V2 => "v2",
            AttnKernel::Tc => "tc",
            AttnKernel::Tc2 => "tc2",
        }
    }
    fn code(self) -> u8 {
        self as u8
    }
    fn from_code(c: u8) -> Self {
        match c {
            0 => AttnKernel::V1,
            1 => AttnKernel::V2,
            2 => AttnKernel::Tc,
            _ => AttnKernel::Tc2,
        }
    }
}

impl std::str::FromStr for AttnKernel {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, EngineError> {
        match s {
            "v1" => Ok(AttnKernel::V1),
            "v2" => Ok(AttnKernel::V2),
            "tc" => Ok(AttnKernel::Tc),
            "tc2" => Ok(AttnKernel::Tc2),
            _ => Err(EngineError::Config(format!(
                "unknown cuda attention kernel `{s}` (v1, v2, tc or tc2)"
            ))),
        }
    }
}

/// Entry points of [`BASE_SOURCE`].
pub const BASE_KERNELS: [&str; 23] = [
    "k_fill",
    "k_axpy",
    "k_scale",
    "k_sum_squares",
    "k_add_bias",
    "k_col_grads",
    "k_embed_fwd",
    "k_embed_bwd",
    "k_norm_fwd",
    "k_norm_bwd_dx",
    "k_act_fwd",
    "k_act_bwd",
    "k_qk_prep_fwd",
    "k_qk_prep_bwd",
    "k_kv_append",
    "k_attn_cached",
    "k_cross_entropy",
    "k_cross_entropy_bf16",
    "k_adamw",
    "k_to_bf16",
    "k_from_bf16",
    "k_axpy_bf16",
    "k_adamw_groups",
];

/// The attention module's source for head dim `hd`.
pub fn attention_source(hd: usize) -> String {
    let tc = if TC_HEAD_DIMS.contains(&hd) {
        format!("TC_INST({hd})\nTC2_INST({hd})\n")
    } else {
        String::new()
    };
    format!("{ATTN_SOURCE}\n{tc}ATTN_INST({hd})\n")
}

/// Entry points of [`attention_source`]`(hd)`.
pub fn attention_kernels(hd: usize) -> Vec<String> {
    let mut v = vec![
        "k_attn_bwd_d".to_string(),
        format!("k_attn_fwd_{hd}"),
        format!("k_attn_bwd_dq_{hd}"),
        format!("k_attn_bwd_dkv_{hd}"),
        format!("k_attn2_fwd_{hd}"),
        format!("k_attn2_bwd_dq_{hd}"),
        format!("k_attn2_bwd_dkv_{hd}"),
        TC2_CVT.to_string(),
    ];
    if TC_HEAD_DIMS.contains(&hd) {
        for k in ["fwd", "bwd_dq", "bwd_dkv"] {
            v.push(format!("k_attn_tc_{k}_{hd}"));
        }
        for k in ["fwd", "bwd_dq", "bwd_dkv"] {
            v.push(format!("k_attn_tc2_{k}_{hd}"));
        }
    }
    v
}

/// The tc2 f32 → bf16 conversion kernel (in every attention module; not per head dim).
pub const TC2_CVT: &str = "k_attn_tc2_cvt";

/// Dynamic shared memory of the tc2 kernels (attention_tc.cu `TC2_INST`): a tile is 64 rows of
/// HD+8 bf16; fwd holds Q + 2×(K, V), dq Q, dO + 2×(K, V), dkv K, V + 2×(Q, dO) + 2×(lse, D)·64 f32.
pub fn tc2_smem_bytes(kernel: &str, hd: usize) -> usize {
    let tile = 64 * (hd + 8) * 2;
    match kernel {
        "fwd" => 5 * tile,
        "bwd_dq" => 6 * tile,
        _ => 6 * tile + 2 * 128 * 4,
    }
}

/// Where tc2's bf16 copies live in the attention scratch (in f32 slots, 16-byte aligned): q/k/v
/// (`b·t·qkv_width` bf16, written by the forward) then dout (`b·t·out_width` bf16, by the backward).
fn tc2_layout(d: AttnDims) -> (usize, usize, usize) {
    let base = (2 * d.b * d.n_head * d.t + d.b * d.t * d.out_width()).next_multiple_of(4);
    let (nq, no) = (d.b * d.t * d.qkv_width(), d.b * d.t * d.out_width());
    (base, base + nq / 2, base + nq / 2 + no / 2)
}

/// Compile CUDA C to PTX for `compute_{major}{minor}` (needs only libnvrtc).
pub fn compile(src: &str, major: i32, minor: i32) -> Result<String, EngineError> {
    let opts = CompileOptions {
        options: vec![
            format!("--gpu-architecture=compute_{major}{minor}"),
            "--std=c++17".into(),
        ],
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(src, opts).map_err(|e| {
        EngineError::Backend(format!("NVRTC compile of the cuda kernels failed: {e}"))
    })?;
    Ok(ptx.to_src())
}

pub use crate::backend::Precision;

/// How bf16-precision matmuls feed cuBLAS (`KILN_CUDA_BF16OPS=0` → `F32Operands`,
/// `KILN_CUDA_WCACHE=0` → `Bf16`, default `Bf16Cached`). Only used in [`Precision::Bf16`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Gemm {
    /// f32 operands, `CUBLAS_COMPUTE_32F_FAST_16BF`: cuBLAS rounds while loading (the first
    /// version; bound by reading and converting f32).
    F32Operands,
    /// Each operand converted to bf16 (`k_to_bf16`, round to nearest even) into scratch on every
    /// call, then a bf16 × bf16 → f32 GEMM.
    Bf16,
    /// As `Bf16`, but the bf16 copy of an operand region is kept in a per-buffer shadow and reused
    /// until any op writes to that buffer (weights between optimizer steps; activations between
    /// forward and backward; a gradient between its dX and dW matmuls).
    Bf16Cached,
}

impl Bf16Gemm {
    pub fn name(self) -> &'static str {
        match self {
            Bf16Gemm::F32Operands => "f32ops",
            Bf16Gemm::Bf16 => "bf16ops",
            Bf16Gemm::Bf16Cached => "cached",
        }
    }
    fn code(self) -> u8 {
        self as u8
    }
    fn from_code(c: u8) -> Self {
        match c {
            0 => Bf16Gemm::F32Operands,
            1 => Bf16Gemm::Bf16,
            _ => Bf16Gemm::Bf16Cached,
        }
    }
    /// The mode named by `KILN_CUDA_BF16OPS` / `KILN_CUDA_WCACHE` (`0` turns a path off).
    pub fn from_env() -> Self {
        let off = |k: &str| std::env::var(k).is_ok_and(|v| v == "0");
        if off("KILN_CUDA_BF16OPS") {
            Bf16Gemm::F32Operands
        } else if off("KILN_CUDA_WCACHE") {
            Bf16Gemm::Bf16
        } else {
            Bf16Gemm::Bf16Cached
        }
    }
}

/// The matmul arithmetic and operand path in use ([`CudaBackend::matmul_path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPath {
    F32,
    Tf32,
    Bf16(Bf16Gemm),
}

impl MatmulPath {
    /// `f32`, `tf32`, `bf16-f32ops`, `bf16-bf16ops`, `bf16-cached`.
    pub fn name(self) -> String {
        match self {
            MatmulPath::F32 => "f32".into(),
            MatmulPath::Tf32 => "tf32".into(),
            MatmulPath::Bf16(m) => format!("bf16-{}", m.name()),
        }
    }
}

fn derr(what: &str, e: impl std::fmt::Debug) -> EngineError {
    EngineError::Backend(format!("cuda: {what}: {e:?}"))
}

/// Device memory pool: freed buffers are kept per exact length and reused.
struct Pool {
    ctx: Arc<CudaContext>,
    free: Mutex<HashMap<usize, Vec<u64>>>,
    stats: Mutex<(usize, usize)>,
}

impl Pool {
    fn get(&self, len: usize) -> Result<u64, EngineError> {
        if let Some(p) = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&len)
            .and_then(|v| v.pop())
        {
            return Ok(p);
        }
        let bytes = (len.max(1) * 4) as u64;
        self.ctx
            .bind_to_thread()
            .map_err(|e| derr("bind context", e))?;
        // SAFETY: plain device allocation; freed only by `Drop for Pool`.
        let p = unsafe { drv::malloc_sync(bytes as usize) }.map_err(|e| {
            let free = self.ctx.mem_get_info().map(|(f, _)| f).unwrap_or(0);
            if format!("{e:?}").contains("OUT_OF_MEMORY") {
                EngineError::OutOfMemory {
                    need_mb: bytes >> 20,
                    avail_mb: (free >> 20) as u64,
                }
            } else {
                derr("cuMemAlloc", e)
            }
        })?;
        let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        st.0 += bytes as usize;
        st.1 = st.1.max(st.0);
        Ok(p)
    }
    fn put(&self, len: usize, ptr: u64) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(len)
            .or_default()
            .push(ptr);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_err() {
            return;
        }
        for (_, ptrs) in self
            .free
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            for p in ptrs {
                // SAFETY: every pooled pointer came from malloc_sync and no buffer refers to it.
                let _ = unsafe { drv::free_sync(p) };
            }
        }
    }
}

/// A device buffer of f32s (returned to the backend's pool on drop).
pub struct CudaBuf {
    ptr: u64,
    len: usize,
    pool: Arc<Pool>,
    /// bf16 copy of matmul-operand regions ([`Bf16Gemm::Bf16Cached`]).
    shadow: Mutex<Shadow>,
    /// `shadow.stale` is non-empty (checked by [`ptr`] without taking the lock).
    has_stale: std::sync::atomic::AtomicBool,
    /// Writes stale f32 regions back from the shadow (see [`Shadow::stale`]).
    mat: Arc<Materializer>,
}

/// The stream and `k_from_bf16`, for [`ptr`] to bring a region's f32 copy up to date.
struct Materializer {
    stream: Arc<CudaStream>,
    from_bf16: CudaFunction,
}

/// A buffer's bf16 shadow: `ptr` holds `len` bf16s (region `off` at byte `2*off`, allocated on
/// first use from the pool as `len.div_ceil(2)` f32s); `valid` lists the `(off, len)` regions
/// converted since the buffer was last written. Every op clears `valid` of each buffer it writes
/// ([`dirty`]), so a stale copy is never read.
///
/// `stale` lists regions whose f32 copy is behind the shadow: a cuBLASLt GELU epilogue wrote
/// its result only in bf16 (the next consumers are bf16 matmuls). [`ptr`], which every kernel
/// argument goes through, writes such a region back (`k_from_bf16`, exact) before any f32 use.
#[derive(Default)]
struct Shadow {
    ptr: u64,
    valid: Vec<(usize, usize)>,
    stale: Vec<(usize, usize)>,
}

/// Regions remembered per shadow before the list is reset (the parameter buffer has one per
/// weight matrix: 4 per layer plus the head).
const SHADOW_REGIONS: usize = 512;

impl Drop for CudaBuf {
    fn drop(&mut self) {
        self.pool.put(self.len, self.ptr);
        let sh = self.shadow.get_mut().unwrap_or_else(|e| e.into_inner());
        if sh.ptr != 0 {
            self.pool.put(self.len.div_ceil(2), sh.ptr);
        }
    }
}

/// Mark `v`'s buffer as written: its bf16 shadow regions are stale.
fn dirty(v: &View<CudaBuf>) {
    let mut sh = v.buf.shadow.lock().unwrap_or_else(|e| e.into_inner());
    sh.valid.clear();
}

/// [`dirty`] for an optional view.
fn odirty(v: &Option<View<CudaBuf>>) {
    if let Some(v) = v {
        dirty(v);
    }
}

/// Growable device scratch for host-side inputs (token ids, weights) and reductions.
struct Scratch {
    ids: (u64, usize),
    ids2: (u64, usize),
    wts: (u64, usize),
    /// bf16 operand scratch for [`Bf16Gemm::Bf16`] (A, B).
    bf: [(u64, usize); 2],
    red: u64,
}

/// cuBLASLt for the fused bias epilogue ([`Backend::matmul_bias`] in bf16 precision): handle,
/// workspace, and the heuristic's algorithm per problem (`None`: no algorithm, use the fallback).
struct LtState {
    handle: lt_sys::cublasLtHandle_t,
    ws: u64,
    ws_size: usize,
    algos: HashMap<LtKey, Option<lt_sys::cublasLtMatmulAlgo_t>>,
}
// SAFETY: the handle is only used under the backend's mutex.
unsafe impl Send for LtState {}
unsafe impl Sync for LtState {}

/// (m, n, k, trans_a, trans_b, beta != 0, [`LtEpi::code`], alignment of a, b, c, d in bytes).
type LtKey = (usize, usize, usize, bool, bool, bool, u8, [u32; 4]);

/// What one cuBLASLt call fuses after the product (device pointers; 0: absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LtEpi {
    /// f32 C/D, `+ bias` (f32, per column of our row-major output) when non-zero.
    Bias(u64),
    /// bf16 C/D `= gelu_tanh(acc + bias)` and bf16 `aux = acc + bias` (`[m, n]` row-major, ld
    /// `n`), `bias` bf16 (`GELU_AUX_BIAS`; `GELU_AUX` without one).
    GeluAux { bias: u64, aux: u64 },
    /// bf16 C/D `= acc * gelu_tanh'(aux)` (`DGELU`), aux as written by [`LtEpi::GeluAux`];
    /// with `bgrad`, also `bgrad[j] = Σ_rows D[., j]` (`DGELU_BGRAD`), f32 if `bgrad_f32` else
    /// bf16 (cuBLASLt's default: D's type).
    DGelu {
        aux: u64,
        bgrad: u64,
        bgrad_f32: bool,
    },
}

impl LtEpi {
    fn code(self) -> u8 {
        match self {
            LtEpi::Bias(b) => (b != 0) as u8,
            LtEpi::GeluAux { bias, .. } => 2 + (bias != 0) as u8,
            LtEpi::DGelu { bgrad: 0, .. } => 4,
            LtEpi::DGelu { bgrad_f32, .. } => 5 + bgrad_f32 as u8,
        }
    }
    /// D (and C) are bf16.
    fn bf16_out(self) -> bool {
        !matches!(self, LtEpi::Bias(_))
    }
    /// Pointers cuBLASLt reads or writes besides A, B, C, D (16-byte alignment required here).
    fn extra_ptrs(self) -> [u64; 2] {
        match self {
            LtEpi::Bias(b) => [b, 0],
            LtEpi::GeluAux { bias, aux } => [bias, aux],
            LtEpi::DGelu { aux, bgrad, .. } => [aux, bgrad],
        }
    }
}

/// The cuBLASLt objects of one call, destroyed on drop.
struct LtObjs {
    desc: lt_sys::cublasLtMatmulDesc_t,
    layouts: [lt_sys::cublasLtMatrixLayout_t; 3],
    pref: lt_sys::cublasLtMatmulPreference_t,
}

impl Drop for LtObjs {
    fn drop(&mut self) {
        // SAFETY: each non-null handle was created by cuBLASLt and is destroyed once, here.
        unsafe {
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
            for l in self.layouts {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            if !self.pref.is_null() {
                let _ = lt::destroy_matmul_pref(self.pref);
            }
        }
    }
}

/// cuBLASLt's column-major (rows, cols, ld) for its A (our `b`, transposed iff `d.trans_b`), B
/// (our `a`, transposed iff `d.trans_a`) and C/D (our row-major `c` seen as `n × m`): row-major
/// `C = op(A) op(B)` is column-major `Cᵀ = op(B)ᵀ op(A)ᵀ`.
fn lt_layouts(d: MatDims) -> [(u64, u64, u64); 3] {
    let (m, n, k) = (d.n as u64, d.m as u64, d.k as u64);
    let la = if d.trans_b { (k, m, k) } else { (m, k, m) };
    let lb = if d.trans_a { (n, k, n) } else { (k, n, k) };
    [la, lb, (m, n, m)]
}

/// Leading dimension of a GELU epilogue's aux matrix: it has D's column-major shape (our `n`
/// rows per column, one column per row of our row-major output), packed like D.
fn lt_aux_ld(d: MatDims) -> u64 {
    lt_layouts(d)[2].2
}

/// Largest power of two (≤ 256) dividing a device address: what cuBLASLt may assume.
fn align_of_ptr(p: u64) -> u32 {
    1u32 << p.trailing_zeros().min(8)
}

struct BlasHandle(blas_sys::cublasHandle_t);
// SAFETY: the handle is only used under the backend's mutex.
unsafe impl Send for BlasHandle {}
unsafe impl Sync for BlasHandle {}

/// The CUDA backend on one device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<String, CudaFunction>,
    /// Attention kernels per head dim, compiled on first use.
    attn: Mutex<HashMap<usize, HashMap<String, CudaFunction>>>,
    cc: (i32, i32),
    blas: Mutex<BlasHandle>,
    pool: Arc<Pool>,
    scratch: Mutex<Scratch>,
    precision: Precision,
    /// How bf16 matmuls get their operands ([`Bf16Gemm`] code).
    bf16_gemm: std::sync::atomic::AtomicU8,
    /// Producers of matmul inputs also write their bf16 shadow (`KILN_CUDA_FUSED_BF16=0` off).
    fused_bf16: std::sync::atomic::AtomicBool,
    /// Fuse `matmul_bias` with the cuBLASLt bias epilogue (bf16 operands only; `KILN_CUDA_LT=0`).
    lt_on: std::sync::atomic::AtomicBool,
    /// cuBLASLt, created on first use (`Some(None)`: unavailable).
    lt: Mutex<Option<Option<LtState>>>,
    /// Calls that asked for cuBLASLt and fell back to cuBLAS + separate kernels.
    lt_fallbacks: std::sync::atomic::AtomicU64,
    /// GELU-tanh fused into the fc matmul (cuBLASLt `GELU_AUX_BIAS`, bf16 results;
    /// `KILN_CUDA_LT_GELU=0` off) and its backward into the proj dX matmul (`DGELU_BGRAD`;
    /// `KILN_CUDA_LT_DGELU=0` off). Both need the cuBLASLt path ([`Self::matmul_bias_path`]).
    lt_gelu: std::sync::atomic::AtomicBool,
    lt_dgelu: std::sync::atomic::AtomicBool,
    /// One `k_adamw_groups` launch per run of AdamW groups (`KILN_CUDA_ADAMW_MULTI=0`: one
    /// `k_adamw` per group).
    adamw_multi: std::sync::atomic::AtomicBool,
    /// The LM head writes bf16-only logits and cross-entropy reads them and writes bf16-only
    /// dlogits ([`Backend::matmul_logits`]; cached bf16 operands only; `KILN_CUDA_BF16_LOGITS=0`
    /// off: f32 logits and dlogits).
    bf16_logits: std::sync::atomic::AtomicBool,
    /// Shared with every buffer: writes stale f32 regions back from their bf16 shadow.
    mat: Arc<Materializer>,
    sms: u32,
    device_name: String,
    /// Per-op timing (each op synchronizes when on): name → (seconds, calls).
    profiling: std::sync::atomic::AtomicBool,
    /// Requested training-attention kernels ([`AttnKernel`] code).
    attn_mode: std::sync::atomic::AtomicU8,
    /// Per head dim: did the tc kernels pass their first-use self-test against v2?
    tc_ok: Mutex<HashMap<usize, bool>>,
    /// Per head dim: did the tc2 kernels pass theirs (false also when the shared-memory opt-in failed)?
    tc2_ok: Mutex<HashMap<usize, bool>>,
    /// Scratch address → q/k/v address of the tc2 forward that last wrote that scratch's bf16
    /// q/k/v copy (any other forward into the scratch removes it; the backward then converts).
    tc2_fresh: Mutex<HashMap<u64, u64>>,
    profile: Mutex<HashMap<&'static str, (f64, u64)>>,
}

/// Times one op when profiling is on (synchronizes on drop).
struct OpGuard<'a> {
    be: &'a CudaBackend,
    name: &'static str,
    t0: Option<std::time::Instant>,
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        if let Some(t0) = self.t0 {
            self.be.synchronize();
            let mut p = self.be.profile.lock().unwrap_or_else(|e| e.into_inner());
            let e = p.entry(self.name).or_insert((0.0, 0));
            e.0 += t0.elapsed().as_secs_f64();
            e.1 += 1;
        }
    }
}

fn ptr(v: &View<CudaBuf>) -> u64 {
    assert!(
        v.off + v.len <= v.buf.len,
        "cuda view {}+{} out of buffer {}",
        v.off,
        v.len,
        v.buf.len
    );
    if v.buf.has_stale.load(std::sync::atomic::Ordering::Acquire) {
        materialize(v.buf, v.off, v.len, false);
    }
    v.buf.ptr + (v.off * 4) as u64
}

/// Write back (bf16 → f32) every stale region of `buf` overlapping `[off, off + len)`
/// (`partial_only`: only those not contained in it) and forget them.
fn materialize(buf: &CudaBuf, off: usize, len: usize, partial_only: bool) {
    let mut sh = buf.shadow.lock().unwrap_or_else(|e| e.into_inner());
    for (o, l) in take_stale(&mut sh.stale, off, len, partial_only) {
        let (dst, src) = (buf.ptr + 4 * o as u64, sh.ptr + 2 * o as u64);
        let f = &buf.mat.from_bf16;
        let mut b = buf.mat.stream.launch_builder(f);
        let n = l as i64;
        b.arg(&dst);
        b.arg(&src);
        b.arg(&n);
        let blocks = l.div_ceil(256).clamp(1, 65535) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: k_from_bf16(float*, const unsigned short*, i64); both regions lie inside
        // their allocations (the shadow holds buf.len bf16s).
        unsafe { b.launch(cfg) }.unwrap_or_else(|e| panic!("cuda: launch k_from_bf16: {e:?}"));
    }
    buf.has_stale
        .store(!sh.stale.is_empty(), std::sync::atomic::Ordering::Release);
}

/// Remove from `stale` and return the regions overlapping `[off, off + len)` (`partial_only`:
/// only those not contained in it).
fn take_stale(
    stale: &mut Vec<(usize, usize)>,
    off: usize,
    len: usize,
    partial_only: bool,
) -> Vec<(usize, usize)> {
    let end = off + len;
    let (mut take, mut keep) = (Vec::new(), Vec::new());
    for (o, l) in stale.drain(..) {
        let overlaps = o < end && off < o + l;
        let contained = off <= o && o + l <= end;
        if overlaps && !(partial_only && contained) {
            take.push((o, l));
        } else {
            keep.push((o, l));
        }
    }
    *stale = keep;
    take
}

/// Is `[off, off + n)` inside one stale region (a bf16-only result whose shadow is current)?
fn stale_holds(stale: &[(usize, usize)], off: usize, n: usize) -> bool {
    stale.iter().any(|&(o, l)| o <= off && off + n <= o + l)
}

/// `[off, off + n)` now holds a bf16-only result: regions it contains are superseded.
fn push_stale(stale: &mut Vec<(usize, usize)>, off: usize, n: usize) {
    stale.retain(|&(o, l)| !(off <= o && o + l <= off + n));
    stale.push((off, n));
}

fn optr(v: &Option<View<CudaBuf>>) -> u64 {
    v.as_ref().map_or(0, ptr)
}

/// A kernel argument as an 8-byte slot: the kernel reads its parameter's size from the slot's
/// start (little-endian), so i32/f32 live in the low 4 bytes.
trait KArg {
    fn slot(self) -> u64;
}
impl KArg for u64 {
    fn slot(self) -> u64 {
        self
    }
}
impl KArg for i64 {
    fn slot(self) -> u64 {
        self as u64
    }
}
impl KArg for i32 {
    fn slot(self) -> u64 {
        self as u32 as u64
    }
}
impl KArg for f32 {
    fn slot(self) -> u64 {
        self.to_bits() as u64
    }
}

/// Launch `$name` with grid/block/smem and the listed args (u64 pointers, i64, i32, f32).
macro_rules! launch {
    ($s:expr, $name:expr, $grid:expr, $block:expr, $smem:expr; $($arg:expr),* $(,)?) => {{
        let f = $s.func($name);
        let slots = [$(KArg::slot($arg)),*];
        let mut b = $s.stream.launch_builder(&f);
        for a in slots.iter() {
            b.arg(a);
        }
        let cfg = LaunchConfig { grid_dim: $grid, block_dim: $block, shared_mem_bytes: $smem };
        // SAFETY: argument types match the kernel signatures in kernels.cu; pointers come from
        // bounds-checked views.
        unsafe { b.launch(cfg) }.unwrap_or_else(|e| panic!("cuda: launch {}: {e:?}", $name));
    }};
}

impl CudaBackend {
    /// Open device `ordinal`, compile the kernels, create the cuBLAS handle.
    pub fn new(ordinal: usize, precision: Precision) -> Result<Self, EngineError> {
        // SAFETY: these only try to open the shared libraries.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(EngineError::Backend(
                "cuda: libcuda not found (no NVIDIA driver on this machine, or set LD_LIBRARY_PATH)".into(),
            ));
        }
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(EngineError::Backend(
                "cuda: libcublas not found (add the CUDA toolkit's lib64 to LD_LIBRARY_PATH)"
                    .into(),
            ));
        }
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| EngineError::Backend("cuda: could not load libcuda (is an NVIDIA driver installed? set LD_LIBRARY_PATH)".into()))?
            .map_err(|e| derr("open device", e))?;
        let stream = ctx.new_stream().map_err(|e| derr("new stream", e))?;
        let (maj, min) = ctx
            .compute_capability()
            .map_err(|e| derr("compute capability", e))?;
        let names: Vec<String> = BASE_KERNELS.iter().map(|s| s.to_string()).collect();
        let funcs = load_module(&ctx, BASE_SOURCE, (maj, min), &names)?;
        let handle = std::panic::catch_unwind(blas::create_handle)
            .map_err(|_| EngineError::Backend("cuda: could not load libcublas (add the CUDA toolkit's lib64 to LD_LIBRARY_PATH)".into()))?
            .map_err(|e| derr("cublasCreate", e))?;
        // SAFETY: valid handle and stream of this context.
        unsafe { blas::set_stream(handle, stream.cu_stream() as _) }
            .map_err(|e| derr("cublasSetStream", e))?;
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(|e| derr("SM count", e))? as u32;
        let device_name = ctx.name().unwrap_or_else(|_| "cuda device".into());
        let pool = Arc::new(Pool {
            ctx: ctx.clone(),
            free: Mutex::new(HashMap::new()),
            stats: Mutex::new((0, 0)),
        });
        ctx.bind_to_thread().map_err(|e| derr("bind", e))?;
        // SAFETY: plain allocation, freed in Drop.
        let red = unsafe { drv::malloc_sync(8) }.map_err(|e| derr("cuMemAlloc", e))?;
        let mat = Arc::new(Materializer {
            stream: stream.clone(),
            from_bf16: funcs
                .get("k_from_bf16")
                .cloned()
                .ok_or_else(|| EngineError::Backend("cuda: k_from_bf16 missing".into()))?,
        });
        Ok(CudaBackend {
            ctx,
            stream,
            funcs,
            attn: Mutex::new(HashMap::new()),
            cc: (maj, min),
            blas: Mutex::new(BlasHandle(handle)),
            pool,
            scratch: Mutex::new(Scratch {
                ids: (0, 0),
                ids2: (0, 0),
                wts: (0, 0),
                bf: [(0, 0); 2],
                red,
            }),
            precision,
            bf16_gemm: std::sync::atomic::AtomicU8::new(Bf16Gemm::from_env().code()),
            fused_bf16: std::sync::atomic::AtomicBool::new(
                std::env::var("KILN_CUDA_FUSED_BF16").map_or(true, |v| v != "0"),
            ),
            lt_on: std::sync::atomic::AtomicBool::new(
                std::env::var("KILN_CUDA_LT").map_or(true, |v| v != "0"),
            ),
            lt: Mutex::new(None),
            lt_fallbacks: std::sync::atomic::AtomicU64::new(0),
            lt_gelu: std::sync::atomic::AtomicBool::new(
                std::env::var("KILN_CUDA_LT_GELU").map_or(true, |v| v != "0"),
            ),
            lt_dgelu: std::sync::atomic::AtomicBool::new(
                std::env::var("KILN_CUDA_LT_DGELU").map_or(true, |v| v != "0"),
            ),
            adamw_multi: std::sync::atomic::AtomicBool::new(
                std::env::var("KILN_CUDA_ADAMW_MULTI").map_or(true, |v| v != "0"),
            ),
            bf16_logits: std::sync::atomic::AtomicBool::new(
                std::env::var("KILN_CUDA_BF16_LOGITS").map_or(true, |v| v != "0"),
            ),
            mat,
            sms,
            device_name,
            profiling: std::sync::atomic::AtomicBool::new(false),
            attn_mode: std::sync::atomic::AtomicU8::new(
                match std::env::var("KILN_CUDA_ATTN") {
                    Ok(v) => v.parse::<AttnKernel>()?,
                    Err(_) if precision == Precision::Bf16 => AttnKernel::Tc2,
                    Err(_) => AttnKernel::V2,
                }
                .code(),
            ),
            tc_ok: Mutex::new(HashMap::new()),
            tc2_ok: Mutex::new(HashMap::new()),
            tc2_fresh: Mutex::new(HashMap::new()),
            profile: Mutex::new(HashMap::new()),
        })
    }

    /// Device 0 with the precision named by `KILN_CUDA_PRECISION` (default bf16).
    pub fn from_env() -> Result<Self, EngineError> {
        let p = std::env::var("KILN_CUDA_PRECISION")
            .unwrap_or_else(|_| "bf16".into())
            .parse()?;
        Self::new(0, p)
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Bytes currently held by this backend's buffers (pool included) and the peak so far.
    pub fn memory_bytes(&self) -> (usize, usize) {
        *self.pool.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Device memory (free, total) as the driver reports it.
    pub fn device_memory(&self) -> (usize, usize) {
        self.ctx.mem_get_info().unwrap_or((0, 0))
    }

    fn func(&self, name: &str) -> CudaFunction {
        if let Some(f) = self.funcs.get(name) {
            return f.clone();
        }
        let hd: usize = name
            .rsplit('_')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let key = if name == "k_attn_bwd_d" { 0 } else { hd };
        let attn = self.attn.lock().unwrap_or_else(|e| e.into_inner());
        let found = if key == 0 {
            attn.values().next()
        } else {
            attn.get(&key)
        };
        found
            .and_then(|m| m.get(name))
            .cloned()
            .unwrap_or_else(|| panic!("cuda: kernel {name} not loaded"))
    }

    /// Compile and load the attention kernels for head dim `hd` once.
    fn ensure_attention(&self, hd: usize) {
        assert!(
            ATTN_HEAD_DIMS.contains(&hd),
            "cuda attention: head dim {hd} has no kernel (supported: {ATTN_HEAD_DIMS:?})"
        );
        let mut attn = self.attn.lock().unwrap_or_else(|e| e.into_inner());
        if attn.contains_key(&hd) {
            return;
        }
        let t0 = std::time::Instant::now();
        let m = load_module(
            &self.ctx,
            &attention_source(hd),
            self.cc,
            &attention_kernels(hd),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        tracing::debug!(
            "cuda: attention kernels for head dim {hd} compiled in {:.1?}",
            t0.elapsed()
        );
        if TC_HEAD_DIMS.contains(&hd) {
            // tc2 uses up to 56 KiB of dynamic shared memory: above 48 KiB needs the opt-in.
            let mut opt_in = Ok(());
            for k in ["fwd", "bwd_dq", "bwd_dkv"] {
                if let Some(f) = m.get(&format!("k_attn_tc2_{k}_{hd}")) {
                    opt_in = opt_in.and(f.set_attribute(
                        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        tc2_smem_bytes(k, hd) as i32,
                    ));
                }
            }
            if let Err(e) = opt_in {
                tracing::warn!("cuda: tc2 attention (head dim {hd}): shared-memory opt-in refused ({e:?}); using tc");
                self.tc2_ok
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(hd, false);
            }
        }
        attn.insert(hd, m);
    }

    /// Use attention kernels v2 or v1 (kept for callers of the two-kernel era).
    pub fn set_attention_v2(&self, on: bool) {
        self.set_attention(if on { AttnKernel::V2 } else { AttnKernel::V1 });
    }

    /// Request the training-attention kernels (default: tc in bf16 mode, else v2;
    /// `KILN_CUDA_ATTN=v1|v2|tc` at start).
    pub fn set_attention(&self, k: AttnKernel) {
        self.attn_mode
            .store(k.code(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The requested training-attention kernels.
    pub fn attention(&self) -> AttnKernel {
        AttnKernel::from_code(self.attn_mode.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The kernels that will run for head dim `hd` (tc falls back to v2 for head dims without a tc
    /// instantiation, before sm_80, and after a failed self-test; this compiles and self-tests).
    pub fn attention_for(&self, hd: usize) -> AttnKernel {
        let k = self.attention();
        if k != AttnKernel::Tc && k != AttnKernel::Tc2 {
            return k;
        }
        if self.cc.0 < 8 || !TC_HEAD_DIMS.contains(&hd) {
            return AttnKernel::V2;
        }
        self.ensure_attention(hd);
        if k == AttnKernel::Tc2 && self.tc_self_test(hd, AttnKernel::Tc2) {
            AttnKernel::Tc2
        } else if self.tc_self_test(hd, AttnKernel::Tc) {
            AttnKernel::Tc
        } else {
            AttnKernel::V2
        }
    }

    /// The kernels for this call: [`Self::attention_for`], and v2 instead of tc when a pointer is
    /// not 16-byte aligned (the tc kernels use float4 loads and float2 stores).
    /// tc2 also needs the scratch to hold its bf16 copies ([`Backend::attention_scratch_len`] in
    /// bf16 precision or when tc2 was requested) at a 16-byte-aligned address; else tc.
    fn attn_pick(&self, d: AttnDims, ptrs: &[u64], scratch: &View<CudaBuf>) -> AttnKernel {
        let unaligned = ptrs.iter().any(|p| p % 16 != 0);
        match self.attention_for(d.head_dim) {
            AttnKernel::Tc | AttnKernel::Tc2 if unaligned => AttnKernel::V2,
            AttnKernel::Tc2
                if scratch.len < tc2_layout(d).2 || !ptr(scratch).is_multiple_of(16) =>
            {
                AttnKernel::Tc
            }
            k => k,
        }
    }

    /// One-time check of the tc kernels for head dim `hd` against v2 on a small GQA shape with a
    /// partial tile (forward output and every gradient, relative max-norm ≤ 5e-2). On failure tc
    /// is disabled for `hd` with a warning: a fragment-layout bug then costs speed, not a run.
    fn tc_self_test(&self, hd: usize, k: AttnKernel) -> bool {
        let table = if k == AttnKernel::Tc2 {
            &self.tc2_ok
        } else {
            &self.tc_ok
        };
        if let Some(&ok) = table.lock().unwrap_or_else(|e| e.into_inner()).get(&hd) {
            return ok;
        }
        let d = AttnDims {
            b: 1,
            t: 80,
            n_head: 2,
            n_kv: 1,
            head_dim: hd,
        };
        let (fwd_err, bwd_err) = self
            .tc_compare_with(d, k)
            .unwrap_or((f64::INFINITY, f64::INFINITY));
        let ok = fwd_err <= 5e-2 && bwd_err <= 5e-2;
        let name = k.name();
        if ok {
            tracing::debug!(
                "cuda: {name} attention hd {hd} self-test: fwd {fwd_err:.2e}, bwd {bwd_err:.2e}"
            );
        } else {
            tracing::warn!(
                "cuda: tensor-core attention {name} (head dim {hd}) disagrees with v2 (fwd rel {fwd_err:.2e}, bwd rel {bwd_err:.2e}); not using it"
            );
        }
        table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hd, ok);
        ok
    }

    /// Run v2 and tc forward + backward on the same random inputs; (fwd, bwd) relative max-norm
    /// (bwd over the whole packed dqkv).
    pub fn tc_compare(&self, d: AttnDims) -> Result<(f64, f64), EngineError> {
        self.tc_compare_with(d, AttnKernel::Tc)
    }

    /// [`Self::tc_compare`] for kernels `k` (tc or tc2) against v2.
    pub fn tc_compare_with(&self, d: AttnDims, k: AttnKernel) -> Result<(f64, f64), EngineError> {
        if self.cc.0 < 8 || !TC_HEAD_DIMS.contains(&d.head_dim) {
            return Err(EngineError::Backend(format!(
                "cuda: no tensor-core attention for head dim {} on sm_{}{}",
                d.head_dim, self.cc.0, self.cc.1
            )));
        }
        self.ensure_attention(d.head_dim);
        let n_qkv = d.b * d.t * d.qkv_width();
        let n_out = d.b * d.t * d.out_width();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect()
        };
        let qkv = self.alloc(n_qkv)?;
        let dout = self.alloc(n_out)?;
        self.write(View::new(&qkv, 0, n_qkv), &rnd(n_qkv));
        self.write(View::new(&dout, 0, n_out), &rnd(n_out));
        let sc_len = self.attention_scratch_len(d).max(tc2_layout(d).2);
        let mut res = vec![];
        for k in [AttnKernel::V2, k] {
            let out = self.alloc(n_out)?;
            let sc = self.alloc(sc_len)?;
            let dqkv = self.alloc(n_qkv)?;
            let (ov, scv, dv) = (
                View::new(&out, 0, n_out),
                View::new(&sc, 0, sc_len),
                View::new(&dqkv, 0, n_qkv),
            );
            self.attn_fwd_with(k, ov, scv, View::new(&qkv, 0, n_qkv), d);
            self.attn_bwd_with(
                k,
                dv,
                View::new(&dout, 0, n_out),
                View::new(&qkv, 0, n_qkv),
                scv,
                d,
            );
            let mut ho = vec![0f32; n_out];
            let mut hg = vec![0f32; n_qkv];
            self.read(ov, &mut ho);
            self.read(dv, &mut hg);
            res.push((ho, hg));
        }
        let rel = |got: &[f32], want: &[f32]| -> f64 {
            let (mut num, mut den) = (0f64, 0f64);
            for (&g, &w) in got.iter().zip(want) {
                let e = (g as f64 - w as f64).abs();
                num = if e.is_finite() {
                    num.max(e)
                } else {
                    f64::INFINITY
                };
                den = den.max((w as f64).abs());
            }
            num / den.max(1e-30)
        };
        Ok((rel(&res[1].0, &res[0].0), rel(&res[1].1, &res[0].1)))
    }

    /// [`Backend::attention_forward`] with kernels `k` (compiled already).
    fn attn_fwd_with(
        &self,
        k: AttnKernel,
        out: View<CudaBuf>,
        scratch: View<CudaBuf>,
        qkv: View<CudaBuf>,
        d: AttnDims,
    ) {
        let hd = d.head_dim;
        assert!(
            scratch.len >= self.attention_scratch_len(d) && qkv.len >= d.b * d.t * d.qkv_width()
        );
        let bh = d.b * d.n_head * d.t;
        let lse = scratch.sub(0, bh);
        let ocopy = scratch.sub(2 * bh, d.b * d.t * d.out_width());
        let scale = 1.0 / (hd as f32).sqrt();
        let args = |s: &Self, name: &str, grid, nt| {
            launch!(s, name, grid, (nt, 1, 1), 0;
                ptr(&out), ptr(&lse), ptr(&qkv), d.t as i32, d.n_head as i32, d.n_kv as i32, scale);
        };
        let grid = (d.t.div_ceil(64) as u32, d.n_head as u32, d.b as u32);
        match k {
            AttnKernel::V1 => args(self, &format!("k_attn_fwd_{hd}"), grid, 64),
            AttnKernel::V2 => args(self, &format!("k_attn2_fwd_{hd}"), grid, 128),
            AttnKernel::Tc => {
                let g = (d.n_head as u32, d.b as u32, d.t.div_ceil(64) as u32);
                args(self, &format!("k_attn_tc_fwd_{hd}"), g, 128)
            }
            AttnKernel::Tc2 => {
                let (q16, _, _) = tc2_layout(d);
                let nq = d.b * d.t * d.qkv_width();
                self.tc2_cvt(scratch.sub(q16, nq / 2), qkv.sub(0, nq));
                let q16 = ptr(&scratch.sub(q16, nq / 2));
                let g = (d.n_head as u32, d.b as u32, d.t.div_ceil(64) as u32);
                let smem = tc2_smem_bytes("fwd", hd) as u32;
                launch!(self, &format!("k_attn_tc2_fwd_{hd}"), g, (128, 1, 1), smem;
                    ptr(&out), ptr(&lse), q16, d.t as i32, d.n_head as i32, d.n_kv as i32, scale);
            }
        }
        {
            let mut fresh = self.tc2_fresh.lock().unwrap_or_else(|e| e.into_inner());
            if k == AttnKernel::Tc2 {
                fresh.insert(ptr(&scratch), ptr(&qkv));
            } else {
                fresh.remove(&ptr(&scratch));
            }
        }
        self.copy(ocopy, out.sub(0, d.b * d.t * d.out_width()));
    }

    /// [`Backend::attention_backward`] with kernels `k` (compiled already).
    fn attn_bwd_with(
        &self,
        k: AttnKernel,
        dqkv: View<CudaBuf>,
        dout: View<CudaBuf>,
        qkv: View<CudaBuf>,
        scratch: View<CudaBuf>,
        d: AttnDims,
    ) {
        let hd = d.head_dim;
        assert!(
            scratch.len >= self.attention_scratch_len(d) && dqkv.len >= d.b * d.t * d.qkv_width()
        );
        let bh = d.b * d.n_head * d.t;
        let lse = scratch.sub(0, bh);
        let dd = scratch.sub(bh, bh);
        let ocopy = scratch.sub(2 * bh, d.b * d.t * d.out_width());
        let rows = d.b * d.t;
        let scale = 1.0 / (hd as f32).sqrt();
        launch!(self, "k_attn_bwd_d", ((rows * d.n_head * 32).div_ceil(256) as u32, 1, 1), (256, 1, 1), 0;
            ptr(&dd), ptr(&dout), ptr(&ocopy), rows as i32, d.t as i32, d.n_head as i32, hd as i32);
        let args = |s: &Self, name: &str, grid, nt| {
            launch!(s, name, grid, (nt, 1, 1), 0;
                ptr(&dqkv), ptr(&dout), ptr(&qkv), ptr(&lse), ptr(&dd), d.t as i32, d.n_head as i32,
                d.n_kv as i32, scale);
        };
        let tiles = |n: usize| d.t.div_ceil(n) as u32;
        let grid_q = (tiles(64), d.n_head as u32, d.b as u32);
        match k {
            AttnKernel::V1 => {
                args(self, &format!("k_attn_bwd_dq_{hd}"), grid_q, 64);
                // one thread per key (32 keys per block at hd 128)
                let keys = if hd >= 128 { 32 } else { 64 };
                let grid_kv = (tiles(keys), d.n_kv as u32, d.b as u32);
                args(self, &format!("k_attn_bwd_dkv_{hd}"), grid_kv, keys as u32);
            }
            AttnKernel::V2 => {
                args(self, &format!("k_attn2_bwd_dq_{hd}"), grid_q, 128);
                let grid_kv = (tiles(64), d.n_kv as u32, d.b as u32);
                args(self, &format!("k_attn2_bwd_dkv_{hd}"), grid_kv, 128);
            }
            AttnKernel::Tc => {
                let g = (d.n_head as u32, d.b as u32, tiles(64));
                args(self, &format!("k_attn_tc_bwd_dq_{hd}"), g, 128);
                let g = (d.n_kv as u32, d.b as u32, tiles(64));
                args(self, &format!("k_attn_tc_bwd_dkv_{hd}"), g, 128);
            }
            AttnKernel::Tc2 => {
                let (q16, o16, _) = tc2_layout(d);
                let (nq, no) = (d.b * d.t * d.qkv_width(), d.b * d.t * d.out_width());
                let fresh = self
                    .tc2_fresh
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&ptr(&scratch))
                    == Some(&ptr(&qkv));
                if !fresh {
                    // the forward that wrote this scratch was not tc2 (or used other q/k/v)
                    self.tc2_cvt(scratch.sub(q16, nq / 2), qkv.sub(0, nq));
                }
                self.tc2_cvt(scratch.sub(o16, no / 2), dout.sub(0, no));
                let (q16, o16) = (
                    ptr(&scratch.sub(q16, nq / 2)),
                    ptr(&scratch.sub(o16, no / 2)),
                );
                let args2 = |name: &str, grid, smem: usize| {
                    launch!(self, name, grid, (128, 1, 1), smem as u32;
                        ptr(&dqkv), o16, q16, ptr(&lse), ptr(&dd), d.t as i32, d.n_head as i32,
                        d.n_kv as i32, scale);
                };
                let (sq, skv) = (tc2_smem_bytes("bwd_dq", hd), tc2_smem_bytes("bwd_dkv", hd));
                let g = (d.n_head as u32, d.b as u32, tiles(64));
                args2(&format!("k_attn_tc2_bwd_dq_{hd}"), g, sq);
                let g = (d.n_kv as u32, d.b as u32, tiles(64));
                args2(&format!("k_attn_tc2_bwd_dkv_{hd}"), g, skv);
            }
        }
    }

    /// bf16 copy of `src` (f32, length a multiple of 8) into `dst` (f32 slots holding 2 bf16 each);
    /// both 16-byte aligned (checked by [`Self::attn_pick`] and the layout).
    fn tc2_cvt(&self, dst: View<CudaBuf>, src: View<CudaBuf>) {
        assert!(src.len.is_multiple_of(8) && dst.len * 2 >= src.len);
        let n8 = (src.len / 8) as i64;
        let blocks = (src.len / 8).div_ceil(256).clamp(1, self.sms as usize * 8) as u32;
        launch!(self, TC2_CVT, (blocks, 1, 1), (256, 1, 1), 0; ptr(&dst), ptr(&src), n8);
    }

    /// Turn per-op timing on or off (on: every op synchronizes, so only for diagnosis).
    pub fn set_profiling(&self, on: bool) {
        self.synchronize();
        self.profiling
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The per-op times collected so far (op, milliseconds, calls), largest first; clears them.
    pub fn take_profile(&self) -> Vec<(String, f64, u64)> {
        let mut p = self.profile.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = p
            .drain()
            .map(|(k, (s, n))| (k.to_string(), s * 1e3, n))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// Bind the context to this thread and start timing op `name` if profiling.
    fn op(&self, name: &'static str) -> OpGuard<'_> {
        self.bind();
        let on = self.profiling.load(std::sync::atomic::Ordering::Relaxed);
        if on {
            self.synchronize();
        }
        OpGuard {
            be: self,
            name,
            t0: on.then(std::time::Instant::now),
        }
    }

    fn bind(&self) {
        self.ctx
            .bind_to_thread()
            .unwrap_or_else(|e| panic!("cuda: bind context: {e:?}"));
    }

    /// Grid for a grid-stride elementwise kernel over `n` items with 256 threads.
    fn grid1(&self, n: usize) -> (u32, u32, u32) {
        let blocks = n.div_ceil(256).clamp(1, (self.sms as usize) * 32);
        (blocks as u32, 1, 1)
    }

    /// Copy host `u32`s into a growable device scratch slot; returns its pointer.
    fn upload_u32(&self, slot: fn(&mut Scratch) -> &mut (u64, usize), data: &[u32]) -> u64 {
        self.upload_bytes(slot, data.as_ptr() as *const u8, data.len() * 4)
    }

    fn upload_bytes(
        &self,
        slot: fn(&mut Scratch) -> &mut (u64, usize),
        src: *const u8,
        bytes: usize,
    ) -> u64 {
        let mut sc = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = slot(&mut sc);
        if s.1 < bytes {
            self.synchronize();
            // SAFETY: the old pointer (if any) is idle after the synchronize.
            unsafe {
                if s.0 != 0 {
                    drv::free_sync(s.0).unwrap_or_else(|e| panic!("cuda: free: {e:?}"));
                }
                s.0 = drv::malloc_sync(bytes.max(256))
                    .unwrap_or_else(|e| panic!("cuda: scratch alloc: {e:?}"));
            }
            s.1 = bytes.max(256);
        }
        if bytes > 0 {
            // SAFETY: `src` is valid for `bytes` (a live host slice); pageable copies are staged
            // before the call returns, so the host slice may be reused afterwards.
            unsafe {
                let host = std::slice::from_raw_parts(src, bytes);
                drv::memcpy_htod_async(s.0, host, self.stream.cu_stream())
                    .unwrap_or_else(|e| panic!("cuda: upload: {e:?}"));
            }
        }
        s.0
    }

    /// `n` bf16s of view `v` (from its start) for a bf16 GEMM operand; returns their device
    /// pointer. `cached`: from `v`'s buffer shadow, converting only when that region is not current
    /// (falls back to scratch if the shadow cannot be allocated); else converted into scratch
    /// slot `slot` (0: A, 1: B) on every call.
    fn bf16_operand(&self, v: &View<CudaBuf>, n: usize, slot: usize, cached: bool) -> u64 {
        assert!(n <= v.len, "bf16 operand {n} > view {}", v.len);
        if cached {
            if let Some(p) = self.cached_bf16(v, n) {
                return p;
            }
            return self.bf16_operand(v, n, slot, false);
        }
        let src = ptr(v);
        let bytes = 2 * n;
        let mut sc = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut sc.bf[slot];
        if s.1 < bytes {
            self.synchronize();
            // SAFETY: the old pointer (if any) is idle after the synchronize.
            unsafe {
                if s.0 != 0 {
                    drv::free_sync(s.0).unwrap_or_else(|e| panic!("cuda: free: {e:?}"));
                }
                s.0 = drv::malloc_sync(bytes.max(256))
                    .unwrap_or_else(|e| panic!("cuda: bf16 scratch alloc: {e:?}"));
            }
            s.1 = bytes.max(256);
        }
        self.to_bf16(s.0, src, n);
        s.0
    }

    /// The first `n` floats of `v` in bf16 from `v`'s buffer shadow, converted only when that
    /// region is not current; None (with a warning) when the shadow cannot be allocated.
    fn cached_bf16(&self, v: &View<CudaBuf>, n: usize) -> Option<u64> {
        assert!(n <= v.len, "bf16 operand {n} > view {}", v.len);
        let end = v.off + n;
        {
            let sh = v.buf.shadow.lock().unwrap_or_else(|e| e.into_inner());
            if sh.ptr != 0 && sh.valid.iter().any(|&(o, l)| o <= v.off && end <= o + l) {
                return Some(sh.ptr + 2 * v.off as u64);
            }
        }
        // not current: the f32 copy is (after `ptr` writes back any stale part of it)
        let src = ptr(v);
        let mut sh = v.buf.shadow.lock().unwrap_or_else(|e| e.into_inner());
        if sh.ptr == 0 {
            match self.pool.get(v.buf.len.div_ceil(2)) {
                Ok(p) => sh.ptr = p,
                Err(e) => {
                    tracing::warn!(
                        "cuda: no memory for a bf16 operand copy ({e}); converting per call"
                    );
                    return None;
                }
            }
        }
        let dst = sh.ptr + 2 * v.off as u64;
        self.to_bf16(dst, src, n);
        if sh.valid.len() >= SHADOW_REGIONS {
            sh.valid.clear();
        }
        sh.valid.push((v.off, n));
        Some(dst)
    }

    /// Shadow address for a bf16 result that will replace the first `n` floats of `v` (a
    /// cuBLASLt GELU epilogue's D or aux), or None (no shadow memory, or not in cached bf16
    /// mode). Stale regions only partly inside the target are written back first; nothing else
    /// changes until [`Self::commit_bf16_result`].
    fn bf16_result_slot(&self, v: &View<CudaBuf>, n: usize) -> Option<u64> {
        assert!(n <= v.len && v.off + v.len <= v.buf.len);
        if self.bf16_gemm() != Bf16Gemm::Bf16Cached || n == 0 {
            return None;
        }
        if v.buf.has_stale.load(std::sync::atomic::Ordering::Acquire) {
            materialize(v.buf, v.off, n, true);
        }
        let mut sh = v.buf.shadow.lock().unwrap_or_else(|e| e.into_inner());
        if sh.ptr == 0 {
            sh.ptr = self.pool.get(v.buf.len.div_ceil(2)).ok()?;
        }
        Some(sh.ptr + 2 * v.off as u64)
    }

    /// After a bf16 result was enqueued into [`Self::bf16_result_slot`]'s address: the region's
    /// shadow is its current value (the only current copy: its f32 is stale until [`ptr`]).
    fn commit_bf16_result(&self, v: &View<CudaBuf>, n: usize) {
        let mut sh = v.buf.shadow.lock().unwrap_or_else(|e| e.into_inner());
        let off = v.off;
        sh.valid.clear();
        sh.valid.push((off, n));
        push_stale(&mut sh.stale, off, n);
        v.buf
            .has_stale
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Is the GELU-tanh forward epilogue requested (`KILN_CUDA_LT_GELU`, default on)?
    pub fn lt_gelu_enabled(&self) -> bool {
        self.lt_gelu.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Request (or stop) the cuBLASLt `GELU_AUX_BIAS` epilogue in [`Backend::matmul_bias_act`].
    pub fn set_lt_gelu(&self, on: bool) {
        self.lt_gelu.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Is the GELU-tanh backward epilogue requested (`KILN_CUDA_LT_DGELU`, default on)?
    pub fn lt_dgelu_enabled(&self) -> bool {
        self.lt_dgelu.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Request (or stop) the cuBLASLt `DGELU_BGRAD` epilogue in [`Backend::matmul_act_backward`].
    pub fn set_lt_dgelu(&self, on: bool) {
        self.lt_dgelu
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Is the one-launch AdamW over parameter groups on (`KILN_CUDA_ADAMW_MULTI`, default on)?
    pub fn adamw_multi(&self) -> bool {
        self.adamw_multi.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Switch [`Backend::adamw_groups`] between one launch and one launch per group.
    pub fn set_adamw_multi(&self, on: bool) {
        self.adamw_multi
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Are bf16-only logits requested (`KILN_CUDA_BF16_LOGITS`, default on)?
    pub fn bf16_logits_enabled(&self) -> bool {
        self.bf16_logits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Request (or stop) bf16-only logits in [`Backend::matmul_logits`] (takes effect on the
    /// next head matmul; cross-entropy follows what the logits buffer holds).
    pub fn set_bf16_logits(&self, on: bool) {
        self.bf16_logits
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Do head matmuls write bf16-only logits now (requested and cached bf16 operands)?
    pub fn bf16_logits(&self) -> bool {
        self.bf16_logits_enabled() && self.matmul_path() == MatmulPath::Bf16(Bf16Gemm::Bf16Cached)
    }

    /// The shadow address of `[v.off, v.off + n)` when that region is a bf16-only result (one
    /// stale region holds it: the shadow is its only current copy), else None.
    fn bf16_only(&self, v: &View<CudaBuf>, n: usize) -> Option<u64> {
        if n == 0 || !v.buf.has_stale.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let sh = v.buf.shadow.lock().unwrap_or_else(|e| e.into_inner());
        stale_holds(&sh.stale, v.off, n).then_some(sh.ptr + 2 * v.off as u64)
    }

    /// Can the GELU epilogues run now (cached bf16 operands, cuBLASLt on and available)?
    fn lt_gelu_possible(&self, act: Act) -> bool {
        act == Act::GeluTanh
            && self.bf16_gemm() == Bf16Gemm::Bf16Cached
            && self.matmul_bias_path() == "lt-bias"
    }

    /// For a kernel about to overwrite the first `n` floats of `v` (after [`dirty`]): in
    /// [`Bf16Gemm::Bf16Cached`] mode with fused shadow writes on (`KILN_CUDA_FUSED_BF16=0` turns
    /// them off), the bf16 shadow address of that region, which the kernel fills alongside its f32
    /// output, marked current; else 0 (the kernel writes only f32).
    fn shadow_out(&self, v: &View<CudaBuf>, n: usize) -> u64 {
        if n == 0
            || !self.fused_bf16.load(std::sync::atomic::Ordering::Relaxed)
            || self.matmul_path() != MatmulPath::Bf16(Bf16Gemm::Bf16Cached)
        {
            return 0;
        }
        assert!(n <= v.len);
        let mut sh = v.buf.shadow.lock().unwrap_or_else(|e| e.into_inner());
        if sh.ptr == 0 {
            match self.pool.get(v.buf.len.div_ceil(2)) {
                Ok(p) => sh.ptr = p,
                Err(_) => return 0,
            }
        }
        sh.valid.clear();
        sh.valid.push((v.off, n));
        sh.ptr + 2 * v.off as u64
    }

    /// Have elementwise/norm/loss kernels write bf16 shadows of their outputs (cached mode only).
    pub fn set_fused_bf16(&self, on: bool) {
        self.fused_bf16
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Are fused bf16 shadow writes on (and effective: cached bf16 operands)?
    pub fn fused_bf16(&self) -> bool {
        self.fused_bf16.load(std::sync::atomic::Ordering::Relaxed)
            && self.matmul_path() == MatmulPath::Bf16(Bf16Gemm::Bf16Cached)
    }

    /// Enqueue `dst[..n] = bf16(src[..n])` (device pointers; `dst` holds bf16s).
    fn to_bf16(&self, dst: u64, src: u64, n: usize) {
        if n == 0 {
            return;
        }
        let vec = (src.is_multiple_of(16) && dst.is_multiple_of(8)) as i32;
        launch!(self, "k_to_bf16", self.grid1(n.div_ceil(4)), (256, 1, 1), 0; dst, src, n as i64, vec);
    }

    /// What [`Backend::matmul`] runs now.
    pub fn matmul_path(&self) -> MatmulPath {
        match self.precision {
            Precision::F32 => MatmulPath::F32,
            Precision::Tf32 => MatmulPath::Tf32,
            Precision::Bf16 => MatmulPath::Bf16(self.bf16_gemm()),
        }
    }

    /// How bf16 matmuls get their operands (default from the environment, see [`Bf16Gemm`]).
    pub fn bf16_gemm(&self) -> Bf16Gemm {
        Bf16Gemm::from_code(self.bf16_gemm.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Switch the bf16 operand path (for comparisons; takes effect on the next matmul).
    pub fn set_bf16_gemm(&self, m: Bf16Gemm) {
        self.bf16_gemm
            .store(m.code(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Is the cuBLASLt bias epilogue requested (`KILN_CUDA_LT`, default on)?
    pub fn lt_enabled(&self) -> bool {
        self.lt_on.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Request (or stop) the cuBLASLt bias epilogue for [`Backend::matmul_bias`].
    pub fn set_lt(&self, on: bool) {
        self.lt_on.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// What [`Backend::matmul_bias`] runs now: `lt-bias` (one fused cuBLASLt call, unless cuBLASLt
    /// has no algorithm for a shape: then that shape falls back with a warning) or
    /// `matmul+add_bias` (also once cuBLASLt turned out to be unavailable).
    pub fn matmul_bias_path(&self) -> &'static str {
        match self.matmul_path() {
            MatmulPath::Bf16(m)
                if m != Bf16Gemm::F32Operands
                    && self.lt_enabled()
                    && !matches!(
                        *self.lt.lock().unwrap_or_else(|e| e.into_inner()),
                        Some(None)
                    ) =>
            {
                "lt-bias"
            }
            _ => "matmul+add_bias",
        }
    }

    /// How many cuBLASLt calls fell back to cuBLAS + separate kernels so far (0 when every
    /// `matmul_bias` / `matmul_bias_residual` ran fused).
    pub fn lt_fallbacks(&self) -> u64 {
        self.lt_fallbacks.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lt_create(&self) -> Option<LtState> {
        // SAFETY: only tries to open the shared library.
        if !unsafe { lt_sys::is_culib_present() } {
            tracing::warn!("cuda: libcublasLt not found; bias adds stay separate kernels");
            return None;
        }
        let handle = match std::panic::catch_unwind(lt::create_handle) {
            Ok(Ok(h)) => h,
            e => {
                tracing::warn!("cuda: cublasLtCreate failed ({e:?}); bias adds stay separate");
                return None;
            }
        };
        let ws_size = if self.cc.0 >= 9 { 32 << 20 } else { 4 << 20 };
        // SAFETY: plain allocation, freed in Drop.
        match unsafe { drv::malloc_sync(ws_size) } {
            Ok(ws) => Some(LtState {
                handle,
                ws,
                ws_size,
                algos: HashMap::new(),
            }),
            Err(e) => {
                tracing::warn!("cuda: no memory for the cuBLASLt workspace ({e:?})");
                // SAFETY: created above, not used elsewhere.
                let _ = unsafe { lt::destroy_handle(handle) };
                None
            }
        }
    }

    /// `out = alpha * op(a) @ op(b) + beta * c (+ bias)` (bias per column of the row-major
    /// output; `bias == 0`: none) in one cuBLASLt call with bf16 `a`, `b` (device pointers as for
    /// [`Self::gemm`]) and f32 `c`, `out`, `bias` (`c == out` in place). False (nothing enqueued)
    /// when cuBLASLt is unavailable or has no algorithm for the problem.
    #[allow(clippy::too_many_arguments)]
    fn lt_gemm_bias(
        &self,
        d: MatDims,
        alpha: f32,
        beta: f32,
        a: u64,
        b: u64,
        c: u64,
        out: u64,
        bias: u64,
    ) -> bool {
        let ok = self.lt_try(d, alpha, beta, a, b, c, out, LtEpi::Bias(bias));
        if !ok {
            self.lt_fallbacks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        ok
    }

    #[allow(clippy::too_many_arguments)]
    fn lt_try(
        &self,
        d: MatDims,
        alpha: f32,
        beta: f32,
        a: u64,
        b: u64,
        c: u64,
        out: u64,
        epi: LtEpi,
    ) -> bool {
        if epi.extra_ptrs().iter().any(|p| !p.is_multiple_of(16)) {
            return false;
        }
        // aux ld (= our n) must be a multiple of 8 for the GELU epilogues
        if epi.bf16_out() && !d.n.is_multiple_of(8) {
            return false;
        }
        let mut g = self.lt.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(self.lt_create());
        }
        let Some(Some(st)) = g.as_mut() else {
            return false;
        };
        let key: LtKey = (
            d.m,
            d.n,
            d.k,
            d.trans_a,
            d.trans_b,
            beta != 0.0,
            epi.code(),
            [a, b, c, out].map(align_of_ptr),
        );
        if matches!(st.algos.get(&key), Some(None)) {
            return false;
        }
        // SAFETY: descriptors are created and destroyed here; pointers are device pointers of
        // bounds-checked views (bf16 operands of the sizes the layouts name) and the workspace.
        let r = unsafe { self.lt_call(st, key, d, alpha, beta, [a, b, c, out], epi) };
        match r {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "cuda: cuBLASLt unavailable for {d:?} ({e:?}); cuBLAS and separate kernels"
                );
                st.algos.insert(key, None);
                false
            }
        }
    }

    /// The cuBLASLt call of [`Self::lt_gemm_bias`]; row-major `C = op(A) op(B)` is column-major
    /// `Cᵀ = op(B)ᵀ op(A)ᵀ`, so cuBLASLt's A is our `b` and its D has our `n` rows (the bias).
    #[allow(clippy::too_many_arguments)]
    unsafe fn lt_call(
        &self,
        st: &mut LtState,
        key: LtKey,
        d: MatDims,
        alpha: f32,
        beta: f32,
        [a, b, c, out]: [u64; 4],
        epi: LtEpi,
    ) -> Result<(), lt::CublasError> {
        use lt_sys::cublasLtMatmulDescAttributes_t as DA;
        use lt_sys::cublasLtMatmulPreferenceAttributes_t as PA;
        let bf = lt_sys::cudaDataType_t::CUDA_R_16BF;
        let f = lt_sys::cudaDataType_t::CUDA_R_32F;
        let mut o = LtObjs {
            desc: std::ptr::null_mut(),
            layouts: [std::ptr::null_mut(); 3],
            pref: std::ptr::null_mut(),
        };
        o.desc = lt::create_matmul_desc(lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, f)?;
        let set = |attr: DA, p: *const std::ffi::c_void, n: usize| {
            lt::set_matmul_desc_attribute(o.desc, attr, p, n)
        };
        let (ta, tb) = (d.trans_b as i32, d.trans_a as i32);
        set(DA::CUBLASLT_MATMUL_DESC_TRANSA, &ta as *const i32 as _, 4)?;
        set(DA::CUBLASLT_MATMUL_DESC_TRANSB, &tb as *const i32 as _, 4)?;
        use lt_sys::cublasLtEpilogue_t as E;
        let (kind, bias, aux) = match epi {
            LtEpi::Bias(0) => (None, 0, 0),
            LtEpi::Bias(b) => (Some(E::CUBLASLT_EPILOGUE_BIAS), b, 0),
            LtEpi::GeluAux { bias: 0, aux } => (Some(E::CUBLASLT_EPILOGUE_GELU_AUX), 0, aux),
            LtEpi::GeluAux { bias, aux } => (Some(E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS), bias, aux),
            LtEpi::DGelu { aux, bgrad: 0, .. } => (Some(E::CUBLASLT_EPILOGUE_DGELU), 0, aux),
            LtEpi::DGelu { aux, bgrad, .. } => (Some(E::CUBLASLT_EPILOGUE_DGELU_BGRAD), bgrad, aux),
        };
        if let Some(kind) = kind {
            set(
                DA::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &kind as *const _ as _,
                std::mem::size_of_val(&kind),
            )?;
        }
        if bias != 0 {
            set(
                DA::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias as *const u64 as _,
                8,
            )?;
        }
        if let LtEpi::DGelu {
            bgrad_f32: true, ..
        } = epi
        {
            let t = f;
            set(
                DA::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                &t as *const _ as _,
                std::mem::size_of_val(&t),
            )?;
        }
        if aux != 0 {
            let ld = lt_aux_ld(d) as i64;
            set(
                DA::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                &aux as *const u64 as _,
                8,
            )?;
            set(
                DA::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                &ld as *const i64 as _,
                8,
            )?;
        }
        let out_t = if epi.bf16_out() { bf } else { f };
        let [la, lb, lc] = lt_layouts(d);
        o.layouts[0] = lt::create_matrix_layout(bf, la.0, la.1, la.2 as i64)?;
        o.layouts[1] = lt::create_matrix_layout(bf, lb.0, lb.1, lb.2 as i64)?;
        o.layouts[2] = lt::create_matrix_layout(out_t, lc.0, lc.1, lc.2 as i64)?;
        let algo = match st.algos.get(&key) {
            Some(Some(al)) => *al,
            _ => {
                o.pref = lt::create_matmul_pref()?;
                let ws = st.ws_size as u64;
                lt::set_matmul_pref_attribute(
                    o.pref,
                    PA::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws as *const u64 as _,
                    8,
                )?;
                let [al_a, al_b, al_c, al_d] = key.7;
                for (attr, al) in [
                    (PA::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_b),
                    (PA::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_a),
                    (PA::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_c),
                    (PA::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_d),
                ] {
                    lt::set_matmul_pref_attribute(o.pref, attr, &al as *const u32 as _, 4)?;
                }
                let h = lt::get_matmul_algo_heuristic(
                    st.handle,
                    o.desc,
                    o.layouts[0],
                    o.layouts[1],
                    o.layouts[2],
                    o.layouts[2],
                    o.pref,
                )?;
                if h.workspaceSize > st.ws_size {
                    return Err(lt::CublasError(
                        lt_sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
                    ));
                }
                st.algos.insert(key, Some(h.algo));
                h.algo
            }
        };
        lt::matmul(
            st.handle,
            o.desc,
            &alpha as *const f32 as _,
            &beta as *const f32 as _,
            b as _,
            o.layouts[0],
            a as _,
            o.layouts[1],
            c as _,
            o.layouts[2],
            out as _,
            o.layouts[2],
            &algo,
            st.ws as _,
            st.ws_size,
            self.stream.cu_stream() as _,
        )
    }

    /// `bf16_ops`: `a` and `b` point at bf16 copies (bf16 × bf16 → f32, fp32 compute).
    #[allow(clippy::too_many_arguments)]
    fn gemm(&self, d: MatDims, alpha: f32, beta: f32, a: u64, b: u64, c: u64, bf16_ops: bool) {
        self.gemm_raw(d, alpha, beta, a, b, c, bf16_ops, false)
            .unwrap_or_else(|e| panic!("cuda: gemm {d:?}: {e}"));
    }

    /// The bf16 × bf16 GEMM on converted operands `pa`, `pb`; should cuBLAS refuse it, the f32
    /// operands `a`, `b` go through `CUBLAS_COMPUTE_32F_FAST_16BF` instead and the backend stays on
    /// that path ([`Bf16Gemm::F32Operands`]) with a warning.
    #[allow(clippy::too_many_arguments)]
    fn gemm_bf16(
        &self,
        d: MatDims,
        alpha: f32,
        beta: f32,
        pa: u64,
        pb: u64,
        a: &View<CudaBuf>,
        b: &View<CudaBuf>,
        c: u64,
    ) {
        if let Err(e) = self.gemm_raw(d, alpha, beta, pa, pb, c, true, false) {
            tracing::warn!(
                "cuda: bf16-operand GEMM refused for {d:?} ({e}); using f32 operands from now on"
            );
            self.set_bf16_gemm(Bf16Gemm::F32Operands);
            self.gemm(d, alpha, beta, ptr(a), ptr(b), c, false);
        }
    }

    /// `out_bf16` (with `bf16_ops` only): `c` points at bf16 (bf16 × bf16 → bf16, fp32 compute).
    #[allow(clippy::too_many_arguments)]
    fn gemm_raw(
        &self,
        d: MatDims,
        alpha: f32,
        beta: f32,
        a: u64,
        b: u64,
        c: u64,
        bf16_ops: bool,
        out_bf16: bool,
    ) -> Result<(), String> {
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};
        // Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: swap the operands.
        let (opa, lda) = if d.trans_b { (T, d.k) } else { (N, d.n) };
        let (opb, ldb) = if d.trans_a { (T, d.m) } else { (N, d.k) };
        let h = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        let (m, n, k) = (d.n as i32, d.m as i32, d.k as i32);
        // SAFETY: pointers are device pointers of views whose lengths were checked by the caller.
        let r = unsafe {
            match self.precision {
                _ if bf16_ops => {
                    let bf = blas_sys::cudaDataType_t::CUDA_R_16BF;
                    blas::gemm_ex(
                        h.0,
                        opa,
                        opb,
                        m,
                        n,
                        k,
                        &alpha as *const f32 as *const _,
                        b as *const _,
                        bf,
                        lda as i32,
                        a as *const _,
                        bf,
                        ldb as i32,
                        &beta as *const f32 as *const _,
                        c as *mut _,
                        if out_bf16 {
                            bf
                        } else {
                            blas_sys::cudaDataType_t::CUDA_R_32F
                        },
                        d.n as i32,
                        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
                    )
                }
                Precision::F32 => blas::sgemm(
                    h.0,
                    opa,
                    opb,
                    m,
                    n,
                    k,
                    &alpha,
                    b as *const f32,
                    lda as i32,
                    a as *const f32,
                    ldb as i32,
                    &beta,
                    c as *mut f32,
                    d.n as i32,
                ),
                p => {
                    let ct = if p == Precision::Bf16 {
                        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF
                    } else {
                        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
                    };
                    let f = blas_sys::cudaDataType_t::CUDA_R_32F;
                    blas::gemm_ex(
                        h.0,
                        opa,
                        opb,
                        m,
                        n,
                        k,
                        &alpha as *const f32 as *const _,
                        b as *const _,
                        f,
                        lda as i32,
                        a as *const _,
                        f,
                        ldb as i32,
                        &beta as *const f32 as *const _,
                        c as *mut _,
                        f,
                        d.n as i32,
                        ct,
                        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
                    )
                }
            }
        };
        r.map_err(|e| format!("{e:?}"))
    }
}

/// The PTX cache folder: `KILN_CUDA_CACHE`, else `$HOME/.cache/kiln-cuda` (None: no cache).
fn cache_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("KILN_CUDA_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache/kiln-cuda"))
        })
}

/// PTX for `src` on compute capability `cc`, from the cache (keyed by a hash of the source and
/// arch) or compiled with NVRTC and stored (atomically). The fully unrolled attention kernels take
/// NVRTC tens of seconds, so a cache filled once (`cuda_check ptx-cache DIR` needs no GPU) saves
/// that on every later start.
pub fn cached_ptx(src: &str, cc: (i32, i32)) -> Result<String, EngineError> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    src.hash(&mut h);
    cc.hash(&mut h);
    let file =
        cache_dir().map(|d| d.join(format!("kiln-{:016x}-sm{}{}.ptx", h.finish(), cc.0, cc.1)));
    if let Some(ptx) = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
        return Ok(ptx);
    }
    let ptx = std::panic::catch_unwind(|| compile(src, cc.0, cc.1)).map_err(|_| {
        EngineError::Backend(
            "cuda: could not load libnvrtc (add the CUDA toolkit's lib64 to LD_LIBRARY_PATH)"
                .into(),
        )
    })??;
    if let Some(f) = file {
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        let ok = f
            .parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && std::fs::write(&tmp, &ptx).is_ok()
            && std::fs::rename(&tmp, &f).is_ok();
        if !ok {
            tracing::warn!("cuda: could not store PTX cache file {}", f.display());
        }
    }
    Ok(ptx)
}

/// Compile `src` with NVRTC, load it, and look up `names`.
fn load_module(
    ctx: &Arc<CudaContext>,
    src: &str,
    cc: (i32, i32),
    names: &[String],
) -> Result<HashMap<String, CudaFunction>, EngineError> {
    let ptx = cached_ptx(src, cc)?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(|e| derr("load module", e))?;
    let mut funcs = HashMap::new();
    for n in names {
        let f = module
            .load_function(n)
            .map_err(|e| derr(&format!("load kernel {n}"), e))?;
        funcs.insert(n.clone(), f);
    }
    Ok(funcs)
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        let sc = self.scratch.get_mut().unwrap_or_else(|e| e.into_inner());
        // SAFETY: idle after synchronize; these pointers are owned here.
        unsafe {
            for p in [
                sc.ids.0, sc.ids2.0, sc.wts.0, sc.bf[0].0, sc.bf[1].0, sc.red,
            ] {
                if p != 0 {
                    let _ = drv::free_sync(p);
                }
            }
            let _ = blas::destroy_handle(self.blas.get_mut().unwrap_or_else(|e| e.into_inner()).0);
            if let Some(Some(st)) = self.lt.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = lt::destroy_handle(st.handle);
                let _ = drv::free_sync(st.ws);
            }
        }
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn label(&self) -> String {
        format!("{} ({} matmuls)", self.device_name, self.precision.as_str())
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn synchronize(&self) {
        self.stream
            .synchronize()
            .unwrap_or_else(|e| panic!("cuda: synchronize: {e:?}"));
    }

    fn peak_device_bytes(&self) -> Option<u64> {
        Some(self.memory_bytes().1 as u64)
    }

    fn device_used_bytes(&self) -> Option<u64> {
        let (free, total) = self.device_memory();
        (total > 0).then(|| (total - free) as u64)
    }

    fn check_fits(&self, need: u64) -> Result<(), EngineError> {
        let (free, total) = self.device_memory();
        if total > 0 && need > free as u64 {
            return Err(EngineError::OutOfMemory {
                need_mb: need >> 20,
                avail_mb: (free as u64) >> 20,
            });
        }
        Ok(())
    }

    fn alloc(&self, len: usize) -> Result<CudaBuf, EngineError> {
        let p = self.pool.get(len)?;
        let buf = CudaBuf {
            ptr: p,
            len,
            pool: self.pool.clone(),
            shadow: Mutex::new(Shadow::default()),
            has_stale: std::sync::atomic::AtomicBool::new(false),
            mat: self.mat.clone(),
        };
        if len > 0 {
            // SAFETY: p is valid for len f32s; enqueued on our stream before any use of buf.
            unsafe { drv::memset_d8_async(p, 0, len * 4, self.stream.cu_stream()) }
                .map_err(|e| derr("memset", e))?;
        }
        Ok(buf)
    }

    fn buf_len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }

    fn write(&self, dst: View<CudaBuf>, src: &[f32]) {
        assert_eq!(
            dst.len,
            src.len(),
            "cuda write: view {} vs host {}",
            dst.len,
            src.len()
        );
        let _p = self.op("write");
        dirty(&dst);
        // SAFETY: bounds checked by `ptr`; pageable source is staged before return.
        unsafe { drv::memcpy_htod_async(ptr(&dst), src, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("cuda: write: {e:?}"));
    }

    fn read(&self, src: View<CudaBuf>, dst: &mut [f32]) {
        assert_eq!(
            src.len,
            dst.len(),
            "cuda read: view {} vs host {}",
            src.len,
            dst.len()
        );
        let _p = self.op("read");
        // SAFETY: bounds checked; synchronized before returning so dst is complete.
        unsafe { drv::memcpy_dtoh_async(dst, ptr(&src), self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("cuda: read: {e:?}"));
        self.synchronize();
    }

    fn fill(&self, dst: View<CudaBuf>, value: f32) {
        let _p = self.op("fill");
        dirty(&dst);
        launch!(self, "k_fill", self.grid1(dst.len), (256, 1, 1), 0; ptr(&dst), dst.len as i64, value);
    }

    fn copy(&self, dst: View<CudaBuf>, src: View<CudaBuf>) {
        assert_eq!(dst.len, src.len, "cuda copy: {} vs {}", dst.len, src.len);
        let _p = self.op("copy");
        dirty(&dst);
        // SAFETY: both ranges bounds-checked; the trait guarantees no overlap.
        unsafe {
            drv::memcpy_dtod_async(ptr(&dst), ptr(&src), dst.len * 4, self.stream.cu_stream())
        }
        .unwrap_or_else(|e| panic!("cuda: copy: {e:?}"));
    }

    fn axpy(&self, y: View<CudaBuf>, alpha: f32, x: View<CudaBuf>) {
        assert_eq!(y.len, x.len);
        let _p = self.op("axpy");
        dirty(&y);
        launch!(self, "k_axpy", self.grid1(y.len), (256, 1, 1), 0; ptr(&y), ptr(&x), y.len as i64, alpha);
    }

    fn scale(&self, x: View<CudaBuf>, s: f32) {
        let _p = self.op("scale");
        dirty(&x);
        launch!(self, "k_scale", self.grid1(x.len), (256, 1, 1), 0; ptr(&x), x.len as i64, s);
    }

    fn sum_squares(&self, x: View<CudaBuf>) -> f64 {
        let _p = self.op("sum_squares");
        let red = self.scratch.lock().unwrap_or_else(|e| e.into_inner()).red;
        // SAFETY: red is an 8-byte device allocation owned by the backend.
        unsafe { drv::memset_d8_async(red, 0, 8, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("cuda: memset: {e:?}"));
        launch!(self, "k_sum_squares", self.grid1(x.len), (256, 1, 1), 0; ptr(&x), x.len as i64, red);
        let mut out = [0f64];
        // SAFETY: 8 bytes from our reduction slot; synchronized below.
        unsafe { drv::memcpy_dtoh_async(&mut out[..], red, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("cuda: read: {e:?}"));
        self.synchronize();
        out[0]
    }

    fn matmul(
        &self,
        c: View<CudaBuf>,
        a: View<CudaBuf>,
        b: View<CudaBuf>,
        d: MatDims,
        alpha: f32,
        beta: f32,
    ) {
        assert!(
            a.len >= d.m * d.k && b.len >= d.k * d.n && c.len >= d.m * d.n,
            "matmul shape {d:?}"
        );
        if d.m == 0 || d.n == 0 {
            return;
        }
        let _p = self.op("matmul");
        match self.matmul_path() {
            MatmulPath::Bf16(mode) => {
                let cached = mode == Bf16Gemm::Bf16Cached;
                let pa = self.bf16_operand(&a, d.m * d.k, 0, cached);
                let pb = self.bf16_operand(&b, d.k * d.n, 1, cached);
                dirty(&c);
                self.gemm_bf16(d, alpha, beta, pa, pb, &a, &b, ptr(&c));
            }
            _ => {
                dirty(&c);
                self.gemm(d, alpha, beta, ptr(&a), ptr(&b), ptr(&c), false);
            }
        }
    }

    fn matmul_logits(&self, c: View<CudaBuf>, a: View<CudaBuf>, b: View<CudaBuf>, d: MatDims) {
        let mn = d.m * d.n;
        if !self.bf16_logits() || mn == 0 || d.k == 0 {
            return self.matmul(c, a, b, d, 1.0, 0.0);
        }
        assert!(
            a.len >= d.m * d.k && b.len >= d.k * d.n && c.len >= mn,
            "matmul_logits shape {d:?}"
        );
        let p = self.op("matmul_logits");
        let pa = self.bf16_operand(&a, d.m * d.k, 0, true);
        let pb = self.bf16_operand(&b, d.k * d.n, 1, true);
        let Some(pc) = self.bf16_result_slot(&c, mn) else {
            drop(p);
            return self.matmul(c, a, b, d, 1.0, 0.0);
        };
        if let Err(e) = self.gemm_raw(d, 1.0, 0.0, pa, pb, pc, true, true) {
            tracing::warn!("cuda: bf16-output GEMM refused for {d:?} ({e}); f32 logits");
            self.lt_fallbacks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(p);
            return self.matmul(c, a, b, d, 1.0, 0.0);
        }
        self.commit_bf16_result(&c, mn);
    }

    fn matmul_bias(
        &self,
        c: View<CudaBuf>,
        a: View<CudaBuf>,
        b: View<CudaBuf>,
        bias: Option<View<CudaBuf>>,
        d: MatDims,
        alpha: f32,
        beta: f32,
    ) {
        let fused = self.matmul_bias_path() == "lt-bias";
        let Some(bias) = bias.filter(|_| fused && d.m > 0 && d.n > 0 && d.k > 0) else {
            self.matmul(c, a, b, d, alpha, beta);
            if let Some(bias) = bias {
                self.add_bias(c, bias, d.m, d.n);
            }
            return;
        };
        assert!(
            a.len >= d.m * d.k && b.len >= d.k * d.n && c.len >= d.m * d.n && bias.len >= d.n,
            "matmul_bias shape {d:?}"
        );
        let p = self.op("matmul_bias");
        let cached = self.bf16_gemm() == Bf16Gemm::Bf16Cached;
        let pa = self.bf16_operand(&a, d.m * d.k, 0, cached);
        let pb = self.bf16_operand(&b, d.k * d.n, 1, cached);
        dirty(&c);
        let pc = ptr(&c);
        if self.lt_gemm_bias(d, alpha, beta, pa, pb, pc, pc, ptr(&bias)) {
            return;
        }
        self.gemm_bf16(d, alpha, beta, pa, pb, &a, &b, pc);
        drop(p);
        self.add_bias(c, bias, d.m, d.n);
    }

    fn matmul_bias_residual(
        &self,
        out: View<CudaBuf>,
        res: View<CudaBuf>,
        a: View<CudaBuf>,
        b: View<CudaBuf>,
        bias: Option<View<CudaBuf>>,
        d: MatDims,
    ) {
        let mn = d.m * d.n;
        if self.matmul_bias_path() != "lt-bias" || mn == 0 || d.k == 0 {
            self.copy(out.sub(0, mn), res.sub(0, mn));
            return self.matmul_bias(out, a, b, bias, d, 1.0, 1.0);
        }
        assert!(
            a.len >= d.m * d.k && b.len >= d.k * d.n && out.len >= mn && res.len >= mn,
            "matmul_bias_residual shape {d:?}"
        );
        assert!(bias.is_none_or(|x| x.len >= d.n));
        let p = self.op("matmul_bias_residual");
        let cached = self.bf16_gemm() == Bf16Gemm::Bf16Cached;
        let pa = self.bf16_operand(&a, d.m * d.k, 0, cached);
        let pb = self.bf16_operand(&b, d.k * d.n, 1, cached);
        let (pr, po) = (ptr(&res.sub(0, mn)), ptr(&out.sub(0, mn)));
        dirty(&out);
        if self.lt_gemm_bias(d, 1.0, 1.0, pa, pb, pr, po, optr(&bias)) {
            return;
        }
        drop(p);
        self.copy(out.sub(0, mn), res.sub(0, mn));
        self.matmul_bias(out, a, b, bias, d, 1.0, 1.0);
    }

    fn matmul_bias_act(
        &self,
        act: Act,
        out: View<CudaBuf>,
        pre: View<CudaBuf>,
        a: View<CudaBuf>,
        b: View<CudaBuf>,
        bias: Option<View<CudaBuf>>,
        d: MatDims,
    ) {
        let mn = d.m * d.n;
        let unfused = |be: &Self| {
            be.matmul_bias(pre, a, b, bias, d, 1.0, 0.0);
            be.act_forward(act, out.sub(0, mn), pre.sub(0, mn));
        };
        if !self.lt_gelu_enabled() || !self.lt_gelu_possible(act) || mn == 0 || d.k == 0 {
            return unfused(self);
        }
        assert!(
            a.len >= d.m * d.k && b.len >= d.k * d.n && out.len >= mn && pre.len >= mn,
            "matmul_bias_act shape {d:?}"
        );
        assert!(bias.is_none_or(|x| x.len >= d.n));
        let p = self.op("matmul_bias_gelu");
        let pa = self.bf16_operand(&a, d.m * d.k, 0, true);
        let pb = self.bf16_operand(&b, d.k * d.n, 1, true);
        let pbias = match bias {
            Some(bv) => self.cached_bf16(&bv, d.n),
            None => Some(0),
        };
        let slots = (
            pbias,
            self.bf16_result_slot(&out, mn),
            self.bf16_result_slot(&pre, mn),
        );
        if let (Some(pbias), Some(po), Some(paux)) = slots {
            let epi = LtEpi::GeluAux {
                bias: pbias,
                aux: paux,
            };
            if self.lt_try(d, 1.0, 0.0, pa, pb, po, po, epi) {
                self.commit_bf16_result(&out, mn);
                self.commit_bf16_result(&pre, mn);
                return;
            }
        }
        self.lt_fallbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(p);
        unfused(self);
    }

    fn matmul_act_backward(
        &self,
        act: Act,
        dpre: View<CudaBuf>,
        dact: View<CudaBuf>,
        dbias: Option<View<CudaBuf>>,
        a: View<CudaBuf>,
        b: View<CudaBuf>,
        pre: View<CudaBuf>,
        d: MatDims,
    ) {
        let mn = d.m * d.n;
        let unfused = |be: &Self| {
            be.matmul(dact, a, b, d, 1.0, 0.0);
            be.act_backward(act, dpre.sub(0, mn), dact.sub(0, mn), pre.sub(0, mn));
            if let Some(dbias) = dbias {
                be.bias_backward(dbias, dpre, d.m, d.n);
            }
        };
        if !self.lt_dgelu_enabled() || !self.lt_gelu_possible(act) || mn == 0 || d.k == 0 {
            return unfused(self);
        }
        assert!(
            a.len >= d.m * d.k && b.len >= d.k * d.n && dpre.len >= mn && pre.len >= mn,
            "matmul_act_backward shape {d:?}"
        );
        assert!(dbias.is_none_or(|x| x.len >= d.n));
        let p = self.op("matmul_dgelu");
        let pa = self.bf16_operand(&a, d.m * d.k, 0, true);
        let pb = self.bf16_operand(&b, d.k * d.n, 1, true);
        // the aux: pre in bf16 (current after the fused forward; converted otherwise)
        let (Some(paux), Some(pd)) = (self.cached_bf16(&pre, mn), self.bf16_result_slot(&dpre, mn))
        else {
            self.lt_fallbacks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(p);
            return unfused(self);
        };
        if let Some(db) = dbias {
            // the bias gradient: f32 straight from the epilogue if cuBLASLt takes an f32 bias
            // vector with bf16 D, else bf16 (its default); both into scratch, then accumulated
            let tmp = match self.pool.get(d.n) {
                Ok(t) => t,
                Err(_) => {
                    self.lt_fallbacks
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(p);
                    return unfused(self);
                }
            };
            let mut done = None;
            for bgrad_f32 in [true, false] {
                let epi = LtEpi::DGelu {
                    aux: paux,
                    bgrad: tmp,
                    bgrad_f32,
                };
                if self.lt_try(d, 1.0, 0.0, pa, pb, pd, pd, epi) {
                    done = Some(bgrad_f32);
                    break;
                }
            }
            if let Some(f32_grad) = done {
                self.commit_bf16_result(&dpre, mn);
                dirty(&db);
                let k = if f32_grad { "k_axpy" } else { "k_axpy_bf16" };
                let n = d.n as i64;
                if f32_grad {
                    launch!(self, k, self.grid1(d.n), (256, 1, 1), 0; ptr(&db), tmp, n, 1.0f32);
                } else {
                    launch!(self, k, self.grid1(d.n), (256, 1, 1), 0; ptr(&db), tmp, n);
                }
            }
            // stream-ordered: the next user of the pooled scratch runs after these kernels
            self.pool.put(d.n, tmp);
            if done.is_some() {
                return;
            }
        } else {
            let epi = LtEpi::DGelu {
                aux: paux,
                bgrad: 0,
                bgrad_f32: false,
            };
            if self.lt_try(d, 1.0, 0.0, pa, pb, pd, pd, epi) {
                self.commit_bf16_result(&dpre, mn);
                return;
            }
        }
        self.lt_fallbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(p);
        unfused(self);
    }

    fn add_bias(&self, out: View<CudaBuf>, bias: View<CudaBuf>, rows: usize, cols: usize) {
        assert!(out.len >= rows * cols && bias.len >= cols);
        let _p = self.op("add_bias");
        dirty(&out);
        let n = rows * cols;
        launch!(self, "k_add_bias", self.grid1(n), (256, 1, 1), 0; ptr(&out), ptr(&bias), n as i64, cols as i32);
    }

    fn bias_backward(&self, dbias: View<CudaBuf>, dout: View<CudaBuf>, rows: usize, cols: usize) {
        assert!(dout.len >= rows * cols && dbias.len >= cols);
        let _p = self.op("bias_backward");
        dirty(&dbias);
        let grid = (cols.div_ceil(32) as u32, rows.div_ceil(256) as u32, 1);
        launch!(self, "k_col_grads", grid, (32, 8, 1), 0; 0u64, ptr(&dbias), ptr(&dout), 0u64, 0u64, rows as i32, cols as i32);
    }

    fn embedding_forward(
        &self,
        out: View<CudaBuf>,
        wte: View<CudaBuf>,
        wpe: Option<View<CudaBuf>>,
        ids: &[u32],
        t: usize,
        pos0: usize,
        c: usize,
    ) {
        assert!(out.len >= ids.len() * c);
        let _p = self.op("embedding_forward");
        dirty(&out);
        let idp = self.upload_u32(|s| &mut s.ids, ids);
        let n = ids.len() * c;
        launch!(self, "k_embed_fwd", self.grid1(n), (256, 1, 1), 0;
            ptr(&out), ptr(&wte), optr(&wpe), idp, ids.len() as i64, t as i32, pos0 as i32, c as i32);
    }

    fn embedding_backward(
        &self,
        dwte: View<CudaBuf>,
        dwpe: Option<View<CudaBuf>>,
        dout: View<CudaBuf>,
        ids: &[u32],
        t: usize,
        c: usize,
    ) {
        assert!(dout.len >= ids.len() * c);
        let _p = self.op("embedding_backward");
        dirty(&dwte);
        odirty(&dwpe);
        let idp = self.upload_u32(|s| &mut s.ids, ids);
        let n = ids.len() * c;
        launch!(self, "k_embed_bwd", self.grid1(n), (256, 1, 1), 0;
            ptr(&dwte), optr(&dwpe), ptr(&dout), idp, ids.len() as i64, t as i32, c as i32);
    }

    fn norm_forward(
        &self,
        kind: NormKind,
        out: View<CudaBuf>,
        stats: View<CudaBuf>,
        inp: View<CudaBuf>,
        weight: Option<View<CudaBuf>>,
        bias: Option<View<CudaBuf>>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) {
        assert!(out.len >= rows * cols && inp.len >= rows * cols && stats.len >= 2 * rows);
        let _p = self.op("norm_forward");
        dirty(&out);
        dirty(&stats);
        let is_ln = (kind == NormKind::LayerNorm) as i32;
        let bf = self.shadow_out(&out, rows * cols);
        launch!(self, "k_norm_fwd", (rows.div_ceil(8) as u32, 1, 1), (256, 1, 1), 0;
            ptr(&out), ptr(&stats), ptr(&inp), optr(&weight), optr(&bias), rows as i32, cols as i32, eps, is_ln, bf);
    }

    fn norm_backward(
        &self,
        kind: NormKind,
        dinp: View<CudaBuf>,
        dweight: Option<View<CudaBuf>>,
        dbias: Option<View<CudaBuf>>,
        dout: View<CudaBuf>,
        inp: View<CudaBuf>,
        stats: View<CudaBuf>,
        weight: Option<View<CudaBuf>>,
        rows: usize,
        cols: usize,
    ) {
        assert!(dinp.len >= rows * cols && dout.len >= rows * cols && inp.len >= rows * cols);
        let _p = self.op("norm_backward");
        dirty(&dinp);
        odirty(&dweight);
        odirty(&dbias);
        let is_ln = (kind == NormKind::LayerNorm) as i32;
        let bf = self.shadow_out(&dinp, rows * cols);
        launch!(self, "k_norm_bwd_dx", (rows.div_ceil(8) as u32, 1, 1), (256, 1, 1), 0;
            ptr(&dinp), ptr(&dout), ptr(&inp), ptr(&stats), optr(&weight), rows as i32, cols as i32, is_ln, bf);
        if dweight.is_some() || dbias.is_some() {
            let grid = (cols.div_ceil(32) as u32, rows.div_ceil(256) as u32, 1);
            launch!(self, "k_col_grads", grid, (32, 8, 1), 0;
                optr(&dweight), optr(&dbias), ptr(&dout), ptr(&inp), ptr(&stats), rows as i32, cols as i32);
        }
    }

    fn act_forward(&self, act: Act, out: View<CudaBuf>, inp: View<CudaBuf>) {
        assert_eq!(out.len, inp.len);
        let _p = self.op("act_forward");
        dirty(&out);
        let kind = (act == Act::ReluSq) as i32;
        let bf = self.shadow_out(&out, out.len);
        launch!(self, "k_act_fwd", self.grid1(out.len), (256, 1, 1), 0; ptr(&out), ptr(&inp), out.len as i64, kind, bf);
    }

    fn act_backward(&self, act: Act, dinp: View<CudaBuf>, dout: View<CudaBuf>, inp: View<CudaBuf>) {
        assert_eq!(dinp.len, inp.len);
        let _p = self.op("act_backward");
        dirty(&dinp);
        let kind = (act == Act::ReluSq) as i32;
        let bf = self.shadow_out(&dinp, dinp.len);
        launch!(self, "k_act_bwd", self.grid1(dinp.len), (256, 1, 1), 0;
            ptr(&dinp), ptr(&dout), ptr(&inp), dinp.len as i64, kind, bf);
    }

    fn qk_prep_forward(
        &self,
        out: View<CudaBuf>,
        stats: View<CudaBuf>,
        inp: View<CudaBuf>,
        d: AttnDims,
        p: QkPrep,
    ) {
        let rows = d.b * d.t;
        assert!(out.len >= rows * d.qkv_width() && stats.len >= rows * (d.n_head + d.n_kv));
        let _p = self.op("qk_prep_forward");
        dirty(&out);
        dirty(&stats);
        let warps = rows * (d.n_head + 2 * d.n_kv);
        launch!(self, "k_qk_prep_fwd", ((warps * 32).div_ceil(256) as u32, 1, 1), (256, 1, 1), 0;
            ptr(&out), ptr(&stats), ptr(&inp), rows as i32, d.t as i32, d.n_head as i32, d.n_kv as i32,
            d.head_dim as i32, p.pos0 as i32, p.qk_norm_eps.is_some() as i32, p.qk_norm_eps.unwrap_or(0.0),
            p.rope_theta.is_some() as i32, p.rope_theta.unwrap_or(0.0));
    }

    fn qk_prep_backward(
        &self,
        dinp: View<CudaBuf>,
        dout: View<CudaBuf>,
        inp: View<CudaBuf>,
        stats: View<CudaBuf>,
        d: AttnDims,
        p: QkPrep,
    ) {
        let rows = d.b * d.t;
        assert!(dinp.len >= rows * d.qkv_width());
        let _p = self.op("qk_prep_backward");
        dirty(&dinp);
        let warps = rows * (d.n_head + 2 * d.n_kv);
        launch!(self, "k_qk_prep_bwd", ((warps * 32).div_ceil(256) as u32, 1, 1), (256, 1, 1), 0;
            ptr(&dinp), ptr(&dout), ptr(&inp), ptr(&stats), rows as i32, d.t as i32, d.n_head as i32,
            d.n_kv as i32, d.head_dim as i32, p.pos0 as i32, p.qk_norm_eps.is_some() as i32,
            p.rope_theta.is_some() as i32, p.rope_theta.unwrap_or(0.0));
    }

    /// lse `[b, nh, t]`, D `[b, nh, t]` (filled in backward), and a copy of the output; in bf16
    /// precision (or with tc2 requested) on sm_80+ with a tc head dim also tc2's bf16 copies of
    /// q/k/v and dout (`tc2_layout`: +(qkv_width + out_width)/2 per token, 16-byte aligned).
    fn attention_scratch_len(&self, d: AttnDims) -> usize {
        let base = 2 * d.b * d.n_head * d.t + d.b * d.t * d.out_width();
        let tc2 = self.precision == Precision::Bf16 || self.attention() == AttnKernel::Tc2;
        if tc2 && self.cc.0 >= 8 && TC_HEAD_DIMS.contains(&d.head_dim) {
            tc2_layout(d).2
        } else {
            base
        }
    }

    fn attention_forward(
        &self,
        out: View<CudaBuf>,
        scratch: View<CudaBuf>,
        qkv: View<CudaBuf>,
        d: AttnDims,
    ) {
        self.ensure_attention(d.head_dim);
        let k = self.attn_pick(d, &[ptr(&out), ptr(&qkv)], &scratch);
        let _p = self.op("attention_forward");
        dirty(&out);
        dirty(&scratch);
        self.attn_fwd_with(k, out, scratch, qkv, d);
    }

    fn attention_backward(
        &self,
        dqkv: View<CudaBuf>,
        dout: View<CudaBuf>,
        qkv: View<CudaBuf>,
        scratch: View<CudaBuf>,
        d: AttnDims,
    ) {
        self.ensure_attention(d.head_dim);
        let k = self.attn_pick(d, &[ptr(&dqkv), ptr(&dout), ptr(&qkv)], &scratch);
        let _p = self.op("attention_backward");
        dirty(&dqkv);
        dirty(&scratch);
        self.attn_bwd_with(k, dqkv, dout, qkv, scratch, d);
    }

    fn attention_cached(
        &self,
        out: View<CudaBuf>,
        qkv: View<CudaBuf>,
        k_cache: View<CudaBuf>,
        v_cache: View<CudaBuf>,
        d: AttnDims,
        pos0: usize,
        max_t: usize,
    ) {
        assert!(
            pos0 + d.t <= max_t,
            "KV cache overflow: {} > {max_t}",
            pos0 + d.t
        );
        let row_kv = d.n_kv * d.head_dim;
        assert!(k_cache.len >= d.b * max_t * row_kv && v_cache.len >= d.b * max_t * row_kv);
        let _p = self.op("attention_cached");
        dirty(&out);
        dirty(&k_cache);
        dirty(&v_cache);
        let n = d.b * d.t * row_kv;
        launch!(self, "k_kv_append", self.grid1(n), (256, 1, 1), 0;
            ptr(&k_cache), ptr(&v_cache), ptr(&qkv), d.b as i32, d.t as i32, d.n_head as i32, d.n_kv as i32,
            d.head_dim as i32, pos0 as i32, max_t as i32);
        let smem = ((pos0 + d.t) * 4) as u32;
        assert!(
            smem <= 48 * 1024,
            "cuda decode: {} cached positions exceed the 12288 supported",
            pos0 + d.t
        );
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        launch!(self, "k_attn_cached", ((d.b * d.t) as u32, d.n_head as u32, 1), (128, 1, 1), smem;
            ptr(&out), ptr(&qkv), ptr(&k_cache), ptr(&v_cache), d.t as i32, d.n_head as i32, d.n_kv as i32,
            d.head_dim as i32, pos0 as i32, max_t as i32, scale);
    }

    fn cross_entropy(
        &self,
        logits: View<CudaBuf>,
        losses: View<CudaBuf>,
        targets: &[u32],
        weights: &[f32],
        rows: usize,
        vocab: usize,
        softcap: Option<f32>,
        grad_scale: Option<f32>,
    ) {
        assert!(logits.len >= rows * vocab && losses.len >= rows && targets.len() >= rows);
        if let Some(&t) = targets[..rows].iter().find(|&&t| t as usize >= vocab) {
            panic!("target {t} out of vocab {vocab}");
        }
        let _p = self.op("cross_entropy");
        dirty(&losses);
        let tp = self.upload_u32(|s| &mut s.ids2, &targets[..rows]);
        let wp = if grad_scale.is_some() {
            assert!(weights.len() >= rows);
            self.upload_bytes(|s| &mut s.wts, weights.as_ptr() as *const u8, rows * 4)
        } else {
            0
        };
        // bf16-only logits (from `matmul_logits`): read them there, the gradient replaces them
        // in place (still bf16-only; without a gradient the logits are left as they are)
        if let Some(z16) = self.bf16_only(&logits, rows * vocab) {
            let vec = (vocab.is_multiple_of(8) && z16.is_multiple_of(16)) as i32;
            launch!(self, "k_cross_entropy_bf16", (rows as u32, 1, 1), (512, 1, 1), 0;
                z16, ptr(&losses), tp, wp, rows as i32, vocab as i32, softcap.unwrap_or(1.0),
                softcap.is_some() as i32, grad_scale.unwrap_or(0.0), grad_scale.is_some() as i32, vec);
            if grad_scale.is_some() {
                self.commit_bf16_result(&logits, rows * vocab);
            }
            return;
        }
        dirty(&logits);
        let bf = if grad_scale.is_some() {
            self.shadow_out(&logits, rows * vocab)
        } else {
            0
        };
        launch!(self, "k_cross_entropy", (rows as u32, 1, 1), (512, 1, 1), 0;
            ptr(&logits), ptr(&losses), tp, wp, rows as i32, vocab as i32, softcap.unwrap_or(1.0),
            softcap.is_some() as i32, grad_scale.unwrap_or(0.0), grad_scale.is_some() as i32, bf);
    }

    fn adamw(
        &self,
        p: View<CudaBuf>,
        g: View<CudaBuf>,
        m: View<CudaBuf>,
        v: View<CudaBuf>,
        h: AdamHyper,
    ) {
        assert!(g.len == p.len && m.len == p.len && v.len == p.len);
        let _p = self.op("adamw");
        dirty(&p);
        dirty(&m);
        dirty(&v);
        let bc1 = 1.0 - (h.beta1 as f64).powi(h.step as i32);
        let bc2 = 1.0 - (h.beta2 as f64).powi(h.step as i32);
        let step_size = (h.lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = 1.0 - h.lr * h.weight_decay;
        launch!(self, "k_adamw", self.grid1(p.len), (256, 1, 1), 0;
            ptr(&p), ptr(&g), ptr(&m), ptr(&v), p.len as i64, h.beta1, h.beta2, h.eps, decay, step_size, bc2_sqrt);
    }

    fn adamw_groups(&self, bufs: [&CudaBuf; 4], groups: &[(usize, usize, f32)], h: AdamHyper) {
        let [p, g, m, v] = bufs;
        let contiguous = groups.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0);
        let (Some(first), Some(last)) = (groups.first(), groups.last()) else {
            return;
        };
        let (off0, end) = (first.0, last.0 + last.1);
        if !self.adamw_multi() || !contiguous || groups.len() < 2 || end > u32::MAX as usize {
            for &(off, len, weight_decay) in groups {
                self.adamw(
                    View::new(p, off, len),
                    View::new(g, off, len),
                    View::new(m, off, len),
                    View::new(v, off, len),
                    AdamHyper { weight_decay, ..h },
                );
            }
            return;
        }
        let n = end - off0;
        let views = bufs.map(|b| View::new(b, off0, n));
        let _p = self.op("adamw");
        for i in [0, 2, 3] {
            dirty(&views[i]);
        }
        // per group: (end, decay bits) with decay = 1 - lr*wd in f32, as in `adamw`
        let tab: Vec<u32> = groups
            .iter()
            .flat_map(|&(off, len, wd)| [(off + len) as u32, (1.0 - h.lr * wd).to_bits()])
            .collect();
        let tp = self.upload_u32(|s| &mut s.ids2, &tab);
        let bc1 = 1.0 - (h.beta1 as f64).powi(h.step as i32);
        let bc2 = 1.0 - (h.beta2 as f64).powi(h.step as i32);
        let step_size = (h.lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        // the kernel indexes the whole buffers from element 0 (the table holds absolute ends)
        let base = bufs.map(|b| ptr(&View::new(b, 0, off0 + n)));
        launch!(self, "k_adamw_groups", self.grid1(n), (256, 1, 1), 0;
            base[0], base[1], base[2], base[3], tp, groups.len() as i32, off0 as i64, n as i64,
            h.beta1, h.beta2, h.eps, step_size, bc2_sqrt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_alignment_is_the_largest_power_of_two_up_to_256() {
        assert_eq!(align_of_ptr(0x7f00_0000_0000), 256);
        assert_eq!(align_of_ptr(0x7f00_0000_0010), 16);
        assert_eq!(align_of_ptr(0x7f00_0000_0006), 2);
        assert_eq!(align_of_ptr(0x7f00_0000_0180), 128);
    }

    /// Column-major `D = op(A) op(B) + bias[row]` as cuBLASLt defines it, from the layouts.
    fn colmajor_gemm(
        [la, lb, lc]: [(u64, u64, u64); 3],
        (ta, tb): (bool, bool),
        a: &[f32],
        b: &[f32],
        bias: &[f32],
    ) -> Vec<f32> {
        let at = |r: u64, c: u64| -> f32 {
            // element (r, c) of op(A), A stored la = (rows, cols, ld)
            let (r, c) = if ta { (c, r) } else { (r, c) };
            assert!(r < la.0 && c < la.1);
            a[(c * la.2 + r) as usize]
        };
        let bt = |r: u64, c: u64| -> f32 {
            let (r, c) = if tb { (c, r) } else { (r, c) };
            assert!(r < lb.0 && c < lb.1);
            b[(c * lb.2 + r) as usize]
        };
        let k = if ta { la.0 } else { la.1 };
        assert_eq!(k, if tb { lb.1 } else { lb.0 });
        let mut out = vec![0f32; (lc.2 * lc.1) as usize];
        for j in 0..lc.1 {
            for i in 0..lc.0 {
                let s: f32 = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
                out[(j * lc.2 + i) as usize] = s + bias[i as usize];
            }
        }
        out
    }

    #[test]
    fn lt_layouts_compute_the_row_major_product_with_a_per_column_bias() {
        let (m, n, k) = (5usize, 3usize, 4usize);
        let val = |i: usize| ((i * 7 % 11) as f32) - 5.0;
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let d = MatDims {
                m,
                n,
                k,
                trans_a: ta,
                trans_b: tb,
            };
            // our row-major a (m×k, or k×m if trans_a), b (k×n, or n×k if trans_b)
            let a: Vec<f32> = (0..m * k).map(val).collect();
            let b: Vec<f32> = (0..k * n).map(|i| val(i + 3)).collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            let ga = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
            let gb = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
            // cuBLASLt's A is our b (op T iff trans_b), its B our a (op T iff trans_a)
            let got = colmajor_gemm(lt_layouts(d), (tb, ta), &b, &a, &bias);
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|p| ga(i, p) * gb(p, j)).sum::<f32>() + bias[j];
                    assert_eq!(got[i * n + j], want, "ta={ta} tb={tb} ({i},{j})");
                }
            }
        }
    }

    #[test]
    fn a_bf16_only_region_is_one_stale_region_holding_it_until_written_back() {
        // the head matmul's logits [0, 600): cross-entropy reads them as bf16 while stale
        let mut st = vec![];
        push_stale(&mut st, 0, 600);
        assert!(stale_holds(&st, 0, 600));
        assert!(stale_holds(&st, 100, 200));
        assert!(!stale_holds(&st, 500, 200), "runs past the region");
        // the gradient replaces them in place: still one region, still bf16-only
        push_stale(&mut st, 0, 600);
        assert_eq!(st, vec![(0, 600)]);
        // an f32 access (a read) writes it back: the f32 path runs from then on
        assert_eq!(take_stale(&mut st, 0, 1, false), vec![(0, 600)]);
        assert!(!stale_holds(&st, 0, 600));
        // two adjacent regions do not make one bf16-only region
        push_stale(&mut st, 0, 300);
        push_stale(&mut st, 300, 300);
        assert!(!stale_holds(&st, 0, 600));
        assert!(stale_holds(&st, 300, 300));
    }

    #[test]
    fn stale_regions_are_taken_when_touched_and_superseded_when_covered() {
        let mut st = vec![];
        push_stale(&mut st, 100, 50);
        push_stale(&mut st, 300, 10);
        // a view that does not touch them takes nothing
        assert!(take_stale(&mut st, 0, 100, false).is_empty());
        assert!(take_stale(&mut st, 150, 150, false).is_empty());
        // a result slot covering [100, 150) exactly: nothing partial to write back
        assert!(take_stale(&mut st, 100, 50, true).is_empty());
        // a slot covering only part of it: the region must be written back first
        assert_eq!(take_stale(&mut st, 120, 100, true), vec![(100, 50)]);
        assert_eq!(st, vec![(300, 10)]);
        // any f32 use overlapping by one element takes the region
        assert_eq!(take_stale(&mut st, 309, 1, false), vec![(300, 10)]);
        assert!(st.is_empty());
        // a new result (slot, then commit) supersedes what it covers and writes back what it
        // only overlaps, so stale regions never overlap each other
        push_stale(&mut st, 10, 5);
        push_stale(&mut st, 30, 10);
        assert_eq!(take_stale(&mut st, 0, 35, true), vec![(30, 10)]);
        push_stale(&mut st, 0, 35);
        assert_eq!(st, vec![(0, 35)]);
    }

    #[test]
    fn gelu_aux_matrix_has_the_row_major_layout_of_the_output() {
        for (m, n, ta, tb) in [
            (5, 8, false, true),
            (96, 3072, false, false),
            (7, 64, true, true),
        ] {
            let d = MatDims {
                m,
                n,
                k: 4,
                trans_a: ta,
                trans_b: tb,
            };
            let [_, _, lc] = lt_layouts(d);
            // aux has D's column-major shape (our n rows, our m columns) and is packed like D:
            // element (j, r) at r * ld + j, the row-major index of our output (r, j)
            assert_eq!((lc.0, lc.1), (n as u64, m as u64));
            assert_eq!(lt_aux_ld(d), n as u64);
            assert!(
                lt_aux_ld(d).is_multiple_of(8),
                "cuBLASLt needs aux ld % 8 == 0"
            );
        }
    }

    #[test]
    fn epilogue_codes_are_distinct_and_only_gelu_writes_bf16() {
        let epis = [
            LtEpi::Bias(0),
            LtEpi::Bias(256),
            LtEpi::GeluAux { bias: 0, aux: 256 },
            LtEpi::GeluAux {
                bias: 512,
                aux: 256,
            },
            LtEpi::DGelu {
                aux: 256,
                bgrad: 0,
                bgrad_f32: false,
            },
            LtEpi::DGelu {
                aux: 256,
                bgrad: 512,
                bgrad_f32: false,
            },
            LtEpi::DGelu {
                aux: 256,
                bgrad: 512,
                bgrad_f32: true,
            },
        ];
        let codes: Vec<u8> = epis.iter().map(|e| e.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(
            epis.iter().map(|e| e.bf16_out()).collect::<Vec<_>>(),
            [false, false, true, true, true, true, true]
        );
        assert_eq!(
            LtEpi::DGelu {
                aux: 16,
                bgrad: 48,
                bgrad_f32: true
            }
            .extra_ptrs(),
            [16, 48]
        );
    }

    #[test]
    fn bf16_gemm_modes_round_trip_and_name_their_paths() {
        for m in [Bf16Gemm::F32Operands, Bf16Gemm::Bf16, Bf16Gemm::Bf16Cached] {
            assert_eq!(Bf16Gemm::from_code(m.code()), m);
        }
        assert_eq!(MatmulPath::Bf16(Bf16Gemm::Bf16Cached).name(), "bf16-cached");
        assert_eq!(
            MatmulPath::Bf16(Bf16Gemm::F32Operands).name(),
            "bf16-f32ops"
        );
        assert_eq!(MatmulPath::F32.name(), "f32");
    }

    #[test]
    fn the_bf16_conversion_kernel_is_in_the_base_module() {
        assert!(BASE_KERNELS.contains(&"k_to_bf16"));
        for k in ["k_from_bf16", "k_axpy_bf16"] {
            assert!(BASE_KERNELS.contains(&k));
            assert!(BASE_SOURCE.contains(&format!("void {k}(")));
        }
        assert!(BASE_SOURCE.contains("k_to_bf16("));
        // every kernel that can write a bf16 shadow takes the `bf` pointer last
        for k in [
            "k_norm_fwd",
            "k_norm_bwd_dx",
            "k_act_fwd",
            "k_act_bwd",
            "k_cross_entropy",
        ] {
            let at = BASE_SOURCE.find(&format!("void {k}(")).unwrap();
            let sig = &BASE_SOURCE[at..at + BASE_SOURCE[at..].find(')').unwrap()];
            assert!(sig.ends_with("unsigned short* bf"), "{k}: {sig}");
        }
    }
}
