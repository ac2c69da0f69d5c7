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
//!   matmuls. Fallbacks: per-call conversion into scratch when a shadow cannot be allocated, f32
//!   operands (`FAST_16BF`) once cuBLAS refused a bf16 GEMM.
//! - What a user chooses is [`CudaOptions`] (the precision); every other path is the measured
//!   fastest (`scripts/gpu/NOTES.md`). No environment variable changes what runs; the only one
//!   read is `KILN_CUDA_CACHE`, the PTX cache folder (`compile.rs`).
//! - Files: `pool.rs` (memory, buffers, bf16 shadows), `blas.rs` (cuBLAS/cuBLASLt),
//!   `attention.rs`, `compile.rs` (NVRTC + PTX cache), `ops.rs` (the [`Backend`] impl); this file
//!   holds the backend struct, its construction and the launch helpers.
//! - Attention is flash-style (no T×T matrix): online softmax forward saving the log-sum-exp,
//!   backward recomputing probabilities in two kernels (dQ per query; dK/dV per key, summing a GQA
//!   group's query heads without atomics). [`AttnKernel`]: `v2` in f32 on CUDA cores (the f32
//!   and tf32 path, exact to ~1e-6) and `tc2` on tensor cores (`attention_tc.cu`: bf16 copies of
//!   q/k/v and dout kept in the attention scratch, fp32 accumulation, cp.async double-buffered
//!   tiles; the bf16 path for head dims in [`TC_HEAD_DIMS`] on sm_80+, self-tested against v2 on
//!   first use and replaced by v2 with a warning if they disagree or cannot run).
//! - The variants that lost the measurements (attention v1 and tc, per-call bf16 operands and f32
//!   operands as modes, the unfused bias/GELU/logits/AdamW paths as switches) are in `dev/cuda/`.
//! - One stream; every op is enqueued on it and `read`/`sum_squares` synchronize, which gives the
//!   trait's "synchronous from the caller's view" semantics. Buffers come from a small pool keyed
//!   by length, so per-step allocations (decode logits) do not hit `cuMemAlloc`/`cuMemFree`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::result as cublas;
use cudarc::cublaslt::result as lt;
use cudarc::driver::{
    result as drv, CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};

use crate::backend::{
    Act, AdamHyper, AttnDims, Backend, MatDims, NormKind, QkPrep, SharedPrefix, View,
};
use crate::EngineError;

pub use crate::backend::Precision;

/// What a user chooses for the cuda backend: the matmul arithmetic (the CLI's `--precision`).
/// Everything else is the measured fastest path (`scripts/gpu/NOTES.md`): in bf16, cached bf16
/// operand shadows, cuBLASLt bias/GELU epilogues, bf16 logits and the tc2 attention; in f32/tf32
/// the exact v2 attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    pub precision: Precision,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            precision: Precision::Bf16,
        }
    }
}

fn derr(what: &str, e: impl std::fmt::Debug) -> EngineError {
    EngineError::Backend(format!("cuda: {what}: {e:?}"))
}

/// Growable device scratch for host-side inputs (token ids, weights) and reductions.
struct Scratch {
    ids: (u64, usize),
    ids2: (u64, usize),
    /// Per-row slots and positions of a ragged decode step.
    rows: (u64, usize),
    wts: (u64, usize),
    /// bf16 operand scratch (A, B) for operands whose shadow could not be allocated.
    bf: [(u64, usize); 2],
    red: u64,
}

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
    /// cuBLAS refused a bf16-operand GEMM: bf16 matmuls use f32 operands from then on
    /// ([`Bf16Gemm::F32Operands`]).
    f32_operands: std::sync::atomic::AtomicBool,
    /// cuBLASLt, created on first use (`Some(None)`: unavailable).
    lt: Mutex<Option<Option<LtState>>>,
    /// Calls that asked for cuBLASLt and fell back to cuBLAS + separate kernels.
    lt_fallbacks: std::sync::atomic::AtomicU64,
    /// Shared with every buffer: writes stale f32 regions back from their bf16 shadow.
    mat: Arc<Materializer>,
    sms: u32,
    device_name: String,
    /// Per-op timing (each op synchronizes when on): name → (seconds, calls).
    profiling: std::sync::atomic::AtomicBool,
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

// Split by concern; each file's `//!` says what it owns. The children see this module's private
// items (the backend's fields, `launch!`, `derr`); this module sees theirs through the globs.
mod attention;
mod blas;
mod compile;
mod ops;
mod pool;

pub use attention::{AttnKernel, TC_HEAD_DIMS};
pub use blas::{Bf16Gemm, MatmulPath};
pub use compile::{
    attention_kernels, attention_source, cached_ptx, compile, ATTN_HEAD_DIMS, BASE_KERNELS,
    BASE_SOURCE, TC2_CVT,
};
pub use pool::CudaBuf;
#[allow(unused_imports)]
use {attention::*, blas::*, compile::*, pool::*};

impl CudaBackend {
    /// Open device `ordinal`, compile the kernels, create the cuBLAS handle.
    pub fn new(ordinal: usize, opts: CudaOptions) -> Result<Self, EngineError> {
        let CudaOptions { precision } = opts;
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
        let handle = std::panic::catch_unwind(cublas::create_handle)
            .map_err(|_| EngineError::Backend("cuda: could not load libcublas (add the CUDA toolkit's lib64 to LD_LIBRARY_PATH)".into()))?
            .map_err(|e| derr("cublasCreate", e))?;
        // SAFETY: valid handle and stream of this context.
        unsafe { cublas::set_stream(handle, stream.cu_stream() as _) }
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
                rows: (0, 0),
                wts: (0, 0),
                bf: [(0, 0); 2],
                red,
            }),
            precision,
            f32_operands: std::sync::atomic::AtomicBool::new(false),
            lt: Mutex::new(None),
            lt_fallbacks: std::sync::atomic::AtomicU64::new(0),
            mat,
            sms,
            device_name,
            profiling: std::sync::atomic::AtomicBool::new(false),
            tc2_ok: Mutex::new(HashMap::new()),
            tc2_fresh: Mutex::new(HashMap::new()),
            profile: Mutex::new(HashMap::new()),
        })
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
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        let sc = self.scratch.get_mut().unwrap_or_else(|e| e.into_inner());
        // SAFETY: idle after synchronize; these pointers are owned here.
        unsafe {
            for p in [
                sc.ids.0, sc.ids2.0, sc.rows.0, sc.wts.0, sc.bf[0].0, sc.bf[1].0, sc.red,
            ] {
                if p != 0 {
                    let _ = drv::free_sync(p);
                }
            }
            let _ =
                cublas::destroy_handle(self.blas.get_mut().unwrap_or_else(|e| e.into_inner()).0);
            if let Some(Some(st)) = self.lt.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = lt::destroy_handle(st.handle);
                let _ = drv::free_sync(st.ws);
            }
        }
    }
}
