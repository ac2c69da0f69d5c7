// Tensor-core flash attention ("tc"): bf16 mma.sync.m16n8k16 with fp32 accumulation, forward and
// backward, FlashAttention-2 style (see mod.rs: chosen in bf16 matmul mode; v2 stays the f32 path).
//
// - Inputs stay f32 in global memory (packed qkv rows, dout); tiles are rounded to bf16 while being
//   staged into shared memory (row stride HD+8 halves: ldmatrix and fragment reads are free of bank
//   conflicts). Scores, softmax statistics and every accumulator are fp32.
// - Block = 4 warps; each warp owns 16 rows of a 64-row tile; the other operand comes in 64-row
//   tiles. Causal masking only on the diagonal tile (tiles are aligned, so every processed tile has
//   key k0 <= every query row: no row is ever fully masked).
// - Forward: online softmax in the log2 domain; saves lse (natural log, the same convention as the
//   f32 kernels, so either backward can consume either forward's scratch).
// - Backward: two kernels, no atomics: dQ per query tile (recomputes S and dP: 3 mma products) and
//   dK/dV per key tile looping over query tiles and the GQA group's query heads (4 products). Both
//   overwrite their part of the packed dqkv, matching the trait's overwrite contract without
//   zeroing a strided region or an f32 accumulator; deterministic; about 40% more backward FLOPs
//   than FA2's atomicAdd dQ.
// - Fragment layouts (PTX ISA, m16n8k16 .bf16): lane = 4*g + t. A (16x16, row-major): reg0 = (row g,
//   cols 2t..2t+1), reg1 = (g+8, 2t), reg2 = (g, 2t+8), reg3 = (g+8, 2t+8). B (16x8, k x n): reg0 =
//   (k 2t..2t+1, n g), reg1 = (k 2t+8.., n g). C (16x8 f32): c0,c1 = (row g, cols 2t, 2t+1), c2,c3 =
//   (row g+8, ...). A C-fragment pair (n-tiles 2j, 2j+1) is therefore the A fragment of k-chunk j.
// tests/tc_emu.cpp runs these kernels on the CPU (warp collectives emulated from the PTX spec).

typedef unsigned int u32;
typedef unsigned short u16;

#ifndef KILN_HOST_EMU
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define TC_OK 1
#endif
// bf16x2 from two floats (round to nearest even); `lo` goes to the low half (lower column index).
__device__ __forceinline__ u32 tc_pack(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
// c += A·B for one 16x8x16 tile (fragments as above).
__device__ __forceinline__ void tc_mma(float* c, const u32* a, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ u32 tc_smem(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}
// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i; r[i] = matrix i with
// this lane holding (row lane/4, cols 2(lane%4)..+1) — or with .trans (rows 2(lane%4)..+1, col lane/4).
__device__ __forceinline__ void tc_ldsm4(u32* r, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(tc_smem(p))
                 : "memory");
}
__device__ __forceinline__ void tc_ldsm4t(u32* r, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(tc_smem(p))
                 : "memory");
}
#endif

#define TC_LOG2E 1.4426950408889634f
#define TC_LN2 0.6931471805599453f

template <int HD>
__device__ __forceinline__ void tc_frag_a(u32* a, const u16* s, int r0, int c0) {
    int lane = threadIdx.x & 31;
    tc_ldsm4(a, s + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * (HD + 8) + c0 + (lane >> 4) * 8);
}
// B fragments for two n-tiles (rows n0..n0+7 -> b[0],b[1]; n0+8..n0+15 -> b[2],b[3]) of B = Sᵀ
// where S is a staged tile with rows = n and cols = k (k0..k0+15): "S·Xᵀ" products.
template <int HD>
__device__ __forceinline__ void tc_frag_bt(u32* b, const u16* s, int n0, int k0) {
    int lane = threadIdx.x & 31;
    tc_ldsm4(b, s + (n0 + (lane & 7) + (lane >> 4) * 8) * (HD + 8) + k0 + ((lane >> 3) & 1) * 8);
}
// B fragments for two n-tiles (cols n0..n0+7 -> b[0],b[1]; n0+8.. -> b[2],b[3]) of B = S itself
// (rows = k: k0..k0+15, cols = n): "P·V" products.
template <int HD>
__device__ __forceinline__ void tc_frag_b(u32* b, const u16* s, int k0, int n0) {
    int lane = threadIdx.x & 31;
    tc_ldsm4t(b, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * (HD + 8) + n0 + (lane >> 4) * 8);
}

// acc[n][..] (16 x 64) = rows w16..w16+15 of sa · (sb rows 0..63)ᵀ over HD.
template <int HD>
__device__ __forceinline__ void tc_rowdots(float (*acc)[4], const u16* sa, const u16* sb, int w16) {
#pragma unroll
    for (int n = 0; n < 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
        u32 a[4];
        tc_frag_a<HD>(a, sa, w16, ks * 16);
#pragma unroll
        for (int np = 0; np < 4; np++) {
            u32 bb[4];
            tc_frag_bt<HD>(bb, sb, np * 16, ks * 16);
            tc_mma(acc[2 * np], a, bb[0], bb[1]);
            tc_mma(acc[2 * np + 1], a, bb[2], bb[3]);
        }
    }
}

// acc (16 x HD) += P (16 x 64, C fragments p[8][4]) · sb (rows 0..63, HD cols).
template <int HD>
__device__ __forceinline__ void tc_pv(float (*acc)[4], const float (*p)[4], const u16* sb) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        u32 a[4];
        a[0] = tc_pack(p[2 * kk][0], p[2 * kk][1]);
        a[1] = tc_pack(p[2 * kk][2], p[2 * kk][3]);
        a[2] = tc_pack(p[2 * kk + 1][0], p[2 * kk + 1][1]);
        a[3] = tc_pack(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
        for (int dp = 0; dp < HD / 16; dp++) {
            u32 bb[4];
            tc_frag_b<HD>(bb, sb, kk * 16, dp * 16);
            tc_mma(acc[2 * dp], a, bb[0], bb[1]);
            tc_mma(acc[2 * dp + 1], a, bb[2], bb[3]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// "tc2": the same tensor-core math on bf16 copies of q/k/v and dout (written once per call into the
// attention scratch by k_attn_tc2_cvt, see mod.rs), with tiles moved by cp.async 16-byte copies
// straight into shared memory (no per-tile f32 load + convert) and double-buffered: the next
// K/V tile (forward, dQ) or the next Q/dO/lse/D tile (dK/dV) is in flight while the current one
// is multiplied. Shared memory is dynamic (5 tiles fwd, 6 dQ, 6 + 1 KiB dK/dV: mod.rs sets the
// opt-in limit). One barrier per tile: after `wait_group 0` + __syncthreads the current buffer is
// complete for every thread and every warp is done with the other buffer, which is then refilled.
#ifndef KILN_HOST_EMU
__device__ __forceinline__ void tc_cp16(void* s, const void* g) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(tc_smem(s)), "l"(g) : "memory");
}
__device__ __forceinline__ void tc_cp4(void* s, const void* g) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(tc_smem(s)), "l"(g) : "memory");
}
__device__ __forceinline__ void tc_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void tc_cp_wait0() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }
#define TC2_SMEM(name) extern __shared__ __align__(16) u16 name[]
#endif

// bf16 (round to nearest even) copy of n8 * 8 floats; both pointers 16-byte aligned.
extern "C" __global__ void k_attn_tc2_cvt(u16* dst, const float* src, i64 n8) {
#ifdef TC_OK
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n8; i += (i64)gridDim.x * blockDim.x) {
        const float4 a = reinterpret_cast<const float4*>(src)[2 * i];
        const float4 c = reinterpret_cast<const float4*>(src)[2 * i + 1];
        uint4 w;
        w.x = tc_pack(a.x, a.y);
        w.y = tc_pack(a.z, a.w);
        w.z = tc_pack(c.x, c.y);
        w.w = tc_pack(c.z, c.w);
        reinterpret_cast<uint4*>(dst)[i] = w;
    }
#endif
}

// Start async copies of bf16 rows row0..row0+63 (HD each, row stride `stride` elements) of `g` into
// `s` (row stride HD+8); rows >= lim are zero-filled with plain stores. All 128 threads.
template <int HD>
__device__ __forceinline__ void tc2_load(u16* s, const u16* g, i64 stride, int row0, int lim) {
    const int C8 = HD / 8;
    for (int idx = threadIdx.x; idx < 64 * C8; idx += 128) {
        const int r = idx / C8, c = (idx % C8) * 8;
        u16* d = s + r * (HD + 8) + c;
        if (row0 + r < lim)
            tc_cp16(d, g + (i64)(row0 + r) * stride + c);
        else
            *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
    }
}

template <int HD>
__device__ void tc2_fwd(float* out, float* lse, const u16* qkv, int T, int NH, int NKV, float scale) {
#ifdef TC_OK
    const int SD = HD + 8, TL = 64 * SD;
    TC2_SMEM(sm);  // sQ, then (K, V) x 2 buffers
    u16* sQ = sm;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.x, b = blockIdx.y, qt = gridDim.z - 1 - blockIdx.z;  // longest first
    const int kvh = h / (NH / NKV);
    const int W = (NH + 2 * NKV) * HD;
    const u16* base = qkv + (i64)b * T * W;
    const u16* kb = base + (NH + kvh) * HD;
    const u16* vb = base + (NH + NKV + kvh) * HD;
    const int q0 = qt * 64, w16 = warp * 16;
    const int r0 = q0 + w16 + g;
    const float sl2 = scale * TC_LOG2E;
    tc2_load<HD>(sQ, base + h * HD, W, q0, T);
    tc2_load<HD>(sm + TL, kb, W, 0, T);
    tc2_load<HD>(sm + 2 * TL, vb, W, 0, T);
    tc_cp_commit();
    float o[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
    for (int kt = 0; kt <= qt; kt++) {
        const int k0 = kt * 64;
        tc_cp_wait0();
        __syncthreads();
        if (kt < qt) {
            u16* nk = sm + (1 + 2 * ((kt + 1) & 1)) * TL;
            tc2_load<HD>(nk, kb, W, k0 + 64, T);
            tc2_load<HD>(nk + TL, vb, W, k0 + 64, T);
            tc_cp_commit();
        }
        const u16* sK = sm + (1 + 2 * (kt & 1)) * TL;
        const u16* sV = sK + TL;
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
        if (mx0 == NEG_INF) mx0 = 0.f;
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

// dQ as tc_bwd_dq, from bf16 q/k/v (`qkv`) and dout (`dob`, rows of NH*HD).
template <int HD>
__device__ void tc2_bwd_dq(float* dqkv, const u16* dob, const u16* qkv, const float* lse, const float* D, int T,
                           int NH, int NKV, float scale) {
#ifdef TC_OK
    const int SD = HD + 8, TL = 64 * SD;
    TC2_SMEM(sm);  // sQ, sO, then (K, V) x 2 buffers
    u16* sQ = sm;
    u16* sO = sm + TL;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.x, b = blockIdx.y, qt = gridDim.z - 1 - blockIdx.z;
    const int kvh = h / (NH / NKV);
    const int W = (NH + 2 * NKV) * HD;
    const u16* base = qkv + (i64)b * T * W;
    const u16* kb = base + (NH + kvh) * HD;
    const u16* vb = base + (NH + NKV + kvh) * HD;
    const int q0 = qt * 64, w16 = warp * 16;
    const int r0 = q0 + w16 + g;
    const float sl2 = scale * TC_LOG2E;
    tc2_load<HD>(sQ, base + h * HD, W, q0, T);
    tc2_load<HD>(sO, dob + (i64)b * T * NH * HD + h * HD, NH * HD, q0, T);
    tc2_load<HD>(sm + 2 * TL, kb, W, 0, T);
    tc2_load<HD>(sm + 3 * TL, vb, W, 0, T);
    tc_cp_commit();
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
        tc_cp_wait0();
        __syncthreads();
        if (kt < qt) {
            u16* nk = sm + (2 + 2 * ((kt + 1) & 1)) * TL;
            tc2_load<HD>(nk, kb, W, k0 + 64, T);
            tc2_load<HD>(nk + TL, vb, W, k0 + 64, T);
            tc_cp_commit();
        }
        const u16* sK = sm + (2 + 2 * (kt & 1)) * TL;
        const u16* sV = sK + TL;
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

// Stage work item `it` of a dK/dV block (query head kvh*grp + it/nq, query tile kt + it%nq): Q, dO
// tiles and the tile's lse / D (4-byte async copies; rows >= T read as 0 and are masked anyway).
template <int HD>
__device__ __forceinline__ void tc2_dkv_item(u16* sQ, float* sLD, const u16* dob, const u16* base, const float* lse,
                                             const float* D, int it, int nq, int kt, int kvh, int grp, int b,
                                             int T, int NH, int W) {
    const int h = kvh * grp + it / nq, i0 = (kt + it % nq) * 64;
    tc2_load<HD>(sQ, base + h * HD, W, i0, T);
    tc2_load<HD>(sQ + 64 * (HD + 8), dob + (i64)b * T * NH * HD + h * HD, NH * HD, i0, T);
    {  // threads 0..63: lse, 64..127: D
        const int i = i0 + (threadIdx.x & 63);
        float* dst = sLD + threadIdx.x;
        if (i < T)
            tc_cp4(dst, (threadIdx.x < 64 ? lse : D) + ((i64)b * NH + h) * T + i);
        else
            *dst = 0.f;
    }
}

// dK/dV as tc_bwd_dkv, from bf16 q/k/v and dout; the (query head, query tile) items are one
// flattened loop so the next item's tiles can be in flight across head boundaries.
template <int HD>
__device__ void tc2_bwd_dkv(float* dqkv, const u16* dob, const u16* qkv, const float* lse, const float* D, int T,
                            int NH, int NKV, float scale) {
#ifdef TC_OK
    const int SD = HD + 8, TL = 64 * SD;
    TC2_SMEM(sm);  // sK, sV, then (Q, dO) x 2 buffers, then (lse[64], D[64]) x 2 as floats
    u16* sK = sm;
    u16* sV = sm + TL;
    float* sLD = reinterpret_cast<float*>(sm + 6 * TL);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int kvh = blockIdx.x, b = blockIdx.y, kt = blockIdx.z;  // small kt = most queries: first
    const int grp = NH / NKV;
    const int W = (NH + 2 * NKV) * HD;
    const u16* base = qkv + (i64)b * T * W;
    const int k0 = kt * 64, w16 = warp * 16;
    const int j0 = k0 + w16 + g;
    const float sl2 = scale * TC_LOG2E;
    const int nq = (T + 63) / 64 - kt, n_items = grp * nq;
    tc2_load<HD>(sK, base + (NH + kvh) * HD, W, k0, T);
    tc2_load<HD>(sV, base + (NH + NKV + kvh) * HD, W, k0, T);
    tc2_dkv_item<HD>(sm + 2 * TL, sLD, dob, base, lse, D, 0, nq, kt, kvh, grp, b, T, NH, W);
    tc_cp_commit();
    float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; d++) {
        dk[d][0] = dk[d][1] = dk[d][2] = dk[d][3] = 0.f;
        dv[d][0] = dv[d][1] = dv[d][2] = dv[d][3] = 0.f;
    }
    for (int it = 0; it < n_items; it++) {
        tc_cp_wait0();
        __syncthreads();
        if (it + 1 < n_items) {
            const int nb = (it + 1) & 1;
            tc2_dkv_item<HD>(sm + (2 + 2 * nb) * TL, sLD + nb * 128, dob, base, lse, D, it + 1, nq, kt, kvh, grp, b,
                             T, NH, W);
            tc_cp_commit();
        }
        const int cb = it & 1, i0 = (kt + it % nq) * 64;
        const u16* sQ = sm + (2 + 2 * cb) * TL;
        const u16* sO = sQ + TL;
        const float* sL = sLD + cb * 128;
        const float* sD = sL + 64;
        float st[8][4], dpt[8][4];  // Sᵀ and dPᵀ: rows = this warp's 16 keys, cols = 64 queries
        tc_rowdots<HD>(st, sK, sQ, w16);
        tc_rowdots<HD>(dpt, sV, sO, w16);
        const bool edge = i0 == k0 || i0 + 64 > T;
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int c = n * 8 + 2 * t + (e & 1);
                float p = exp2f(st[n][e] * sl2 - sL[c] * TC_LOG2E);
                if (edge && (i0 + c < j0 + (e >> 1) * 8 || i0 + c >= T)) p = 0.f;
                st[n][e] = p;
                dpt[n][e] = p * (dpt[n][e] - sD[c]);
            }
        }
        tc_pv<HD>(dv, st, sO);
        tc_pv<HD>(dk, dpt, sQ);
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

// Grids as TC_INST; dynamic shared memory: fwd 5 tiles, dq 6, dkv 6 tiles + 1 KiB (tile = 64·(HD+8)
// bf16), see mod.rs `tc2_smem`.
#define TC2_INST(HD)                                                                                      \
    extern "C" __global__ void __launch_bounds__(128) k_attn_tc2_fwd_##HD(                               \
        float* out, float* lse, const u16* qkv, int T, int NH, int NKV, float scale) {                   \
        tc2_fwd<HD>(out, lse, qkv, T, NH, NKV, scale);                                                   \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(128) k_attn_tc2_bwd_dq_##HD(                            \
        float* dqkv, const u16* dob, const u16* qkv, const float* lse, const float* D, int T, int NH,    \
        int NKV, float scale) {                                                                          \
        tc2_bwd_dq<HD>(dqkv, dob, qkv, lse, D, T, NH, NKV, scale);                                       \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(128) k_attn_tc2_bwd_dkv_##HD(                           \
        float* dqkv, const u16* dob, const u16* qkv, const float* lse, const float* D, int T, int NH,    \
        int NKV, float scale) {                                                                          \
        tc2_bwd_dkv<HD>(dqkv, dob, qkv, lse, D, T, NH, NKV, scale);                                      \
    }
