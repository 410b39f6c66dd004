/* The one boundary between znni's Python runtime and its generated kernels.
 *
 * Every generated module includes this header and exports the functions between the cdef
 * markers; the cffi declarations are cut from between them, and this file's hash is part of
 * every kernel cache key. Tensors are dense float32 (S, C, Z, Y, X), row-major.
 */
#ifndef ZNNI_ABI_H
#define ZNNI_ABI_H

#define ZNNI_ABI_VERSION 1

#ifdef __cplusplus
extern "C" {
#endif
/* cdef-begin */
int znni_abi_version(void);
/* Floats the kernel may read past the end of its input (never used in results); the runtime
 * allocates inputs with this much slack so kernels need no masked tail loads. */
long znni_input_slack(void);
/* One layer over a batch of `batch` samples with `threads` threads; returns 0 on success. */
int znni_layer_forward(const float *input, float *output, const float *weights,
                       const float *bias, int batch, int threads);
/* GPU modules (*.cu.j2) only: the same layer with every pointer in device memory, launched
 * asynchronously on `stream` (a cudaStream_t; NULL: the default stream). Returns a CUDA error
 * code (0: launched). Built as C++ with cuda_emulation.h, device memory is host memory. */
int znni_gpu_layer_forward(const float *input, float *output, const float *weights,
                           const float *bias, int batch, void *stream);
/* GPU modules only: the layer on host arrays as GPU + host RAM sub-layers of `chunk` items
 * (two streams, pinned host memory; cuda_emulation.h); znni_layer_forward is this with
 * chunk = batch. Returns a CUDA error code (0: done, output written). */
int znni_gpu_host_forward(const float *input, float *output, const float *weights,
                          const float *bias, int batch, int chunk);
/* cdef-end */
#ifdef __cplusplus
}
#endif
#endif
