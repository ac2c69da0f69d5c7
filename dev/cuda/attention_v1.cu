// dev/cuda: attention v1 (session 1: one thread per row, f32 on CUDA cores), moved out of the
// production source at commit 75c7f08. Measured on the H100 (scripts/gpu/NOTES.md, run 1 vs 2, one
// GPT-2-124M step at 16 x 1024): forward 36.5 ms and backward 102.7 ms per step against v2's 20.7 /
// 81.1 ms (step 206.6 -> 169.9 ms). Not compiled into the crate; to run it again append it to
// prelude.cu + attention.cu with `ATTN_V1_INST(hd)` and launch k_attn_fwd_<hd> (64 threads,
// grid (ceil(t/64), nh, b)), k_attn_bwd_dq_<hd> (same) and k_attn_bwd_dkv_<hd> (one thread per
// key: 64 keys per block, 32 at hd 128; grid (ceil(t/keys), n_kv, b)); the lse/D/O-copy scratch is
// the v2 one (k_attn_bwd_d fills D).
// ---- flash-style causal attention (f32, CUDA cores; no T×T matrix in memory) ---------------
// One thread per query row (forward, dQ) or key row (dK/dV); key/query tiles staged in shared
// memory and read by broadcast. Scratch per call: lse [b, nh, t], D [b, nh, t], O copy [b*t, nh*hd].
template <int HD>
__device__ void attn_fwd(float* out, float* lse, const float* qkv, int T, int NH, int NKV, float scale) {
    const int BQ = 64;
    const int BK = 4096 / HD;
    __shared__ float sK[BK * HD];
    __shared__ float sV[BK * HD];
    int qt = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    int kvh = h / (NH / NKV);
    int W = (NH + 2 * NKV) * HD;
    int i = qt * BQ + threadIdx.x;
    const float* base = qkv + (i64)b * T * W;
    bool valid = i < T;
    float q[HD], o[HD];
#pragma unroll
    for (int d = 0; d < HD; d++) { q[d] = valid ? base[(i64)i * W + h * HD + d] * scale : 0.f; o[d] = 0.f; }
    float m = NEG_INF, l = 0.f;
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
                int kj = k0 + c0 + jj;
                float acc = 0.f;
#pragma unroll
                for (int d = 0; d < HD; d++) acc += q[d] * sK[(c0 + jj) * HD + d];
                s[jj] = (kj <= i && kj < T) ? acc : NEG_INF;
                cm = fmaxf(cm, s[jj]);
            }
            float mn = fmaxf(m, cm);
            float corr = expf(m - mn);
            l *= corr;
#pragma unroll
            for (int d = 0; d < HD; d++) o[d] *= corr;
#pragma unroll
            for (int jj = 0; jj < 16; jj++) {
                float p = expf(s[jj] - mn);
                l += p;
#pragma unroll
                for (int d = 0; d < HD; d++) o[d] += p * sV[(c0 + jj) * HD + d];
            }
            m = mn;
        }
    }
    if (valid) {
        float inv = 1.f / l;
        float* op = out + ((i64)b * T + i) * NH * HD + h * HD;
#pragma unroll
        for (int d = 0; d < HD; d++) op[d] = o[d] * inv;
        lse[((i64)b * NH + h) * T + i] = m + logf(l);
    }
}

// dQ_i = scale * Σ_j P_ij (dP_ij - D_i) K_j, dP_ij = dO_i·V_j. One thread per query.
template <int HD>
__device__ void attn_bwd_dq(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* D,
                            int T, int NH, int NKV, float scale) {
    const int BQ = 64;
    const int BK = 1024 / HD;
    __shared__ float sK[BK * HD];
    __shared__ float sV[BK * HD];
    __shared__ float sDO[BQ * (HD + 1)];
    int qt = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    int kvh = h / (NH / NKV);
    int W = (NH + 2 * NKV) * HD;
    int i = qt * BQ + threadIdx.x;
    const float* base = qkv + (i64)b * T * W;
    bool valid = i < T;
    float q[HD], dq[HD];
    float* mydo = sDO + threadIdx.x * (HD + 1);
#pragma unroll
    for (int d = 0; d < HD; d++) {
        q[d] = valid ? base[(i64)i * W + h * HD + d] * scale : 0.f;
        dq[d] = 0.f;
        mydo[d] = valid ? dout[((i64)b * T + i) * NH * HD + h * HD + d] : 0.f;
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
            float s = 0.f, dp = 0.f;
#pragma unroll
            for (int d = 0; d < HD; d++) { s += q[d] * sK[j * HD + d]; dp += mydo[d] * sV[j * HD + d]; }
            float p = expf(s - L);
            float ds = p * (dp - Di) * scale;
#pragma unroll
            for (int d = 0; d < HD; d++) dq[d] += ds * sK[j * HD + d];
        }
    }
    if (valid) {
        float* o = dqkv + ((i64)b * T + i) * W + h * HD;
#pragma unroll
        for (int d = 0; d < HD; d++) o[d] = dq[d];
    }
}

// dV_j = Σ_{h in group} Σ_i P_ij dO_i, dK_j = scale * Σ Σ P_ij (dP_ij - D_i) Q_i. One thread per key.
template <int HD>
__device__ void attn_bwd_dkv(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* D,
                             int T, int NH, int NKV, float scale) {
    const int BKV = HD >= 128 ? 32 : 64;
    const int TQ = (1024 / HD) < 64 ? (1024 / HD) : 64;
    __shared__ float sKj[BKV * (HD + 1)];
    __shared__ float sVj[BKV * (HD + 1)];
    __shared__ float sQ[TQ * HD];
    __shared__ float sDO[TQ * HD];
    __shared__ float sL[TQ];
    __shared__ float sD[TQ];
    int kt = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    int grp = NH / NKV;
    int W = (NH + 2 * NKV) * HD;
    int j = kt * BKV + threadIdx.x;
    const float* base = qkv + (i64)b * T * W;
    bool valid = j < T;
    float* myk = sKj + threadIdx.x * (HD + 1);
    float* myv = sVj + threadIdx.x * (HD + 1);
    float dk[HD], dv[HD];
#pragma unroll
    for (int d = 0; d < HD; d++) {
        myk[d] = valid ? base[(i64)j * W + (NH + kvh) * HD + d] : 0.f;
        myv[d] = valid ? base[(i64)j * W + (NH + NKV + kvh) * HD + d] : 0.f;
        dk[d] = 0.f;
        dv[d] = 0.f;
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
            for (int ii = 0; ii < TQ; ii++) {
                int qi = i0 + ii;
                if (qi >= T) break;
                if (qi < j) continue;
                float s = 0.f, dp = 0.f;
#pragma unroll
                for (int d = 0; d < HD; d++) { s += sQ[ii * HD + d] * myk[d]; dp += sDO[ii * HD + d] * myv[d]; }
                float p = expf(s - sL[ii]);
                float ds = p * (dp - sD[ii]);  // q in shared is pre-scaled: dK = Σ ds * (scale*q)
#pragma unroll
                for (int d = 0; d < HD; d++) { dv[d] += p * sDO[ii * HD + d]; dk[d] += ds * sQ[ii * HD + d]; }
            }
        }
    }
    if (valid) {
        float* o = dqkv + ((i64)b * T + j) * W;
#pragma unroll
        for (int d = 0; d < HD; d++) { o[(NH + kvh) * HD + d] = dk[d]; o[(NH + NKV + kvh) * HD + d] = dv[d]; }
    }
}

#define ATTN_V1_INST(HD)                                                                               \
    extern "C" __global__ void k_attn_fwd_##HD(float* out, float* lse, const float* qkv, int T, int NH,     \
                                               int NKV, float scale) {                                     \
        attn_fwd<HD>(out, lse, qkv, T, NH, NKV, scale);                                                    \
    }                                                                                                      \
    extern "C" __global__ void k_attn_bwd_dq_##HD(float* dqkv, const float* dout, const float* qkv,         \
                                                  const float* lse, const float* D, int T, int NH, int NKV, \
                                                  float scale) {                                           \
        attn_bwd_dq<HD>(dqkv, dout, qkv, lse, D, T, NH, NKV, scale);                                       \
    }                                                                                                      \
    extern "C" __global__ void k_attn_bwd_dkv_##HD(float* dqkv, const float* dout, const float* qkv,        \
                                                   const float* lse, const float* D, int T, int NH,        \
                                                   int NKV, float scale) {                                 \
        attn_bwd_dkv<HD>(dqkv, dout, qkv, lse, D, T, NH, NKV, scale);                                      \
    }
