/* CUDA or its emulation: the same kernel bodies and host code compile with nvcc and with g++.
 *
 * Under nvcc this only pulls in the CUDA runtime. Under a plain C++ compiler it supplies the
 * handful of CUDA names znni's generated GPU code uses: a launch runs every thread of every
 * block in turn (blocks spread over OpenMP threads; blockIdx/threadIdx are thread_local), so a
 * kernel without inter-thread synchronisation computes exactly what it computes on a GPU;
 * "device" memory is host memory, streams and events are no-ops and copies are memcpy. The
 * point is correctness without a GPU: the normal test suite runs the generated kernels through
 * this header and compares them with the numpy reference.
 */
#ifndef ZNNI_CUDA_EMULATION_H
#define ZNNI_CUDA_EMULATION_H

#ifdef __CUDACC__
#include <cuda_runtime.h>
#define ZNNI_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#else
#include <cmath>
#include <cstdlib>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

template <typename T> inline T __ldg(const T *p) { return *p; }

template <typename Kernel, typename... Args>
void znni_emulated_launch(Kernel kernel, dim3 grid, dim3 block, Args... args) {
  const long blocks = (long)grid.x * grid.y * grid.z;
#pragma omp parallel for schedule(static)
  for (long b = 0; b < blocks; ++b) {
    gridDim = grid;
    blockDim = block;
    blockIdx = dim3((unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y),
                    (unsigned)(b / ((long)grid.x * grid.y)));
    for (unsigned tz = 0; tz < block.z; ++tz)
      for (unsigned ty = 0; ty < block.y; ++ty)
        for (unsigned tx = 0; tx < block.x; ++tx) {
          threadIdx = dim3(tx, ty, tz);
          kernel(args...);
        }
  }
}
#define ZNNI_LAUNCH(kernel, grid, block, stream, ...) \
  ((void)(stream), znni_emulated_launch(kernel, (grid), (block), __VA_ARGS__))

typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
typedef void *cudaStream_t;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t) {
  *p = std::malloc(bytes ? bytes : 1);
  return *p ? cudaSuccess : 2;
}
inline cudaError_t cudaFreeAsync(void *p, cudaStream_t) { std::free(p); return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
#endif

/* Status of the launches so far on this thread: what an ABI entry returns (0 = success). */
inline int znni_launch_status() { return (int)cudaGetLastError(); }

typedef int (*znni_gpu_forward_fn)(const float *, float *, const float *, const float *, int,
                                   void *);

/* znni_layer_forward of a GPU module: the layer on host arrays (floats per argument given),
 * synchronously. Emulated, host memory is device memory; on a GPU the arguments go up and the
 * output comes down (the executor's pipeline does this with pinned buffers and streams). */
inline int znni_run_on_host(znni_gpu_forward_fn forward, const float *input, long in_floats,
                            float *output, long out_floats, const float *weights,
                            long w_floats, const float *bias, long b_floats, int batch) {
#ifdef __CUDACC__
  float *d[4] = {nullptr, nullptr, nullptr, nullptr};
  const float *h[4] = {input, output, weights, bias};
  const long n[4] = {in_floats, out_floats, w_floats, b_floats};
  int rc = 0;
  for (int i = 0; i < 4 && rc == 0; ++i) {
    if (h[i] == nullptr || n[i] == 0) continue;
    rc = (int)cudaMalloc((void **)&d[i], n[i] * sizeof(float));
    if (rc == 0 && i != 1)
      rc = (int)cudaMemcpy(d[i], h[i], n[i] * sizeof(float), cudaMemcpyHostToDevice);
  }
  if (rc == 0) rc = forward(d[0], d[1], d[2], d[3], batch, nullptr);
  if (rc == 0) rc = (int)cudaDeviceSynchronize();
  if (rc == 0)
    rc = (int)cudaMemcpy(output, d[1], out_floats * sizeof(float), cudaMemcpyDeviceToHost);
  for (float *p : d) cudaFree(p);
  return rc;
#else
  (void)in_floats, (void)out_floats, (void)w_floats, (void)b_floats;
  return forward(input, output, weights, bias, batch, nullptr);
#endif
}

#endif
