"""How much a mask saves: `znni infer` of one volume with and without a mask that marks most
output blocks empty, side by side in one run (alternating, medians).

    python -u bench/mask.py [--net n337] [--empty 0.7] [--repeats 3] [--memory 2GiB]

The volume holds ``--blocks`` output blocks along z (blocks of one planned patch each, so that
a mask has something to skip); the mask is zero over the last ``--empty`` of z (out of tissue)
on a grid 4× coarser. Reports the fraction of blocks the mask skipped, both times and their
ratio, and checks that the computed blocks equal the unmasked run's bit for bit.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import znni
from znni.runtime import job
from znni.runtime.job import infer_volume
from znni.synthetic import em_like_volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="n337")
    parser.add_argument("--empty", type=float, default=0.7)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", default="2GiB")
    args = parser.parse_args()
    net = znni.load(args.net).random_weights(0)
    probe = znni.plan(net, args.memory)
    patch, fov = probe.output_patch, net.fov
    out = (args.blocks * patch[0], patch[1], patch[2])
    shape = tuple(out[a] + fov[a] - 1 for a in range(3))
    plan = znni.plan(net, args.memory, extent=out)
    # one patch per block: the granularity a mask needs (a user's chunks play this part)
    job.BLOCK_BYTES = 4 * (net.input_channels * math.prod(plan.input_patch)
                           + net.output_channels * math.prod(plan.output_patch))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.npy"
        np.save(src, em_like_volume(shape, seed=0))
        mask = np.ones([-(-n // 4) for n in shape], np.uint8)
        mask[int(mask.shape[0] * (1 - args.empty)):] = 0
        np.save(Path(tmp) / "mask.npy", mask)
        times: dict[str, list[float]] = {"full": [], "masked": []}
        stats = {}
        for round_ in range(args.repeats + 1):  # round 0 compiles the kernels
            for name in times:
                dst = Path(tmp) / f"{name}{round_}.npy"
                start = time.perf_counter()
                stats[name] = infer_volume(net, str(src), str(dst), plan=plan,
                                           mask=str(Path(tmp) / "mask.npy") if name == "masked"
                                           else None, mask_fill=0.0)
                if round_:
                    times[name].append(time.perf_counter() - start)
        full, masked = np.load(Path(tmp) / "full1.npy"), np.load(Path(tmp) / "masked1.npy")
        computed = masked != 0
        identical = bool(np.array_equal(masked[computed], full[computed]))
    skipped = stats["masked"].blocks_masked / stats["masked"].blocks_run
    t_full, t_masked = statistics.median(times["full"]), statistics.median(times["masked"])
    print(f"{args.net}: output {list(out)} in {stats['full'].blocks_run} blocks of "
          f"{list(plan.output_patch)}; the mask skipped {100 * skipped:.0f} % of them")
    print(f"  unmasked {t_full:.2f} s, masked {t_masked:.2f} s (medians of {args.repeats}): "
          f"{t_full / t_masked:.2f}x faster; computed blocks bit-identical: {identical}")


if __name__ == "__main__":
    main()
