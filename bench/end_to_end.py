"""End-to-end dense throughput of znni on a bundled net (output voxels/s, median of runs).

    python bench/end_to_end.py [--net n337] [--patch 64] [--threads 2] [--repeats 3]
                               [--primitive auto|direct|fft|fft-pruned|...]

Runs one output patch (volume = patch + FOV − 1, synthetic EM) with kernels already compiled,
and prints the per-layer time split of the last run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import znni
import znni.config
from znni.runtime.executor import CompiledPlan
from znni.synthetic import em_like_volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="n337")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=znni.config.default_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs first (FFTW planning happens in the first run)")
    parser.add_argument("--primitive", default="auto",
                        help="auto, direct, fft, fft-pruned, fft-data or fft-pruned-data")
    args = parser.parse_args()
    net = znni.load(args.net).random_weights(0)
    plan = znni.make_plan(net, (args.patch,) * 3, 1, args.primitive)
    compiled = CompiledPlan(plan, net, args.threads)
    x = compiled.new_input()
    x[0] = em_like_volume(plan.input_patch) / 255.0
    times, split = [], []
    for _ in range(args.warmup):
        compiled.run(x)
    for _ in range(args.repeats):
        start = time.perf_counter()
        y, split = x, []
        for i, step in enumerate(compiled.steps):
            slack = compiled.steps[i + 1].input_slack if i + 1 < len(compiled.steps) else 0
            t = time.perf_counter()
            y = step.run(y, slack)
            split.append(time.perf_counter() - t)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    voxels = args.patch ** 3
    print(f"{args.net} output {args.patch}^3 ({plan.peak_bytes / 2**30:.2f} GiB planned), "
          f"{args.threads} threads: {seconds:.2f} s, {voxels / seconds:,.0f} voxels/s "
          f"(median of {args.repeats})")
    for lp, t in zip(plan.layers, split, strict=False):
        print(f"  layer {lp.index} {lp.primitive:>6} {lp.input_shape!s:>28} {t:7.3f} s")


if __name__ == "__main__":
    main()
