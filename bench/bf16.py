"""bf16 against fp32: the direct kernel's speed on each net's inner conv layers, and what bf16
inner layers do to whole-net outputs.

    python bench/bf16.py [--nets n337,n537,n726,n926] [--patch 16] [--out 24] [--repeats 3]
                         [--layers N]

Per layer (the shapes of the all-direct plan for one ``--patch``³ output patch; inner conv
layers only, the ones bf16 may run): direct and direct-bf16 alternately on the same input
(uniform [0, 1), He-scaled weights), one warm-up round then ``--repeats``, medians; speed-up
and GFLOP/s (the layer's useful multiply-adds).

Per net: He-initialised weights (seed 0), a uniform [0, 1) volume of ``--out``³ outputs, the
net run all direct in fp32 and with its inner conv layers in direct-bf16 (same patch, same
everything else). Prints the max |bf16 − fp32| of the outputs, the largest |fp32| output, and
the fraction of output voxels whose value thresholded at 0.5 differs. Finally the planner's
choice at 4 GiB with ``precision="bf16"``: which layers it would run in bf16 on this machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

import znni
import znni.config
from znni.planner import make_plan, plan
from znni.planner.plan import inner_convs
from znni.primitives import PRIMITIVES
from znni.spec import Conv

NAMES = ("direct", "direct-bf16")


def layer_speeds(net: znni.Network, patch: int, threads: int, repeats: int,
                 most: int) -> None:
    """Direct fp32 and bf16 side by side on the net's first ``most`` inner conv layers."""
    fixed = make_plan(net, (patch,) * 3, primitives="direct")
    rng = np.random.default_rng(0)
    for lp in [lp for lp in fixed.layers if lp.index in inner_convs(net)][:most]:
        layer = net.layers[lp.index]
        assert isinstance(layer, Conv)
        x = rng.random(lp.input_shape, dtype=np.float32)
        w = (rng.standard_normal((layer.out_channels, layer.in_channels, *layer.kernel))
             / math.sqrt(math.prod(layer.kernel) * layer.in_channels)).astype(np.float32)
        b = np.zeros(layer.out_channels, np.float32)
        steps = {n: PRIMITIVES[n].prepare(lp.index, layer, lp.input_shape, (w, b), threads)
                 for n in NAMES}
        slack = max(s.input_slack for s in steps.values())
        padded = np.empty(x.size + slack, np.float32)
        padded[:x.size] = x.ravel()
        x = padded[:x.size].reshape(x.shape)
        times: dict[str, list[float]] = {n: [] for n in NAMES}
        for round_ in range(repeats + 1):
            for n, step in steps.items():
                start = time.perf_counter()
                step.run(x, 0)
                if round_:
                    times[n].append(time.perf_counter() - start)
        useful = lp.flops
        fp32, bf16 = (statistics.median(times[n]) for n in NAMES)
        k = "x".join(map(str, layer.kernel))
        print(f"  layer {lp.index} {layer.in_channels}->{layer.out_channels} k {k} on "
              f"{'x'.join(map(str, lp.input_shape))}: fp32 {fp32:.3f} s "
              f"({useful / fp32 / 1e9:.0f} GFLOP/s), bf16 {bf16:.3f} s "
              f"({useful / bf16 / 1e9:.0f} GFLOP/s): {fp32 / bf16:.2f}x")


def output_errors(net: znni.Network, out_edge: int, threads: int) -> None:
    """Whole-net outputs: inner layers bf16 against all fp32, same plan otherwise."""
    fov = net.fov
    rng = np.random.default_rng(1)
    volume = rng.random(tuple(out_edge + f - 1 for f in fov), dtype=np.float32)
    frag = net.fragmentation
    patch = tuple(-(-out_edge // f) * f for f in frag)
    results = {}
    for name in NAMES:
        chosen = make_plan(net, patch, primitives=name)
        start = time.perf_counter()
        results[name] = znni.infer(net, volume, plan=chosen, threads=threads)
        print(f"  {name:<12} {time.perf_counter() - start:6.1f} s")
    fp32, bf16 = (results[n].astype(np.float64) for n in NAMES)
    flips = np.mean((fp32 > 0.5) != (bf16 > 0.5))
    inside = np.mean(fp32 > 0.5)
    print(f"  outputs {'x'.join(map(str, fp32.shape))}: max |bf16 - fp32| "
          f"{np.abs(bf16 - fp32).max():.2e}, max |fp32| {np.abs(fp32).max():.3g}, mean |fp32| "
          f"{np.abs(fp32).mean():.3g}; thresholded at 0.5: {100 * flips:.3f} % of the voxels "
          f"flip ({100 * inside:.1f} % above 0.5 in fp32)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="n337,n537,n726,n926")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--out", type=int, default=24)
    parser.add_argument("--threads", type=int, default=znni.config.default_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=99,
                        help="time at most this many inner layers per net (0: none)")
    args = parser.parse_args()
    print(f"{args.threads} threads; layer times: medians of {args.repeats} alternating runs")
    for name in args.nets.split(","):
        net = znni.load(name).random_weights(0)
        print(f"{name}:")
        layer_speeds(net, args.patch, args.threads, args.repeats, args.layers)
        output_errors(net, args.out, args.threads)
        chosen = plan(net, "4GiB", args.threads, precision="bf16")
        bf16 = [lp.index for lp in chosen.layers
                if PRIMITIVES[lp.primitive].precision == "bf16"]
        print(f"  planner at 4 GiB, precision bf16: layers {bf16 or 'none'} in bf16 "
              f"({', '.join(lp.primitive for lp in chosen.layers)})")


if __name__ == "__main__":
    main()
