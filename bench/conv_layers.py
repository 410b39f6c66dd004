"""FFT conv vs direct conv per conv layer of a net at a given patch, and FFT memory: measured
peak vs the ``memory()`` formula.

    python bench/conv_layers.py --net n726 --patch 64 [--fft fft-pruned] [--repeats 3]
    python bench/conv_layers.py --crossover [--repeats 3]

Direct conv is linear in the batch S, so it is timed on min(S, --direct-batch) samples and
scaled to S (full-size n726 layers would take minutes each). FFT runs the whole batch (its
kernel transforms are amortised over S). Medians of --repeats runs, alternating. Memory is
tracemalloc's peak of numpy/pyfftw buffers during one run, plus the input held by the caller.
``--crossover`` times an n337-like layer (S=64, 80→80 maps, 35³ images) for k = 1…6.
"""

from __future__ import annotations

import argparse
import statistics
import tracemalloc

import numpy as np

import znni
import znni.config
from znni.planner.calibrate import sample_seconds
from znni.primitives import PRIMITIVES
from znni.primitives.base import padded_empty, tensor_bytes
from znni.spec import Conv


def compare(layer: Conv, shape: tuple, fft_name: str, threads: int, repeats: int,
            direct_batch: int) -> tuple[float, float, int, int]:
    """(direct seconds scaled to S, FFT seconds, FFT measured peak bytes, FFT formula bytes)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((layer.out_channels, layer.in_channels, *layer.kernel)) * 0.01
         ).astype(np.float32)
    b = np.zeros(layer.out_channels, np.float32)
    s = shape[0]
    sub = (min(s, direct_batch), *shape[1:])
    direct = PRIMITIVES["direct"].prepare(0, layer, sub, (w, b), threads)
    xd = padded_empty(sub, direct.input_slack)
    xd[...] = rng.random(sub, dtype=np.float32)
    fft_primitive = PRIMITIVES[fft_name]
    fft = fft_primitive.prepare(0, layer, shape, (w, b), threads)
    x = rng.random(shape, dtype=np.float32)
    t_direct = statistics.median(sample_seconds(lambda: direct.run(xd, 0), repeats)) * s / sub[0]
    t_fft = statistics.median(sample_seconds(lambda: fft.run(x, 0), repeats))
    tracemalloc.start()
    fft.run(x, 0)
    peak = tracemalloc.get_traced_memory()[1] + tensor_bytes(shape)
    tracemalloc.stop()
    return t_direct, t_fft, peak, fft_primitive.memory(layer, shape).working


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="n726")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--fft", default="fft-pruned")
    parser.add_argument("--threads", type=int, default=znni.config.default_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--direct-batch", type=int, default=1)
    parser.add_argument("--crossover", action="store_true")
    args = parser.parse_args()
    if args.crossover:
        cases = [(f"k={k}", Conv(80, 80, (k, k, k), "relu"), (64, 80, 35, 35, 35))
                 for k in range(1, 7)]
        print(f"n337-like layer S=64, 80->80, 35^3, {args.fft} vs direct, {args.threads} threads")
    else:
        net = znni.load(args.net)
        plan = znni.make_plan(net, (args.patch,) * 3, 1, "direct")
        cases = [(f"layer {lp.index}", net.layers[lp.index], lp.input_shape)
                 for lp in plan.layers if lp.kind == "conv"]
        print(f"{args.net} patch {args.patch}^3, {args.fft} vs direct, {args.threads} threads")
    print(f"{'':>9} {'input (S,f,n)':>18} {'k':>3} {'direct s':>9} {'fft s':>8} {'speedup':>8}"
          f" {'mem GiB':>8} {'formula':>8} {'error':>6}")
    for label, layer, shape in cases:
        t_direct, t_fft, peak, formula = compare(layer, shape, args.fft, args.threads,
                                                 args.repeats, args.direct_batch)
        print(f"{label:>9} {shape[:3]!s:>18} {layer.kernel[0]:>3} {t_direct:9.2f} "
              f"{t_fft:8.2f} {t_direct / t_fft:7.1f}x {peak / 2**30:8.2f} {formula / 2**30:8.2f}"
              f" {100 * (formula - peak) / peak:5.0f}%", flush=True)


if __name__ == "__main__":
    main()
