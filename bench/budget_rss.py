"""Does `znni infer` stay within its memory budget? Peak RSS of the whole process, measured.

    python bench/budget_rss.py [--nets n337,n537,n726,n926] [--memory 4GiB] [--patches 1.5]

For each net: a synthetic EM-like volume about ``--patches`` planned patches wide per axis is
written to a temporary .npy, then ``znni infer --memory M`` runs in a subprocess under
``/usr/bin/time -v``; its maximum resident set size is compared with the budget (acceptance:
within +10 %). The plan is made inside infer, so the volumes held in RAM count against M.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import znni
from znni.config import parse_bytes
from znni.synthetic import em_like_volume


def znni_peak_rss(args: list[str]) -> tuple[subprocess.CompletedProcess[str], int | None]:
    """``python -m znni ARGS`` under ``/usr/bin/time -v``: the run and its maximum resident
    set size in bytes (None if it failed)."""
    run = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "znni", *args],
                         capture_output=True, text=True, check=False)
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
    ok = run.returncode == 0 and match is not None
    return run, int(match.group(1)) * 1024 if ok and match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="n337,n537,n726,n926")
    parser.add_argument("--memory", default="4GiB")
    parser.add_argument("--patches", type=float, default=1.5)
    args = parser.parse_args()
    budget = parse_bytes(args.memory)
    for name in args.nets.split(","):
        net = znni.load(name)
        p = znni.plan(net, budget)
        shape = tuple(int(args.patches * p.output_patch[a]) + net.fov[a] - 1 for a in range(3))
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
            np.save(src, em_like_volume(shape, seed=0))
            run, peak = znni_peak_rss(["infer", name, "--random-weights", "0", "--input",
                                       str(src), "--output", str(dst), "--memory",
                                       args.memory])
        if peak is None:
            print(f"{name}: infer failed\n{run.stderr[-2000:]}")
            continue
        print(f"{name}: volume {shape} (sized from the budget-wide plan {p.output_patch}), "
              f"peak RSS {peak / 2**30:.2f} GiB = {100 * peak / budget:.0f} % of "
              f"{args.memory}; {run.stdout.strip()}")


if __name__ == "__main__":
    main()
