// Shared prelude of kernels.cu and attention.cu (prepended by cuda/mod.rs before NVRTC).

#define NEG_INF __int_as_float(0xff800000)
typedef long long i64;

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

