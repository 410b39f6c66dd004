"""Peak fp32 FLOP/s of this machine: an FMA loop on register-resident accumulators, built with
znni's own toolchain and flags (the probe of znni.planner.calibrate).

    python bench/peak_flops.py [--threads N] [--repeats 7]

Prints the median GFLOP/s over repeats; the direct-conv bench reports kernels as a fraction of it.
"""

from __future__ import annotations

import argparse

from znni import config
from znni.planner.calibrate import peak_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=config.default_threads())
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for threads in sorted({1, args.threads}):
        rate = peak_flops(threads, args.repeats)
        print(f"peak fp32, {threads} thread(s): {rate / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
