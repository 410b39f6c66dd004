"""Batched 3D FFTs of the four nets' FFT layers: znni's SIMD passes vs FFTW, side by side.

    python bench/fft_transforms.py [--threads 2] [--repeats 5] [--bytes 256MiB] [--memory 4GiB]

For every FFT layer of each net's plan (this machine, --memory), a batch of the layer's input
images (as many as fill --bytes of spectra: larger than the last-level cache, as in a layer),
zero-padded to the layer's transform size, goes through a forward r2c and an inverse c2r 3D
transform four ways, alternating in one run, medians:
  pyfftw — pyfftw's FFTW plan of the whole batched 3D transform of the padded images
           (FFTW_MEASURE, --threads; planning not timed, reported separately)
  fftw   — znni's passes on FFTW 1D plans (ZNNI_FFT=fftw; the version before SIMD kernels),
           every line, inverse uncropped: the same work as pyfftw's
  simd   — znni's generated SIMD FFTs (the default; no planning), the same work
  layer  — znni's SIMD FFTs as the layer runs them: pruned forward (zero lines skipped),
           inverse cropped to the valid output, written into the output tensor
Rates are nominal GFLOP/s (2.5·N·log2 N per real 3D transform of N voxels, padded size).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import pyfftw

from znni import config
from znni.fft import SpectralShape, fft_size, forward, inverse_cropped
from znni.planner.search import plan as make_plan
from znni.spec import load as load_network

NETS = ("n337", "n537", "n726", "n926")


def fft_layers(net_name: str, memory: int,
               threads: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input image, valid output) extents of the FFT layers the planner picks here."""
    net = load_network(net_name)
    chosen = make_plan(net, memory=memory, threads=threads)
    return [(lp.input_shape[2:], lp.output_shape[2:]) for lp in chosen.layers
            if lp.kind == "conv" and lp.primitive.startswith("fft")]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def znni_pair(backend: str, x: np.ndarray, shape: SpectralShape, spec: np.ndarray,
              valid: tuple[int, ...] | None, threads: int) -> Callable[[], float]:
    """Forward + inverse through znni's passes on ``backend``; returns the seconds. ``valid``:
    the layer's output extent (pruned forward, cropped inverse into a dense tensor), else
    every line and the whole inverse."""
    size = shape.size
    start = (0, 0, 0) if valid is None else tuple(n - v for n, v in zip(x.shape[1:], valid,
                                                                       strict=True))
    stop = size if valid is None else x.shape[1:]
    out = np.empty((x.shape[0], 1, *(e - s for s, e in zip(start, stop, strict=True))),
                   np.float32)

    def run() -> float:
        os.environ["ZNNI_FFT"] = backend
        seconds = timed(lambda: forward(x, shape, threads, pruned=valid is not None,
                                        out=spec))
        return seconds + timed(lambda: inverse_cropped(spec, shape, start, stop,
                                                       threads, out=out))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=config.default_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bytes", default="256MiB")
    parser.add_argument("--memory", default="4GiB")
    args = parser.parse_args()
    budget = config.parse_bytes(args.bytes)
    print(f"{'net':>5} {'size':>12} {'batch':>5} {'plan s':>7}  GFLOP/s: {'pyfftw':>6} "
          f"{'fftw':>6} {'simd':>6} {'layer':>6}   simd/pyfftw layer/pyfftw simd/fftw")
    ratios: dict[str, list[float]] = {"simd": [], "layer": []}
    for net in NETS:
        for image, valid in fft_layers(net, config.parse_bytes(args.memory), args.threads):
            size = tuple(fft_size(n) for n in image)
            shape = SpectralShape(size)  # type: ignore[arg-type]
            batch = max(1, budget // (8 * shape.complex_elements))
            x = np.random.default_rng(0).random((batch, *image), dtype=np.float32)
            spec = shape.buffer(batch)
            real = pyfftw.zeros_aligned((batch, *size), dtype=np.float32)
            real[:, :image[0], :image[1], :image[2]] = x
            back = pyfftw.empty_aligned((batch, *size), dtype=np.float32)
            half = pyfftw.empty_aligned(spec.shape, dtype=np.complex64)
            start = time.perf_counter()
            r2c = pyfftw.FFTW(real, half, axes=(1, 2, 3), threads=args.threads,
                              flags=("FFTW_MEASURE",))
            c2r = pyfftw.FFTW(half, back, axes=(1, 2, 3), direction="FFTW_BACKWARD",
                              threads=args.threads, flags=("FFTW_MEASURE",))
            planning = time.perf_counter() - start

            def pyfftw_pair(r2c: pyfftw.FFTW = r2c, c2r: pyfftw.FFTW = c2r) -> float:
                return timed(r2c) + timed(c2r)

            runs = {"pyfftw": pyfftw_pair,
                    "fftw": znni_pair("fftw", x, shape, spec, None, args.threads),
                    "simd": znni_pair("simd", x, shape, spec, None, args.threads),
                    "layer": znni_pair("simd", x, shape, spec, valid, args.threads)}
            for run in runs.values():
                run()  # plans, wisdom, the module
            seconds: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, run in runs.items():
                    seconds[name].append(run())
            median = {name: statistics.median(s) for name, s in seconds.items()}
            work = 2 * batch * 2.5 * math.prod(size) * math.log2(math.prod(size))
            rates = {name: work / s / 1e9 for name, s in median.items()}
            for name in ratios:
                ratios[name].append(median["pyfftw"] / median[name])
            print(f"{net:>5} {'x'.join(map(str, size)):>12} {batch:>5} {planning:7.1f}  "
                  f"{'':8} {rates['pyfftw']:6.1f} {rates['fftw']:6.1f} {rates['simd']:6.1f} "
                  f"{rates['layer']:6.1f}   {ratios['simd'][-1]:10.2f}x "
                  f"{ratios['layer'][-1]:11.2f}x {median['fftw'] / median['simd']:8.2f}x")
    for name, values in ratios.items():
        if values:
            print(f"{name}/pyfftw over {len(values)} layers: median "
                  f"{statistics.median(values):.2f}x, min {min(values):.2f}x, "
                  f"max {max(values):.2f}x")


if __name__ == "__main__":
    main()
