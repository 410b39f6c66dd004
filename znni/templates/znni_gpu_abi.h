/* The GPU runtime's boundary (runtime/gpu.py): entries beyond znni_abi.h that pass *device*
 * pointers, so Python can chain layers on the card.
 *
 * gpu_runtime.cu.j2 exports the memory, copy, stream and event entries (one module per
 * process); the conv templates export znni_gpu_conv_chunk_forward. The cffi declarations of
 * runtime/gpu.py are cut from between the cdef markers. Every entry returns a CUDA error code
 * (0: done or enqueued); pointers to device memory and CUDA handles travel as void *. Built as
 * C++ with cuda_emulation.h, device memory is host memory and every call completes at once.
 */
#ifndef ZNNI_GPU_ABI_H
#define ZNNI_GPU_ABI_H

#ifdef __cplusplus
extern "C" {
#endif
/* cdef-begin */
int znni_gpu_alloc(void **device, long bytes);
int znni_gpu_free(void *device);
/* `bytes` from host to device (to_device != 0) or back, asynchronous on `stream`. */
int znni_gpu_copy(void *dst, const void *src, long bytes, int to_device, void *stream);
int znni_gpu_stream_create(void **stream);
int znni_gpu_stream_destroy(void *stream);
int znni_gpu_event_create(void **event);
int znni_gpu_event_destroy(void *event);
/* `stream` waits (on the device) for the work enqueued on it before the event was recorded. */
int znni_gpu_event_record(void *event, void *stream);
int znni_gpu_stream_wait(void *stream, void *event);
int znni_gpu_synchronize(void);
/* Page-lock a host array for asynchronous copies; a refusal (nonzero) is not an error: the
 * copies then are merely pageable. */
int znni_gpu_pin(void *host, long bytes);
int znni_gpu_unpin(void *host);
/* Conv modules: znni_gpu_layer_forward over an input-map chunk. `accumulate`: start from the
 * partial sums already in `output` (else from 0); `finish`: add the bias and apply the
 * activation (else store the partial sums). (0, 1) is the whole layer. */
int znni_gpu_conv_chunk_forward(const float *input, float *output, const float *weights,
                                const float *bias, int batch, void *stream, int accumulate,
                                int finish);
/* cdef-end */
#ifdef __cplusplus
}
#endif
#endif
