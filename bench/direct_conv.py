"""Direct-conv kernel GFLOP/s on a network's conv layer shapes, against this machine's peak.

    python bench/direct_conv.py [--net n337] [--patch 64] [--threads 2] [--repeats 5]
                                [--layers 0,2]

Every conv layer of the net's plan at the given output patch runs on random data; reported:
median seconds, GFLOP/s counting only useful FLOPs (2·S·f·f′·n′·k³), the fraction of the peak
measured in the same run by bench/peak_flops.py, and the share of computed lanes that are
useful (the flat-image kernel discards positions with y ≥ OY or x ≥ OX).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import znni
import znni.config
from znni.planner.calibrate import peak_flops
from znni.primitives import DirectConv
from znni.primitives.base import padded_empty
from znni.primitives.direct import useful_fraction
from znni.spec import Conv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="n337")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=znni.config.default_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", help="comma-separated layer indices (default: every conv)")
    args = parser.parse_args()
    chosen = {int(i) for i in args.layers.split(",")} if args.layers else None
    net = znni.load(args.net).random_weights(0)
    plan = znni.make_plan(net, (args.patch,) * 3)
    peak = peak_flops(args.threads) / 1e9
    print(f"{args.net} patch {args.patch}^3, {args.threads} threads, peak {peak:.0f} GFLOP/s")
    print(f"{'layer':>5} {'input (S,f,n)':>24} {'k':>7} {'s':>8} {'GFLOP/s':>8} {'% peak':>7}"
          f" {'useful lanes':>12}")
    primitive = DirectConv()
    for lp in plan.layers:
        layer = net.layers[lp.index]
        if not isinstance(layer, Conv) or (chosen is not None and lp.index not in chosen):
            continue
        step = primitive.prepare(lp.index, layer, lp.input_shape, net.weights[lp.index],
                                 args.threads)
        x = padded_empty(lp.input_shape, step.input_slack)
        x[...] = np.random.default_rng(0).random(lp.input_shape, dtype=np.float32)
        step.run(x, 0)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            step.run(x, 0)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        gflops = primitive.flops(layer, lp.input_shape) / seconds / 1e9  # not the plan's
        useful = useful_fraction(layer, lp.input_shape)
        print(f"{lp.index:>5} {lp.input_shape[:3]!s:>24} {'x'.join(map(str, layer.kernel)):>7}"
              f" {seconds:8.3f} {gflops:8.1f} {100 * gflops / peak:6.0f}% {100 * useful:11.0f}%")


if __name__ == "__main__":
    main()
