// fused.cu: editd's fused CUDA kernels (modulate, gated residual, per-head RMSNorm, interleaved
// RoPE, SwiGLU) for f32 / f16 / bf16. Compiled to PTX by kernels/build.rs (cuda feature only) and
// launched from kernels/src/cuda.rs. Every kernel loads in its dtype, computes in f32 and rounds
// once on store. All tensors are contiguous (the Rust side makes them so).
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

// Sum over the whole block; every thread gets the result. `shm` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float *shm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // shm may still be read from a previous call
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  v = (threadIdx.x < n_warps) ? shm[threadIdx.x] : 0.f;
  if (warp == 0) v = warp_sum(v);
  if (threadIdx.x == 0) shm[0] = v;
  __syncthreads();
  return shm[0];
}

// out[b,l,:] = LayerNorm(x[b,l,:]) * (1 + scale[b,:]) + shift[b,:]  (no affine)
// One block per row of d elements; rows = B*L, `tokens` = L.
template <typename T>
__device__ void modulate(const T *x, const T *shift, const T *scale, T *out, int rows, int tokens,
                         int d, float eps) {
  __shared__ float shm[32];
  const int row = blockIdx.x;
  if (row >= rows) return;
  const T *xr = x + (size_t)row * d;
  T *orow = out + (size_t)row * d;
  const size_t b = (size_t)(row / tokens) * d;
  float s = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) s += to_f(xr[i]);
  const float mean = block_sum(s, shm) / d;
  float v = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float c = to_f(xr[i]) - mean;
    v += c * c;
  }
  const float rstd = rsqrtf(block_sum(v, shm) / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float n = (to_f(xr[i]) - mean) * rstd;
    orow[i] = from_f<T>(n * (1.f + to_f(scale[b + i])) + to_f(shift[b + i]));
  }
}

// out = x + gate[b,:] * y   for x, y of shape (B, L, D) and gate (B, D).
template <typename T>
__device__ void gated_residual(const T *x, const T *gate, const T *y, T *out, size_t n,
                               size_t per_batch, int d) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)blockDim.x * gridDim.x) {
    const size_t g = (i / per_batch) * d + (i % d);
    out[i] = from_f<T>(to_f(x[i]) + to_f(gate[g]) * to_f(y[i]));
  }
}

// out[r,:] = x[r,:] * rsqrt(mean(x[r,:]^2) + eps) * w   (one warp per row, 8 rows per block)
template <typename T>
__device__ void rms_norm_rows(const T *x, const T *w, T *out, int rows, int d, float eps) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps exit together
  const T *xr = x + (size_t)row * d;
  T *orow = out + (size_t)row * d;
  float s = 0.f;
  for (int i = lane; i < d; i += 32) {
    const float v = to_f(xr[i]);
    s += v * v;
  }
  const float r = rsqrtf(warp_sum(s) / d + eps);
  for (int i = lane; i < d; i += 32) orow[i] = from_f<T>(to_f(xr[i]) * r * to_f(w[i]));
}

// Interleaved RoPE on pairs (2j, 2j+1) of x (B, H, L, Dh); cos/sin are f32 (L, Dh/2), or
// (B, L, Dh/2) when cs_batch_stride = L*Dh/2 (0 otherwise).
template <typename T>
__device__ void rope_interleaved(const T *x, const float *cos, const float *sin, T *out,
                                 size_t pairs, int heads, int tokens, int half_d,
                                 size_t cs_batch_stride) {
  for (size_t p = blockIdx.x * (size_t)blockDim.x + threadIdx.x; p < pairs;
       p += (size_t)blockDim.x * gridDim.x) {
    const size_t j = p % half_d;
    const size_t row = p / half_d;  // (b, h, l) flattened
    const size_t l = row % tokens;
    const size_t b = row / ((size_t)tokens * heads);
    const size_t c = b * cs_batch_stride + l * half_d + j;
    const float cs = cos[c], sn = sin[c];
    const float x0 = to_f(x[2 * p]), x1 = to_f(x[2 * p + 1]);
    out[2 * p] = from_f<T>(x0 * cs - x1 * sn);
    out[2 * p + 1] = from_f<T>(x1 * cs + x0 * sn);
  }
}

// out[r, c] = silu(h[r, c]) * h[r, f + c]  for h (rows, 2f), out (rows, f)
template <typename T>
__device__ void swiglu(const T *h, T *out, size_t n, int f) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)blockDim.x * gridDim.x) {
    const size_t r = i / f, c = i % f;
    const float a = to_f(h[r * 2 * f + c]);
    const float g = to_f(h[r * 2 * f + f + c]);
    out[i] = from_f<T>(a / (1.f + __expf(-a)) * g);
  }
}

#define INSTANTIATE(TYPENAME, SUFFIX)                                                            \
  extern "C" __global__ void modulate_##SUFFIX(const TYPENAME *x, const TYPENAME *shift,         \
                                               const TYPENAME *scale, TYPENAME *out, int rows,   \
                                               int tokens, int d, float eps) {                   \
    modulate<TYPENAME>(x, shift, scale, out, rows, tokens, d, eps);                              \
  }                                                                                              \
  extern "C" __global__ void gated_residual_##SUFFIX(const TYPENAME *x, const TYPENAME *gate,    \
                                                     const TYPENAME *y, TYPENAME *out, size_t n, \
                                                     size_t per_batch, int d) {                  \
    gated_residual<TYPENAME>(x, gate, y, out, n, per_batch, d);                                  \
  }                                                                                              \
  extern "C" __global__ void rms_norm_rows_##SUFFIX(const TYPENAME *x, const TYPENAME *w,        \
                                                    TYPENAME *out, int rows, int d, float eps) { \
    rms_norm_rows<TYPENAME>(x, w, out, rows, d, eps);                                            \
  }                                                                                              \
  extern "C" __global__ void rope_interleaved_##SUFFIX(                                          \
      const TYPENAME *x, const float *cos, const float *sin, TYPENAME *out, size_t pairs,        \
      int heads, int tokens, int half_d, size_t cs_batch_stride) {                               \
    rope_interleaved<TYPENAME>(x, cos, sin, out, pairs, heads, tokens, half_d,                   \
                               cs_batch_stride);                                                 \
  }                                                                                              \
  extern "C" __global__ void swiglu_##SUFFIX(const TYPENAME *h, TYPENAME *out, size_t n,         \
                                             int f) {                                            \
    swiglu<TYPENAME>(h, out, n, f);                                                              \
  }

INSTANTIATE(float, f32)
INSTANTIATE(__half, f16)
INSTANTIATE(__nv_bfloat16, bf16)
