//! [`Backend`] for [`CudaBackend`]: each op checks its views, marks what it writes, and enqueues
//! its kernel or matmul on the backend's stream.

use super::*;

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
        // the f32 memory comes (zeroed) with the first use: see `CudaBuf::f32_ptr`
        Ok(CudaBuf {
            ptr: std::sync::atomic::AtomicU64::new(0),
            len,
            pool: self.pool.clone(),
            shadow: Mutex::new(Shadow::default()),
            has_stale: std::sync::atomic::AtomicBool::new(false),
            mat: self.mat.clone(),
        })
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
        if !self.lt_gelu_possible(act) || mn == 0 || d.k == 0 {
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
        if !self.lt_gelu_possible(act) || mn == 0 || d.k == 0 {
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
        // DGELU without the epilogue's bias gradient (its BGRAD variant ran at a third of the
        // plain GEMM's speed), then the fc bias gradient summed from the bf16 result
        let epi = LtEpi::DGelu { aux: paux };
        if self.lt_try(d, 1.0, 0.0, pa, pb, pd, pd, epi) {
            self.commit_bf16_result(&dpre, mn);
            drop(p);
            if let Some(db) = dbias {
                if d.n.is_multiple_of(2) && pd.is_multiple_of(4) {
                    let _q = self.op("bias_backward");
                    dirty(&db);
                    let grid = ((d.n / 2).div_ceil(32) as u32, d.m.div_ceil(256) as u32, 1);
                    launch!(self, "k_col_sum_bf16", grid, (32, 8, 1), 0; ptr(&db), pd, d.m as i32, d.n as i32);
                } else {
                    // odd widths: the f32 kernel (the bf16 result is written back first)
                    self.bias_backward(db, dpre, d.m, d.n);
                }
            }
            return;
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
        let pd = ptr(&dout);
        if cols.is_multiple_of(4) && pd.is_multiple_of(16) {
            let grid = ((cols / 4).div_ceil(32) as u32, rows.div_ceil(256) as u32, 1);
            launch!(self, "k_col_sum_v4", grid, (32, 8, 1), 0; ptr(&dbias), pd, rows as i32, cols as i32);
            return;
        }
        let grid = (cols.div_ceil(32) as u32, rows.div_ceil(256) as u32, 1);
        launch!(self, "k_col_grads", grid, (32, 8, 1), 0; 0u64, ptr(&dbias), pd, 0u64, 0u64, rows as i32, cols as i32);
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

    fn embedding_rows(
        &self,
        out: View<CudaBuf>,
        wte: View<CudaBuf>,
        wpe: Option<View<CudaBuf>>,
        ids: &[u32],
        pos: &[usize],
        c: usize,
    ) {
        let b = ids.len();
        assert!(pos.len() == b && out.len >= b * c);
        let _p = self.op("embedding_rows");
        dirty(&out);
        // One launch for the step's rows (the default ran one per row).
        let tab: Vec<u32> = ids
            .iter()
            .copied()
            .chain(pos.iter().map(|&p| p as u32))
            .collect();
        let tp = self.upload_u32(|s| &mut s.rows, &tab);
        launch!(self, "k_embed_rows", self.grid1(b * c), (256, 1, 1), 0;
            ptr(&out), ptr(&wte), optr(&wpe), tp, b as i32, c as i32);
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
        let n = rows * cols;
        let grid = (rows.div_ceil(8) as u32, 1, 1);
        let (pi, pw, pb) = (ptr(&inp), optr(&weight), optr(&bias));
        if !norm_rows_fit_v4(cols, &[pi, pw, pb]) {
            let bf = self.shadow_out(&out, n);
            launch!(self, "k_norm_fwd", grid, (256, 1, 1), 0;
                ptr(&out), ptr(&stats), pi, pw, pb, rows as i32, cols as i32, eps, is_ln, bf);
            return;
        }
        // With cached bf16 operands the normed rows are read only by bf16 matmuls: write them
        // only in bf16 (a bf16-only result, written back to f32 should anything read that).
        if self.fused_bf16() && n > 0 {
            if let Some(bf) = self
                .bf16_result_slot(&out, n)
                .filter(|p| p.is_multiple_of(8))
            {
                launch!(self, "k_norm_fwd_v4", grid, (256, 1, 1), 0;
                    0u64, ptr(&stats), pi, pw, pb, rows as i32, cols as i32, eps, is_ln, bf);
                self.commit_bf16_result(&out, n);
                return;
            }
        }
        let bf = self.shadow_out_aligned(&out, n, 8);
        launch!(self, "k_norm_fwd_v4", grid, (256, 1, 1), 0;
            ptr(&out), ptr(&stats), pi, pw, pb, rows as i32, cols as i32, eps, is_ln, bf);
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
        let (pd, po, pi, pw) = (ptr(&dinp), ptr(&dout), ptr(&inp), optr(&weight));
        if norm_rows_fit_v4(cols, &[pd, po, pi, pw]) {
            let bf = self.shadow_out_aligned(&dinp, rows * cols, 8);
            // one wave of two 256-thread blocks per SM, each warp over every (8·grid)-th row
            let grid = (
                rows.div_ceil(8).clamp(1, 2 * self.sms as usize) as u32,
                1,
                1,
            );
            launch!(self, "k_norm_bwd_v4", grid, (256, 1, 1), 0;
                pd, optr(&dweight), optr(&dbias), po, pi, ptr(&stats), pw, rows as i32, cols as i32, is_ln, bf);
            return;
        }
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
    /// precision on sm_80+ with a tc2 head dim also tc2's bf16 copies of
    /// q/k/v and dout (`tc2_layout`: +(qkv_width + out_width)/2 per token, 16-byte aligned).
    fn attention_scratch_len(&self, d: AttnDims) -> usize {
        let base = 2 * d.b * d.n_head * d.t + d.b * d.t * d.out_width();
        let tc2 = self.precision == Precision::Bf16;
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
        let smem = decode_scores_smem(pos0 + d.t);
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        launch!(self, "k_attn_cached", ((d.b * d.t) as u32, d.n_head as u32, 1), (128, 1, 1), smem;
            ptr(&out), ptr(&qkv), ptr(&k_cache), ptr(&v_cache), d.t as i32, d.n_head as i32, d.n_kv as i32,
            d.head_dim as i32, pos0 as i32, max_t as i32, scale);
    }

    fn attention_rows(
        &self,
        out: View<CudaBuf>,
        qkv: View<CudaBuf>,
        k_cache: View<CudaBuf>,
        v_cache: View<CudaBuf>,
        d: AttnDims,
        slots: &[usize],
        pos: &[usize],
        prefix: &[SharedPrefix],
        max_t: usize,
    ) {
        assert!(d.t == 1 && slots.len() == d.b && pos.len() == d.b);
        assert!(
            prefix.iter().all(|p| p.len == 0),
            "cuda: attention_rows does not read shared prefixes"
        );
        let row_kv = d.n_kv * d.head_dim;
        for (&s, &p) in slots.iter().zip(pos) {
            assert!(p < max_t, "KV cache overflow: {} > {max_t}", p + 1);
            assert!(
                (s + 1) * max_t * row_kv <= k_cache.len.min(v_cache.len),
                "slot {s} outside the cache"
            );
        }
        let _p = self.op("attention_rows");
        dirty(&out);
        dirty(&k_cache);
        dirty(&v_cache);
        // Two launches for the step's rows, where the default ran two per row (64 rows × 12
        // layers: ~1,500 launches per rollout step of the GPT-2-small preset).
        let tab: Vec<u32> = slots.iter().chain(pos).map(|&x| x as u32).collect();
        let tp = self.upload_u32(|s| &mut s.rows, &tab);
        launch!(self, "k_kv_append_rows", self.grid1(d.b * row_kv), (256, 1, 1), 0;
            ptr(&k_cache), ptr(&v_cache), ptr(&qkv), tp, d.b as i32, d.n_head as i32, d.n_kv as i32,
            d.head_dim as i32, max_t as i32);
        let smem = decode_scores_smem(pos.iter().max().map_or(0, |&p| p + 1));
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        launch!(self, "k_attn_rows", (d.b as u32, d.n_head as u32, 1), (128, 1, 1), smem;
            ptr(&out), ptr(&qkv), ptr(&k_cache), ptr(&v_cache), tp, d.b as i32, d.n_head as i32,
            d.n_kv as i32, d.head_dim as i32, max_t as i32, scale);
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
        if !contiguous || groups.len() < 2 || end > u32::MAX as usize {
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

/// Can the float4 norm kernels (`k_norm_fwd_v4`, `k_norm_bwd_v4`) take rows of `cols` floats with
/// these device pointers (0: absent)? Rows a multiple of 128 floats up to 1024 wide (a warp's
/// lanes hold at most 8 float4 each), every pointer 16-byte aligned.
fn norm_rows_fit_v4(cols: usize, ptrs: &[u64]) -> bool {
    cols > 0
        && cols.is_multiple_of(128)
        && cols <= 1024
        && ptrs.iter().all(|p| p.is_multiple_of(16))
}

/// Dynamic shared memory of the cached-decode kernels (`attend_cached`): one f32 score per cached
/// position, within the 48 KiB a launch gets without opting in.
fn decode_scores_smem(positions: usize) -> u32 {
    assert!(
        positions * 4 <= 48 * 1024,
        "cuda decode: {positions} cached positions exceed the 12288 supported"
    );
    (positions * 4) as u32
}
