"""Pruned vs unpruned forward FFT of a k³ kernel zero-padded to n³ (batch of kernels).

    python bench/fft_pruned.py [--threads 2] [--repeats 7] [--batch 64]

Three transforms of the same data, alternating in one run, medians; output buffers are reused
so only transform work is timed:
  pruned   — znni.fft.forward: FFTW r2c on the k² non-zero rows, DFT-matrix GEMMs for y and z
  3-pass   — the same passes unpruned (every line, FFTW in place)
  fftw-3d  — FFTW's own 3D r2c plan of the pre-padded array (the acceptance baseline)
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np
import pyfftw

from znni import config
from znni.fft import SpectralShape, forward, forward_unpruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=config.default_threads())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    print(f"{'k':>3} {'n':>4} {'pruned ms':>10} {'3-pass ms':>10} {'fftw-3d ms':>11} "
          f"{'vs 3-pass':>9} {'vs fftw-3d':>10}")
    for n in (32, 64, 128):
        for k in (3, 5, 7, 9):
            batch = max(1, args.batch * (64 // n) ** 3) if n < 64 else args.batch
            x = np.random.default_rng(0).random((batch, k, k, k), dtype=np.float32)
            shape = SpectralShape((n, n, n))
            out = shape.buffer(batch)
            padded = pyfftw.zeros_aligned((batch, n, n, n), dtype=np.float32)
            full_out = shape.buffer(batch)
            full = pyfftw.FFTW(padded, full_out, axes=(1, 2, 3), threads=args.threads,
                               flags=(config.fftw_effort(),))
            padded[:, :k, :k, :k] = x
            runs = {
                "pruned": partial(forward, x, shape, args.threads, out=out),
                "3-pass": partial(forward_unpruned, x, shape, args.threads, out=out),
                "fftw-3d": full.execute,
            }
            times: dict[str, list[float]] = {name: [] for name in runs}
            for fn in runs.values():
                fn()  # plans / wisdom
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
            med = {name: 1e3 * statistics.median(t) / batch for name, t in times.items()}
            print(f"{k:>3} {n:>4} {med['pruned']:10.3f} {med['3-pass']:10.3f} "
                  f"{med['fftw-3d']:11.3f} {med['3-pass'] / med['pruned']:8.1f}x "
                  f"{med['fftw-3d'] / med['pruned']:9.1f}x")


if __name__ == "__main__":
    main()
