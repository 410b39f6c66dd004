"""How much do back-to-back calibrations of one machine differ, rate by rate, and in what they
predict? (docs/design.md §7.5)

    ZNNI_CACHE_DIR=$(mktemp -d) python bench/calibration_spread.py [--runs 3] [--threads N]

Runs ``calibrate`` ``--runs`` times in one process and prints each run's measured rates
(GFLOP/s, GB/s), the corrections of direct, task-parallel FFT, MPF and Winograd F(4³), and the
corrected model's seconds for three n537-like layers (80→80 maps, 5³ kernels; shapes of its
4 GiB plan) by direct and task-parallel FFT. A planner is only as steady as the last column:
the rates may move as long as rate × correction does not.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict

import znni.config
from znni.planner.calibrate import calibrate
from znni.primitives import PRIMITIVES
from znni.spec import Conv

LAYER = Conv(80, 80, (5, 5, 5), "relu")
SHAPES = ((64, 80, 41, 43, 43), (512, 80, 18, 19, 19), (8, 80, 87, 91, 91))
SHOWN = ("direct", "fft-pruned", "mpf", "winograd-f4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=znni.config.default_threads())
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for run in range(args.runs):
        device = calibrate(args.threads)
        rates = {k: v for k, v in asdict(device).items() if isinstance(v, float)}
        print(f"run {run}: " + " ".join(f"{k} {v / 1e9:.2f}" for k, v in rates.items()))
        corrections = dict(device.corrections)
        print("  corrections: " + "; ".join(
            f"{name} " + " ".join(f"×{c:.2f}" for _, c in corrections[name]) for name in SHOWN))
        for shape in SHAPES:
            seconds = {f"{name}{pages}": PRIMITIVES[name].estimate(LAYER, shape, on)
                       * device.correction(name, math.prod(shape[2:]))
                       for name in ("direct", "fft-pruned")
                       for pages, on in (("", device), (" refilled", device.refilling()))}
            print(f"  {shape}: " + ", ".join(f"{n} {s:.2f} s" for n, s in seconds.items()))


if __name__ == "__main__":
    main()
