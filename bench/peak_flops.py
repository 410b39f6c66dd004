"""Peak fp32 FLOP/s of this machine: an FMA loop on register-resident accumulators, built with
znni's own toolchain and flags (so it uses the same vector width as the generated kernels).

    python bench/peak_flops.py [--threads N] [--repeats 7]

Prints the median GFLOP/s over repeats; the direct-conv bench reports kernels as a fraction of it.
"""

from __future__ import annotations

import argparse
import statistics
import time

from znni import config
from znni.codegen.loader import default_toolchain, load_kernel

_SOURCE = """
#include "znni_abi.h"
typedef float vf __attribute__((vector_size(VW * sizeof(float))));
extern "C" int znni_abi_version(void) { return ZNNI_ABI_VERSION; }
extern "C" long znni_input_slack(void) { return 0; }
// output[t] = a checksum so the loop cannot be optimised away; batch = iterations / 1000.
extern "C" int znni_layer_forward(const float *, float *output, const float *, const float *,
                                  int batch, int threads) {
#pragma omp parallel num_threads(threads)
  {
    vf acc[24];
    for (int i = 0; i < 24; ++i) acc[i] = vf{} + (float)i;
    const vf a = vf{} + 0.999999f, b = vf{} + 1e-7f;
    for (long it = 0; it < (long)batch * 1000; ++it)
#pragma GCC unroll 24
      for (int i = 0; i < 24; ++i) acc[i] = acc[i] * a + b;
    float sum = 0;
    for (int i = 0; i < 24; ++i) for (int l = 0; l < VW; ++l) sum += acc[i][l];
#pragma omp atomic
    output[0] += sum;
  }
  return 0;
}
"""


def peak_gflops(threads: int, repeats: int = 7, kilo_iterations: int = 20000) -> float:
    """Median GFLOP/s of ``threads`` threads each issuing 24 independent FMA chains."""
    toolchain = default_toolchain()
    vw = toolchain.vector_width
    module = load_kernel(f"#define VW {vw}\n{_SOURCE}", "peak FLOP/s probe", toolchain)
    ffi = module.ffi
    out = ffi.new("float[1]")
    flops = 2 * 24 * vw * kilo_iterations * 1000 * threads
    module.lib.znni_layer_forward(ffi.NULL, out, ffi.NULL, ffi.NULL, kilo_iterations // 10, threads)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        module.lib.znni_layer_forward(ffi.NULL, out, ffi.NULL, ffi.NULL, kilo_iterations, threads)
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=config.default_threads())
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for threads in sorted({1, args.threads}):
        print(f"peak fp32, {threads} thread(s): {peak_gflops(threads, args.repeats):.0f} GFLOP/s")


if __name__ == "__main__":
    main()
