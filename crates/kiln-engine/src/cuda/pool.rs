//! Device memory: the pool (freed buffers kept per length), [`CudaBuf`] and its bf16 shadow
//! (matmul operands converted once until the buffer is written; bf16-only results written back
//! to f32 on demand by [`ptr`]).

use super::*;

/// Device memory pool: freed buffers are kept per exact length and reused.
pub(super) struct Pool {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) free: Mutex<HashMap<usize, Vec<u64>>>,
    pub(super) stats: Mutex<(usize, usize)>,
}

impl Pool {
    pub(super) fn get(&self, len: usize) -> Result<u64, EngineError> {
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
    pub(super) fn put(&self, len: usize, ptr: u64) {
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

/// A device buffer of f32s (returned to the backend's pool on drop). Its f32 memory is taken
/// from the pool, zeroed, on the first [`ptr`] to it, not at allocation: buffers that only ever
/// hold bf16-only results (the GELU epilogues' `fch`/`fcg`, the bf16 logits and their
/// gradients) never get one, which is most of what kept peak memory above PyTorch's.
pub struct CudaBuf {
    /// The f32 allocation; 0 until first used ([`CudaBuf::f32_ptr`]).
    pub(super) ptr: std::sync::atomic::AtomicU64,
    pub(super) len: usize,
    pub(super) pool: Arc<Pool>,
    /// bf16 copy of matmul-operand regions ([`Bf16Gemm::Bf16Cached`]).
    pub(super) shadow: Mutex<Shadow>,
    /// `shadow.stale` is non-empty (checked by [`ptr`] without taking the lock).
    pub(super) has_stale: std::sync::atomic::AtomicBool,
    /// Writes stale f32 regions back from the shadow (see [`Shadow::stale`]).
    pub(super) mat: Arc<Materializer>,
}

/// The stream and `k_from_bf16`, for [`ptr`] to bring a region's f32 copy up to date.
pub(super) struct Materializer {
    pub(super) stream: Arc<CudaStream>,
    pub(super) from_bf16: CudaFunction,
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
pub(super) struct Shadow {
    pub(super) ptr: u64,
    pub(super) valid: Vec<(usize, usize)>,
    pub(super) stale: Vec<(usize, usize)>,
}

/// Regions remembered per shadow before the list is reset (the parameter buffer has one per
/// weight matrix: 4 per layer plus the head).
pub(super) const SHADOW_REGIONS: usize = 512;

impl CudaBuf {
    /// The f32 allocation, taken from the pool and zeroed (on the stream, ahead of any use) the
    /// first time it is asked for. Out of device memory here is a panic naming the size: the
    /// ops that reach this cannot return an error.
    pub(super) fn f32_ptr(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let p = self.ptr.load(Ordering::Acquire);
        if p != 0 || self.len == 0 {
            return p;
        }
        // the shadow's lock serialises the first use (`materialize`, which holds it already,
        // calls `f32_ptr_locked`)
        let _guard = self.shadow.lock().unwrap_or_else(|e| e.into_inner());
        self.f32_ptr_locked()
    }

    /// [`Self::f32_ptr`] for a caller that holds `self.shadow`'s lock.
    pub(super) fn f32_ptr_locked(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let p = self.ptr.load(Ordering::Acquire);
        if p != 0 || self.len == 0 {
            return p;
        }
        let p = self
            .pool
            .get(self.len)
            .unwrap_or_else(|e| panic!("cuda: a buffer of {} f32s: {e}", self.len));
        // SAFETY: p is valid for len f32s; enqueued on the stream before any use of it.
        unsafe { drv::memset_d8_async(p, 0, self.len * 4, self.mat.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("cuda: memset: {e:?}"));
        self.ptr.store(p, Ordering::Release);
        p
    }
}

impl Drop for CudaBuf {
    fn drop(&mut self) {
        let p = *self.ptr.get_mut();
        if p != 0 {
            self.pool.put(self.len, p);
        }
        let sh = self.shadow.get_mut().unwrap_or_else(|e| e.into_inner());
        if sh.ptr != 0 {
            self.pool.put(self.len.div_ceil(2), sh.ptr);
        }
    }
}

/// Mark `v`'s buffer as written: its bf16 shadow regions are stale.
pub(super) fn dirty(v: &View<CudaBuf>) {
    let mut sh = v.buf.shadow.lock().unwrap_or_else(|e| e.into_inner());
    sh.valid.clear();
}

/// [`dirty`] for an optional view.
pub(super) fn odirty(v: &Option<View<CudaBuf>>) {
    if let Some(v) = v {
        dirty(v);
    }
}

pub(super) fn ptr(v: &View<CudaBuf>) -> u64 {
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
    v.buf.f32_ptr() + (v.off * 4) as u64
}

/// Write back (bf16 → f32) every stale region of `buf` overlapping `[off, off + len)`
/// (`partial_only`: only those not contained in it) and forget them.
pub(super) fn materialize(buf: &CudaBuf, off: usize, len: usize, partial_only: bool) {
    let mut sh = buf.shadow.lock().unwrap_or_else(|e| e.into_inner());
    for (o, l) in take_stale(&mut sh.stale, off, len, partial_only) {
        let (dst, src) = (buf.f32_ptr_locked() + 4 * o as u64, sh.ptr + 2 * o as u64);
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
pub(super) fn take_stale(
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
pub(super) fn stale_holds(stale: &[(usize, usize)], off: usize, n: usize) -> bool {
    stale.iter().any(|&(o, l)| o <= off && off + n <= o + l)
}

/// `[off, off + n)` now holds a bf16-only result: regions it contains are superseded.
pub(super) fn push_stale(stale: &mut Vec<(usize, usize)>, off: usize, n: usize) {
    stale.retain(|&(o, l)| !(off <= o && o + l <= off + n));
    stale.push((off, n));
}

pub(super) fn optr(v: &Option<View<CudaBuf>>) -> u64 {
    v.as_ref().map_or(0, ptr)
}

impl CudaBackend {
    /// `n` bf16s of view `v` (from its start) for a bf16 GEMM operand; returns their device
    /// pointer. `cached`: from `v`'s buffer shadow, converting only when that region is not current
    /// (falls back to scratch if the shadow cannot be allocated); else converted into scratch
    /// slot `slot` (0: A, 1: B) on every call.
    pub(super) fn bf16_operand(
        &self,
        v: &View<CudaBuf>,
        n: usize,
        slot: usize,
        cached: bool,
    ) -> u64 {
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
    pub(super) fn cached_bf16(&self, v: &View<CudaBuf>, n: usize) -> Option<u64> {
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
    pub(super) fn bf16_result_slot(&self, v: &View<CudaBuf>, n: usize) -> Option<u64> {
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
    pub(super) fn commit_bf16_result(&self, v: &View<CudaBuf>, n: usize) {
        let mut sh = v.buf.shadow.lock().unwrap_or_else(|e| e.into_inner());
        let off = v.off;
        sh.valid.clear();
        sh.valid.push((off, n));
        push_stale(&mut sh.stale, off, n);
        v.buf
            .has_stale
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The shadow address of `[v.off, v.off + n)` when that region is a bf16-only result (one
    /// stale region holds it: the shadow is its only current copy), else None.
    pub(super) fn bf16_only(&self, v: &View<CudaBuf>, n: usize) -> Option<u64> {
        if n == 0 || !v.buf.has_stale.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let sh = v.buf.shadow.lock().unwrap_or_else(|e| e.into_inner());
        stale_holds(&sh.stale, v.off, n).then_some(sh.ptr + 2 * v.off as u64)
    }

    /// For a kernel about to overwrite the first `n` floats of `v` (after [`dirty`]): in
    /// [`Bf16Gemm::Bf16Cached`] mode, the bf16 shadow address of that region, which the kernel
    /// fills alongside its f32 output, marked current; else 0 (the kernel writes only f32).
    pub(super) fn shadow_out(&self, v: &View<CudaBuf>, n: usize) -> u64 {
        if n == 0 || self.matmul_path() != MatmulPath::Bf16(Bf16Gemm::Bf16Cached) {
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

    /// [`Self::shadow_out`] for a kernel that writes its bf16 copy `align` bytes at a time: 0 when
    /// the shadow address is not so aligned (the kernel then writes only f32, and the region is
    /// left not current).
    pub(super) fn shadow_out_aligned(&self, v: &View<CudaBuf>, n: usize, align: u64) -> u64 {
        let bf = self.shadow_out(v, n);
        if bf.is_multiple_of(align) {
            return bf;
        }
        dirty(v);
        0
    }

    /// Enqueue `dst[..n] = bf16(src[..n])` (device pointers; `dst` holds bf16s).
    pub(super) fn to_bf16(&self, dst: u64, src: u64, n: usize) {
        if n == 0 {
            return;
        }
        let vec = (src.is_multiple_of(16) && dst.is_multiple_of(8)) as i32;
        launch!(self, "k_to_bf16", self.grid1(n.div_ceil(4)), (256, 1, 1), 0; dst, src, n as i64, vec);
    }
}
