"""Whole FFT conv layers with the SIMD FFTs vs FFTW passes, side by side in one run.

    python bench/fft_layers.py [--nets n537,n726,n926] [--memory 1GiB] [--repeats 3]

For each FFT layer of each net's plan (this machine, --memory), the layer is prepared twice
with the plan's primitive and shapes: with ``ZNNI_FFT=fftw`` (every transform through FFTW
passes, complex spectra converted to and from the MAC's layout: the version before the SIMD
FFTs) and with the default SIMD FFTs (images straight to and from the MAC's layout, the crop
written into the output). Both run the same random input, alternating, medians; the outputs
are compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
from functools import partial

import numpy as np

from znni import config
from znni.planner.calibrate import sample_seconds
from znni.planner.search import plan as make_plan
from znni.primitives import PRIMITIVES
from znni.primitives.base import padded_empty
from znni.spec import Conv
from znni.spec import load as load_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="n537,n726,n926")
    parser.add_argument("--memory", default="1GiB")
    parser.add_argument("--threads", type=int, default=config.default_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'net':>5} {'layer':>5} {'primitive':>16} {'input':>22} {'fftw s':>8} "
          f"{'simd s':>8} {'speed-up':>8} {'max rel diff':>12}")
    ratios = []
    for net_name in args.nets.split(","):
        net = load_network(net_name)
        chosen = make_plan(net, memory=args.memory, threads=args.threads)
        for lp in chosen.layers:
            if not lp.primitive.startswith("fft"):
                continue
            layer = net.layers[lp.index]
            assert isinstance(layer, Conv)
            shape = lp.input_shape
            w = (rng.standard_normal((layer.out_channels, layer.in_channels, *layer.kernel))
                 * 0.05).astype(np.float32)
            b = rng.standard_normal(layer.out_channels).astype(np.float32)
            x = padded_empty(shape, 0)
            x[...] = rng.standard_normal(shape, dtype=np.float32)
            steps = {}
            for backend in ("fftw", "simd"):
                os.environ["ZNNI_FFT"] = backend
                steps[backend] = PRIMITIVES[lp.primitive].prepare(lp.index, layer, shape,
                                                                  (w, b), args.threads)
            outputs = {}
            for name, step in steps.items():
                os.environ["ZNNI_FFT"] = name
                outputs[name] = step.run(x, 0)
            scale = float(np.abs(outputs["fftw"]).max())
            diff = float(np.abs(outputs["simd"] - outputs["fftw"]).max()) / scale
            del outputs
            times: dict[str, list[float]] = {name: [] for name in steps}
            for _ in range(args.repeats):
                for name, step in steps.items():
                    os.environ["ZNNI_FFT"] = name
                    times[name] += sample_seconds(partial(step.run, x, 0), 1,
                                                  warmup=0)
            median = {name: statistics.median(t) for name, t in times.items()}
            ratios.append(median["fftw"] / median["simd"])
            print(f"{net_name:>5} {lp.index:>5} {lp.primitive:>16} "
                  f"{'x'.join(map(str, shape)):>22} {median['fftw']:8.2f} "
                  f"{median['simd']:8.2f} {ratios[-1]:7.2f}x {diff:12.1e}")
    if ratios:
        print(f"speed-up over {len(ratios)} layers: median {statistics.median(ratios):.2f}x, "
              f"min {min(ratios):.2f}x, max {max(ratios):.2f}x")


if __name__ == "__main__":
    main()
