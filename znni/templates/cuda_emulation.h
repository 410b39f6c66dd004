/* CUDA or its emulation: the same kernel bodies and host code compile with nvcc and with g++.
 *
 * Under nvcc this only pulls in the CUDA runtime. Under a plain C++ compiler it supplies the
 * handful of CUDA names znni's generated GPU code uses: a launch runs every thread of every
 * block in turn (blocks spread over OpenMP threads; blockIdx/threadIdx are thread_local), so a
 * kernel without inter-thread synchronisation computes exactly what it computes on a GPU;
 * "device" memory is host memory, streams and pinning are no-ops and copies are memcpy. The
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
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost };
constexpr unsigned cudaHostRegisterDefault = 0;
inline cudaError_t cudaMalloc(void **p, size_t bytes) { return cudaMallocAsync(p, bytes, nullptr); }
inline cudaError_t cudaFree(void *p) { return cudaFreeAsync(p, nullptr); }
inline cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind) {
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}
inline cudaError_t cudaHostRegister(void *, size_t, unsigned) { return cudaSuccess; }
inline cudaError_t cudaHostUnregister(void *) { return cudaSuccess; }
inline cudaError_t cudaStreamCreate(cudaStream_t *s) { *s = nullptr; return cudaSuccess; }
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
/* Launches and copies complete before they return, so events order nothing: handles only. */
typedef void *cudaEvent_t;
constexpr unsigned cudaEventDisableTiming = 2;
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) {
  *e = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
#endif

/* Status of the launches so far on this thread: what an ABI entry returns (0 = success). */
inline int znni_launch_status() { return (int)cudaGetLastError(); }

typedef int (*znni_gpu_forward_fn)(const float *, float *, const float *, const float *, int,
                                   void *);

/* GPU + host RAM (docs/design.md §6): `batch` items of a host input through a module's device entry in
 * sub-layers of `chunk` items (a batch split: each input up once, each output down once; items
 * are whole samples or fragments, `in_item`/`out_item` floats each). Two streams and two buffer
 * sets alternate, so chunk c+1's upload and chunk c-1's download overlap chunk c's compute; the
 * host arrays are pinned for the call (page-locked: asynchronous DMA; if pinning is refused the
 * copies are merely pageable). Weights go up once. Emulated, the same code runs on host memory
 * with memcpy copies, which checks the chunking. Returns 0 or the first CUDA error. This is a
 * module's self-contained host entry (znni_layer_forward; the kernel tests); plans run their
 * tails from runtime/gpu.py through znni_gpu_abi.h instead, which keeps weights and, across a
 * resident tail, the tensors between layers on the card. */
inline int znni_run_on_host(znni_gpu_forward_fn forward, const float *input, long in_item,
                            float *output, long out_item, const float *weights, long w_floats,
                            const float *bias, long b_floats, int batch, int chunk) {
  if (chunk <= 0 || chunk > batch) chunk = batch;
  const int sets = batch > chunk ? 2 : 1;
  const long floats[6] = {w_floats, b_floats, chunk * in_item, chunk * out_item,
                          chunk * in_item, chunk * out_item};  // weights, bias, in/out per set
  float *dev[6] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  cudaStream_t streams[2] = {nullptr, nullptr};
  int rc = 0;
  auto check = [&rc](cudaError_t e) { if (rc == 0) rc = (int)e; };
  for (int i = 0; i < 2 + 2 * sets; ++i)
    if (floats[i] > 0) check(cudaMalloc((void **)&dev[i], floats[i] * sizeof(float)));
  if (rc == 0 && weights != nullptr && w_floats > 0)
    check(cudaMemcpy(dev[0], weights, w_floats * sizeof(float), cudaMemcpyHostToDevice));
  if (rc == 0 && bias != nullptr && b_floats > 0)
    check(cudaMemcpy(dev[1], bias, b_floats * sizeof(float), cudaMemcpyHostToDevice));
  const size_t in_bytes = (size_t)batch * in_item * sizeof(float);
  const size_t out_bytes = (size_t)batch * out_item * sizeof(float);
  const bool pinned_in =
      cudaHostRegister((void *)input, in_bytes, cudaHostRegisterDefault) == cudaSuccess;
  const bool pinned_out = cudaHostRegister(output, out_bytes, cudaHostRegisterDefault) == cudaSuccess;
  (void)cudaGetLastError();  // a refused pinning is not an error of this layer
  for (int i = 0; i < sets; ++i) check(cudaStreamCreate(&streams[i]));
  for (int first = 0, c = 0; rc == 0 && first < batch; first += chunk, ++c) {
    const int n = batch - first < chunk ? batch - first : chunk, set = c % sets;
    float *in = dev[2 + 2 * set], *out = dev[3 + 2 * set];
    check(cudaMemcpyAsync(in, input + first * in_item, n * in_item * sizeof(float),
                          cudaMemcpyHostToDevice, streams[set]));
    if (rc == 0) rc = forward(in, out, dev[0], dev[1], n, streams[set]);
    check(cudaMemcpyAsync(output + first * out_item, out, n * out_item * sizeof(float),
                          cudaMemcpyDeviceToHost, streams[set]));
  }
  check(cudaDeviceSynchronize());  // also after an error: nothing may be in flight below
  for (cudaStream_t s : streams)
    if (s != nullptr) cudaStreamDestroy(s);
  if (pinned_in) cudaHostUnregister((void *)input);
  if (pinned_out) cudaHostUnregister(output);
  for (float *d : dev) cudaFree(d);
  return rc;
}

#endif
