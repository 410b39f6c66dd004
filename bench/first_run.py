"""First run: what a new user sees from `znni demo` on this machine, and its peers on the same job.

    python bench/first_run.py [--net n337] [--size 64] [--threads N] [--repeats 3] [--json PATH]

1. Runs ``python -m znni demo --net NET --size N [--threads N]`` in a subprocess with an empty
   kernel cache (a temporary ZNNI_CACHE_DIR; the rest of the environment as is, so unset
   ZNNI_DEVICE to include the machine's calibration a new user pays) and measures its whole wall
   time — interpreter start, imports, calibration, planning, kernel compilation and the demo's two
   runs — and reads the demo's own voxels/s (the faster of its two runs) and setup time.
2. Right after, in a fresh process, times each installed peer of ``znni.peers.PEERS`` (PyTorch's
   dense forms and layouts, ONNX Runtime) on the same net, weights (``random_weights(0)``) and
   input (output N³: N + FOV − 1 per axis, ``em_like_volume(shape, seed=0)``): one warm-up run,
   then the median of ``--repeats``. Threads: ``--threads``, else all usable cores (as the
   demo's default).
3. Prints the demo's wall time, znni's and each peer's voxels/s, and znni / the fastest peer;
   ``--json PATH`` writes the same numbers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import znni.config

#: The demo's result line, e.g. "output [3, 64, 64, 64] in 2.71 s: 96,743 voxels/s (setup incl.
#: kernel compilation 95.2 s; ...)".
DEMO_LINE = re.compile(r"output \[[^\]]*\] in [\d.]+ s: ([\d,]+) voxels/s "
                       r"\(setup incl\. kernel compilation ([\d.]+) s")


@dataclass(frozen=True)
class FirstRun:
    net: str
    size: int
    threads: int
    demo_wall_s: float
    demo_setup_s: float
    znni_voxels_per_s: float
    peer_voxels_per_s: dict[str, float]

    @property
    def peer_best(self) -> str:
        return max(self.peer_voxels_per_s, key=self.peer_voxels_per_s.__getitem__)

    @property
    def ratio(self) -> float:
        return self.znni_voxels_per_s / self.peer_voxels_per_s[self.peer_best]

    def to_dict(self) -> dict[str, object]:
        best = self.peer_best
        return {**asdict(self), "peer_best": best,
                "peer_best_voxels_per_s": self.peer_voxels_per_s[best], "ratio": self.ratio}


def run_demo(net: str, size: int, threads: int | None) -> tuple[float, float, float]:
    """Wall time of ``znni demo`` on an empty kernel cache, its voxels/s and its setup time."""
    command = [sys.executable, "-m", "znni", "demo", "--net", net, "--size", str(size)]
    if threads is not None:  # else the demo's own default, as a new user runs it
        command += ["--threads", str(threads)]
    with tempfile.TemporaryDirectory(prefix="znni-first-run-") as cache:
        env = {**os.environ, "ZNNI_CACHE_DIR": cache}
        start = time.perf_counter()
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
        wall = time.perf_counter() - start
    print("".join(f"  demo: {line}\n" for line in done.stdout.splitlines()), end="")
    match = DEMO_LINE.search(done.stdout)
    if done.returncode != 0 or match is None:
        sys.exit(f"znni demo failed (exit status {done.returncode}); its output is above")
    return wall, float(match.group(1).replace(",", "")), float(match.group(2))


def peer_throughputs(net_name: str, size: int, threads: int, repeats: int) -> dict[str, float]:
    """Voxels/s of each installed peer on the demo's job (runs in a fresh process, so nothing
    znni loaded or allocated is shared)."""
    import numpy as np

    from znni.peers import select
    from znni.synthetic import em_like_volume

    net = znni.load(net_name).random_weights(0)
    shape = tuple(size + f - 1 for f in net.fov)
    volume = (em_like_volume(shape, seed=0) / np.float32(255))[None]  # as znni reads uint8
    result = {}
    peers, missing = select("all")
    if missing:
        print(f"  not installed, left out: {', '.join(missing)}")
    for peer in peers:
        model = peer.make(net, threads)
        model(volume)  # warm-up: oneDNN and ONNX Runtime pick their kernels on the first call
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(volume)
            times.append(time.perf_counter() - start)
        result[peer.label] = size ** 3 / statistics.median(times)
    return result


def in_fresh_process(net: str, size: int, threads: int, repeats: int) -> dict[str, float]:
    """:func:`peer_throughputs` in a newly started interpreter (spawn, not fork)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(peer_throughputs, net, size, threads, repeats).result()


def report(run: FirstRun, repeats: int) -> str:
    rows = [("znni demo wall time, empty cache", f"{run.demo_wall_s:.1f} s"),
            ("  of which setup (plan + compile)", f"{run.demo_setup_s:.1f} s"),
            ("znni demo", f"{run.znni_voxels_per_s:,.0f} voxels/s")]
    rows += [(f"{label} (median of {repeats})", f"{v:,.0f} voxels/s")
             for label, v in run.peer_voxels_per_s.items()]
    rows += [(f"fastest peer ({run.peer_best})",
              f"{run.peer_voxels_per_s[run.peer_best]:,.0f} voxels/s"),
             ("znni / fastest peer", f"{run.ratio:.2f}x")]
    width = max(len(label) for label, _ in rows)
    head = f"{run.net}, output {run.size}³, {run.threads} threads"
    return "\n".join([head] + [f"  {label:<{width}}  {value:>18}" for label, value in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="n337")
    parser.add_argument("--size", type=int, default=64, help="dense output edge length")
    parser.add_argument("--threads", type=int, default=None,
                        help="passed to the demo; the peers' threads (default: usable cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per peer")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    wall, znni_rate, setup = run_demo(args.net, args.size, args.threads)
    threads = args.threads or znni.config.default_threads()
    rates = in_fresh_process(args.net, args.size, threads, args.repeats)
    run = FirstRun(args.net, args.size, threads, wall, setup, znni_rate, rates)
    print(report(run, args.repeats))
    if args.json is not None:
        with open(args.json, "w") as f:
            json.dump(run.to_dict(), f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
