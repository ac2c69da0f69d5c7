//! kiln's own f32 GEMM for x86-64 CPUs with AVX-512, in the BLIS layout: per KC-deep slab, B is
//! packed into NR-wide column panels and blocks of rows of A into MR-tall row panels, and an MR×NR
//! register-tile microkernel runs over them. Threads claim blocks of rows (or chunks of columns)
//! of C from a shared counter, slab by slab, so a core that runs slower for a while takes fewer.
//!
//! Why our own: the `gemm` crate (the fallback on CPUs without AVX-512, and for tiny or
//! vector-shaped products) enables AVX-512 only on nightly Rust; on AVX-512 machines its AVX2
//! kernel left half of each core's FMA width unused, and the matmuls are ~70% of a training step.
//!
//! The microkernel keeps a 14×32 tile of C in 28 zmm registers: per k it loads two 16-lane
//! vectors of packed B and broadcasts 14 values of packed A (folded into the FMAs as embedded
//! broadcasts), i.e. 28 FMAs per 16 loads, which two FMA ports can sustain from L1.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Rows of C per microkernel tile (values broadcast from packed A).
pub const MR: usize = 14;
/// Columns of C per microkernel tile (two 16-lane vectors of packed B).
pub const NR: usize = 32;
/// Depth of one packed slab: one NR panel of B (KC·NR·4 = 48 KiB) stays near L1 while the
/// microkernel walks down the A block.
const KC: usize = 384;
/// Largest A block per thread (MC·KC·4 ≈ 0.75 MiB, well inside a 2 MiB L2).
const MC_MAX: usize = MR * 36;

/// A read-only strided matrix: element (i, j) is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct StridedRef {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}
// SAFETY: read-only access from scoped tasks while the caller keeps the matrix alive.
unsafe impl Send for StridedRef {}
unsafe impl Sync for StridedRef {}

/// True when this CPU can run [`sgemm`] (AVX-512 F).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A 64-byte-aligned scratch buffer that grows and is then reused (no allocation per call once
/// warm); large ones on huge pages like the backend's buffers.
struct Scratch {
    buf: Option<super::CpuBuf>,
}

impl Scratch {
    const fn new() -> Self {
        Scratch { buf: None }
    }
    /// An aligned pointer to at least `len` floats.
    fn get(&mut self, len: usize) -> *mut f32 {
        // 16 floats for the alignment shift, 16 more for packing stores that run past the end.
        if self.buf.as_ref().is_none_or(|b| b.len < len + 32) {
            self.buf = Some(super::CpuBuf::new(len + 32));
        }
        let p = self.buf.as_ref().expect("allocated above").ptr;
        let misalign = (p as usize / 4) % 16;
        // SAFETY: the buffer has 32 spare floats, at most 15 used by the shift.
        unsafe { p.add((16 - misalign) % 16) }
    }
}

thread_local! {
    static PACK_A: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
    static PACK_B: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
}

/// Runs `f` with this thread's scratch buffer, or a temporary one if it is already in use (a
/// rayon worker that stole a task while inside another GEMM).
fn with_scratch<R>(
    key: &'static std::thread::LocalKey<RefCell<Scratch>>,
    f: impl FnOnce(&mut Scratch) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::new()),
    })
}

/// Shares a raw pointer with rayon tasks.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint regions (or read-only data) to scoped tasks.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// A square product inside causal attention whose triangle structure lets tiles or parts of the
/// depth be skipped (row i is query i, and key/column or depth index j is key j).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tri {
    /// Only `C[i, j]` with `j ≤ i` is needed: tiles wholly above the diagonal are not computed
    /// and left as they were (scores, dP).
    OutLower,
    /// `A[i, p] = 0` for `p > i` (causal probabilities): row i sums over `p ≤ i` only (P·V, dS·K).
    ALower,
    /// `A[i, p] = 0` for `p < i` (transposed probabilities): row i sums over `p ≥ i` only
    /// (Pᵀ·dO, dSᵀ·Q).
    AUpper,
}

/// One product `C[m,n] = alpha · A[m,k] @ B[k,n] + beta · C`, C row-major with row stride `ldc`.
/// When `beta` is 0, C is not read (it may hold NaN).
#[derive(Clone, Copy)]
pub struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: StridedRef,
    pub b: StridedRef,
    pub beta: f32,
    pub c: *mut f32,
    pub ldc: usize,
}

// SAFETY: shared with scoped tasks that write disjoint tiles of C and only read A and B.
unsafe impl Send for Product {}
unsafe impl Sync for Product {}

impl Product {
    /// A's columns from depth `p0` on.
    ///
    /// # Safety
    /// `p0` must be within the depth.
    unsafe fn a_from(&self, p0: usize) -> StridedRef {
        StridedRef {
            ptr: self.a.ptr.offset(p0 as isize * self.a.cs),
            ..self.a
        }
    }

    /// Bᵀ from depth `p0` on: B's column panels are rows of Bᵀ.
    ///
    /// # Safety
    /// `p0` must be within the depth.
    unsafe fn bt_from(&self, p0: usize) -> StridedRef {
        StridedRef {
            ptr: self.b.ptr.offset(p0 as isize * self.b.rs),
            rs: self.b.cs,
            cs: self.b.rs,
        }
    }

    /// The beta for the slab starting at depth `p0`: later slabs add onto the earlier ones.
    fn beta_at(&self, p0: usize) -> f32 {
        if p0 == 0 {
            self.beta
        } else {
            1.0
        }
    }
}

/// [`sgemm`] on one thread for a square causal-attention product: the same result (exactly,
/// for `ALower`/`AUpper`; on and below the diagonal for `OutLower`) with the zero or unneeded
/// triangle skipped at tile (14×32) and depth granularity.
///
/// # Safety
/// As for [`sgemm`].
pub unsafe fn sgemm_tri(p: Product, tri: Tri) {
    if p.m == 0 || p.n == 0 || p.k == 0 {
        sgemm_fused(p, 1, Fused::NONE);
        return;
    }
    run_one_thread(p, Some(tri), Fused::NONE);
}

/// `C[m,n] = alpha · A[m,k] @ B[k,n] + beta · C` with C row-major (row stride `ldc`). When `beta`
/// is 0, C is not read (it may hold NaN). `threads > 1` shares the work out over rayon tasks.
///
/// # Safety
/// The CPU must support AVX-512 F ([`available`]); `a`, `b` and `c` must be valid for the shapes
/// and strides given, and `c` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: StridedRef,
    b: StridedRef,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    threads: usize,
) {
    let p = Product {
        m,
        n,
        k,
        alpha,
        a,
        b,
        beta,
        c,
        ldc,
    };
    sgemm_fused(p, threads, Fused::NONE)
}

/// Called as `f(i, j0, cols)` once row i of C, columns `[j0, j0 + cols)`, is final: a fused
/// epilogue (bias, activation) that runs while the row's block of C is still in L2, instead of a
/// separate pass over C in memory. Calls for different rows may run concurrently.
pub type RowEpilogue<'a> = &'a (dyn Fn(usize, usize, usize) + Sync);

/// [`sgemm`], then `epilogue` on every row of C as soon as its block is final. Needs `k > 0`.
///
/// # Safety
/// As for [`sgemm`].
pub unsafe fn sgemm_then_rows(p: Product, threads: usize, epilogue: RowEpilogue) {
    let fused = Fused {
        rows: Some(epilogue),
        a_row_sums: None,
    };
    sgemm_fused(p, threads, fused)
}

/// [`sgemm`], and `sums[i] += Σ_p A[i, p]` for the m rows of A, summed from A's packed panels
/// (each element is packed once): a weight gradient `dW = dYᵀ·X` gives its bias gradient
/// `Σ_r dY[r, :]` this way without another pass over dY. The sums are in a fixed order (along
/// each KC slab, then slab by slab), whatever the thread count.
///
/// # Safety
/// As for [`sgemm`]; `sums` must be valid for m floats and overlap nothing else.
pub unsafe fn sgemm_with_a_row_sums(p: Product, threads: usize, sums: *mut f32) {
    let fused = Fused {
        rows: None,
        a_row_sums: Some(SendPtr(sums)),
    };
    sgemm_fused(p, threads, fused)
}

/// What runs fused with a product besides C itself.
#[derive(Clone, Copy)]
struct Fused<'a> {
    /// See [`RowEpilogue`].
    rows: Option<RowEpilogue<'a>>,
    /// See [`sgemm_with_a_row_sums`].
    a_row_sums: Option<SendPtr<f32>>,
}

impl Fused<'_> {
    const NONE: Fused<'static> = Fused {
        rows: None,
        a_row_sums: None,
    };
}

unsafe fn sgemm_fused(p: Product, threads: usize, fused: Fused) {
    let Product {
        m, n, k, c, ldc, ..
    } = p;
    assert!(
        k > 0 || fused.rows.is_none(),
        "sgemm: an epilogue needs k > 0"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                let x = c.add(i * ldc + j);
                *x = if p.beta == 0.0 { 0.0 } else { p.beta * *x };
            }
        }
        return;
    }
    // Threads claim units of work (blocks of rows of C, or chunks of columns) one KC slab at a
    // time from a shared counter instead of each owning a fixed half: on this kind of host one
    // core often runs 10–30% slower than the other for a while (a busy neighbour, a late
    // wake-up), and a fixed split makes every product wait for the slower half. Splitting rows
    // means every thread packs all of B (K·N) and the A blocks it claims; splitting columns, all
    // of A (M·K) and the B panels it claims. Pick the split that packs less — e.g. the gradient of
    // a 1024→256 projection (M 256, N 1024, K 2048) splits columns.
    let threads = threads.max(1);
    if threads == 1 {
        run_one_thread(p, None, fused);
        return;
    }
    let pack_split_rows = k * n + m.div_ceil(threads) * k;
    let pack_split_cols = m * k + n.div_ceil(threads) * k;
    let split_rows = pack_split_rows <= pack_split_cols || n < 2 * NR;
    let (grain, len) = if split_rows { (MR, m) } else { (NR, n) };
    let plan = Claims::new(len.div_ceil(grain), k.div_ceil(KC), threads);
    let workers = threads.min(plan.units);
    let plan = &plan;
    rayon::scope(|s| {
        for _ in 0..workers {
            s.spawn(move |_| {
                if split_rows {
                    claim_row_blocks(plan, p, fused)
                } else {
                    claim_col_chunks(plan, p, fused)
                }
            });
        }
    });
}

/// Most work units one product is cut into (the completion marks live on the stack).
const MAX_UNITS: usize = 256;

/// The shared schedule of one multi-threaded product: `units` units of tiles (MR rows or NR
/// columns each) times the KC slabs, claimed slab-major from one counter. Claim order alone does
/// not order the slabs of one unit (its previous slab may still be running on another thread),
/// so each unit also records how many slabs are done.
struct Claims {
    next: AtomicUsize,
    done: [AtomicUsize; MAX_UNITS],
    /// Unit u is tiles `first_tile[u]..first_tile[u + 1]`.
    first_tile: [usize; MAX_UNITS + 1],
    units: usize,
    slabs: usize,
}

impl Claims {
    /// About eight units per thread, small enough that a slow thread's unit holds up little,
    /// large enough that each unit reuses its packed panels over many tiles; and the last units
    /// shrink ("guided" scheduling: a 1/(2·threads) share of the tiles not yet given out) down to
    /// a tile or two, so the thread that finishes first waits at most that long for the other.
    fn new(tiles: usize, slabs: usize, threads: usize) -> Claims {
        // At most MAX_UNITS / 2 units of the smallest size.
        let min_unit = tiles.div_ceil(MAX_UNITS / 2).max(1);
        let max_unit = tiles.div_ceil(threads * 8).max(min_unit);
        let mut first_tile = [0usize; MAX_UNITS + 1];
        let mut units = 0;
        let mut given = 0;
        while given < tiles {
            let left = tiles - given;
            let size = if units + 1 == MAX_UNITS {
                left
            } else {
                left.div_ceil(2 * threads).clamp(min_unit, max_unit)
            };
            given += size.min(left);
            units += 1;
            first_tile[units] = given;
        }
        Claims {
            next: AtomicUsize::new(0),
            done: std::array::from_fn(|_| AtomicUsize::new(0)),
            first_tile,
            units,
            slabs,
        }
    }

    /// Tiles `[first, end)` of unit `u`.
    fn tiles(&self, u: usize) -> (usize, usize) {
        (self.first_tile[u], self.first_tile[u + 1])
    }

    /// Most tiles in one unit.
    fn max_unit_tiles(&self) -> usize {
        (0..self.units)
            .map(|u| self.first_tile[u + 1] - self.first_tile[u])
            .max()
            .unwrap_or(0)
    }

    /// The next (slab, unit) to run, once the unit's previous slab is finished; `None` when all
    /// are claimed.
    fn claim(&self) -> Option<(usize, usize)> {
        let g = self.next.fetch_add(1, Ordering::Relaxed);
        if g >= self.units * self.slabs {
            return None;
        }
        let (slab, unit) = (g / self.units, g % self.units);
        // Whoever holds (slab − 1, unit) claimed it earlier and is running it: a short wait
        // (yielding now and then, in case that thread shares this core).
        let mut spins = 0u32;
        while self.done[unit].load(Ordering::Acquire) < slab {
            spins += 1;
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        Some((slab, unit))
    }

    fn finish(&self, slab: usize, unit: usize) {
        self.done[unit].store(slab + 1, Ordering::Release);
    }
}

/// One thread's share of a row-split product: claims blocks of rows slab by slab, packing each
/// slab of B (all columns) the first time it claims a block in it.
unsafe fn claim_row_blocks(plan: &Claims, p: Product, fused: Fused) {
    let Product { m, n, k, .. } = p;
    let n_panels = n.div_ceil(NR);
    with_scratch(&PACK_B, |sb| {
        let packed_b = sb.get(k.min(KC) * n_panels * NR);
        let mut packed_slab = None;
        while let Some((slab, unit)) = plan.claim() {
            let (p0, kc) = (slab * KC, (k - slab * KC).min(KC));
            if packed_slab != Some(slab) {
                pack_panels::<NR>(p.bt_from(p0), kc, n, 0, n_panels, packed_b);
                packed_slab = Some(slab);
            }
            let (t0, t1) = plan.tiles(unit);
            let i0 = t0 * MR;
            let rows = (t1 * MR).min(m) - i0;
            run_block(&p, i0, rows, p0, kc, packed_b, None, fused.a_row_sums);
            if let (Some(f), true) = (fused.rows, slab + 1 == plan.slabs) {
                (i0..i0 + rows).for_each(|i| f(i, 0, n));
            }
            plan.finish(slab, unit);
        }
    });
}

/// One thread's share of a column-split product: claims chunks of columns slab by slab, packing
/// each slab of A (all rows) the first time it claims a chunk in it, and the chunk's B panels.
unsafe fn claim_col_chunks(plan: &Claims, p: Product, fused: Fused) {
    let Product { m, n, k, .. } = p;
    let tiles = m.div_ceil(MR);
    with_scratch(&PACK_A, |sa| {
        with_scratch(&PACK_B, |sb| {
            let packed_a = sa.get(tiles * MR * k.min(KC));
            let packed_b = sb.get(k.min(KC) * plan.max_unit_tiles() * NR);
            let mut packed_slab = None;
            while let Some((slab, unit)) = plan.claim() {
                let (p0, kc) = (slab * KC, (k - slab * KC).min(KC));
                if packed_slab != Some(slab) {
                    pack_panels::<MR>(p.a_from(p0), kc, m, 0, tiles, packed_a);
                    packed_slab = Some(slab);
                    // Every thread packs all of A; the one holding the slab's first unit (the
                    // slab's first claim, so it packs here) adds the row sums.
                    if let (Some(sums), 0) = (fused.a_row_sums, unit) {
                        add_row_sums(packed_a, m, kc, sums.0);
                    }
                }
                let (t0, t1) = plan.tiles(unit);
                let c0 = t0 * NR;
                let cols = (t1 * NR).min(n) - c0;
                pack_panels::<NR>(p.bt_from(p0), kc, n, c0, cols.div_ceil(NR), packed_b);
                let chunk = Product {
                    n: cols,
                    c: p.c.add(c0),
                    ..p
                };
                run_tiles(&chunk, 0, m, packed_a, p0, kc, packed_b, None);
                if let (Some(f), true) = (fused.rows, slab + 1 == plan.slabs) {
                    (0..m).for_each(|i| f(i, c0, cols));
                }
                plan.finish(slab, unit);
            }
        })
    });
}

/// The whole product on this thread: for each KC slab, pack B's slab, then each MC block of
/// rows against it.
unsafe fn run_one_thread(p: Product, tri: Option<Tri>, fused: Fused) {
    let Product { m, n, k, .. } = p;
    let n_panels = n.div_ceil(NR);
    // Blocks of at most MC_MAX rows, as equal as the MR granularity allows.
    let mc = m.div_ceil(m.div_ceil(MC_MAX)).next_multiple_of(MR);
    with_scratch(&PACK_B, |sb| {
        let packed_b = sb.get(k.min(KC) * n_panels * NR);
        let mut p0 = 0;
        while p0 < k {
            let kc = (k - p0).min(KC);
            pack_panels::<NR>(p.bt_from(p0), kc, n, 0, n_panels, packed_b);
            let mut i0 = 0;
            while i0 < m {
                let rows = (m - i0).min(mc);
                run_block(&p, i0, rows, p0, kc, packed_b, tri, fused.a_row_sums);
                if let (Some(f), true) = (fused.rows, p0 + kc == k) {
                    (i0..i0 + rows).for_each(|i| f(i, 0, n));
                }
                i0 += rows;
            }
            p0 += kc;
        }
    });
}

/// Transposes a 16×16 block: row `r` of the source is the 16 floats at `src[r]`; row `q` of the
/// result (source column q) is stored as 16 floats at `dst + q·dst_stride`, in increasing q, so a
/// `dst_stride` below 16 is fine when the caller owns the 16 − dst_stride floats past the last row
/// (each store's tail is overwritten by the next). Four shuffle stages, 64 shuffles per 256 floats.
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: &[*const f32; 16], dst: *mut f32, dst_stride: usize) {
    let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src[i]));
    // Stage 1: interleave row pairs within 128-bit lanes: t[2i] = (a0 b0 a1 b1 | ...).
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // Stage 2: u[4g + c] holds, in each 128-bit lane l, column 4l + c of rows 4g..4g+4.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (lo0, hi0, lo1, hi1) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm512_shuffle_ps::<0x44>(lo0, lo1);
        u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(lo0, lo1);
        u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(hi0, hi1);
        u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(hi0, hi1);
    }
    // Stages 3 and 4: regroup the 128-bit lanes so column q has rows 0..16 in order.
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let v3 = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        out[c + 4] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        out[c + 8] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
        out[c + 12] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
    }
    for (q, v) in out.iter().enumerate() {
        _mm512_storeu_ps(dst.add(q * dst_stride), *v);
    }
}

/// Packs `count` consecutive W-wide panels (rows `i0 + q·W ..` for panel q, stored at
/// `out + q·kc·W`). When the W values of one k are contiguous in memory, walks k in the outer loop
/// so the source is read row after row (a strided walk down one panel at a time touches a new
/// cache line, often a new page, per k and waits on memory); otherwise packs panel by panel.
#[target_feature(enable = "avx512f")]
unsafe fn pack_panels<const W: usize>(
    x: StridedRef,
    kc: usize,
    rows: usize,
    i0: usize,
    count: usize,
    out: *mut f32,
) {
    if x.rs != 1 {
        for q in 0..count {
            pack_panel::<W>(x, kc, rows, i0 + q * W, out.add(q * kc * W));
        }
        return;
    }
    let halves = W.div_ceil(16);
    for p in 0..kc {
        let row = x.ptr.offset(p as isize * x.cs);
        for q in 0..count {
            let start = i0 + q * W;
            let valid = (rows - start).min(W);
            let src = row.add(start);
            let o = out.add(q * kc * W + p * W);
            for h in 0..halves {
                let lanes = valid.saturating_sub(16 * h).min(16);
                let load_mask: __mmask16 = ((1u32 << lanes) - 1) as u16;
                let width = (W - 16 * h).min(16);
                let store_mask: __mmask16 = ((1u32 << width) - 1) as u16;
                _mm512_mask_storeu_ps(
                    o.add(16 * h),
                    store_mask,
                    _mm512_maskz_loadu_ps(load_mask, src.add(16 * h)),
                );
            }
        }
    }
}

/// Packs one W-wide panel for the microkernel: for each k in `0..kc`, the W values
/// `x[i0 .. i0 + W, k]` of the strided matrix `x` (element (i, k) at `ptr + i·rs + k·cs`), zero
/// past row `rows`. A's panels are rows of A (W = MR); B's are columns of B, i.e. rows of Bᵀ
/// (W = NR). Writes up to 16 floats past the panel when W < 16 (the scratch has the room). The
/// contiguous case (`x.rs == 1`) is [`pack_panels`]' own, row by row over all panels.
#[target_feature(enable = "avx512f")]
unsafe fn pack_panel<const W: usize>(
    x: StridedRef,
    kc: usize,
    rows: usize,
    i0: usize,
    out: *mut f32,
) {
    let valid = (rows - i0).min(W);
    let mut p0 = 0;
    if x.cs == 1 && valid == W {
        // Each row is contiguous along k: 16×16 transposes (W = 14 repeats the last row twice).
        while p0 + 16 <= kc {
            for h in 0..W.div_ceil(16) {
                let src: [*const f32; 16] = std::array::from_fn(|r| {
                    let row = i0 + (16 * h + r).min(W - 1);
                    x.ptr.offset(row as isize * x.rs + p0 as isize)
                });
                transpose16(&src, out.add(p0 * W + 16 * h), W);
            }
            p0 += 16;
        }
    }
    // The rest (k tails, short panels, general strides), one element at a time.
    for ii in 0..W {
        let src = x.ptr.offset((i0 + ii.min(valid - 1)) as isize * x.rs);
        for p in p0..kc {
            *out.add(p * W + ii) = if ii < valid {
                *src.offset(p as isize * x.cs)
            } else {
                0.0
            };
        }
    }
}

/// Lane masks for the two 16-wide halves of an NR tile with `cols` valid columns.
fn col_masks(cols: usize) -> (__mmask16, __mmask16) {
    let half = |lanes: usize| ((1u32 << lanes.min(16)) - 1) as u16;
    (half(cols), half(cols.saturating_sub(16)))
}

/// Rows `[i0, i0 + rows)` of C against the whole packed slab of B (depth `[p0, p0 + kc)`):
/// packs the rows' A panels, adds their row sums if asked, runs the tiles.
#[allow(clippy::too_many_arguments)]
unsafe fn run_block(
    p: &Product,
    i0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    packed_b: *const f32,
    tri: Option<Tri>,
    a_row_sums: Option<SendPtr<f32>>,
) {
    let tiles = rows.div_ceil(MR);
    with_scratch(&PACK_A, |sa| {
        let packed_a = sa.get(tiles * MR * kc);
        pack_panels::<MR>(p.a_from(p0), kc, i0 + rows, i0, tiles, packed_a);
        if let Some(sums) = a_row_sums {
            add_row_sums(packed_a, rows, kc, sums.0.add(i0));
        }
        run_tiles(p, i0, rows, packed_a, p0, kc, packed_b, tri);
    });
}

/// The microkernel over every tile of rows `[i0, i0 + rows)` (packed from row i0 at `packed_a`)
/// and all of `p`'s columns (panels at `packed_b`), depth `[p0, p0 + kc)`. Triangle skipping
/// assumes these are the product's own columns (`tri` only comes from the one-thread
/// [`sgemm_tri`]).
#[allow(clippy::too_many_arguments)]
unsafe fn run_tiles(
    p: &Product,
    i0: usize,
    rows: usize,
    packed_a: *const f32,
    p0: usize,
    kc: usize,
    packed_b: *const f32,
    tri: Option<Tri>,
) {
    let (n, ldc, beta) = (p.n, p.ldc, p.beta_at(p0));
    let tiles = rows.div_ceil(MR);
    for jp in 0..n.div_ceil(NR) {
        let cols = (n - jp * NR).min(NR);
        let bp = packed_b.add(jp * kc * NR);
        for ip in 0..tiles {
            let nr = (rows - ip * MR).min(MR);
            let (first_row, end_row) = (i0 + ip * MR, i0 + ip * MR + nr);
            // The depth range [skip, kc) of this slab the tile needs (all of it unless a
            // triangle of A is zero); an empty range still applies beta.
            let skip = match tri {
                Some(Tri::OutLower) if jp * NR >= end_row => continue,
                Some(Tri::AUpper) => first_row.saturating_sub(p0).min(kc),
                _ => 0,
            };
            let end = match tri {
                Some(Tri::ALower) => end_row.saturating_sub(p0).min(kc),
                _ => kc,
            };
            micro_14x32(
                end.saturating_sub(skip),
                packed_a.add(ip * kc * MR + skip * MR),
                bp.add(skip * NR),
                p.c.add(first_row * ldc + jp * NR),
                ldc,
                nr,
                cols,
                p.alpha,
                beta,
            );
        }
    }
}

/// `sums[i] += Σ_p A[i, p]` for the `rows` rows packed at `packed` (MR-row panels of depth
/// `kc`), from the packed copy while it is in cache. Four interleaved partial sums per row keep
/// the adds from waiting on each other; the order is fixed.
#[target_feature(enable = "avx512f")]
unsafe fn add_row_sums(packed: *const f32, rows: usize, kc: usize, sums: *mut f32) {
    for t in 0..rows.div_ceil(MR) {
        let valid = (rows - t * MR).min(MR);
        let mask: __mmask16 = ((1u32 << valid) - 1) as u16;
        let panel = packed.add(t * kc * MR);
        let mut acc = [_mm512_setzero_ps(); 4];
        for p in 0..kc {
            acc[p % 4] = _mm512_add_ps(acc[p % 4], _mm512_maskz_loadu_ps(mask, panel.add(p * MR)));
        }
        let total = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let dst = sums.add(t * MR);
        _mm512_mask_storeu_ps(
            dst,
            mask,
            _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), total),
        );
    }
}

/// The register tile: `C[rows, cols] = alpha · Apanel @ Bpanel + beta · C` for a tile of at most
/// MR×NR (rows/cols below that mask the edges).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn micro_14x32(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    beta: f32,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let mut ap = a;
    let mut bp = b;
    // Start bringing C's tile (two lines per row) into L1 now: the k loop hides the misses the
    // stores at the end would otherwise wait for (outputs are usually not in cache yet).
    for i in 0..rows {
        _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc + 31) as *const i8);
    }
    for _ in 0..kc {
        let b0 = _mm512_load_ps(bp);
        let b1 = _mm512_load_ps(bp.add(16));
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm512_set1_ps(*ap.add(i));
            row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
        }
        ap = ap.add(MR);
        bp = bp.add(NR);
    }
    let (m0, m1) = col_masks(cols);
    let va = _mm512_set1_ps(alpha);
    let vb = _mm512_set1_ps(beta);
    for (i, row) in acc.iter().enumerate() {
        if i >= rows {
            break;
        }
        let cr = c.add(i * ldc);
        let mut r0 = _mm512_mul_ps(row[0], va);
        let mut r1 = _mm512_mul_ps(row[1], va);
        if beta != 0.0 {
            r0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, cr), vb, r0);
            r1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, cr.add(16)), vb, r1);
        }
        _mm512_mask_storeu_ps(cr, m0, r0);
        _mm512_mask_storeu_ps(cr.add(16), m1, r1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn naive(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        (ars, acs): (usize, usize),
        b: &[f32],
        (brs, bcs): (usize, usize),
        beta: f32,
        c: &mut [f32],
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    s += a[i * ars + p * acs] as f64 * b[p * brs + j * bcs] as f64;
                }
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta * c[i * n + j]
                };
                c[i * n + j] = alpha * s as f32 + old;
            }
        }
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// Row sums of A from its packed panels: every split (one thread, rows claimed, columns
    /// claimed), several slabs, transposed and plain A; the product is unchanged and the sums
    /// accumulate onto what was there.
    #[test]
    fn a_row_sums_match_naive() {
        if !available() {
            return;
        }
        let mut seed = 11u64;
        // (m, n, k): tall (rows claimed), wide (columns claimed), a short tile tail, one slab.
        for &(m, n, k) in &[
            (700, 40, 1000),
            (40, 1500, 800),
            (257, 256, 2048),
            (20, 64, 30),
        ] {
            for ta in [false, true] {
                for threads in [1, 2, 3] {
                    let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
                    let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed)).collect();
                    let (ars, acs) = if ta { (1, m) } else { (k, 1) };
                    let mut want = vec![0f32; m * n];
                    naive(m, n, k, 1.0, &a, (ars, acs), &b, (n, 1), 0.0, &mut want);
                    let start: Vec<f32> = (0..m).map(|_| lcg(&mut seed)).collect();
                    let mut sums = start.clone();
                    let mut got = vec![f32::NAN; m * n];
                    unsafe {
                        let p = Product {
                            m,
                            n,
                            k,
                            alpha: 1.0,
                            a: StridedRef {
                                ptr: a.as_ptr(),
                                rs: ars as isize,
                                cs: acs as isize,
                            },
                            b: StridedRef {
                                ptr: b.as_ptr(),
                                rs: n as isize,
                                cs: 1,
                            },
                            beta: 0.0,
                            c: got.as_mut_ptr(),
                            ldc: n,
                        };
                        sgemm_with_a_row_sums(p, threads, sums.as_mut_ptr())
                    };
                    let what = format!("m{m} n{n} k{k} ta{ta} t{threads}");
                    let tol = 1e-5 * (k as f32).sqrt();
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() <= tol, "{what}: product {g} vs {w}");
                    }
                    for i in 0..m {
                        let row: f64 = (0..k).map(|p| a[i * ars + p * acs] as f64).sum();
                        let w = start[i] as f64 + row;
                        assert!(
                            (sums[i] as f64 - w).abs() <= 1e-4,
                            "{what} row {i}: {} vs {w}",
                            sums[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn claims_cover_every_tile_once_and_shrink_at_the_end() {
        for (tiles, threads) in [
            (147, 2),
            (32, 2),
            (1, 2),
            (5000, 2),
            (300, 7),
            (100_000, 64),
        ] {
            let c = Claims::new(tiles, 3, threads);
            assert!(c.units <= MAX_UNITS, "{tiles} tiles: {} units", c.units);
            assert_eq!((c.first_tile[0], c.first_tile[c.units]), (0, tiles));
            let sizes: Vec<usize> = (0..c.units).map(|u| c.tiles(u).1 - c.tiles(u).0).collect();
            assert!(sizes.iter().all(|&s| s > 0), "{sizes:?}");
            assert!(
                sizes.windows(2).all(|w| w[1] <= w[0]),
                "not shrinking: {sizes:?}"
            );
        }
        let c = Claims::new(147, 1, 2);
        let last = c.tiles(c.units - 1);
        assert!(
            last.1 - last.0 <= 2,
            "the last unit of 147 tiles is {last:?}"
        );
        // Every (slab, unit) is claimed once, slab-major, then none.
        let got: Vec<_> =
            std::iter::from_fn(|| c.claim().inspect(|&(s, u)| c.finish(s, u))).collect();
        assert_eq!(got, (0..c.units).map(|u| (0, u)).collect::<Vec<_>>());
    }

    #[test]
    fn transpose16_transposes() {
        if !available() {
            return;
        }
        let src: Vec<f32> = (0..16 * 20).map(|i| i as f32).collect();
        let rows: [*const f32; 16] = std::array::from_fn(|r| src[r * 20 + 3..].as_ptr());
        let mut dst = vec![-1f32; 16 * 16];
        unsafe { transpose16(&rows, dst.as_mut_ptr(), 16) };
        for q in 0..16 {
            for r in 0..16 {
                assert_eq!(dst[q * 16 + r], src[r * 20 + 3 + q], "q{q} r{r}");
            }
        }
    }

    /// Every edge case of the tiling (tails in m, n and k; more than one KC slab; every transpose;
    /// alpha/beta; 1 and 2 threads) against a naive f64-accumulated product.
    #[test]
    fn matches_naive_on_awkward_shapes() {
        if !available() {
            eprintln!("no AVX-512 on this CPU: sgemm is not used here");
            return;
        }
        let mut seed = 7u64;
        let shapes = [
            (1, 1, 1),
            (14, 32, 7),
            (15, 33, 256),
            (13, 31, 257),
            (100, 70, 513),
            (29, 95, 64),
            (300, 40, 600),
            (20, 300, 100),
            (33, 97, 300),
            (2, 130, 3),
            // Many claimed units over several slabs: rows split (tall) and columns split (wide).
            (700, 40, 1000),
            (40, 1500, 800),
        ];
        for &(m, n, k) in &shapes {
            for &(ta, tb) in &[(false, false), (true, false), (false, true), (true, true)] {
                for &(alpha, beta) in &[(1.0f32, 0.0f32), (0.5, 1.0), (-1.25, 0.75)] {
                    for threads in [1, 2, 3] {
                        let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
                        let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed)).collect();
                        let c0: Vec<f32> = (0..m * n).map(|_| lcg(&mut seed)).collect();
                        let (ars, acs) = if ta { (1, m) } else { (k, 1) };
                        let (brs, bcs) = if tb { (1, k) } else { (n, 1) };
                        let mut want = c0.clone();
                        naive(
                            m,
                            n,
                            k,
                            alpha,
                            &a,
                            (ars, acs),
                            &b,
                            (brs, bcs),
                            beta,
                            &mut want,
                        );
                        let mut got = c0.clone();
                        if beta == 0.0 {
                            got.iter_mut().for_each(|x| *x = f32::NAN);
                        }
                        unsafe {
                            sgemm(
                                m,
                                n,
                                k,
                                alpha,
                                StridedRef {
                                    ptr: a.as_ptr(),
                                    rs: ars as isize,
                                    cs: acs as isize,
                                },
                                StridedRef {
                                    ptr: b.as_ptr(),
                                    rs: brs as isize,
                                    cs: bcs as isize,
                                },
                                beta,
                                got.as_mut_ptr(),
                                n,
                                threads,
                            )
                        };
                        for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                            let tol = 1e-5 * (k as f32).sqrt().max(1.0);
                            assert!(
                                (g - w).abs() <= tol,
                                "m{m} n{n} k{k} ta{ta} tb{tb} a{alpha} b{beta} t{threads} @{idx}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
