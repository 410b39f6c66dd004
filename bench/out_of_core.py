"""Out of core: peak RSS of `znni infer` on a volume larger than its budget, and bit-identity.

    python bench/out_of_core.py [--net tiny] [--edge 736] [--memory 1GiB] [--folder /tmp]

Writes a synthetic float32 zarr volume of ``--edge``³ voxels (736³ = 1.6 GB), runs
``znni infer NET --input in.zarr --output out.zarr --memory M`` in a subprocess under
``/usr/bin/time -v`` with the plan ``znni infer`` would make for that budget (saved, so that
``--check`` can rerun it) and reports its peak RSS against the budget (acceptance: under the
budget plus one block). With ``--check``, also runs ``znni.infer`` on the whole array in memory
with the same plan and compares bit for bit (needs RAM for the volume).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr

import znni
from znni.config import parse_bytes
from znni.runtime.infer import PROCESS_BYTES
from znni.runtime.job import BLOCK_BYTES
from znni.synthetic import em_like_volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="tiny")
    parser.add_argument("--edge", type=int, default=736)
    parser.add_argument("--memory", default="1GiB")
    parser.add_argument("--folder", default=None)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        src, dst, plan_file = Path(tmp) / "in.zarr", Path(tmp) / "out.zarr", Path(tmp) / "p.json"
        slab = 64
        arr = zarr.create_array(str(src), shape=(args.edge,) * 3, chunks=(slab, 128, 128),
                                dtype="float32")
        for z in range(0, args.edge, slab):
            depth = min(slab, args.edge - z)
            arr[z:z + depth] = em_like_volume((depth, args.edge, args.edge), seed=z) / 255.0
        print(f"input {src}: {args.edge}³ float32 = {arr.nbytes / 2**30:.2f} GiB")
        net = znni.load(args.net).random_weights(0)
        budget = parse_bytes(args.memory)
        extent = tuple(args.edge - f + 1 for f in net.fov)
        plan = znni.plan(net, budget - BLOCK_BYTES - PROCESS_BYTES, extent=extent)
        plan_file.write_text(plan.to_json())
        print(f"plan: patch {plan.output_patch}, batch {plan.batch}, peak "
              f"{plan.peak_bytes / 2**30:.2f} GiB")
        run = subprocess.run(
            ["/usr/bin/time", "-v", sys.executable, "-m", "znni", "infer", args.net,
             "--random-weights", "0", "--input", str(src), "--output", str(dst),
             "--plan", str(plan_file), "--quiet"], capture_output=True, text=True, check=False)
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
        if run.returncode != 0 or match is None:
            sys.exit(f"infer failed:\n{run.stderr[-3000:]}")
        peak = int(match.group(1)) * 1024
        print(run.stdout.strip())
        print(f"peak RSS {peak / 2**30:.2f} GiB; budget {budget / 2**30:.2f} GiB + one block "
              f"{BLOCK_BYTES / 2**30:.2f} GiB: "
              f"{'within' if peak <= budget + BLOCK_BYTES else 'OVER'}")
        if args.check:
            out = zarr.open_array(str(dst), mode="r")
            expected = znni.infer(net, arr[...], plan=plan)
            same = np.array_equal(out[...], expected)
            print(f"bit-identical to znni.infer in memory with the same plan: {same}")


if __name__ == "__main__":
    main()
