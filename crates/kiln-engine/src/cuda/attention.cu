// Flash-style causal attention kernels in f32 on CUDA cores (no T×T matrix in memory), one module
// per head dim (see compile.rs: `attention_source`). Scratch per call: lse [b, nh, t], D [b, nh, t],
// O copy [b*t, nh*hd]. The first version (v1, one thread per row) is in dev/cuda/attention_v1.cu.

// D[b,h,i] = Σ_d dO·O; one warp per (token row, head).
extern "C" __global__ void k_attn_bwd_d(float* D, const float* dout, const float* o, int rows, int T, int NH,
                                        int HD) {
    i64 gw = (blockIdx.x * (i64)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (gw >= (i64)rows * NH) return;
    int r = (int)(gw / NH), h = (int)(gw % NH);
    const float* a = dout + (i64)r * NH * HD + h * HD;
    const float* c = o + (i64)r * NH * HD + h * HD;
    float s = 0.f;
    for (int d = lane; d < HD; d += 32) s += a[d] * c[d];
    s = warp_sum(s);
    int b = r / T, i = r % T;
    if (lane == 0) D[((i64)b * NH + h) * T + i] = s;
}

// ---- v2: two threads per row, each owning interleaved float4 groups of the head dims --------
// Register-resident operands (q/o, q/dq/dO, k/v/dk/dv) and 16-byte broadcast reads of the shared
// tiles, so the inner loops are FMA-bound instead of shared-memory-bound; the pair's partial dot
// products are combined with one shuffle (mask = the pair, so divergent rows are fine).
__device__ __forceinline__ float dot4(float4 a, float4 b) { return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; }
__device__ __forceinline__ void fma4(float4& acc, float s, float4 b) {
    acc.x += s * b.x; acc.y += s * b.y; acc.z += s * b.z; acc.w += s * b.w;
}
__device__ __forceinline__ float4 ld4(const float* p, float s) {
    return make_float4(p[0] * s, p[1] * s, p[2] * s, p[3] * s);
}
__device__ __forceinline__ void st4(float* p, float4 v, float s) {
    p[0] = v.x * s; p[1] = v.y * s; p[2] = v.z * s; p[3] = v.w * s;
}

template <int HD>
__device__ void attn2_fwd(float* out, float* lse, const float* qkv, int T, int NH, int NKV, float scale) {
    const int BQ = 64, H4 = HD / 8, BK = 4096 / HD;
    __shared__ __align__(16) float sK[BK * HD];
    __shared__ __align__(16) float sV[BK * HD];
    int row = threadIdx.x >> 1, part = threadIdx.x & 1;
    unsigned pm = 3u << ((threadIdx.x & 31) & ~1u);
    int qt = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    int kvh = h / (NH / NKV);
    int W = (NH + 2 * NKV) * HD;
    int i = qt * BQ + row;
    const float* base = qkv + (i64)b * T * W;
    bool valid = i < T;
    float4 q[H4], o[H4];
#pragma unroll
    for (int m = 0; m < H4; m++) {
        q[m] = valid ? ld4(base + (i64)i * W + h * HD + (2 * m + part) * 4, scale) : make_float4(0.f, 0.f, 0.f, 0.f);
        o[m] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    float mr = NEG_INF, l = 0.f;
    int kend = min(T, qt * BQ + BQ);
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < BK * HD; idx += blockDim.x) {
            int j = idx / HD, d = idx % HD, kj = k0 + j;
            sK[idx] = kj < T ? base[(i64)kj * W + (NH + kvh) * HD + d] : 0.f;
            sV[idx] = kj < T ? base[(i64)kj * W + (NH + NKV + kvh) * HD + d] : 0.f;
        }
        __syncthreads();
        if (!valid) continue;
        for (int c0 = 0; c0 < BK && k0 + c0 <= i; c0 += 16) {
            float s[16];
            float cm = NEG_INF;
#pragma unroll
            for (int jj = 0; jj < 16; jj++) {
                const float4* kr = reinterpret_cast<const float4*>(sK + (c0 + jj) * HD);
                float acc = 0.f;
#pragma unroll
                for (int m = 0; m < H4; m++) acc += dot4(q[m], kr[2 * m + part]);
                acc += __shfl_xor_sync(pm, acc, 1);
                s[jj] = (k0 + c0 + jj <= i) ? acc : NEG_INF;
                cm = fmaxf(cm, s[jj]);
            }
            float mn = fmaxf(mr, cm);
            float corr = expf(mr - mn);
            l *= corr;
#pragma unroll
            for (int m = 0; m < H4; m++) { o[m].x *= corr; o[m].y *= corr; o[m].z *= corr; o[m].w *= corr; }
#pragma unroll
            for (int jj = 0; jj < 16; jj++) {
                float p = expf(s[jj] - mn);
                l += p;
                const float4* vr = reinterpret_cast<const float4*>(sV + (c0 + jj) * HD);
#pragma unroll
                for (int m = 0; m < H4; m++) fma4(o[m], p, vr[2 * m + part]);
            }
            mr = mn;
        }
    }
    if (valid) {
        float inv = 1.f / l;
        float* op = out + ((i64)b * T + i) * NH * HD + h * HD;
#pragma unroll
        for (int m = 0; m < H4; m++) st4(op + (2 * m + part) * 4, o[m], inv);
        if (part == 0) lse[((i64)b * NH + h) * T + i] = mr + logf(l);
    }
}

template <int HD>
__device__ void attn2_bwd_dq(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* D,
                             int T, int NH, int NKV, float scale) {
    const int BQ = 64, H4 = HD / 8, BK = 2048 / HD;
    __shared__ __align__(16) float sK[BK * HD];
    __shared__ __align__(16) float sV[BK * HD];
    int row = threadIdx.x >> 1, part = threadIdx.x & 1;
    unsigned pm = 3u << ((threadIdx.x & 31) & ~1u);
    int qt = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    int kvh = h / (NH / NKV);
    int W = (NH + 2 * NKV) * HD;
    int i = qt * BQ + row;
    const float* base = qkv + (i64)b * T * W;
    bool valid = i < T;
    float4 q[H4], dq[H4], dO[H4];
    const float4 z4 = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int m = 0; m < H4; m++) {
        int dd = (2 * m + part) * 4;
        q[m] = valid ? ld4(base + (i64)i * W + h * HD + dd, scale) : z4;
        dO[m] = valid ? ld4(dout + ((i64)b * T + i) * NH * HD + h * HD + dd, 1.f) : z4;
        dq[m] = z4;
    }
    float L = valid ? lse[((i64)b * NH + h) * T + i] : 0.f;
    float Di = valid ? D[((i64)b * NH + h) * T + i] : 0.f;
    int kend = min(T, qt * BQ + BQ);
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < BK * HD; idx += blockDim.x) {
            int j = idx / HD, d = idx % HD, kj = k0 + j;
            sK[idx] = kj < T ? base[(i64)kj * W + (NH + kvh) * HD + d] : 0.f;
            sV[idx] = kj < T ? base[(i64)kj * W + (NH + NKV + kvh) * HD + d] : 0.f;
        }
        __syncthreads();
        if (!valid) continue;
        int jend = min(BK, i - k0 + 1);
        for (int j = 0; j < jend; j++) {
            const float4* kr = reinterpret_cast<const float4*>(sK + j * HD);
            const float4* vr = reinterpret_cast<const float4*>(sV + j * HD);
            float s = 0.f, dp = 0.f;
#pragma unroll
            for (int m = 0; m < H4; m++) { s += dot4(q[m], kr[2 * m + part]); dp += dot4(dO[m], vr[2 * m + part]); }
            s += __shfl_xor_sync(pm, s, 1);
            dp += __shfl_xor_sync(pm, dp, 1);
            float ds = expf(s - L) * (dp - Di) * scale;
#pragma unroll
            for (int m = 0; m < H4; m++) fma4(dq[m], ds, kr[2 * m + part]);
        }
    }
    if (valid) {
        float* o = dqkv + ((i64)b * T + i) * W + h * HD;
#pragma unroll
        for (int m = 0; m < H4; m++) st4(o + (2 * m + part) * 4, dq[m], 1.f);
    }
}

template <int HD>
__device__ void attn2_bwd_dkv(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* D,
                              int T, int NH, int NKV, float scale) {
    const int BKV = 64, H4 = HD / 8, TQ = (2048 / HD) < 64 ? (2048 / HD) : 64;
    __shared__ __align__(16) float sQ[TQ * HD];
    __shared__ __align__(16) float sDO[TQ * HD];
    __shared__ float sL[TQ];
    __shared__ float sD[TQ];
    int row = threadIdx.x >> 1, part = threadIdx.x & 1;
    unsigned pm = 3u << ((threadIdx.x & 31) & ~1u);
    int kt = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    int grp = NH / NKV;
    int W = (NH + 2 * NKV) * HD;
    int j = kt * BKV + row;
    const float* base = qkv + (i64)b * T * W;
    bool valid = j < T;
    float4 k[H4], v[H4], dk[H4], dv[H4];
    const float4 z4 = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int m = 0; m < H4; m++) {
        int dd = (2 * m + part) * 4;
        k[m] = valid ? ld4(base + (i64)j * W + (NH + kvh) * HD + dd, 1.f) : z4;
        v[m] = valid ? ld4(base + (i64)j * W + (NH + NKV + kvh) * HD + dd, 1.f) : z4;
        dk[m] = z4;
        dv[m] = z4;
    }
    int qstart = kt * BKV;
    for (int g = 0; g < grp; g++) {
        int h = kvh * grp + g;
        for (int i0 = qstart; i0 < T; i0 += TQ) {
            __syncthreads();
            for (int idx = threadIdx.x; idx < TQ * HD; idx += blockDim.x) {
                int ii = idx / HD, d = idx % HD, qi = i0 + ii;
                sQ[idx] = qi < T ? base[(i64)qi * W + h * HD + d] * scale : 0.f;
                sDO[idx] = qi < T ? dout[((i64)b * T + qi) * NH * HD + h * HD + d] : 0.f;
            }
            for (int ii = threadIdx.x; ii < TQ; ii += blockDim.x) {
                int qi = i0 + ii;
                sL[ii] = qi < T ? lse[((i64)b * NH + h) * T + qi] : 0.f;
                sD[ii] = qi < T ? D[((i64)b * NH + h) * T + qi] : 0.f;
            }
            __syncthreads();
            if (!valid) continue;
            int iend = min(TQ, T - i0);
            for (int ii = max(0, j - i0); ii < iend; ii++) {
                const float4* qr = reinterpret_cast<const float4*>(sQ + ii * HD);
                const float4* dr = reinterpret_cast<const float4*>(sDO + ii * HD);
                float s = 0.f, dp = 0.f;
#pragma unroll
                for (int m = 0; m < H4; m++) { s += dot4(qr[2 * m + part], k[m]); dp += dot4(dr[2 * m + part], v[m]); }
                s += __shfl_xor_sync(pm, s, 1);
                dp += __shfl_xor_sync(pm, dp, 1);
                float p = expf(s - sL[ii]);
                float ds = p * (dp - sD[ii]);
#pragma unroll
                for (int m = 0; m < H4; m++) { fma4(dv[m], p, dr[2 * m + part]); fma4(dk[m], ds, qr[2 * m + part]); }
            }
        }
    }
    if (valid) {
        float* o = dqkv + ((i64)b * T + j) * W;
#pragma unroll
        for (int m = 0; m < H4; m++) {
            int dd = (2 * m + part) * 4;
            st4(o + (NH + kvh) * HD + dd, dk[m], 1.f);
            st4(o + (NH + NKV + kvh) * HD + dd, dv[m], 1.f);
        }
    }
}

#define ATTN_INST(HD)                                                                                        \
    extern "C" __global__ void k_attn2_fwd_##HD(float* out, float* lse, const float* qkv, int T, int NH,    \
                                                int NKV, float scale) {                                    \
        attn2_fwd<HD>(out, lse, qkv, T, NH, NKV, scale);                                                   \
    }                                                                                                      \
    extern "C" __global__ void k_attn2_bwd_dq_##HD(float* dqkv, const float* dout, const float* qkv,        \
                                                   const float* lse, const float* D, int T, int NH,        \
                                                   int NKV, float scale) {                                 \
        attn2_bwd_dq<HD>(dqkv, dout, qkv, lse, D, T, NH, NKV, scale);                                      \
    }                                                                                                      \
    extern "C" __global__ void k_attn2_bwd_dkv_##HD(float* dqkv, const float* dout, const float* qkv,       \
                                                    const float* lse, const float* D, int T, int NH,       \
                                                    int NKV, float scale) {                                \
        attn2_bwd_dkv<HD>(dqkv, dout, qkv, lse, D, T, NH, NKV, scale);                                     \
    }
// mod.rs appends `ATTN_INST(<head dim>)` and compiles one module per head dim on first use: the
// fully unrolled HD=128 variant alone takes NVRTC over a minute, so nothing is compiled that a run
// does not need.

