"""``znni bench``: znni's planned dense throughput against its peers', same machine, same run.

All run the same network and weights on the same synthetic EM-like volume. Runs alternate —
znni, then each peer configuration, repeated — so machine noise hits all alike; medians are
reported. Each peer (:data:`znni.peers.PEERS`: PyTorch's dense forms and layouts, ONNX Runtime)
runs each requested output patch size; its peak memory is measured, and the fastest peer
configuration within the budget is the baseline. Throughput is dense output voxels per second of
one patch (batch).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import psutil

from .peers import Peer
from .planner.plan import Plan
from .runtime.executor import CompiledPlan
from .spec import Network, Vec3
from .synthetic import em_like_volume

log = logging.getLogger("znni")


@dataclass(frozen=True)
class Measurement:
    label: str
    output_patch: Vec3
    voxels_per_second: float   # median over repetitions
    seconds: tuple[float, ...]
    peak_bytes: int            # peak RSS growth while it ran (see rss_peak)


def _read_hwm() -> int:
    """Linux's exact peak RSS of this process (VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _reset_hwm() -> int | None:
    """Reset VmHWM to the current RSS and return it; None where there is no such counter."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _read_hwm()
    except (OSError, StopIteration, ValueError):
        return None


@contextmanager
def rss_peak() -> Iterator[Callable[[], int]]:
    """Yields a getter of this process's peak RSS growth in bytes within the block: exact
    where Linux keeps a resettable peak (VmHWM), else sampled every 5 ms — a sampler misses
    short peaks (an FFT layer's buffers can live for milliseconds)."""
    base = _reset_hwm()
    if base is not None:
        yield lambda: _read_hwm() - base
        return
    proc = psutil.Process()
    start = proc.memory_info().rss
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], proc.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0] - start
    finally:
        stop.set()
        thread.join()


class _Runner:
    """One configuration: ``run()`` times one dense forward; the peak RSS growth is kept."""

    def __init__(self, label: str, patch: Vec3, voxels: int, fn: Callable[[], object]) -> None:
        self.label, self.patch, self.voxels, self.fn = label, patch, voxels, fn
        self.times: list[float] = []
        self.peak = 0

    def run(self) -> None:
        with rss_peak() as peak:
            start = time.perf_counter()
            self.fn()
            self.times.append(time.perf_counter() - start)
        self.peak = max(self.peak, peak())

    def result(self) -> Measurement:
        median = statistics.median(self.times)
        return Measurement(self.label, self.patch, self.voxels / median, tuple(self.times),
                           self.peak)


def _znni_runner(net: Network, plan: Plan, threads: int, label: str) -> _Runner:
    compiled = CompiledPlan(plan, net, threads)
    x = compiled.new_input()
    volume = em_like_volume(plan.input_patch, seed=0) / np.float32(255)
    x[:] = volume
    return _Runner(label, plan.output_patch, plan.output_voxels, lambda: compiled.run(x))


def _peer_runners(net: Network, peers: list[Peer], sizes: list[int],
                  threads: int) -> list[_Runner]:
    runners = []
    fov = net.fov
    for size in sizes:
        shape = (size + fov[0] - 1, size + fov[1] - 1, size + fov[2] - 1)
        volume = (em_like_volume(shape, seed=0) / np.float32(255))[None]
        for peer in peers:
            runners.append(_Runner(peer.label, (size, size, size), size ** 3,
                                   partial(peer.make(net, threads), volume)))
    return runners


@dataclass(frozen=True)
class BenchResult:
    znni: list[Measurement]      # the planned configuration first, then other patch sizes
    peers: list[Measurement]     # every size and peer
    budget: int

    @property
    def peer_best(self) -> Measurement | None:
        """The fastest peer configuration whose peak stayed within the budget."""
        fitting = [m for m in self.peers if m.peak_bytes <= self.budget]
        return max(fitting, key=lambda m: m.voxels_per_second, default=None)

    @property
    def ratio(self) -> float | None:
        best = self.peer_best
        return None if best is None else self.znni[0].voxels_per_second / best.voxels_per_second


def run_bench(net: Network, plans: list[Plan], threads: int, budget: int, peers: list[Peer],
              peer_sizes: list[int], repeats: int, warmup: int = 1) -> BenchResult:
    """Time ``plans`` (the chosen one first) and ``peers`` at ``peer_sizes``, alternating."""
    znni_runners = [_znni_runner(net, p, threads, "znni" if i == 0 else "znni candidate")
                    for i, p in enumerate(plans)]
    peer_runners = _peer_runners(net, peers, peer_sizes, threads)
    everything = znni_runners + peer_runners
    for runner in everything:  # warm-up: oneDNN/ONNX Runtime kernel choices, page faults
        for _ in range(warmup):
            runner.fn()
    for r in range(repeats):
        for runner in everything:
            runner.run()
            log.info("repeat %d: %s %s: %.2f s", r + 1, runner.label, runner.patch,
                     runner.times[-1])
    return BenchResult([runner.result() for runner in znni_runners],
                       [runner.result() for runner in peer_runners], budget)


def plot(result: BenchResult, path: str, title: str) -> None:
    """Throughput vs output patch edge for znni's candidates and PyTorch (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .errors import ZnniError

        raise ZnniError("--plot needs matplotlib", "pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    series: dict[str, list[Measurement]] = {"znni": result.znni}
    for m in result.peers:
        series.setdefault(m.label, []).append(m)
    for (label, ms), marker in zip(series.items(), "osv^D<>", strict=False):
        pts = sorted((round(np.cbrt(np.prod(m.output_patch))), m.voxels_per_second) for m in ms)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=marker, label=label)
    ax.set_xlabel("output patch edge (voxels, cube root of volume)")
    ax.set_ylabel("dense output voxels / s")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
