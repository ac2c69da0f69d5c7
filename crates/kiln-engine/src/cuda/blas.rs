//! Matmuls: cuBLAS (`sgemm`, `gemmEx` with bf16 operands) and cuBLASLt (bias / GELU / DGELU
//! epilogues, bf16 results), the operand paths ([`Bf16Gemm`]) and their fallbacks.

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::cublaslt::{result as lt, sys as lt_sys};

use super::*;

/// How bf16-precision matmuls feed cuBLAS: `Bf16Cached`, or `F32Operands` after cuBLAS refused a
/// bf16 GEMM. Only used in [`Precision::Bf16`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Gemm {
    /// f32 operands, `CUBLAS_COMPUTE_32F_FAST_16BF`: cuBLAS rounds while loading (the fallback).
    F32Operands,
    /// The bf16 copy (`k_to_bf16`, round to nearest even) of an operand region is kept in a
    /// per-buffer shadow and reused until any op writes to that buffer (weights between optimizer
    /// steps; activations between forward and backward; a gradient between its dX and dW
    /// matmuls); bf16 × bf16 → f32 GEMM.
    Bf16Cached,
}

impl Bf16Gemm {
    pub fn name(self) -> &'static str {
        match self {
            Bf16Gemm::F32Operands => "f32ops",
            Bf16Gemm::Bf16Cached => "cached",
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
    /// `f32`, `tf32`, `bf16-f32ops`, `bf16-cached`.
    pub fn name(self) -> String {
        match self {
            MatmulPath::F32 => "f32".into(),
            MatmulPath::Tf32 => "tf32".into(),
            MatmulPath::Bf16(m) => format!("bf16-{}", m.name()),
        }
    }
}

/// cuBLASLt for the fused bias epilogue ([`Backend::matmul_bias`] in bf16 precision): handle,
/// workspace, and the heuristic's algorithm per problem (`None`: no algorithm, use the fallback).
pub(super) struct LtState {
    pub(super) handle: lt_sys::cublasLtHandle_t,
    pub(super) ws: u64,
    pub(super) ws_size: usize,
    pub(super) algos: HashMap<LtKey, Option<lt_sys::cublasLtMatmulAlgo_t>>,
}

// SAFETY: the handle is only used under the backend's mutex.
unsafe impl Send for LtState {}

unsafe impl Sync for LtState {}

/// (m, n, k, trans_a, trans_b, beta != 0, [`LtEpi::code`], alignment of a, b, c, d in bytes).
pub(super) type LtKey = (usize, usize, usize, bool, bool, bool, u8, [u32; 4]);

/// What one cuBLASLt call fuses after the product (device pointers; 0: absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LtEpi {
    /// f32 C/D, `+ bias` (f32, per column of our row-major output) when non-zero.
    Bias(u64),
    /// bf16 C/D `= gelu_tanh(acc + bias)` and bf16 `aux = acc + bias` (`[m, n]` row-major, ld
    /// `n`), `bias` bf16 (`GELU_AUX_BIAS`; `GELU_AUX` without one).
    GeluAux { bias: u64, aux: u64 },
    /// bf16 C/D `= acc * gelu_tanh'(aux)` (`DGELU`), aux as written by [`LtEpi::GeluAux`].
    /// (Not `DGELU_BGRAD`: its bias-gradient reduction made the call ~3× slower than the plain
    /// epilogue on H100 and H200; `k_col_sum_bf16` sums the bias gradient after it.)
    DGelu { aux: u64 },
}

impl LtEpi {
    pub(super) fn code(self) -> u8 {
        match self {
            LtEpi::Bias(b) => (b != 0) as u8,
            LtEpi::GeluAux { bias, .. } => 2 + (bias != 0) as u8,
            LtEpi::DGelu { .. } => 4,
        }
    }
    /// D (and C) are bf16.
    pub(super) fn bf16_out(self) -> bool {
        !matches!(self, LtEpi::Bias(_))
    }
    /// Pointers cuBLASLt reads or writes besides A, B, C, D (16-byte alignment required here).
    pub(super) fn extra_ptrs(self) -> [u64; 2] {
        match self {
            LtEpi::Bias(b) => [b, 0],
            LtEpi::GeluAux { bias, aux } => [bias, aux],
            LtEpi::DGelu { aux } => [aux, 0],
        }
    }
}

/// The cuBLASLt objects of one call, destroyed on drop.
pub(super) struct LtObjs {
    pub(super) desc: lt_sys::cublasLtMatmulDesc_t,
    pub(super) layouts: [lt_sys::cublasLtMatrixLayout_t; 3],
    pub(super) pref: lt_sys::cublasLtMatmulPreference_t,
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
pub(super) fn lt_layouts(d: MatDims) -> [(u64, u64, u64); 3] {
    let (m, n, k) = (d.n as u64, d.m as u64, d.k as u64);
    let la = if d.trans_b { (k, m, k) } else { (m, k, m) };
    let lb = if d.trans_a { (n, k, n) } else { (k, n, k) };
    [la, lb, (m, n, m)]
}

/// Leading dimension of a GELU epilogue's aux matrix: it has D's column-major shape (our `n`
/// rows per column, one column per row of our row-major output), packed like D.
pub(super) fn lt_aux_ld(d: MatDims) -> u64 {
    lt_layouts(d)[2].2
}

/// Largest power of two (≤ 256) dividing a device address: what cuBLASLt may assume.
pub(super) fn align_of_ptr(p: u64) -> u32 {
    1u32 << p.trailing_zeros().min(8)
}

pub(super) struct BlasHandle(pub(super) blas_sys::cublasHandle_t);

// SAFETY: the handle is only used under the backend's mutex.
unsafe impl Send for BlasHandle {}

unsafe impl Sync for BlasHandle {}

impl CudaBackend {
    /// Do head matmuls write bf16-only logits now (cached bf16 operands)?
    pub fn bf16_logits(&self) -> bool {
        self.matmul_path() == MatmulPath::Bf16(Bf16Gemm::Bf16Cached)
    }

    /// Can the GELU epilogues run now (cached bf16 operands, cuBLASLt on and available)?
    pub(super) fn lt_gelu_possible(&self, act: Act) -> bool {
        act == Act::GeluTanh
            && self.bf16_gemm() == Bf16Gemm::Bf16Cached
            && self.matmul_bias_path() == "lt-bias"
    }

    /// Do producers of matmul inputs write their bf16 shadows now (cached bf16 operands)?
    pub fn fused_bf16(&self) -> bool {
        self.matmul_path() == MatmulPath::Bf16(Bf16Gemm::Bf16Cached)
    }

    /// What [`Backend::matmul`] runs now.
    pub fn matmul_path(&self) -> MatmulPath {
        match self.precision {
            Precision::F32 => MatmulPath::F32,
            Precision::Tf32 => MatmulPath::Tf32,
            Precision::Bf16 => MatmulPath::Bf16(self.bf16_gemm()),
        }
    }

    /// How bf16 matmuls get their operands (see [`Bf16Gemm`]).
    pub fn bf16_gemm(&self) -> Bf16Gemm {
        if self.f32_operands.load(std::sync::atomic::Ordering::Relaxed) {
            Bf16Gemm::F32Operands
        } else {
            Bf16Gemm::Bf16Cached
        }
    }

    /// What [`Backend::matmul_bias`] runs now: `lt-bias` (one fused cuBLASLt call, unless cuBLASLt
    /// has no algorithm for a shape: then that shape falls back with a warning) or
    /// `matmul+add_bias` (also once cuBLASLt turned out to be unavailable).
    pub fn matmul_bias_path(&self) -> &'static str {
        match self.matmul_path() {
            MatmulPath::Bf16(m)
                if m != Bf16Gemm::F32Operands
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

    pub(super) fn lt_create(&self) -> Option<LtState> {
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
    pub(super) fn lt_gemm_bias(
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
    pub(super) fn lt_try(
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
    pub(super) unsafe fn lt_call(
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
            LtEpi::DGelu { aux } => (Some(E::CUBLASLT_EPILOGUE_DGELU), 0, aux),
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
    pub(super) fn gemm(
        &self,
        d: MatDims,
        alpha: f32,
        beta: f32,
        a: u64,
        b: u64,
        c: u64,
        bf16_ops: bool,
    ) {
        self.gemm_raw(d, alpha, beta, a, b, c, bf16_ops, false)
            .unwrap_or_else(|e| panic!("cuda: gemm {d:?}: {e}"));
    }

    /// The bf16 × bf16 GEMM on converted operands `pa`, `pb`; should cuBLAS refuse it, the f32
    /// operands `a`, `b` go through `CUBLAS_COMPUTE_32F_FAST_16BF` instead and the backend stays on
    /// that path ([`Bf16Gemm::F32Operands`]) with a warning.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm_bf16(
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
            self.f32_operands
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.gemm(d, alpha, beta, ptr(a), ptr(b), c, false);
        }
    }

    /// `out_bf16` (with `bf16_ops` only): `c` points at bf16 (bf16 × bf16 → bf16, fp32 compute).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm_raw(
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
            LtEpi::DGelu { aux: 256 },
        ];
        let codes: Vec<u8> = epis.iter().map(|e| e.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
        assert_eq!(
            epis.iter().map(|e| e.bf16_out()).collect::<Vec<_>>(),
            [false, false, true, true, true]
        );
        assert_eq!(LtEpi::DGelu { aux: 16 }.extra_ptrs(), [16, 0]);
    }

    #[test]
    fn matmul_paths_name_their_operands() {
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
        for k in ["k_from_bf16", "k_col_sum_bf16"] {
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
