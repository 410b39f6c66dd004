"""Where an FFT conv layer spends its time: image transforms, kernel transforms, planar
conversions, spectral MAC (+ pruned-DFT kernel calls), inverse transforms.

    python bench/fft_stages.py [--batch 8] [--maps 80] [--size 63] [--kernel 5]
                               [--primitive fft-pruned]

One warm run (plans, wisdom, kernels), then one timed run with wall-clock timers wrapped around
the stage functions. "other" is the unattributed rest.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from znni import config
from znni.primitives import PRIMITIVES, fft
from znni.spec import Conv

seconds: dict[str, float] = defaultdict(float)


def timed(name: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds[name(*args) if callable(name) else name] += time.perf_counter() - start
        return result
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--maps", type=int, default=80)
    parser.add_argument("--size", type=int, default=63)
    parser.add_argument("--kernel", type=int, default=5)
    parser.add_argument("--primitive", default="fft-pruned")
    parser.add_argument("--threads", type=int, default=config.default_threads())
    args = parser.parse_args()
    f, k = args.maps, args.kernel
    layer = Conv(f, f, (k, k, k), "relu")
    shape = (args.batch, f, args.size, args.size, args.size)
    rng = np.random.default_rng(0)
    w = (rng.random((f, f, k, k, k), dtype=np.float32) * 0.01)
    step = PRIMITIVES[args.primitive].prepare(0, layer, shape, (w, np.zeros(f, np.float32)),
                                              args.threads)
    x = rng.random(shape, dtype=np.float32)
    step.run(x, 0)
    fft.forward = timed(lambda data, *_: "forward (kernels)" if data.shape[1] == k
                        else "forward (images)", fft.forward)
    fft.xy_passes = timed("kernel x/y passes (fused MAC)", fft.xy_passes)
    fft.inverse_cropped = timed("inverse", fft.inverse_cropped)
    fft.SpectralLayout.to_planar = timed("to planar", fft.SpectralLayout.to_planar)
    fft.SpectralLayout.from_planar = timed("from planar", fft.SpectralLayout.from_planar)
    mac = step.module
    timed_mac = timed("spectral MAC (+ fused kernel z-DFT)", mac.forward)
    step.module = type("Timed", (), {"forward": staticmethod(timed_mac)})
    start = time.perf_counter()
    step.run(x, 0)
    total = time.perf_counter() - start
    g = step.geometry
    mac = 8 * args.batch * f * f * g.spectral.complex_elements
    print(f"{args.primitive} {shape} k={k}, transform {g.spectral.size}, "
          f"out_chunk {g.out_chunk}, in_block {g.in_block}: {total:.2f} s "
          f"(MAC {mac / 1e9:.0f} GFLOP)")
    for name, value in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"  {name:<40} {value:7.2f} s")
    print(f"  {'other':<40} {total - sum(seconds.values()):7.2f} s")


if __name__ == "__main__":
    main()
