"""Winograd F(2³) and F(4³) against the direct kernel on a net's 3×3×3 layers: speed side by
side and accuracy against the float64 reference.

    python bench/winograd_layers.py [--net n337] [--patch 64] [--repeats 3] [--threads N]

The layers' shapes are those of the plan for one ``--patch``³ output patch (MPF: the samples
grow and the images shrink layer by layer). The input of each layer is synthetic: a ReLU-like
non-negative field (uniform [0, 1)), He-scaled weights. Per layer, the three primitives run
alternately (one warm-up round, then ``--repeats``; medians), and each one's output is compared
with the float64 reference on a crop (one sample, a corner block of up to 20³ outputs: Winograd's
error is local to a tile, and the crop has tiles of every kind, the shifted last ones included
where the image is small). Prints seconds, speed-up over direct, useful GFLOP/s (27 multiply-adds
per output and map pair) and max |error| ÷ max |reference| per primitive.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

import znni
import znni.config
from znni.activations import apply
from znni.planner import make_plan
from znni.primitives import PRIMITIVES
from znni.reference import dilated_correlation
from znni.spec import Conv

NAMES = ("direct", "winograd", "winograd-f4")
CROP = 20


def crop_error(out: np.ndarray, x: np.ndarray, w: np.ndarray, b: np.ndarray,
               activation: str) -> float:
    """max |out − reference| / max |reference| on sample 0's corner block of outputs."""
    c = [min(CROP, n - 2) for n in x.shape[2:]]
    xs = x[0, :, :c[0] + 2, :c[1] + 2, :c[2] + 2].astype(np.float64)
    ref = apply(activation, dilated_correlation(xs, w.astype(np.float64), [1, 1, 1])
                + b[:, None, None, None])
    got = out[0, :, :c[0], :c[1], :c[2]]
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="n337")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=znni.config.default_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    net = znni.load(args.net)
    plan = make_plan(net, (args.patch,) * 3, primitives="direct")
    rng = np.random.default_rng(0)
    print(f"{args.net}, output patch {args.patch}³, {args.threads} threads; medians of "
          f"{args.repeats} alternating runs")
    for lp, layer in zip(plan.layers, net.layers, strict=True):
        if not (isinstance(layer, Conv) and PRIMITIVES["winograd"].supports(layer)):
            continue
        shape = lp.input_shape
        x = rng.random(shape, dtype=np.float32)
        w = (rng.standard_normal((layer.out_channels, layer.in_channels, 3, 3, 3))
             / math.sqrt(27 * layer.in_channels)).astype(np.float32)
        b = (rng.standard_normal(layer.out_channels) * 0.1).astype(np.float32)
        steps = {n: PRIMITIVES[n].prepare(lp.index, layer, shape, (w, b), args.threads)
                 for n in NAMES}
        times: dict[str, list[float]] = {n: [] for n in NAMES}
        errors = {}
        for round_ in range(args.repeats + 1):
            for n, step in steps.items():
                start = time.perf_counter()
                out = step.run(x, 0)
                if round_:
                    times[n].append(time.perf_counter() - start)
                else:
                    errors[n] = crop_error(out, x, w, b, layer.activation)
                del out
        useful = 2 * 27 * layer.in_channels * layer.out_channels * math.prod(
            lp.output_shape[0:1] + lp.output_shape[2:])
        direct = statistics.median(times["direct"])
        print(f"layer {lp.index} {layer.in_channels}->{layer.out_channels} on {shape}:")
        for n in NAMES:
            t = statistics.median(times[n])
            print(f"  {n:<12} {t:8.3f} s  {direct / t:5.2f}x direct  "
                  f"{useful / t / 1e9:6.0f} GFLOP/s (useful)  error {errors[n]:.1e}")


if __name__ == "__main__":
    main()
