// dev/cuda: the first tensor-core attention ("tc", sessions 1-2), moved out of the production
// source at commit 75c7f08. Measured on the H100 (scripts/gpu/NOTES.md, session 2 run 1, one layer
// at 16 x 1024 x 12 heads x 64): forward 0.278 ms (93 TFLOP/s), backward 0.919 ms (70 TFLOP/s);
// tc2 (crates/kiln-engine/src/cuda/attention_tc.cu) replaced it: 0.261 / 0.502 ms.
// Not compiled into the crate. It needs the helpers of the production file, so it is appended
// after it: prelude.cu + attention_tc.cu + this file + `TC_INST(hd)` (tests/tc_emu.cpp does that
// to keep checking tc2 against tc bit for bit).
// Stage rows row0..row0+63 (HD floats each, row stride `stride` floats; rows >= lim are zero) of
// `g` into shared `s` as bf16 with row stride HD+8. All 128 threads.
template <int HD>
__device__ __forceinline__ void tc_stage(u16* s, const float* g, i64 stride, int row0, int lim) {
    const int C4 = HD / 4;
    for (int idx = threadIdx.x; idx < 64 * C4; idx += 128) {
        int r = idx / C4, c = (idx % C4) * 4;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (row0 + r < lim) v = *reinterpret_cast<const float4*>(g + (i64)(row0 + r) * stride + c);
        uint2 w;
        w.x = tc_pack(v.x, v.y);
        w.y = tc_pack(v.z, v.w);
        *reinterpret_cast<uint2*>(s + r * (HD + 8) + c) = w;
    }
}

// A fragment of rows r0..r0+15, cols c0..c0+15 of a staged tile.
template <int HD>
__device__ void tc_fwd(float* out, float* lse, const float* qkv, int T, int NH, int NKV, float scale) {
#ifdef TC_OK
    const int SD = HD + 8;
    __shared__ __align__(16) u16 sQ[64 * SD];
    __shared__ __align__(16) u16 sK[64 * SD];
    __shared__ __align__(16) u16 sV[64 * SD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.x, b = blockIdx.y, qt = gridDim.z - 1 - blockIdx.z;  // longest first
    const int kvh = h / (NH / NKV);
    const int W = (NH + 2 * NKV) * HD;
    const float* base = qkv + (i64)b * T * W;
    const int q0 = qt * 64, w16 = warp * 16;
    const int r0 = q0 + w16 + g;  // this thread's rows: r0 and r0 + 8
    const float sl2 = scale * TC_LOG2E;
    tc_stage<HD>(sQ, base + h * HD, W, q0, T);
    float o[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
    for (int kt = 0; kt <= qt; kt++) {
        const int k0 = kt * 64;
        __syncthreads();
        tc_stage<HD>(sK, base + (NH + kvh) * HD, W, k0, T);
        tc_stage<HD>(sV, base + (NH + NKV + kvh) * HD, W, k0, T);
        __syncthreads();
        float s[8][4];
        tc_rowdots<HD>(s, sQ, sK, w16);
        const bool diag = kt == qt;
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float v = s[n][e] * sl2;
                if (diag && k0 + n * 8 + 2 * t + (e & 1) > r0 + (e >> 1) * 8) v = NEG_INF;
                s[n][e] = v;
            }
            mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
            mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        if (mx0 == NEG_INF) mx0 = 0.f;  // unreachable with aligned tiles; keeps exp2 finite
        if (mx1 == NEG_INF) mx1 = 0.f;
        const float c0 = exp2f(m0 - mx0), c1 = exp2f(m1 - mx1);
        m0 = mx0;
        m1 = mx1;
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int d = 0; d < HD / 8; d++) {
            o[d][0] *= c0;
            o[d][1] *= c0;
            o[d][2] *= c1;
            o[d][3] *= c1;
        }
#pragma unroll
        for (int n = 0; n < 8; n++) {
            s[n][0] = exp2f(s[n][0] - mx0);
            s[n][1] = exp2f(s[n][1] - mx0);
            s[n][2] = exp2f(s[n][2] - mx1);
            s[n][3] = exp2f(s[n][3] - mx1);
            l0 += s[n][0] + s[n][1];
            l1 += s[n][2] + s[n][3];
        }
        tc_pv<HD>(o, s, sV);
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int r = r0 + half * 8;
        if (r >= T) continue;
        const float inv = 1.f / (half ? l1 : l0);
        float* op = out + ((i64)b * T + r) * NH * HD + h * HD + 2 * t;
#pragma unroll
        for (int d = 0; d < HD / 8; d++)
            *reinterpret_cast<float2*>(op + d * 8) = make_float2(o[d][2 * half] * inv, o[d][2 * half + 1] * inv);
        if (t == 0) lse[((i64)b * NH + h) * T + r] = ((half ? m1 : m0) + log2f(half ? l1 : l0)) * TC_LN2;
    }
#endif
}

// dQ_i = scale · Σ_j P_ij (dP_ij − D_i) K_j with dP = dO·Vᵀ; one block per 64 queries of a head.
template <int HD>
__device__ void tc_bwd_dq(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* D,
                          int T, int NH, int NKV, float scale) {
#ifdef TC_OK
    const int SD = HD + 8;
    __shared__ __align__(16) u16 sQ[64 * SD];
    __shared__ __align__(16) u16 sO[64 * SD];
    __shared__ __align__(16) u16 sK[64 * SD];
    __shared__ __align__(16) u16 sV[64 * SD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.x, b = blockIdx.y, qt = gridDim.z - 1 - blockIdx.z;
    const int kvh = h / (NH / NKV);
    const int W = (NH + 2 * NKV) * HD;
    const float* base = qkv + (i64)b * T * W;
    const int q0 = qt * 64, w16 = warp * 16;
    const int r0 = q0 + w16 + g;
    const float sl2 = scale * TC_LOG2E;
    tc_stage<HD>(sQ, base + h * HD, W, q0, T);
    tc_stage<HD>(sO, dout + (i64)b * T * NH * HD + h * HD, NH * HD, q0, T);
    float L[2], Dr[2];
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int r = r0 + half * 8;
        L[half] = r < T ? lse[((i64)b * NH + h) * T + r] * TC_LOG2E : 0.f;
        Dr[half] = r < T ? D[((i64)b * NH + h) * T + r] : 0.f;
    }
    float dq[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; d++) dq[d][0] = dq[d][1] = dq[d][2] = dq[d][3] = 0.f;
    for (int kt = 0; kt <= qt; kt++) {
        const int k0 = kt * 64;
        __syncthreads();
        tc_stage<HD>(sK, base + (NH + kvh) * HD, W, k0, T);
        tc_stage<HD>(sV, base + (NH + NKV + kvh) * HD, W, k0, T);
        __syncthreads();
        float s[8][4], dp[8][4];
        tc_rowdots<HD>(s, sQ, sK, w16);
        tc_rowdots<HD>(dp, sO, sV, w16);
        const bool diag = kt == qt;
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float p = exp2f(s[n][e] * sl2 - L[e >> 1]);
                if (diag && k0 + n * 8 + 2 * t + (e & 1) > r0 + (e >> 1) * 8) p = 0.f;
                s[n][e] = p * (dp[n][e] - Dr[e >> 1]);
            }
        }
        tc_pv<HD>(dq, s, sK);
    }
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int r = r0 + half * 8;
        if (r >= T) continue;
        float* op = dqkv + ((i64)b * T + r) * W + h * HD + 2 * t;
#pragma unroll
        for (int d = 0; d < HD / 8; d++)
            *reinterpret_cast<float2*>(op + d * 8) =
                make_float2(dq[d][2 * half] * scale, dq[d][2 * half + 1] * scale);
    }
#endif
}

// dV_j = Σ_{h in group} Σ_i P_ij dO_i, dK_j = scale · Σ Σ P_ij (dP_ij − D_i) Q_i; one block per 64
// keys of a kv head, looping over the group's query heads and the query tiles at or after it.
template <int HD>
__device__ void tc_bwd_dkv(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* D,
                           int T, int NH, int NKV, float scale) {
#ifdef TC_OK
    const int SD = HD + 8;
    __shared__ __align__(16) u16 sK[64 * SD];
    __shared__ __align__(16) u16 sV[64 * SD];
    __shared__ __align__(16) u16 sQ[64 * SD];
    __shared__ __align__(16) u16 sO[64 * SD];
    __shared__ float sL[64];
    __shared__ float sD[64];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int kvh = blockIdx.x, b = blockIdx.y, kt = blockIdx.z;  // small kt = most queries: first
    const int grp = NH / NKV;
    const int W = (NH + 2 * NKV) * HD;
    const float* base = qkv + (i64)b * T * W;
    const int k0 = kt * 64, w16 = warp * 16;
    const int j0 = k0 + w16 + g;  // this thread's keys: j0 and j0 + 8
    const float sl2 = scale * TC_LOG2E;
    tc_stage<HD>(sK, base + (NH + kvh) * HD, W, k0, T);
    tc_stage<HD>(sV, base + (NH + NKV + kvh) * HD, W, k0, T);
    float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; d++) {
        dk[d][0] = dk[d][1] = dk[d][2] = dk[d][3] = 0.f;
        dv[d][0] = dv[d][1] = dv[d][2] = dv[d][3] = 0.f;
    }
    const int nqt = (T + 63) / 64;
    for (int gi = 0; gi < grp; gi++) {
        const int h = kvh * grp + gi;
        for (int qt = kt; qt < nqt; qt++) {
            const int i0 = qt * 64;
            __syncthreads();
            tc_stage<HD>(sQ, base + h * HD, W, i0, T);
            tc_stage<HD>(sO, dout + (i64)b * T * NH * HD + h * HD, NH * HD, i0, T);
            if (threadIdx.x < 64) {
                const int i = i0 + threadIdx.x;
                sL[threadIdx.x] = i < T ? lse[((i64)b * NH + h) * T + i] * TC_LOG2E : 0.f;
                sD[threadIdx.x] = i < T ? D[((i64)b * NH + h) * T + i] : 0.f;
            }
            __syncthreads();
            float st[8][4], dpt[8][4];  // Sᵀ and dPᵀ: rows = this warp's 16 keys, cols = 64 queries
            tc_rowdots<HD>(st, sK, sQ, w16);
            tc_rowdots<HD>(dpt, sV, sO, w16);
            const bool edge = qt == kt || i0 + 64 > T;
#pragma unroll
            for (int n = 0; n < 8; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int c = n * 8 + 2 * t + (e & 1);
                    float p = exp2f(st[n][e] * sl2 - sL[c]);
                    if (edge && (i0 + c < j0 + (e >> 1) * 8 || i0 + c >= T)) p = 0.f;
                    st[n][e] = p;
                    dpt[n][e] = p * (dpt[n][e] - sD[c]);
                }
            }
            tc_pv<HD>(dv, st, sO);
            tc_pv<HD>(dk, dpt, sQ);
        }
    }
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int j = j0 + half * 8;
        if (j >= T) continue;
        float* op = dqkv + ((i64)b * T + j) * W + 2 * t;
#pragma unroll
        for (int d = 0; d < HD / 8; d++) {
            *reinterpret_cast<float2*>(op + (NH + kvh) * HD + d * 8) =
                make_float2(dk[d][2 * half] * scale, dk[d][2 * half + 1] * scale);
            *reinterpret_cast<float2*>(op + (NH + NKV + kvh) * HD + d * 8) =
                make_float2(dv[d][2 * half], dv[d][2 * half + 1]);
        }
    }
#endif
}

// Grids (mod.rs): fwd and dq (n_head, b, ceil(t/64)); dkv (n_kv, b, ceil(t/64)); 128 threads.
#define TC_INST(HD)                                                                                       \
    extern "C" __global__ void __launch_bounds__(128) k_attn_tc_fwd_##HD(                                \
        float* out, float* lse, const float* qkv, int T, int NH, int NKV, float scale) {                 \
        tc_fwd<HD>(out, lse, qkv, T, NH, NKV, scale);                                                    \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(128) k_attn_tc_bwd_dq_##HD(                             \
        float* dqkv, const float* dout, const float* qkv, const float* lse, const float* D, int T, int NH, \
        int NKV, float scale) {                                                                          \
        tc_bwd_dq<HD>(dqkv, dout, qkv, lse, D, T, NH, NKV, scale);                                       \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(128) k_attn_tc_bwd_dkv_##HD(                            \
        float* dqkv, const float* dout, const float* qkv, const float* lse, const float* D, int T, int NH, \
        int NKV, float scale) {                                                                          \
        tc_bwd_dkv<HD>(dqkv, dout, qkv, lse, D, T, NH, NKV, scale);                                      \
    }

