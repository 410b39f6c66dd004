"""Measure this machine's :class:`~znni.hardware.Device` rates with small probes.

Each probe runs znni's own kernels (same toolchain, same flags) on a shape chosen to isolate one
rate: an FMA loop (peak), a cache-friendly direct conv, an in-cache spectral MAC, batched FFTW
transforms, and a copy larger than the last-level cache. The fastest of a few runs each (see
:func:`fastest_seconds`); ~20 s in all once the probe kernels are compiled (they are cached
like every kernel).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import psutil

from ..codegen.loader import default_toolchain, load_kernel
from ..fft.pruned import SpectralShape, forward_unpruned
from ..hardware import Device, cpu_model
from ..primitives import PRIMITIVES, Step
from ..primitives.direct import useful_fraction
from ..primitives.fft import FftGeometry, mac_source
from ..spec import Conv, Pool

log = logging.getLogger("znni")

#: Passes through all probes (:func:`fastest_in_rounds`).
ROUNDS = 3

_PEAK_SOURCE = """
#include "znni_abi.h"
typedef float vf __attribute__((vector_size(VW * sizeof(float))));
extern "C" int znni_abi_version(void) { return ZNNI_ABI_VERSION; }
extern "C" long znni_input_slack(void) { return 0; }
// output[0] += a checksum so the loop cannot be optimised away; batch = iterations / 1000.
extern "C" int znni_layer_forward(const float *, float *output, const float *, const float *,
                                  int batch, int threads) {
#pragma omp parallel num_threads(threads)
  {
    vf acc[24];
    for (int i = 0; i < 24; ++i) acc[i] = vf{} + (float)i;
    const vf a = vf{} + 0.999999f, b = vf{} + 1e-7f;
    for (long it = 0; it < (long)batch * 1000; ++it)
#pragma GCC unroll 24
      for (int i = 0; i < 24; ++i) acc[i] = acc[i] * a + b;
    float sum = 0;
    for (int i = 0; i < 24; ++i) for (int l = 0; l < VW; ++l) sum += acc[i][l];
#pragma omp atomic
    output[0] += sum;
  }
  return 0;
}
"""


def sample_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1,
                   budget: float = 0.0, most: int = 15) -> list[float]:
    """Wall times of ``fn`` over ``repeats`` runs after ``warmup`` untimed ones, and more runs
    (up to ``most``) while the timed ones took less than ``budget`` seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < budget and len(times) < most):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def fastest_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1,
                    budget: float = 0.0, most: int = 15) -> float:
    """The fastest of :func:`sample_seconds`: what the kernel costs, not the machine's noise
    (see :func:`fastest_in_rounds`)."""
    return min(sample_seconds(fn, repeats, warmup, budget, most))


@dataclass(frozen=True)
class Timed:
    """One thing calibration times: each call of ``run`` does ``work`` (FLOPs, bytes, or 1)."""

    run: Callable[[], object]
    work: float = 1.0
    warmup: int = 1


def fastest_in_rounds(timed: Sequence[Timed], rounds: int = ROUNDS,
                      span: float = 0.12) -> list[float]:
    """Fastest seconds of each of ``timed`` over ``rounds`` passes through all of them, each
    pass running each once untimed (its buffers, freed seconds ago, may have gone cold)
    and then timing it at least once and for ``span`` seconds (at most 15 runs).

    A shared VM loses a core for 0.1–0.2 s at a time (the host's neighbours; the guest
    reporting freed pages ~2 s after a large free) and sometimes runs 20–25 % slow for
    seconds; some fresh pages map slowly. All of it only ever adds time. Medians of 3–5
    back-to-back runs per probe still caught it: calibrations in one process gave fft_flops
    9–18 GFLOP/s and FFT corrections ±25 %. The fastest run is what the kernel costs (and
    the model's probes assume refilled pages, the fast case); passes spread each probe's
    runs over the whole calibration, so a slow spell spoils one pass, not one probe
    (docs/design.md §7.5)."""
    best = [math.inf] * len(timed)
    for round_ in range(rounds):
        for i, t in enumerate(timed):
            runs = sample_seconds(t.run, 1, t.warmup if round_ == 0 else 1, span)
            best[i] = min(best[i], *runs)
    return best


def peak_probe(threads: int, kilo_iterations: int = 20000) -> Timed:
    """``threads`` threads each issuing 24 independent FMA chains."""
    toolchain = default_toolchain()
    vw = toolchain.vector_width
    module = load_kernel(f"#define VW {vw}\n{_PEAK_SOURCE}", "peak FLOP/s probe", toolchain)
    ffi = module.ffi
    out = ffi.new("float[1]")
    return Timed(lambda: module.lib.znni_layer_forward(ffi.NULL, out, ffi.NULL, ffi.NULL,
                                                       kilo_iterations, threads),
                 2 * 24 * vw * kilo_iterations * 1000 * threads)


def peak_flops(threads: int, repeats: int = 5) -> float:
    """FLOP/s of the FMA loop: the ceiling kernels are reported against."""
    probe = peak_probe(threads)
    return probe.work / fastest_seconds(probe.run, repeats)


def direct_probe(threads: int) -> Timed:
    """The direct kernel on 32→32 maps, 3³, 34³; its work is every computed lane's FLOPs
    (useful FLOPs ÷ useful-lane fraction)."""
    layer = Conv(32, 32, (3, 3, 3), "relu")
    shape = (1, 32, 34, 34, 34)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((layer.out_channels, layer.in_channels, *layer.kernel),
                            dtype=np.float32)
    step = PRIMITIVES["direct"].prepare(0, layer, shape, (w, np.zeros(layer.out_channels,
                                                                      np.float32)), threads)
    x = rng.random(shape, dtype=np.float32)
    flops = 2 * 32 * 32 * 27 * 32 ** 3
    return Timed(partial(step.run, x, 0), flops / useful_fraction(layer, shape), warmup=2)


def mac_probe(threads: int) -> Timed:
    """The spectral MAC with its spectra in cache (8 FLOPs per complex multiply-add)."""
    layer = Conv(64, 64, (3, 3, 3), "relu")
    shape = (8, 64, 8, 8, 8)
    g = FftGeometry.of(layer, shape, True, False, default_toolchain().vector_width)
    module = load_kernel(mac_source(layer, g), "MAC probe")
    x, out = g.planar(8 * 64), g.planar(8 * g.out_chunk)
    k = g.planar(g.out_chunk * g.in_block)
    for a in (x, out, k):
        a.fill(0.5)
    calls = 100

    def run_calls() -> None:
        for _ in range(calls):
            module.forward(x, out, threads, k, batch=8)

    return Timed(run_calls, calls * 8 * 8 * g.out_chunk * g.in_block * g.nfp)


def fft_probe(threads: int) -> Timed:
    """The forward 3D r2c of a batch larger than the last-level cache, as in a layer, through
    the configured FFT passes (2.5·N·log2 N FLOPs per transform)."""
    shape = SpectralShape((64, 64, 64))
    batch = 64
    x = np.random.default_rng(0).random((batch, 64, 64, 64), dtype=np.float32)
    out = shape.buffer(batch)
    n = 64 ** 3
    return Timed(partial(forward_unpruned, x, shape, threads, out=out),
                 batch * 2.5 * n * math.log2(n))


def bandwidth_probe() -> Timed:
    """Read + write bytes of a copy twice the size of a large last-level cache."""
    a = np.ones(1 << 26, np.float32)  # 256 MiB
    b = np.empty_like(a)
    return Timed(partial(np.copyto, b, a), 2 * a.nbytes)


def fresh_bandwidths() -> tuple[float, float]:
    """Bytes/s written to memory just allocated (page faults, zeroing by the OS), as every
    layer's output and scratch tensors are (buffers too large for malloc to recycle): in a
    run, and in calibration's probes.

    On bare metal every fresh page costs the same. In a VM whose host reclaims the guest's
    free pages within seconds (free page reporting, DAMON) a page the guest freed long ago is
    up to 15× slower to touch than one just freed (0.5 against 8 GB/s here, with transparent
    huge pages): a run's big tensors, each made seconds after the last was freed, land on
    both kinds — n337's 3.7 GB first layer filled at ~1 GB/s in every repeat — while a probe
    repeated within milliseconds refills warm pages. So: three 512 MiB buffers filled while
    all are held (the later ones outrun any pool of just-freed pages: the slowest is the
    cold rate), then, freed, refilled twice (the fastest is the warm rate). The run's rate is
    their harmonic mean (it matched that layer); the probes' is the warm one, so that
    corrections fit the kernels, not the VM's pages."""
    size, held, cold = 1 << 29, [], []
    for _ in range(3):
        start = time.perf_counter()
        held.append(np.empty(size, np.uint8))
        held[-1].fill(1)
        cold.append(time.perf_counter() - start)
    del held
    warm = []
    for _ in range(2):
        start = time.perf_counter()
        np.empty(size, np.uint8).fill(1)
        warm.append(time.perf_counter() - start)
    return 2 * size / (max(cold) + min(warm)), size / min(warm)


Probe = tuple[Conv | Pool, tuple[int, int, int, int, int]]
#: Probe layers per primitive, (layer, input shape), whose real kernels fit the model's
#: corrections. Small enough that the whole calibration stays well under 30 s from an empty
#: cache, but out of cache and shaped like the layers plans run: FFT layers as MPF makes them
#: (many samples of small images late, few of large images early; 64 maps), so that the
#: correction follows the image size — small transforms pay per-transform overheads the
#: FLOP model misses. Direct, Winograd and pools: one factor each.
_FFT_LAYER = Conv(64, 64, (5, 5, 5), "relu")
_SMALL, _MID, _LARGE = (32, 64, 18, 18, 18), (2, 64, 44, 44, 44), (1, 64, 60, 60, 60)
_MANY = (8, 64, 28, 28, 28)  # the data-parallel schedules' cost grows with samples: not 1–2
_INNER_DIRECT: Probe = (Conv(32, 32, (3, 3, 3), "relu"), (8, 32, 22, 22, 22))
_WINOGRAD_PROBES = ((Conv(64, 64, (3, 3, 3), "relu"), (16, 64, 18, 18, 18)),
                    (Conv(64, 64, (3, 3, 3), "relu"), (1, 64, 48, 48, 48)))
PROBES: dict[str, tuple[Probe, ...]] = {
    "direct": ((Conv(1, 24, (3, 3, 3), "relu"), (1, 1, 96, 96, 96)), _INNER_DIRECT),
    # what the CPU makes of vdpbf16ps (2× FMA on Zen 4, less on some Intel cores, emulated
    # ~0.5–1×): only inner layers run bf16, so only the inner probe
    "direct-bf16": (_INNER_DIRECT,),
    # the task-parallel schedule runs late layers (small images) and, with room, large early
    # ones (extrapolating a 44³ correction to 107³ was off by 1.8×); data-parallel runs
    # the large early ones that tight budgets leave little room for (lean: shared, below)
    "fft-pruned": ((_FFT_LAYER, _SMALL), (_FFT_LAYER, _MID), (_FFT_LAYER, _LARGE)),
    "fft-pruned-data": ((_FFT_LAYER, _MANY), (_FFT_LAYER, _LARGE)),
    # 64 maps: the transformed patches of a task ((m+2)³ positions × maps) fill L2 as in
    # real layers (with 32 maps they fit and F(2³) ran ~20 % faster than at 80)
    "winograd": _WINOGRAD_PROBES,
    "winograd-f4": _WINOGRAD_PROBES,
    "mpf": ((Pool(16, (2, 2, 2)), (4, 16, 63, 63, 63)),),
    "maxfilter": ((Pool(16, (2, 2, 2), max_filter=True), (4, 16, 63, 63, 63)),),
}
#: Primitives fitted per image size (the others get one factor for every size).
SIZED = ("fft-pruned", "fft-pruned-data")
#: Primitives that take another's correction (same code, other transforms or schedule; lean
#: measured within 10 % of data-parallel on the same probes, and is only a memory fallback).
SHARED_CORRECTIONS = {"fft": "fft-pruned", "fft-data": "fft-pruned-data",
                      "fft-pruned-lean": "fft-pruned-data"}
Corrections = tuple[tuple[str, tuple[tuple[int, float], ...]], ...]


ProbeRun = tuple[str, Conv | Pool, tuple[int, int, int, int, int], Timed]


def probe_runs(threads: int) -> list[ProbeRun]:
    """Every primitive's probe layers (:data:`PROBES`), prepared for ``threads`` threads with
    their inputs: all kernels compile first, in parallel."""
    rng = np.random.default_rng(0)
    jobs = [(name, layer, shape, None if not isinstance(layer, Conv) else (
                rng.standard_normal((layer.out_channels, layer.in_channels, *layer.kernel),
                                    dtype=np.float32) * 0.05,
                np.zeros(layer.out_channels, np.float32)))  # drawn here: rng is not thread-safe
            for name, probes in PROBES.items() for layer, shape in probes]

    def prepare(job: tuple[str, Conv | Pool, tuple[int, int, int, int, int],
                           tuple[np.ndarray, np.ndarray] | None]) -> Step:
        name, layer, shape, weights = job
        return PRIMITIVES[name].prepare(0, layer, shape, weights, threads)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        steps = list(pool.map(prepare, jobs))  # g++ runs outside the GIL
    return [(name, layer, shape, Timed(partial(step.run, rng.random(shape, dtype=np.float32), 0)))
            for (name, layer, shape, _), step in zip(jobs, steps, strict=True)]


def corrections(device: Device, probes: Sequence[ProbeRun],
                seconds: Sequence[float]) -> Corrections:
    """Per primitive, measured ÷ modelled seconds on its probes: per probe image size for
    SIZED primitives, else their geometric mean. ``device`` carries the probes' fresh-memory
    rate (:func:`fresh_bandwidths`)."""
    points: dict[str, list[tuple[int, float]]] = {}
    for (name, layer, shape, _), took in zip(probes, seconds, strict=True):
        model = PRIMITIVES[name].estimate(layer, shape, device)
        points.setdefault(name, []).append((math.prod(shape[2:]), took / model))
    found = {}
    for name, measured in points.items():
        kept = measured
        if name not in SIZED:
            factor = math.exp(statistics.fmean(math.log(r) for _, r in measured))
            kept = [(measured[0][0], factor)]
        found[name] = tuple(sorted(kept))
    for name, source in SHARED_CORRECTIONS.items():
        found[name] = found[source]
    return tuple(sorted(found.items()))


def calibrate(threads: int) -> Device:
    """Measure every rate of this machine for ``threads`` threads, then fit the model's
    per-primitive corrections on the real kernels: all probes timed together, in rounds
    (:func:`fastest_in_rounds`)."""
    start = time.perf_counter()
    fresh, warm = fresh_bandwidths()  # first: before other probes leave freed pages behind
    rate_probes = (peak_probe(threads), direct_probe(threads), mac_probe(threads),
                   fft_probe(threads), bandwidth_probe())
    probes = probe_runs(threads)
    seconds = fastest_in_rounds([*rate_probes, *(timed for *_, timed in probes)])
    peak, direct, mac, fft, copy = (p.work / s for p, s in zip(
        rate_probes, seconds[:len(rate_probes)], strict=True))
    rates = Device(
        name=f"{cpu_model()} ({threads} threads)", threads=threads,
        memory_bytes=int(psutil.virtual_memory().total), peak_flops=peak, direct_flops=direct,
        mac_flops=mac, fft_flops=fft, bandwidth=copy, fresh_bandwidth=fresh,
        refill_bandwidth=warm)
    device = replace(rates, corrections=corrections(rates.refilling(), probes,
                                                    seconds[len(rate_probes):]))
    log.info("calibrated %s in %.1f s: fresh memory %.2f GB/s (refilled %.2f); %s",
             device.name, time.perf_counter() - start, fresh / 1e9, warm / 1e9,
             "; ".join(f"{name} " + " ".join(f"×{c:.2f}" for _, c in points)
                       for name, points in device.corrections))
    return device
