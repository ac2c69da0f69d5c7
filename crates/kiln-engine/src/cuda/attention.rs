//! Training attention on the GPU: which kernels run ([`AttnKernel`]: tc2 on tensor cores in bf16
//! with a first-use self-test against v2, v2 in f32 — the exact path, and tc2's fallback), their launch, and the
//! scratch layout (lse, D, an output copy, tc2's bf16 copies of q/k/v and dout).

use super::*;

/// Head dims with a tensor-core (tc2) attention instantiation (HD 128 would need more than 48 KiB
/// of static shared memory and spills in dK/dV; it uses v2).
pub const TC_HEAD_DIMS: [usize; 3] = [16, 32, 64];

/// Which training-attention kernels run: tc2 in bf16 precision (falling back to v2 where it cannot
/// run), v2 in f32/tf32. The losing variants (v1, the first tensor-core "tc") are in `dev/cuda/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernel {
    /// Two threads per row, register-resident operands, f32: the exact path.
    V2,
    /// Tensor cores (bf16 mma.sync, fp32 accumulation), FlashAttention-2 style, on bf16 copies of
    /// q/k/v and dout (in the scratch), cp.async double-buffered.
    Tc2,
}

impl AttnKernel {
    pub fn name(self) -> &'static str {
        match self {
            AttnKernel::V2 => "v2",
            AttnKernel::Tc2 => "tc2",
        }
    }
}

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
pub(super) fn tc2_layout(d: AttnDims) -> (usize, usize, usize) {
    let base = (2 * d.b * d.n_head * d.t + d.b * d.t * d.out_width()).next_multiple_of(4);
    let (nq, no) = (d.b * d.t * d.qkv_width(), d.b * d.t * d.out_width());
    (base, base + nq / 2, base + nq / 2 + no / 2)
}

impl CudaBackend {
    /// Compile and load the attention kernels for head dim `hd` once.
    pub(super) fn ensure_attention(&self, hd: usize) {
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
                tracing::warn!("cuda: tc2 attention (head dim {hd}): shared-memory opt-in refused ({e:?}); using v2");
                self.tc2_ok
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(hd, false);
            }
        }
        attn.insert(hd, m);
    }

    /// The training-attention kernels asked for: tc2 in bf16 precision, else v2.
    pub(super) fn attention(&self) -> AttnKernel {
        if self.precision == Precision::Bf16 {
            AttnKernel::Tc2
        } else {
            AttnKernel::V2
        }
    }

    /// The kernels that will run for head dim `hd` (tc2 falls back to v2 for head dims without a
    /// tc2 instantiation, before sm_80, when its shared-memory opt-in was refused and after a failed
    /// self-test; this compiles and self-tests).
    pub fn attention_for(&self, hd: usize) -> AttnKernel {
        if self.attention() == AttnKernel::V2 || self.cc.0 < 8 || !TC_HEAD_DIMS.contains(&hd) {
            return AttnKernel::V2;
        }
        self.ensure_attention(hd);
        if self.tc_self_test(hd) {
            AttnKernel::Tc2
        } else {
            AttnKernel::V2
        }
    }

    /// The kernels for this call: [`Self::attention_for`], and v2 instead of tc when a pointer is
    /// not 16-byte aligned (the tc2 kernels use 16-byte copies and float2 stores) or the scratch
    /// cannot hold tc2's bf16 copies ([`Backend::attention_scratch_len`] in bf16 precision) at a
    /// 16-byte-aligned address.
    pub(super) fn attn_pick(
        &self,
        d: AttnDims,
        ptrs: &[u64],
        scratch: &View<CudaBuf>,
    ) -> AttnKernel {
        let unaligned = ptrs.iter().any(|p| p % 16 != 0);
        match self.attention_for(d.head_dim) {
            AttnKernel::Tc2
                if unaligned
                    || scratch.len < tc2_layout(d).2
                    || !ptr(scratch).is_multiple_of(16) =>
            {
                AttnKernel::V2
            }
            k => k,
        }
    }

    /// One-time check of the tc2 kernels for head dim `hd` against v2 on a small GQA shape with a
    /// partial tile (forward output and every gradient, relative max-norm ≤ 5e-2). On failure tc2
    /// is disabled for `hd` with a warning: a fragment-layout bug then costs speed, not a run.
    pub(super) fn tc_self_test(&self, hd: usize) -> bool {
        let table = &self.tc2_ok;
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
        let (fwd_err, bwd_err) = self.tc_compare(d).unwrap_or((f64::INFINITY, f64::INFINITY));
        let ok = fwd_err <= 5e-2 && bwd_err <= 5e-2;
        let name = AttnKernel::Tc2.name();
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

    /// Run v2 and tc2 forward + backward on the same random inputs; (fwd, bwd) relative max-norm
    /// (bwd over the whole packed dqkv).
    pub fn tc_compare(&self, d: AttnDims) -> Result<(f64, f64), EngineError> {
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
        for k in [AttnKernel::V2, AttnKernel::Tc2] {
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
    pub(super) fn attn_fwd_with(
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
            AttnKernel::V2 => args(self, &format!("k_attn2_fwd_{hd}"), grid, 128),
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
    pub(super) fn attn_bwd_with(
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
            AttnKernel::V2 => {
                args(self, &format!("k_attn2_bwd_dq_{hd}"), grid_q, 128);
                let grid_kv = (tiles(64), d.n_kv as u32, d.b as u32);
                args(self, &format!("k_attn2_bwd_dkv_{hd}"), grid_kv, 128);
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
    pub(super) fn tc2_cvt(&self, dst: View<CudaBuf>, src: View<CudaBuf>) {
        assert!(src.len.is_multiple_of(8) && dst.len * 2 >= src.len);
        let n8 = (src.len / 8) as i64;
        let blocks = (src.len / 8).div_ceil(256).clamp(1, self.sms as usize * 8) as u32;
        launch!(self, TC2_CVT, (blocks, 1, 1), (256, 1, 1), 0; ptr(&dst), ptr(&src), n8);
    }
}
