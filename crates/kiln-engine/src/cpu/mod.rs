//! The cpu backend: the reference implementation of [`Backend`]. Matmuls (including the attention
//! score/value products, per head) go to kiln's AVX-512 [`sgemm`] (the `gemm` crate without
//! AVX-512 and for vector-shaped products); everything else is fused row kernels
//! parallelized with rayon. Reductions over rows (weight/bias gradients) are split by column
//! chunks so no thread-local buffers are needed: nothing here allocates inside a training step
//! except the attention-backward workspace, which grows once and is reused.

pub mod attn;
mod kernels;
pub mod quant;
pub mod sgemm;
mod skinny;
pub(crate) mod vmath;

use std::sync::Mutex;

use crate::backend::{
    Act, AdamHyper, AttnDims, Backend, MatDims, NormKind, QkPrep, SharedPrefix, View,
};
use crate::EngineError;

/// A cpu buffer of f32s. Written through shared references (like a device pointer): the ops
/// check that the views they write do not overlap the views they read.
pub struct CpuBuf {
    ptr: *mut f32,
    len: usize,
    /// Where the memory came from, to give it back.
    origin: Origin,
}

enum Origin {
    Boxed,
    /// An anonymous mapping with transparent huge pages requested, held for its drop (which
    /// unmaps it); `ptr` points into it.
    #[cfg(target_os = "linux")]
    Mapped(#[allow(dead_code)] crate::hugemem::HugeMem),
}

// SAFETY: the buffer is plain memory; concurrent access is governed by the ops, which only ever
// hand out disjoint mutable regions (checked in `check`).
unsafe impl Send for CpuBuf {}
unsafe impl Sync for CpuBuf {}

/// Buffers from this size up are mapped on 2 MiB huge pages where the kernel allows it
/// (`madvise` mode): the GEMM's packing walks activations with row strides of kilobytes, and
/// with 4 KiB pages nearly every row is a TLB miss once the step's ~100 MB no longer fit the TLB
/// (~2.5% of a `cpu-small` step in an interleaved A/B). Where mmap fails, the heap.
#[cfg(target_os = "linux")]
const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

impl CpuBuf {
    fn new(len: usize) -> CpuBuf {
        #[cfg(target_os = "linux")]
        if len * 4 >= HUGE_PAGE_MIN_BYTES {
            if let Some(b) = Self::mapped(len) {
                return b;
            }
        }
        let b: Box<[f32]> = vec![0f32; len].into_boxed_slice();
        CpuBuf {
            ptr: Box::into_raw(b) as *mut f32,
            len,
            origin: Origin::Boxed,
        }
    }

    /// A zeroed mapping on huge pages ([`crate::hugemem`]); None if mmap fails (the caller
    /// falls back to the heap).
    #[cfg(target_os = "linux")]
    fn mapped(len: usize) -> Option<CpuBuf> {
        let mem = crate::hugemem::HugeMem::new(len.checked_mul(4)?)?;
        Some(CpuBuf {
            ptr: mem.as_mut_ptr() as *mut f32,
            len,
            origin: Origin::Mapped(mem),
        })
    }
}

impl Drop for CpuBuf {
    fn drop(&mut self) {
        match self.origin {
            // SAFETY: ptr/len come from Box::into_raw of a boxed slice of exactly this length.
            Origin::Boxed => unsafe {
                drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.ptr, self.len,
                )))
            },
            // The mapping unmaps itself.
            #[cfg(target_os = "linux")]
            Origin::Mapped(_) => {}
        }
    }
}

/// Read-only slice of a view.
pub(crate) fn r<'a>(v: View<'a, CpuBuf>) -> &'a [f32] {
    assert!(
        v.off + v.len <= v.buf.len,
        "view {}+{} out of buffer {}",
        v.off,
        v.len,
        v.buf.len
    );
    // SAFETY: in bounds; writers never overlap readers (checked per op).
    unsafe { std::slice::from_raw_parts(v.buf.ptr.add(v.off), v.len) }
}

/// Mutable slice of a view.
#[allow(clippy::mut_from_ref)]
pub(crate) fn w<'a>(v: View<'a, CpuBuf>) -> &'a mut [f32] {
    assert!(
        v.off + v.len <= v.buf.len,
        "view {}+{} out of buffer {}",
        v.off,
        v.len,
        v.buf.len
    );
    // SAFETY: in bounds; `check` guarantees no other live view of this call overlaps it.
    unsafe { std::slice::from_raw_parts_mut(v.buf.ptr.add(v.off), v.len) }
}

/// Panics if any output view overlaps any other view of the same call.
fn check(outs: &[View<CpuBuf>], ins: &[View<CpuBuf>]) {
    for (i, o) in outs.iter().enumerate() {
        for (j, x) in outs.iter().enumerate() {
            if i != j {
                overlap(o, x);
            }
        }
        ins.iter().for_each(|x| overlap(o, x));
    }
}

fn overlap(o: &View<CpuBuf>, x: &View<CpuBuf>) {
    if std::ptr::eq(o.buf, x.buf)
        && o.off < x.off + x.len
        && x.off < o.off + o.len
        && o.len > 0
        && x.len > 0
    {
        panic!(
            "cpu backend: output view {}+{} overlaps view {}+{}",
            o.off, o.len, x.off, x.len
        );
    }
}

/// [`check`] over optional views (no allocation; used on the hot path).
fn check_opt(outs: &[Option<View<CpuBuf>>], ins: &[Option<View<CpuBuf>>]) {
    for (i, o) in outs.iter().enumerate() {
        let Some(o) = o else { continue };
        let others = outs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, v)| v)
            .chain(ins.iter())
            .flatten();
        for x in others {
            if std::ptr::eq(o.buf, x.buf)
                && o.off < x.off + x.len
                && x.off < o.off + o.len
                && o.len > 0
                && x.len > 0
            {
                panic!(
                    "cpu backend: output view {}+{} overlaps view {}+{}",
                    o.off, o.len, x.off, x.len
                );
            }
        }
    }
}

/// The cpu backend. `threads` is passed to `gemm`; the other kernels use the current rayon pool.
pub struct CpuBackend {
    pub threads: usize,
    work: Mutex<Option<CpuBuf>>,
}

impl CpuBackend {
    pub fn new(threads: usize) -> Self {
        CpuBackend {
            threads: threads.max(1),
            work: Mutex::new(None),
        }
    }

    /// One thread per available core (rayon's global pool size).
    pub fn default_threads() -> Self {
        Self::new(rayon::current_num_threads())
    }

    fn par(&self) -> gemm::Parallelism {
        if self.threads > 1 {
            gemm::Parallelism::Rayon(self.threads)
        } else {
            gemm::Parallelism::None
        }
    }
}

/// Whether kiln's AVX-512 [`sgemm`] runs on this thread: [`vmath::isa`] (the CPU, capped by
/// `KILN_SIMD`, or a test's per-thread override) is AVX-512; else the `gemm` crate does.
#[inline]
pub(crate) fn use_sgemm() -> bool {
    vmath::isa() == vmath::Isa::Avx512
}

/// A strided matrix (element (i, j) at `ptr + i·rs + j·cs`), for sgemm and the `gemm` crate.
pub(crate) use sgemm::StridedRef as Mat;

/// Whether [`gemm_raw`] sends an m×n×k product to kiln's sgemm.
fn sgemm_takes(m: usize, n: usize, k: usize) -> bool {
    m >= 8 && n >= 16 && k >= 8 && use_sgemm()
}

/// `c = alpha * a @ b + beta * c`, raw strided (c row stride `c_rs`, col stride 1).
///
/// # Safety
/// All pointers must be valid for the given shapes/strides; `c` must not alias `a`/`b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: isize,
    a: Mat,
    b: Mat,
    alpha: f32,
    beta: f32,
    par: gemm::Parallelism,
) {
    // Decode's few-row products with a weight (1–64 rows): the unpacked dot-product kernel.
    // kiln's AVX-512 kernel for everything else matrix-shaped; the `gemm` crate for the other
    // vector-shaped products, where packing would cost more than it saves, and on CPUs without
    // AVX-512.
    let threads = match par {
        gemm::Parallelism::Rayon(t) => t,
        _ => 1,
    };
    if skinny::takes(m, k, a, b) {
        skinny::skinny(m, n, k, alpha, a, b, beta, c, c_rs as usize, threads);
        return;
    }
    if sgemm_takes(m, n, k) {
        sgemm::sgemm(m, n, k, alpha, a, b, beta, c, c_rs as usize, threads);
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        c_rs,
        beta != 0.0,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        beta,
        alpha,
        false,
        false,
        false,
        par,
    );
}

/// `op(a)` and `op(b)` of a [`MatDims`] product as strided matrices, after checking that the
/// views hold the shapes (`c` is the m×n output).
fn operands(c: View<CpuBuf>, a: View<CpuBuf>, b: View<CpuBuf>, d: MatDims) -> (Mat, Mat) {
    assert!(
        a.len >= d.m * d.k && b.len >= d.k * d.n && c.len >= d.m * d.n,
        "matmul shape {d:?}"
    );
    // a logical rows×cols matrix, stored row-major or (transposed) column-major
    let mat = |v: View<CpuBuf>, transposed: bool, rows: usize, cols: usize| Mat {
        ptr: r(v).as_ptr(),
        rs: if transposed { 1 } else { cols as isize },
        cs: if transposed { rows as isize } else { 1 },
    };
    (mat(a, d.trans_a, d.m, d.k), mat(b, d.trans_b, d.k, d.n))
}

/// `c = alpha · op(a) @ op(b) + beta · c` for the sgemm, `c` row-major with `d.n` columns (shapes
/// checked as in [`operands`]).
fn product(
    c: View<CpuBuf>,
    a: View<CpuBuf>,
    b: View<CpuBuf>,
    d: MatDims,
    alpha: f32,
    beta: f32,
) -> sgemm::Product {
    let (am, bm) = operands(c, a, b, d);
    sgemm::Product {
        m: d.m,
        n: d.n,
        k: d.k,
        alpha,
        a: am,
        b: bm,
        beta,
        c: w(c).as_mut_ptr(),
        ldc: d.n,
    }
}

/// Rows of an `n`-column row-major matrix shared with a GEMM's row epilogue, which touches each
/// row from one task only.
#[derive(Clone, Copy)]
struct Rows {
    ptr: *mut f32,
    n: usize,
}
// SAFETY: each epilogue call touches its own row (sgemm calls it once per row).
unsafe impl Send for Rows {}
unsafe impl Sync for Rows {}

impl Rows {
    fn of(v: View<CpuBuf>, n: usize) -> Rows {
        Rows {
            ptr: w(v).as_mut_ptr(),
            n,
        }
    }
    /// For a matrix the epilogue only reads.
    fn of_input(v: View<CpuBuf>, n: usize) -> Rows {
        Rows {
            ptr: r(v).as_ptr().cast_mut(),
            n,
        }
    }
    /// Columns `[j0, j0 + cols)` of row i, read only.
    ///
    /// # Safety
    /// In bounds, and nothing writing that part of the row meanwhile.
    unsafe fn row_ref(&self, i: usize, j0: usize, cols: usize) -> &[f32] {
        std::slice::from_raw_parts(self.ptr.add(i * self.n + j0), cols)
    }
    /// Columns `[j0, j0 + cols)` of row i.
    ///
    /// # Safety
    /// In bounds, and no other live reference to that part of the row.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, i: usize, j0: usize, cols: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.ptr.add(i * self.n + j0), cols)
    }
}

impl CpuBackend {
    /// `c = alpha · op(a) @ op(b) + beta · c` on kiln's sgemm with `epilogue` run on each row of
    /// c as soon as it is final (while its block is in L2), when sgemm takes this product; else
    /// false and nothing done (the caller runs the separate passes).
    #[allow(clippy::too_many_arguments)]
    fn matmul_then_rows(
        &self,
        c: View<CpuBuf>,
        a: View<CpuBuf>,
        b: View<CpuBuf>,
        d: MatDims,
        alpha: f32,
        beta: f32,
        epilogue: sgemm::RowEpilogue,
    ) -> bool {
        let p = product(c, a, b, d, alpha, beta);
        if !sgemm_takes(d.m, d.n, d.k) || skinny::takes(d.m, d.k, p.a, p.b) {
            return false;
        }
        // SAFETY: shapes checked in `product`; callers check c overlaps no input.
        unsafe { sgemm::sgemm_then_rows(p, self.threads, epilogue) };
        true
    }
}

impl Backend for CpuBackend {
    type Buf = CpuBuf;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn shares_kv_prefix(&self) -> bool {
        true
    }

    fn label(&self) -> String {
        format!("cpu ({} threads, f32)", rayon::current_num_threads())
    }

    fn alloc(&self, len: usize) -> Result<CpuBuf, EngineError> {
        Ok(CpuBuf::new(len))
    }

    fn buf_len(&self, buf: &CpuBuf) -> usize {
        buf.len
    }

    fn write(&self, dst: View<CpuBuf>, src: &[f32]) {
        w(dst).copy_from_slice(src);
    }

    fn read(&self, src: View<CpuBuf>, dst: &mut [f32]) {
        dst.copy_from_slice(r(src));
    }

    fn fill(&self, dst: View<CpuBuf>, value: f32) {
        kernels::par_map(w(dst), |x| *x = value);
    }

    fn copy(&self, dst: View<CpuBuf>, src: View<CpuBuf>) {
        check(&[dst], &[src]);
        w(dst).copy_from_slice(r(src));
    }

    fn axpy(&self, y: View<CpuBuf>, alpha: f32, x: View<CpuBuf>) {
        check(&[y], &[x]);
        kernels::par_zip(w(y), r(x), |y, x| *y += alpha * x);
    }

    fn scale(&self, x: View<CpuBuf>, s: f32) {
        kernels::par_map(w(x), |x| *x *= s);
    }

    fn sum_squares(&self, x: View<CpuBuf>) -> f64 {
        kernels::sum_squares(r(x))
    }

    fn matmul(
        &self,
        c: View<CpuBuf>,
        a: View<CpuBuf>,
        b: View<CpuBuf>,
        d: MatDims,
        alpha: f32,
        beta: f32,
    ) {
        check(&[c], &[a, b]);
        let (am, bm) = operands(c, a, b, d);
        // SAFETY: shapes checked in `operands`; c does not overlap a or b (checked).
        unsafe {
            gemm_raw(
                d.m,
                d.n,
                d.k,
                w(c).as_mut_ptr(),
                d.n as isize,
                am,
                bm,
                alpha,
                beta,
                self.par(),
            )
        }
    }

    // The fused forms below give bit for bit what the trait's default passes give (the same
    // row functions on the same values), with the bias and activation applied to each row of the
    // product while it is still in cache.
    fn matmul_bias(
        &self,
        c: View<CpuBuf>,
        a: View<CpuBuf>,
        b: View<CpuBuf>,
        bias: Option<View<CpuBuf>>,
        d: MatDims,
        alpha: f32,
        beta: f32,
    ) {
        check_opt(&[Some(c)], &[Some(a), Some(b), bias]);
        if let Some(bias) = bias {
            let bias = &r(bias)[..d.n];
            let cr = Rows::of(c, d.n);
            // SAFETY: row i of c is final and touched by this call only.
            let epi = |i: usize, j0: usize, cols: usize| unsafe {
                kernels::add_bias_rows(cr.row(i, j0, cols), &bias[j0..j0 + cols])
            };
            if self.matmul_then_rows(c, a, b, d, alpha, beta, &epi) {
                return;
            }
        }
        self.matmul(c, a, b, d, alpha, beta);
        if let Some(bias) = bias {
            self.add_bias(c, bias, d.m, d.n);
        }
    }

    fn matmul_bias_act(
        &self,
        act: Act,
        out: View<CpuBuf>,
        pre: View<CpuBuf>,
        a: View<CpuBuf>,
        b: View<CpuBuf>,
        bias: Option<View<CpuBuf>>,
        d: MatDims,
    ) {
        let mn = d.m * d.n;
        check_opt(&[Some(out), Some(pre)], &[Some(a), Some(b), bias]);
        assert!(out.len >= mn, "matmul_bias_act: out shorter than {mn}");
        let bias_host = bias.map(|b| &r(b)[..d.n]);
        let (pr, or) = (Rows::of(pre, d.n), Rows::of(out, d.n));
        let f = kernels::act_row_forward(act);
        // SAFETY: row i of pre is final and touched by this call only; out's row i likewise.
        let epi = |i: usize, j0: usize, cols: usize| unsafe {
            let p = pr.row(i, j0, cols);
            if let Some(bias) = bias_host {
                kernels::add_bias_rows(p, &bias[j0..j0 + cols]);
            }
            f(or.row(i, j0, cols), p);
        };
        if self.matmul_then_rows(pre, a, b, d, 1.0, 0.0, &epi) {
            return;
        }
        self.matmul_bias(pre, a, b, bias, d, 1.0, 0.0);
        self.act_forward(act, out.sub(0, mn), pre.sub(0, mn));
    }

    fn matmul_act_backward(
        &self,
        act: Act,
        dpre: View<CpuBuf>,
        dact: View<CpuBuf>,
        dbias: Option<View<CpuBuf>>,
        a: View<CpuBuf>,
        b: View<CpuBuf>,
        pre: View<CpuBuf>,
        d: MatDims,
    ) {
        let mn = d.m * d.n;
        check_opt(
            &[Some(dpre), Some(dact), dbias],
            &[Some(a), Some(b), Some(pre)],
        );
        assert!(dpre.len >= mn && pre.len >= mn);
        let (dr, gr, pr) = (
            Rows::of(dpre, d.n),
            Rows::of(dact, d.n),
            Rows::of_input(pre, d.n),
        );
        let f = kernels::act_row_backward(act);
        // SAFETY: row i of dact (the product) is final and only read here; dpre's row i is this
        // call's; pre is only read.
        let epi = |i: usize, j0: usize, cols: usize| unsafe {
            f(
                dr.row(i, j0, cols),
                gr.row_ref(i, j0, cols),
                pr.row_ref(i, j0, cols),
            )
        };
        if !self.matmul_then_rows(dact, a, b, d, 1.0, 0.0, &epi) {
            self.matmul(dact, a, b, d, 1.0, 0.0);
            self.act_backward(act, dpre.sub(0, mn), dact.sub(0, mn), pre.sub(0, mn));
        }
        if let Some(dbias) = dbias {
            self.bias_backward(dbias, dpre, d.m, d.n);
        }
    }

    fn matmul_wgrad_bias(
        &self,
        dw: View<CpuBuf>,
        dbias: Option<View<CpuBuf>>,
        a: View<CpuBuf>,
        b: View<CpuBuf>,
        d: MatDims,
    ) {
        let Some(dbias) = dbias.filter(|_| d.trans_a && sgemm_takes(d.m, d.n, d.k)) else {
            return crate::backend::wgrad_then_bias_backward(self, dw, dbias, a, b, d);
        };
        check(&[dw, dbias], &[a, b]);
        assert!(dbias.len >= d.m, "bias gradient shorter than {} rows", d.m);
        let p = product(dw, a, b, d, 1.0, 1.0);
        // SAFETY: shapes checked in `product` and above; the outputs overlap no input and each
        // other (checked).
        unsafe { sgemm::sgemm_with_a_row_sums(p, self.threads, w(dbias).as_mut_ptr()) }
    }

    fn add_bias(&self, out: View<CpuBuf>, bias: View<CpuBuf>, rows: usize, cols: usize) {
        check(&[out], &[bias]);
        kernels::add_bias(w(out), r(bias), rows, cols);
    }

    fn bias_backward(&self, dbias: View<CpuBuf>, dout: View<CpuBuf>, rows: usize, cols: usize) {
        check(&[dbias], &[dout]);
        kernels::bias_backward(w(dbias), r(dout), rows, cols);
    }

    fn embedding_forward(
        &self,
        out: View<CpuBuf>,
        wte: View<CpuBuf>,
        wpe: Option<View<CpuBuf>>,
        ids: &[u32],
        t: usize,
        pos0: usize,
        c: usize,
    ) {
        check_opt(&[Some(out)], &[Some(wte), wpe]);
        kernels::embedding_forward(w(out), r(wte), wpe.map(r), ids, t, pos0, c);
    }

    fn embedding_backward(
        &self,
        dwte: View<CpuBuf>,
        dwpe: Option<View<CpuBuf>>,
        dout: View<CpuBuf>,
        ids: &[u32],
        t: usize,
        c: usize,
    ) {
        check_opt(&[Some(dwte), dwpe], &[Some(dout)]);
        kernels::embedding_backward(w(dwte), dwpe.map(w), r(dout), ids, t, c);
    }

    fn norm_forward(
        &self,
        kind: NormKind,
        out: View<CpuBuf>,
        stats: View<CpuBuf>,
        inp: View<CpuBuf>,
        weight: Option<View<CpuBuf>>,
        bias: Option<View<CpuBuf>>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) {
        check_opt(&[Some(out), Some(stats)], &[Some(inp), weight, bias]);
        kernels::norm_forward(
            kind,
            w(out),
            w(stats),
            r(inp),
            weight.map(r),
            bias.map(r),
            rows,
            cols,
            eps,
        );
    }

    fn norm_backward(
        &self,
        kind: NormKind,
        dinp: View<CpuBuf>,
        dweight: Option<View<CpuBuf>>,
        dbias: Option<View<CpuBuf>>,
        dout: View<CpuBuf>,
        inp: View<CpuBuf>,
        stats: View<CpuBuf>,
        weight: Option<View<CpuBuf>>,
        rows: usize,
        cols: usize,
    ) {
        check_opt(
            &[Some(dinp), dweight, dbias],
            &[Some(dout), Some(inp), Some(stats), weight],
        );
        kernels::norm_backward(
            kind,
            w(dinp),
            dweight.map(w),
            dbias.map(w),
            r(dout),
            r(inp),
            r(stats),
            weight.map(r),
            rows,
            cols,
        );
    }

    fn act_forward(&self, act: Act, out: View<CpuBuf>, inp: View<CpuBuf>) {
        check(&[out], &[inp]);
        kernels::act_forward(act, w(out), r(inp));
    }

    fn act_backward(&self, act: Act, dinp: View<CpuBuf>, dout: View<CpuBuf>, inp: View<CpuBuf>) {
        check(&[dinp], &[dout, inp]);
        kernels::act_backward(act, w(dinp), r(dout), r(inp));
    }

    fn qk_prep_forward(
        &self,
        out: View<CpuBuf>,
        stats: View<CpuBuf>,
        inp: View<CpuBuf>,
        d: AttnDims,
        p: QkPrep,
    ) {
        check(&[out, stats], &[inp]);
        kernels::qk_prep_forward(w(out), w(stats), r(inp), d, p);
    }

    fn qk_prep_backward(
        &self,
        dinp: View<CpuBuf>,
        dout: View<CpuBuf>,
        inp: View<CpuBuf>,
        stats: View<CpuBuf>,
        d: AttnDims,
        p: QkPrep,
    ) {
        check(&[dinp], &[dout, inp, stats]);
        kernels::qk_prep_backward(w(dinp), r(dout), r(inp), r(stats), d, p);
    }

    fn attention_scratch_len(&self, d: AttnDims) -> usize {
        d.b * d.n_head * d.t * d.t
    }

    fn attention_forward(
        &self,
        out: View<CpuBuf>,
        scratch: View<CpuBuf>,
        qkv: View<CpuBuf>,
        d: AttnDims,
    ) {
        check(&[out, scratch], &[qkv]);
        kernels::attention_forward(w(out), w(scratch), r(qkv), d);
    }

    fn attention_backward(
        &self,
        dqkv: View<CpuBuf>,
        dout: View<CpuBuf>,
        qkv: View<CpuBuf>,
        scratch: View<CpuBuf>,
        d: AttnDims,
    ) {
        check(&[dqkv], &[dout, qkv, scratch]);
        let mut work = self.work.lock().unwrap_or_else(|e| e.into_inner());
        let need = d.b * d.n_head * d.t * d.t;
        if work.as_ref().is_none_or(|b| b.len < need) {
            *work = Some(CpuBuf::new(need));
        }
        let ws = work.as_ref().expect("allocated above");
        kernels::attention_backward(
            w(dqkv),
            r(dout),
            r(qkv),
            r(scratch),
            w(View::new(ws, 0, need)),
            d,
        );
    }

    fn attention_cached(
        &self,
        out: View<CpuBuf>,
        qkv: View<CpuBuf>,
        k_cache: View<CpuBuf>,
        v_cache: View<CpuBuf>,
        d: AttnDims,
        pos0: usize,
        max_t: usize,
    ) {
        check(&[out, k_cache, v_cache], &[qkv]);
        kernels::attention_cached(w(out), r(qkv), w(k_cache), w(v_cache), d, pos0, max_t);
    }

    fn embedding_rows(
        &self,
        out: View<CpuBuf>,
        wte: View<CpuBuf>,
        wpe: Option<View<CpuBuf>>,
        ids: &[u32],
        pos: &[usize],
        c: usize,
    ) {
        check_opt(&[Some(out)], &[Some(wte), wpe]);
        kernels::embedding_rows(w(out), r(wte), wpe.map(r), ids, pos, c);
    }

    fn qk_prep_rows(
        &self,
        out: View<CpuBuf>,
        stats: View<CpuBuf>,
        inp: View<CpuBuf>,
        d: AttnDims,
        p: QkPrep,
        pos: &[usize],
    ) {
        check(&[out, stats], &[inp]);
        kernels::qk_prep_rows(w(out), w(stats), r(inp), d, p, pos);
    }

    fn attention_rows(
        &self,
        out: View<CpuBuf>,
        qkv: View<CpuBuf>,
        k_cache: View<CpuBuf>,
        v_cache: View<CpuBuf>,
        d: AttnDims,
        slots: &[usize],
        pos: &[usize],
        prefix: &[SharedPrefix],
        max_t: usize,
    ) {
        check(&[out, k_cache, v_cache], &[qkv]);
        kernels::attention_rows(
            w(out),
            r(qkv),
            w(k_cache),
            w(v_cache),
            d,
            slots,
            pos,
            prefix,
            max_t,
        );
    }

    fn cross_entropy(
        &self,
        logits: View<CpuBuf>,
        losses: View<CpuBuf>,
        targets: &[u32],
        weights: &[f32],
        rows: usize,
        vocab: usize,
        softcap: Option<f32>,
        grad_scale: Option<f32>,
    ) {
        check(&[logits, losses], &[]);
        kernels::cross_entropy(
            w(logits),
            w(losses),
            targets,
            weights,
            rows,
            vocab,
            softcap,
            grad_scale,
        );
    }

    fn adamw(
        &self,
        p: View<CpuBuf>,
        g: View<CpuBuf>,
        m: View<CpuBuf>,
        v: View<CpuBuf>,
        h: AdamHyper,
    ) {
        check(&[p, m, v], &[g]);
        kernels::adamw(w(p), r(g), w(m), w(v), h);
    }
}

impl CpuBackend {
    /// Raw gemm on host slices (row-major, no transposes) for the matmul probe in benchmarks:
    /// `c[m,n] = a[m,k] @ b[k,n]`.
    pub fn gemm_host(&self, c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
        assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
        let am = Mat {
            ptr: a.as_ptr(),
            rs: k as isize,
            cs: 1,
        };
        let bm = Mat {
            ptr: b.as_ptr(),
            rs: n as isize,
            cs: 1,
        };
        // SAFETY: shapes asserted; c is a distinct &mut.
        unsafe {
            gemm_raw(
                m,
                n,
                k,
                c.as_mut_ptr(),
                n as isize,
                am,
                bm,
                1.0,
                0.0,
                self.par(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::vmath::{supported, with_isa, Isa};

    fn buf(be: &CpuBackend, host: &[f32]) -> CpuBuf {
        let b = be.alloc(host.len()).unwrap();
        be.write(View::new(&b, 0, host.len()), host);
        b
    }

    fn v(x: &CpuBuf, len: usize) -> View<'_, CpuBuf> {
        View::new(x, 0, len)
    }

    fn bits(be: &CpuBackend, b: &CpuBuf, n: usize) -> Vec<u32> {
        let mut out = vec![0f32; n];
        be.read(View::new(b, 0, n), &mut out);
        out.iter().map(|x| x.to_bits()).collect()
    }

    /// The fused forms (bias; bias + activation; activation backward) give bit for bit what the
    /// separate passes give, on shapes with tile tails and more than one depth slab, with the
    /// row and the column split.
    #[test]
    fn fused_epilogues_equal_separate_passes() {
        let mut rng = crate::Rng::new(11);
        let mut randn = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
        // on kiln's sgemm (AVX-512) and on the `gemm` crate fallback (what AVX2 machines run)
        let isas = supported().into_iter().filter(|&i| i != Isa::Scalar);
        for (isa, threads) in isas.flat_map(|i| [(i, 1), (i, 2)]) {
            with_isa(isa, || {
                let be = CpuBackend::new(threads);
                // (m, n, k): tails in m and n, k over one slab, a column-split shape
                for (m, n, k) in [(37, 45, 20), (100, 300, 400), (16, 64, 16), (64, 1024, 24)] {
                    for act in [Act::GeluTanh, Act::ReluSq] {
                        let d = MatDims {
                            m,
                            n,
                            k,
                            trans_a: false,
                            trans_b: true,
                        };
                        let (mk, nk, mn) = (m * k, n * k, m * n);
                        let a = buf(&be, &randn(mk));
                        let b = buf(&be, &randn(nk));
                        let bias = buf(&be, &randn(n));
                        let (pre1, out1) = (be.alloc(mn).unwrap(), be.alloc(mn).unwrap());
                        let (pre2, out2) = (be.alloc(mn).unwrap(), be.alloc(mn).unwrap());
                        let what = format!("{m}x{n}x{k} {act:?} threads {threads}");
                        let bv = Some(v(&bias, n));
                        be.matmul_bias_act(
                            act,
                            v(&out1, mn),
                            v(&pre1, mn),
                            v(&a, mk),
                            v(&b, nk),
                            bv,
                            d,
                        );
                        be.matmul(v(&pre2, mn), v(&a, mk), v(&b, nk), d, 1.0, 0.0);
                        be.add_bias(v(&pre2, mn), v(&bias, n), m, n);
                        be.act_forward(act, v(&out2, mn), v(&pre2, mn));
                        assert_eq!(bits(&be, &pre1, mn), bits(&be, &pre2, mn), "pre {what}");
                        assert_eq!(bits(&be, &out1, mn), bits(&be, &out2, mn), "act {what}");

                        let (dpre1, dpre2, dact) = (
                            be.alloc(mn).unwrap(),
                            be.alloc(mn).unwrap(),
                            be.alloc(mn).unwrap(),
                        );
                        let (db1, db2) = (buf(&be, &vec![0.5; n]), buf(&be, &vec![0.5; n]));
                        be.matmul_act_backward(
                            act,
                            v(&dpre1, mn),
                            v(&dact, mn),
                            Some(v(&db1, n)),
                            v(&a, mk),
                            v(&b, nk),
                            v(&pre1, mn),
                            d,
                        );
                        be.matmul(v(&dact, mn), v(&a, mk), v(&b, nk), d, 1.0, 0.0);
                        be.act_backward(act, v(&dpre2, mn), v(&dact, mn), v(&pre1, mn));
                        be.bias_backward(v(&db2, n), v(&dpre2, mn), m, n);
                        assert_eq!(bits(&be, &dpre1, mn), bits(&be, &dpre2, mn), "dpre {what}");
                        assert_eq!(bits(&be, &db1, n), bits(&be, &db2, n), "dbias {what}");

                        // matmul_bias with alpha and beta (a residual projection's accumulate)
                        let c0 = randn(mn);
                        let (c1, c2) = (buf(&be, &c0), buf(&be, &c0));
                        be.matmul_bias(v(&c1, mn), v(&a, mk), v(&b, nk), bv, d, 0.5, 1.0);
                        be.matmul(v(&c2, mn), v(&a, mk), v(&b, nk), d, 0.5, 1.0);
                        be.add_bias(v(&c2, mn), v(&bias, n), m, n);
                        assert_eq!(bits(&be, &c1, mn), bits(&be, &c2, mn), "bias {what}");
                    }
                }
            });
        }
    }

    /// The matmul fallback (the `gemm` crate: AVX2 machines, `KILN_SIMD=avx2`) and kiln's sgemm
    /// compute the same products, for every transpose, with tails and several threads.
    #[test]
    fn matmul_fallback_matches_sgemm() {
        if !supported().contains(&Isa::Avx512) {
            eprintln!("no AVX-512 here: the fallback is the only path (tested everywhere else)");
            return;
        }
        let mut rng = crate::Rng::new(5);
        let mut randn = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
        let be = CpuBackend::new(2);
        for (m, n, k) in [(37, 45, 20), (100, 300, 64), (64, 1024, 24)] {
            for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
                let d = MatDims {
                    m,
                    n,
                    k,
                    trans_a,
                    trans_b,
                };
                let (a, b, c0) = (randn(m * k), randn(k * n), randn(m * n));
                let run = |isa| {
                    with_isa(isa, || {
                        let (ab, bb, cb) = (buf(&be, &a), buf(&be, &b), buf(&be, &c0));
                        be.matmul(v(&cb, m * n), v(&ab, m * k), v(&bb, k * n), d, 0.5, 1.0);
                        let mut out = vec![0f32; m * n];
                        be.read(v(&cb, m * n), &mut out);
                        out
                    })
                };
                let (fast, fallback) = (run(Isa::Avx512), run(Isa::Avx2));
                for (i, (x, y)) in fast.iter().zip(&fallback).enumerate() {
                    let tol = 1e-5 * (k as f32).sqrt() * x.abs().max(1.0);
                    assert!((x - y).abs() <= tol, "{d:?} [{i}]: {x} vs {y}");
                }
            }
        }
    }

    /// Large buffers (mapped, huge pages requested) and small ones (heap) start zeroed, hold
    /// what is written, and are freed without error; the mapped start is 2 MiB aligned.
    #[test]
    fn buffers_small_and_mapped() {
        for len in [10usize, 3 << 20] {
            let b = CpuBuf::new(len);
            #[cfg(target_os = "linux")]
            if len * 4 >= HUGE_PAGE_MIN_BYTES {
                assert!(matches!(b.origin, Origin::Mapped(..)));
                assert_eq!(b.ptr as usize % crate::hugemem::HUGE_PAGE, 0);
            }
            let v = View::new(&b, 0, len);
            assert!(r(v).iter().all(|&x| x == 0.0));
            w(v).iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            assert_eq!(r(v)[len - 1], (len - 1) as f32);
        }
    }
}
