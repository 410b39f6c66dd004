/* cuFFT, or a naive emulation of the calls znni's FFT conv makes (after cuda_emulation.h).
 *
 * The emulation covers 1D batched plans on contiguous lines (cufftPlanMany with stride 1 and a
 * line distance: the only form the generated code uses) and computes each line's DFT directly
 * in double precision: O(n^2) per line, meant for the small images of the tests, where it
 * checks the generated pruning, transposes, MAC and crop against the reference.
 */
#ifndef ZNNI_CUFFT_EMULATION_H
#define ZNNI_CUFFT_EMULATION_H

#ifdef __CUDACC__
#include <cufft.h>
#else
#include <cmath>
#include <vector>

typedef int cufftResult;
typedef int cufftHandle;
typedef float cufftReal;
struct cufftComplex { float x, y; };
enum cufftType { CUFFT_R2C, CUFFT_C2R, CUFFT_C2C };
constexpr cufftResult CUFFT_SUCCESS = 0;
constexpr int CUFFT_FORWARD = -1, CUFFT_INVERSE = 1;

struct ZnniEmulatedPlan { int n, idist, odist, batch; cufftType type; };

inline std::vector<ZnniEmulatedPlan> &znni_emulated_plans() {
  static thread_local std::vector<ZnniEmulatedPlan> plans;
  return plans;
}

inline cufftResult cufftPlanMany(cufftHandle *plan, int rank, int *n, int *, int istride,
                                 int idist, int *, int ostride, int odist, cufftType type,
                                 int batch) {
  if (rank != 1 || istride != 1 || ostride != 1) return 1;
  znni_emulated_plans().push_back({n[0], idist, odist, batch, type});
  *plan = (cufftHandle)znni_emulated_plans().size() - 1;
  return CUFFT_SUCCESS;
}
inline cufftResult cufftSetStream(cufftHandle, cudaStream_t) { return CUFFT_SUCCESS; }
inline cufftResult cufftDestroy(cufftHandle) { return CUFFT_SUCCESS; }

/* Line `b` of a plan: out[k] = sum_j in[j] e^{sign 2 pi i jk/n} over the stored elements. */
inline void znni_emulated_dft(const ZnniEmulatedPlan &p, const float *in, float *out, int sign) {
  const bool real_in = p.type == CUFFT_R2C, real_out = p.type == CUFFT_C2R;
  const int n = p.n, n_in = real_out ? n / 2 + 1 : n, n_out = real_in ? n / 2 + 1 : n;
  const double pi = 3.14159265358979323846;
  for (long b = 0; b < p.batch; ++b) {
    const float *src = in + (real_in ? 1 : 2) * b * p.idist;
    std::vector<double> re(n), im(n);
    for (int j = 0; j < n; ++j) {
      if (real_in) { re[j] = src[j]; im[j] = 0; continue; }
      const int stored = real_out && j >= n_in ? n - j : j;  // Hermitian completion
      re[j] = src[2 * stored];
      im[j] = real_out && j >= n_in ? -src[2 * stored + 1] : src[2 * stored + 1];
    }
    float *dst = out + (real_out ? 1 : 2) * b * p.odist;
    for (int k = 0; k < n_out; ++k) {
      double sr = 0, si = 0;
      for (int j = 0; j < n; ++j) {
        const double a = sign * 2 * pi * (double)((long)j * k % n) / n;
        sr += re[j] * std::cos(a) - im[j] * std::sin(a);
        si += re[j] * std::sin(a) + im[j] * std::cos(a);
      }
      if (real_out) dst[k] = (float)sr;
      else { dst[2 * k] = (float)sr; dst[2 * k + 1] = (float)si; }
    }
  }
}

/* Out of place only in effect: each line is read whole before it is written. */
inline cufftResult cufftExecR2C(cufftHandle plan, cufftReal *in, cufftComplex *out) {
  znni_emulated_dft(znni_emulated_plans()[plan], in, (float *)out, -1);
  return CUFFT_SUCCESS;
}
inline cufftResult cufftExecC2R(cufftHandle plan, cufftComplex *in, cufftReal *out) {
  znni_emulated_dft(znni_emulated_plans()[plan], (const float *)in, out, 1);
  return CUFFT_SUCCESS;
}
inline cufftResult cufftExecC2C(cufftHandle plan, cufftComplex *in, cufftComplex *out,
                                int direction) {
  znni_emulated_dft(znni_emulated_plans()[plan], (const float *)in, (float *)out, direction);
  return CUFFT_SUCCESS;
}
#endif
#endif
