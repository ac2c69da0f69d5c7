// kiln cuda kernels (everything but training attention): compiled at run time with NVRTC after
// prelude.cu (see cuda/mod.rs). Every kernel has a CPU twin in cpu/kernels.rs, checked against it by
// the device script (scripts/gpu/device-check.sh). f32 everywhere (the trait's storage type);
// matmuls are cuBLAS (mod.rs). No headers, so a bare NVRTC compiles it (no CUDA toolkit needed).

// Kernels whose output feeds a bf16 matmul take `unsigned short* bf` (nullable): when set, they
// also write the output rounded to bf16 there (the buffer's bf16 shadow, see mod.rs), which
// saves the matmul a separate f32 read to convert it.
// f32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN. No cuda_bf16.h (bare NVRTC).
__device__ __forceinline__ unsigned f2bf(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}

// ---- elementwise -------------------------------------------------------------------------
extern "C" __global__ void k_fill(float* x, i64 n, float v) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) x[i] = v;
}
extern "C" __global__ void k_axpy(float* y, const float* x, i64 n, float a) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) y[i] += a * x[i];
}
extern "C" __global__ void k_scale(float* x, i64 n, float s) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) x[i] *= s;
}
// out += Σ x² in double (out zeroed by the caller); 256 threads.
extern "C" __global__ void k_sum_squares(const float* x, i64 n, double* out) {
    __shared__ double sh[256];
    double acc = 0.0;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        double v = x[i];
        acc += v * v;
    }
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(out, sh[0]);
}
extern "C" __global__ void k_add_bias(float* out, const float* bias, i64 n, int cols) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        out[i] += bias[i % cols];
}

// Column reductions (bias grads, norm weight grads): block (32, 8), grid (ceil(cols/32),
// ceil(rows/ROWS_PER_BLOCK)); partial sums over a row chunk, then one atomicAdd per column.
#define RPB 256
// dw[c] += Σ_r dout[r,c] * (x[r,c] - mean_r) * rstd_r  (if dw),  db[c] += Σ_r dout[r,c]  (if db).
// With x == nullptr only db is computed (bias_backward).
extern "C" __global__ void k_col_grads(float* dw, float* db, const float* dout, const float* x,
                                       const float* stats, int rows, int cols) {
    __shared__ float sw[8][33];
    __shared__ float sb[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * RPB;
    int r1 = min(rows, r0 + RPB);
    float aw = 0.f, ab = 0.f;
    if (c < cols) {
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            float d = dout[(i64)r * cols + c];
            ab += d;
            if (dw) aw += d * (x[(i64)r * cols + c] - stats[2 * r]) * stats[2 * r + 1];
        }
    }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float tw = 0.f, tb = 0.f;
        for (int k = 0; k < 8; k++) { tw += sw[k][threadIdx.x]; tb += sb[k][threadIdx.x]; }
        if (dw) atomicAdd(&dw[c], tw);
        if (db) atomicAdd(&db[c], tb);
    }
}

// db[c] += Σ_r dout[r, c] over a bf16 `dout` (rows × cols, cols even, 4-byte aligned), read as
// pairs: the fc bias gradient beside cuBLASLt's DGELU epilogue, which writes dpre as bf16
// (matmul_act_backward). Each thread sums two adjacent columns over up to RPB rows with one
// 4-byte load per row, 8 row lanes per block. (The epilogue's own BGRAD variant took 0.49 ms per
// call where the plain DGELU GEMM of that shape takes ~0.15: scripts/gpu/NOTES.md.)
extern "C" __global__ void k_col_sum_bf16(float* db, const unsigned int* dout2, int rows, int cols) {
    __shared__ float s0[8][33];
    __shared__ float s1[8][33];
    int pairs = cols >> 1;
    int cp = blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * RPB;
    int r1 = min(rows, r0 + RPB);
    float a0 = 0.f, a1 = 0.f;
    if (cp < pairs) {
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            unsigned int v = dout2[(i64)r * pairs + cp];
            a0 += __uint_as_float(v << 16);           // column 2cp: the low half (little-endian)
            a1 += __uint_as_float(v & 0xffff0000u);   // column 2cp + 1
        }
    }
    s0[threadIdx.y][threadIdx.x] = a0;
    s1[threadIdx.y][threadIdx.x] = a1;
    __syncthreads();
    if (threadIdx.y == 0 && cp < pairs) {
        float t0 = 0.f, t1 = 0.f;
        for (int k = 0; k < 8; k++) { t0 += s0[k][threadIdx.x]; t1 += s1[k][threadIdx.x]; }
        atomicAdd(&db[2 * cp], t0);
        atomicAdd(&db[2 * cp + 1], t1);
    }
}

// db[c] += Σ_r dout[r, c] over f32 rows with cols % 4 == 0 (dout 16-byte aligned): the bias
// gradients of the linear layers. As k_col_grads, but each thread sums four adjacent columns
// with one 16-byte load per row, so a warp reads 512 contiguous bytes of a row, not 128.
extern "C" __global__ void k_col_sum_v4(float* db, const float4* dout4, int rows, int cols) {
    __shared__ float4 s[8][33];
    int q = cols >> 2;
    int cq = blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * RPB;
    int r1 = min(rows, r0 + RPB);
    float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
    if (cq < q) {
#pragma unroll 4
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            float4 v = dout4[(i64)r * q + cq];
            a.x += v.x; a.y += v.y; a.z += v.z; a.w += v.w;
        }
    }
    s[threadIdx.y][threadIdx.x] = a;
    __syncthreads();
    if (threadIdx.y == 0 && cq < q) {
        float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int k = 0; k < 8; k++) {
            float4 v = s[k][threadIdx.x];
            t.x += v.x; t.y += v.y; t.z += v.z; t.w += v.w;
        }
        atomicAdd(&db[4 * cq], t.x);
        atomicAdd(&db[4 * cq + 1], t.y);
        atomicAdd(&db[4 * cq + 2], t.z);
        atomicAdd(&db[4 * cq + 3], t.w);
    }
}

// ---- embedding ---------------------------------------------------------------------------
extern "C" __global__ void k_embed_fwd(float* out, const float* wte, const float* wpe, const unsigned* ids,
                                       i64 rows, int t, int pos0, int c) {
    i64 n = rows * c;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        i64 r = i / c;
        int k = (int)(i % c);
        float v = wte[(i64)ids[r] * c + k];
        if (wpe) v += wpe[(i64)(pos0 + r % t) * c + k];
        out[i] = v;
    }
}
extern "C" __global__ void k_embed_bwd(float* dwte, float* dwpe, const float* dout, const unsigned* ids,
                                       i64 rows, int t, int c) {
    i64 n = rows * c;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        i64 r = i / c;
        int k = (int)(i % c);
        float d = dout[i];
        atomicAdd(&dwte[(i64)ids[r] * c + k], d);
        if (dwpe) atomicAdd(&dwpe[(i64)(r % t) * c + k], d);
    }
}

// ---- normalization: one warp per row, 8 rows per 256-thread block ---------------------------
extern "C" __global__ void k_norm_fwd(float* out, float* stats, const float* inp, const float* w,
                                      const float* b, int rows, int cols, float eps, int is_ln,
                                      unsigned short* bf) {
    int row = blockIdx.x * 8 + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* x = inp + (i64)row * cols;
    float mean = 0.f;
    if (is_ln) {
        float s = 0.f;
        for (int i = lane; i < cols; i += 32) s += x[i];
        mean = warp_sum(s) / cols;
    }
    float v = 0.f;
    for (int i = lane; i < cols; i += 32) { float d = x[i] - mean; v += d * d; }
    float var = warp_sum(v) / cols;
    float rstd = 1.0f / sqrtf(var + eps);
    if (lane == 0) { stats[2 * row] = mean; stats[2 * row + 1] = rstd; }
    float* o = out + (i64)row * cols;
    for (int i = lane; i < cols; i += 32) {
        float y = (x[i] - mean) * rstd;
        if (w) y *= w[i];
        if (b) y += b[i];
        o[i] = y;
        if (bf) bf[(i64)row * cols + i] = (unsigned short)f2bf(y);
    }
}
// dinp += (dn - mean(dn) - norm * mean(dn * norm)) * rstd, dn = dout * w  (mean(dn) only for LN).
extern "C" __global__ void k_norm_bwd_dx(float* dinp, const float* dout, const float* inp, const float* stats,
                                         const float* w, int rows, int cols, int is_ln, unsigned short* bf) {
    int row = blockIdx.x * 8 + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* x = inp + (i64)row * cols;
    const float* d = dout + (i64)row * cols;
    float mean = stats[2 * row], rstd = stats[2 * row + 1];
    float s_dn = 0.f, s_dnn = 0.f;
    for (int i = lane; i < cols; i += 32) {
        float norm = (x[i] - mean) * rstd;
        float dn = d[i] * (w ? w[i] : 1.f);
        s_dn += dn;
        s_dnn += dn * norm;
    }
    s_dn = warp_sum(s_dn);
    s_dnn = warp_sum(s_dnn);
    float m_dn = is_ln ? s_dn / cols : 0.f;
    float m_dnn = s_dnn / cols;
    float* di = dinp + (i64)row * cols;
    for (int i = lane; i < cols; i += 32) {
        float norm = (x[i] - mean) * rstd;
        float dn = d[i] * (w ? w[i] : 1.f);
        float y = di[i] + (dn - m_dn - norm * m_dnn) * rstd;
        di[i] = y;
        if (bf) bf[(i64)row * cols + i] = (unsigned short)f2bf(y);
    }
}

// ---- normalization of rows 128·k floats wide, k ≤ 8 (GPT-2 small's 768, ...): float4 loads -----
// The forward keeps the row in registers (one read of the input, not three) and may write only
// the bf16 copy (`out` null: the next readers are bf16 matmuls). The backward adds each warp's
// weight and bias gradients over its rows in registers and each block's once, so the gradients
// need no second pass over dout and inp (k_col_grads). One warp per row; every pointer 16-byte
// aligned, bf 8-byte (the host checks). Grid-stride over rows in the backward (one wave).
#define NV_MAX 8
__device__ __forceinline__ void store_bf4(unsigned short* bf, i64 at, float4 y) {
    uint2 u;
    u.x = f2bf(y.x) | (f2bf(y.y) << 16);
    u.y = f2bf(y.z) | (f2bf(y.w) << 16);
    *(uint2*)(bf + at) = u;
}
extern "C" __global__ void __launch_bounds__(256) k_norm_fwd_v4(float* out, float* stats, const float* inp,
                                                              const float* w, const float* b, int rows,
                                                              int cols, float eps, int is_ln,
                                                              unsigned short* bf) {
    int row = blockIdx.x * 8 + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    int nv = cols >> 7;
    const float4* x = (const float4*)(inp + (i64)row * cols);
    float4 xv[NV_MAX];
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < NV_MAX; j++)
        if (j < nv) {
            xv[j] = x[lane + 32 * j];
            s += (xv[j].x + xv[j].y) + (xv[j].z + xv[j].w);
        }
    float mean = is_ln ? warp_sum(s) / cols : 0.f;
    float v = 0.f;
#pragma unroll
    for (int j = 0; j < NV_MAX; j++)
        if (j < nv) {
            float a = xv[j].x - mean, c = xv[j].y - mean, d = xv[j].z - mean, e = xv[j].w - mean;
            v += (a * a + c * c) + (d * d + e * e);
        }
    float rstd = 1.0f / sqrtf(warp_sum(v) / cols + eps);
    if (lane == 0) { stats[2 * row] = mean; stats[2 * row + 1] = rstd; }
#pragma unroll
    for (int j = 0; j < NV_MAX; j++)
        if (j < nv) {
            int k = lane + 32 * j;
            float4 y = make_float4((xv[j].x - mean) * rstd, (xv[j].y - mean) * rstd,
                                   (xv[j].z - mean) * rstd, (xv[j].w - mean) * rstd);
            if (w) { float4 g = ((const float4*)w)[k]; y.x *= g.x; y.y *= g.y; y.z *= g.z; y.w *= g.w; }
            if (b) { float4 c = ((const float4*)b)[k]; y.x += c.x; y.y += c.y; y.z += c.z; y.w += c.w; }
            if (out) ((float4*)(out + (i64)row * cols))[k] = y;
            if (bf) store_bf4(bf, (i64)row * cols + 4 * k, y);
        }
}
// dinp += (dn - mean(dn) - norm * mean(dn * norm)) * rstd, dn = dout * w (as k_norm_bwd_dx), and
// dw[c] += Σ dout * norm, db[c] += Σ dout (as k_col_grads; either may be null).
extern "C" __global__ void __launch_bounds__(256) k_norm_bwd_v4(float* dinp, float* dw, float* db,
                                                              const float* dout, const float* inp,
                                                              const float* stats, const float* w,
                                                              int rows, int cols, int is_ln,
                                                              unsigned short* bf) {
    __shared__ float sw[32 * 4 * NV_MAX];
    __shared__ float sb[32 * 4 * NV_MAX];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int nv = cols >> 7;
    bool grads = dw || db;
    for (int i = threadIdx.x; i < cols; i += 256) { sw[i] = 0.f; sb[i] = 0.f; }
    float4 aw[NV_MAX], ab[NV_MAX];
#pragma unroll
    for (int j = 0; j < NV_MAX; j++) { aw[j] = make_float4(0.f, 0.f, 0.f, 0.f); ab[j] = aw[j]; }
    for (int row = blockIdx.x * 8 + warp; row < rows; row += gridDim.x * 8) {
        const float4* x = (const float4*)(inp + (i64)row * cols);
        const float4* d = (const float4*)(dout + (i64)row * cols);
        float mean = stats[2 * row], rstd = stats[2 * row + 1];
        float s_dn = 0.f, s_dnn = 0.f;
#pragma unroll
        for (int j = 0; j < NV_MAX; j++)
            if (j < nv) {
                int k = lane + 32 * j;
                float4 xv = x[k], dv = d[k];
                float4 g = w ? ((const float4*)w)[k] : make_float4(1.f, 1.f, 1.f, 1.f);
                float n0 = (xv.x - mean) * rstd, n1 = (xv.y - mean) * rstd;
                float n2 = (xv.z - mean) * rstd, n3 = (xv.w - mean) * rstd;
                float d0 = dv.x * g.x, d1 = dv.y * g.y, d2 = dv.z * g.z, d3 = dv.w * g.w;
                s_dn += (d0 + d1) + (d2 + d3);
                s_dnn += (d0 * n0 + d1 * n1) + (d2 * n2 + d3 * n3);
                aw[j].x += dv.x * n0; aw[j].y += dv.y * n1; aw[j].z += dv.z * n2; aw[j].w += dv.w * n3;
                ab[j].x += dv.x; ab[j].y += dv.y; ab[j].z += dv.z; ab[j].w += dv.w;
            }
        s_dn = warp_sum(s_dn);
        s_dnn = warp_sum(s_dnn);
        float m_dn = is_ln ? s_dn / cols : 0.f;
        float m_dnn = s_dnn / cols;
        float4* di = (float4*)(dinp + (i64)row * cols);
#pragma unroll
        for (int j = 0; j < NV_MAX; j++)
            if (j < nv) {
                int k = lane + 32 * j;
                float4 xv = x[k], dv = d[k], y = di[k];
                float4 g = w ? ((const float4*)w)[k] : make_float4(1.f, 1.f, 1.f, 1.f);
                y.x += (dv.x * g.x - m_dn - (xv.x - mean) * rstd * m_dnn) * rstd;
                y.y += (dv.y * g.y - m_dn - (xv.y - mean) * rstd * m_dnn) * rstd;
                y.z += (dv.z * g.z - m_dn - (xv.z - mean) * rstd * m_dnn) * rstd;
                y.w += (dv.w * g.w - m_dn - (xv.w - mean) * rstd * m_dnn) * rstd;
                di[k] = y;
                if (bf) store_bf4(bf, (i64)row * cols + 4 * k, y);
            }
    }
    if (!grads) return;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < NV_MAX; j++)
        if (j < nv) {
            int c = 4 * (lane + 32 * j);
            atomicAdd(&sw[c], aw[j].x); atomicAdd(&sw[c + 1], aw[j].y);
            atomicAdd(&sw[c + 2], aw[j].z); atomicAdd(&sw[c + 3], aw[j].w);
            atomicAdd(&sb[c], ab[j].x); atomicAdd(&sb[c + 1], ab[j].y);
            atomicAdd(&sb[c + 2], ab[j].z); atomicAdd(&sb[c + 3], ab[j].w);
        }
    __syncthreads();
    for (int i = threadIdx.x; i < cols; i += 256) {
        if (dw) atomicAdd(&dw[i], sw[i]);
        if (db) atomicAdd(&db[i], sb[i]);
    }
}

// ---- activations --------------------------------------------------------------------------
#define GELU_S 0.7978845608f
extern "C" __global__ void k_act_fwd(float* out, const float* inp, i64 n, int kind, unsigned short* bf) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float x = inp[i], y;
        if (kind == 0) {
            float u = GELU_S * (x + 0.044715f * x * x * x);
            y = 0.5f * x * (1.f + tanhf(u));
        } else {
            float r = fmaxf(x, 0.f);
            y = r * r;
        }
        out[i] = y;
        if (bf) bf[i] = (unsigned short)f2bf(y);
    }
}
extern "C" __global__ void k_act_bwd(float* dinp, const float* dout, const float* inp, i64 n, int kind,
                                     unsigned short* bf) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float x = inp[i], g;
        if (kind == 0) {
            float u = GELU_S * (x + 0.044715f * x * x * x);
            float th = tanhf(u);
            float sech2 = 1.f - th * th;
            g = 0.5f * (1.f + th) + 0.5f * x * sech2 * GELU_S * (1.f + 3.f * 0.044715f * x * x);
        } else {
            g = 2.f * fmaxf(x, 0.f);
        }
        float y = dout[i] * g;
        dinp[i] = y;
        if (bf) bf[i] = (unsigned short)f2bf(y);
    }
}

// ---- QK-norm + RoPE: one warp per (token row, head of nh+nkv); v heads are copied ----------
extern "C" __global__ void k_qk_prep_fwd(float* out, float* stats, const float* inp, int rows, int t, int nh,
                                         int nkv, int hd, int pos0, int use_norm, float eps, int use_rope,
                                         float theta) {
    int nqk = nh + nkv;
    int wdt = (nh + 2 * nkv) * hd;
    i64 gw = (blockIdx.x * (i64)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (gw >= (i64)rows * (nqk + nkv)) return;
    int r = (int)(gw / (nqk + nkv));
    int h = (int)(gw % (nqk + nkv));
    const float* x = inp + (i64)r * wdt + h * hd;
    float* o = out + (i64)r * wdt + h * hd;
    if (h >= nqk) { for (int i = lane; i < hd; i += 32) o[i] = x[i]; return; }
    float rstd = 1.f;
    if (use_norm) {
        float s = 0.f;
        for (int i = lane; i < hd; i += 32) s += x[i] * x[i];
        rstd = 1.f / sqrtf(warp_sum(s) / hd + eps);
    }
    if (lane == 0) stats[(i64)r * nqk + h] = rstd;
    if (use_rope) {
        int half = hd / 2;
        float pos = (float)(pos0 + r % t);
        for (int i = lane; i < half; i += 32) {
            float freq = powf(theta, -(float)i / (float)half);
            float sn, cs;
            sincosf(pos * freq, &sn, &cs);
            float y1 = x[i] * rstd, y2 = x[i + half] * rstd;
            o[i] = y1 * cs - y2 * sn;
            o[i + half] = y1 * sn + y2 * cs;
        }
    } else {
        for (int i = lane; i < hd; i += 32) o[i] = x[i] * rstd;
    }
}
extern "C" __global__ void k_qk_prep_bwd(float* dinp, const float* dout, const float* inp, const float* stats,
                                         int rows, int t, int nh, int nkv, int hd, int pos0, int use_norm,
                                         int use_rope, float theta) {
    int nqk = nh + nkv;
    int wdt = (nh + 2 * nkv) * hd;
    i64 gw = (blockIdx.x * (i64)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (gw >= (i64)rows * (nqk + nkv)) return;
    int r = (int)(gw / (nqk + nkv));
    int h = (int)(gw % (nqk + nkv));
    const float* x = inp + (i64)r * wdt + h * hd;
    const float* dy = dout + (i64)r * wdt + h * hd;
    float* ds = dinp + (i64)r * wdt + h * hd;
    if (h >= nqk) { for (int i = lane; i < hd; i += 32) ds[i] = dy[i]; return; }
    // inverse rotation into ds, then RMSNorm backward in place (each lane owns its elements).
    int half = hd / 2;
    float pos = (float)(pos0 + r % t);
    if (use_rope) {
        for (int i = lane; i < half; i += 32) {
            float freq = powf(theta, -(float)i / (float)half);
            float sn, cs;
            sincosf(pos * freq, &sn, &cs);
            float d1 = dy[i], d2 = dy[i + half];
            ds[i] = d1 * cs + d2 * sn;
            ds[i + half] = -d1 * sn + d2 * cs;
        }
    } else {
        for (int i = lane; i < hd; i += 32) ds[i] = dy[i];
    }
    __syncwarp();
    if (use_norm) {
        float rstd = stats[(i64)r * nqk + h];
        float m = 0.f;
        for (int i = lane; i < hd; i += 32) m += ds[i] * x[i] * rstd;
        m = warp_sum(m) / hd;
        __syncwarp();
        for (int i = lane; i < hd; i += 32) ds[i] = rstd * (ds[i] - x[i] * rstd * m);
    }
}

// ---- KV-cache decode -----------------------------------------------------------------------
// Append the new k/v of rows b*t+i at cache position pos0+i (cache [b, max_t, nkv, hd]).
extern "C" __global__ void k_kv_append(float* kc, float* vc, const float* qkv, int B, int t, int nh, int nkv,
                                       int hd, int pos0, int max_t) {
    int row_kv = nkv * hd;
    int wq = (nh + 2 * nkv) * hd;
    i64 n = (i64)B * t * row_kv;
    for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < n; idx += (i64)gridDim.x * blockDim.x) {
        i64 r = idx / row_kv;
        int e = (int)(idx % row_kv);
        int b = (int)(r / t), i = (int)(r % t);
        i64 dst = ((i64)b * max_t + pos0 + i) * row_kv + e;
        kc[dst] = qkv[r * wq + nh * hd + e];
        vc[dst] = qkv[r * wq + (nh + nkv) * hd + e];
    }
}
// One query head over n cached positions (K/V rows of row_kv floats from kb/vb, this head's
// slice already applied), by the whole block: scores in `sc` (dynamic shared memory, n floats).
__device__ void attend_cached(float* o, const float* q, const float* kb, const float* vb, int n, int hd,
                              int row_kv, float scale, float* sc, float* red) {
    float lm = NEG_INF;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float s = 0.f;
        for (int d = 0; d < hd; d++) s += q[d] * kb[(i64)j * row_kv + d];
        s *= scale;
        sc[j] = s;
        lm = fmaxf(lm, s);
    }
    int lane = threadIdx.x % 32, wid = threadIdx.x / 32, nw = blockDim.x / 32;
    lm = warp_max(lm);
    if (lane == 0) red[wid] = lm;
    __syncthreads();
    float mx = NEG_INF;
    for (int w = 0; w < nw; w++) mx = fmaxf(mx, red[w]);
    __syncthreads();
    float ls = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float e = expf(sc[j] - mx);
        sc[j] = e;
        ls += e;
    }
    ls = warp_sum(ls);
    if (lane == 0) red[wid] = ls;
    __syncthreads();
    float sum = 0.f;
    for (int w = 0; w < nw; w++) sum += red[w];
    float inv = 1.f / sum;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.f;
        for (int j = 0; j < n; j++) acc += sc[j] * vb[(i64)j * row_kv + d];
        o[d] = acc * inv;
    }
}
// One block (128 threads) per (token row, head); scores in dynamic shared memory (max_t floats).
extern "C" __global__ void k_attn_cached(float* out, const float* qkv, const float* kc, const float* vc, int t,
                                         int nh, int nkv, int hd, int pos0, int max_t, float scale) {
    extern __shared__ float sc[];
    __shared__ float red[32];
    int r = blockIdx.x, h = blockIdx.y;
    int b = r / t, i = r % t;
    int kvh = h / (nh / nkv);
    int row_kv = nkv * hd;
    int wq = (nh + 2 * nkv) * hd;
    attend_cached(out + (i64)r * nh * hd + h * hd, qkv + (i64)r * wq + h * hd,
                  kc + (i64)b * max_t * row_kv + kvh * hd, vc + (i64)b * max_t * row_kv + kvh * hd,
                  pos0 + i + 1, hd, row_kv, scale, sc, red);
}
// Ragged decode, one token per row: row r's slot and position are rows[r] and rows[B + r].
// Append each row's new k/v at its slot's position (cache [slots, max_t, nkv, hd]).
extern "C" __global__ void k_kv_append_rows(float* kc, float* vc, const float* qkv, const unsigned* rows, int B,
                                            int nh, int nkv, int hd, int max_t) {
    int row_kv = nkv * hd;
    int wq = (nh + 2 * nkv) * hd;
    i64 n = (i64)B * row_kv;
    for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < n; idx += (i64)gridDim.x * blockDim.x) {
        int r = (int)(idx / row_kv), e = (int)(idx % row_kv);
        i64 dst = ((i64)rows[r] * max_t + rows[B + r]) * row_kv + e;
        kc[dst] = qkv[(i64)r * wq + nh * hd + e];
        vc[dst] = qkv[(i64)r * wq + (nh + nkv) * hd + e];
    }
}
// One block per (row, head): row r attends over its slot's positions 0..=rows[B + r].
extern "C" __global__ void k_attn_rows(float* out, const float* qkv, const float* kc, const float* vc,
                                       const unsigned* rows, int B, int nh, int nkv, int hd, int max_t,
                                       float scale) {
    extern __shared__ float sc[];
    __shared__ float red[32];
    int r = blockIdx.x, h = blockIdx.y;
    int kvh = h / (nh / nkv);
    int row_kv = nkv * hd;
    int wq = (nh + 2 * nkv) * hd;
    i64 slot = rows[r];
    attend_cached(out + (i64)r * nh * hd + h * hd, qkv + (i64)r * wq + h * hd,
                  kc + slot * max_t * row_kv + kvh * hd, vc + slot * max_t * row_kv + kvh * hd,
                  (int)rows[B + r] + 1, hd, row_kv, scale, sc, red);
}
// Embeddings of B tokens, token r at position ids_pos[B + r] (ids in ids_pos[0..B]).
extern "C" __global__ void k_embed_rows(float* out, const float* wte, const float* wpe, const unsigned* ids_pos,
                                        int B, int c) {
    i64 n = (i64)B * c;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        int r = (int)(i / c), k = (int)(i % c);
        float v = wte[(i64)ids_pos[r] * c + k];
        if (wpe) v += wpe[(i64)ids_pos[B + r] * c + k];
        out[i] = v;
    }
}

// ---- fused softmax cross-entropy with per-token weights: one 512-thread block per row --------
extern "C" __global__ void k_cross_entropy(float* logits, float* losses, const unsigned* targets,
                                           const float* weights, int rows, int V, float cap, int has_cap,
                                           float grad_scale, int has_grad, unsigned short* bf) {
    __shared__ float sm[16], ss[16];
    int r = blockIdx.x;
    float* z = logits + (i64)r * V;
    float m = NEG_INF, s = 0.f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float v = z[j];
        if (has_cap) {
            v = cap * tanhf(v / cap);
            if (has_grad) z[j] = v;
        }
        if (v > m) { s = s * expf(m - v) + 1.f; m = v; } else { s += expf(v - m); }
    }
    // combine (m, s) over the warp, then over warps
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffff, m, o), s2 = __shfl_xor_sync(0xffffffff, s, o);
        float mn = fmaxf(m, m2);
        s = (m == NEG_INF ? 0.f : s * expf(m - mn)) + (m2 == NEG_INF ? 0.f : s2 * expf(m2 - mn));
        m = mn;
    }
    int lane = threadIdx.x % 32, wid = threadIdx.x / 32, nw = blockDim.x / 32;
    if (lane == 0) { sm[wid] = m; ss[wid] = s; }
    __syncthreads();
    float mx = NEG_INF;
    for (int w = 0; w < nw; w++) mx = fmaxf(mx, sm[w]);
    float sum = 0.f;
    for (int w = 0; w < nw; w++) sum += sm[w] == NEG_INF ? 0.f : ss[w] * expf(sm[w] - mx);
    unsigned tgt = targets[r];
    if (threadIdx.x == 0) {
        float zt = z[tgt];
        if (has_cap && !has_grad) zt = cap * tanhf(zt / cap);
        losses[r] = mx + logf(sum) - zt;
    }
    if (!has_grad) return;
    __syncthreads();  // the target logit is read above before being overwritten below
    float ws = grad_scale * weights[r];
    float inv = 1.f / sum;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float v = z[j];
        float p = expf(v - mx) * inv;
        float g = ws * (p - (j == (int)tgt ? 1.f : 0.f));
        if (has_cap) { float th = v / cap; g *= 1.f - th * th; }
        z[j] = g;
        if (bf) bf[(i64)r * V + j] = (unsigned short)f2bf(g);
    }
}

// The same on bf16 logits `z16` (a bf16-only head matmul result, see mod.rs `matmul_logits`):
// max, sum-exp, loss and gradient in f32 over the bf16 values, exactly the f32 kernel's math;
// the gradient (when has_grad) overwrites `z16` in place as bf16 (the head's dX/dW matmuls read
// it as their bf16 operand). `vec`: V % 8 == 0 and z16 16-byte aligned (8 bf16 per load).
__device__ __forceinline__ float ce_bf(unsigned short h) { return __uint_as_float(((unsigned)h) << 16); }
extern "C" __global__ void k_cross_entropy_bf16(unsigned short* z16, float* losses, const unsigned* targets,
                                                const float* weights, int rows, int V, float cap, int has_cap,
                                                float grad_scale, int has_grad, int vec) {
    __shared__ float sm[16], ss[16];
    int r = blockIdx.x;
    unsigned short* z = z16 + (i64)r * V;
    float m = NEG_INF, s = 0.f;
    if (vec) {
        const uint4* z4 = (const uint4*)z;
        for (int j = threadIdx.x; j < V / 8; j += blockDim.x) {
            uint4 u = z4[j];
            unsigned w[4] = {u.x, u.y, u.z, u.w};
            float x[8];
            float lm = NEG_INF;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                x[2 * k] = __uint_as_float(w[k] << 16);
                x[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
            }
#pragma unroll
            for (int k = 0; k < 8; k++) {
                if (has_cap) x[k] = cap * tanhf(x[k] / cap);
                lm = fmaxf(lm, x[k]);
            }
            if (lm > m) { s = s * expf(m - lm); m = lm; }
#pragma unroll
            for (int k = 0; k < 8; k++) s += expf(x[k] - m);
        }
    } else {
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float v = ce_bf(z[j]);
            if (has_cap) v = cap * tanhf(v / cap);
            if (v > m) { s = s * expf(m - v) + 1.f; m = v; } else { s += expf(v - m); }
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffff, m, o), s2 = __shfl_xor_sync(0xffffffff, s, o);
        float mn = fmaxf(m, m2);
        s = (m == NEG_INF ? 0.f : s * expf(m - mn)) + (m2 == NEG_INF ? 0.f : s2 * expf(m2 - mn));
        m = mn;
    }
    int lane = threadIdx.x % 32, wid = threadIdx.x / 32, nw = blockDim.x / 32;
    if (lane == 0) { sm[wid] = m; ss[wid] = s; }
    __syncthreads();
    float mx = NEG_INF;
    for (int w = 0; w < nw; w++) mx = fmaxf(mx, sm[w]);
    float sum = 0.f;
    for (int w = 0; w < nw; w++) sum += sm[w] == NEG_INF ? 0.f : ss[w] * expf(sm[w] - mx);
    unsigned tgt = targets[r];
    if (threadIdx.x == 0) {
        float zt = ce_bf(z[tgt]);
        if (has_cap) zt = cap * tanhf(zt / cap);
        losses[r] = mx + logf(sum) - zt;
    }
    if (!has_grad) return;
    __syncthreads();  // the target logit is read above before being overwritten below
    float ws = grad_scale * weights[r];
    float inv = 1.f / sum;
    if (vec) {
        uint4* z4 = (uint4*)z;
        for (int j = threadIdx.x; j < V / 8; j += blockDim.x) {
            uint4 u = z4[j];
            unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                unsigned h2 = 0;
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float x = e ? __uint_as_float(w[k] & 0xffff0000u) : __uint_as_float(w[k] << 16);
                    float v = has_cap ? cap * tanhf(x / cap) : x;
                    int idx = 8 * j + 2 * k + e;
                    float g = ws * (expf(v - mx) * inv - (idx == (int)tgt ? 1.f : 0.f));
                    if (has_cap) { float th = v / cap; g *= 1.f - th * th; }
                    h2 |= f2bf(g) << (16 * e);
                }
                w[k] = h2;
            }
            z4[j] = make_uint4(w[0], w[1], w[2], w[3]);
        }
    } else {
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float x = ce_bf(z[j]);
            float v = has_cap ? cap * tanhf(x / cap) : x;
            float g = ws * (expf(v - mx) * inv - (j == (int)tgt ? 1.f : 0.f));
            if (has_cap) { float th = v / cap; g *= 1.f - th * th; }
            z[j] = (unsigned short)f2bf(g);
        }
    }
}

// ---- AdamW (decoupled decay), bias corrections precomputed on the host ---------------------
extern "C" __global__ void k_adamw(float* p, const float* g, float* m, float* v, i64 n, float b1, float b2,
                                   float eps, float decay, float step_size, float bc2_sqrt) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float gi = g[i];
        float mi = b1 * m[i] + (1.f - b1) * gi;
        float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = p[i] * decay - step_size * mi / denom;
    }
}

// ---- bf16 matmul operands (cuda/mod.rs: explicit bf16 GEMM in bf16 precision) --------------
// dst[i] = bf16(src[i]) for i < n. vec != 0: src is 16-byte and dst 8-byte aligned (4 per step).
extern "C" __global__ void k_to_bf16(unsigned short* dst, const float* src, i64 n, int vec) {
    i64 stride = (i64)gridDim.x * blockDim.x;
    i64 i0 = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    i64 n4 = vec ? n / 4 : 0;
    for (i64 i = i0; i < n4; i += stride) {
        float4 v = ((const float4*)src)[i];
        uint2 o;
        o.x = f2bf(v.x) | (f2bf(v.y) << 16);
        o.y = f2bf(v.z) | (f2bf(v.w) << 16);
        ((uint2*)dst)[i] = o;
    }
    for (i64 i = n4 * 4 + i0; i < n; i += stride) dst[i] = (unsigned short)f2bf(src[i]);
}

// ---- bf16 results of cuBLASLt GELU epilogues (cuda/mod.rs: f32 written back on demand) -------
// dst[i] = f32(src[i]) (bf16 → f32 is exact): materializes a buffer region whose bf16 shadow is
// the only current copy.
extern "C" __global__ void k_from_bf16(float* dst, const unsigned short* src, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        dst[i] = __uint_as_float(((unsigned int)src[i]) << 16);
}

// ---- AdamW over consecutive parameter groups in one launch (cuda/mod.rs: adamw_groups) --------
// Elements [off0, off0 + n) of the parameter layout; group j covers up to tab[2j] (exclusive,
// absolute element index) with decay factor __uint_as_float(tab[2j+1]). Same arithmetic as k_adamw.
extern "C" __global__ void k_adamw_groups(float* p, const float* g, float* m, float* v, const unsigned int* tab,
                                          int ng, i64 off0, i64 n, float b1, float b2, float eps,
                                          float step_size, float bc2_sqrt) {
    for (i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x; k < n; k += (i64)gridDim.x * blockDim.x) {
        i64 i = off0 + k;
        int lo = 0, hi = ng - 1;  // first group whose end is > i
        while (lo < hi) {
            int mid = (lo + hi) >> 1;
            if ((i64)tab[2 * mid] > i) hi = mid; else lo = mid + 1;
        }
        float decay = __uint_as_float(tab[2 * lo + 1]);
        float gi = g[i];
        float mi = b1 * m[i] + (1.f - b1) * gi;
        float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = p[i] * decay - step_size * mi / denom;
    }
}
