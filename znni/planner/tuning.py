"""Tuning records: measured seconds of primitives on layer shapes, kept in the cache dir.

A record is keyed by what determines a timing — the layer's shape-relevant fields, the input
shape, the primitive, the thread count, the CPU model and the znni version — and holds the
median, the raw times and how rigorously it was measured. Every candidate ever timed is kept
(not just winners), so later plans for other budgets reuse them. The file is one JSON object,
rewritten atomically under a lock; a damaged file is set aside and started afresh.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import config
from ..codegen.private_files import locked, read_private, write_private
from ..fft.fftw import plans_measured
from ..hardware import cpu_model
from ..primitives import PRIMITIVES
from ..primitives.base import padded_empty
from ..spec import Conv, Layer, Pool, Shape5
from ..version import __version__

log = logging.getLogger("znni")

#: Rigour of each effort: (untimed warm-up runs, timed repetitions, seconds after which no
#: further repetition starts). A record serves any effort at most as rigorous as the one that
#: made it.
EFFORTS = {"measure": (1, 3, 6.0), "exhaustive": (2, 5, 20.0)}
#: A warm-up run this long ends the warm-up (unless it planned FFTW transforms): repeating it
#: would make tuning take hours. It is never timed: it is a cold run (first touch of multi-GB
#: buffers on this VM cost 5.9-7.2 s against 0.6 s warm on n337's first layer), so the
#: repetitions after it are what count, at least one of them even past the time cap.
LONG_RUN_SECONDS = 2.0
_RANK = {"measure": 1, "exhaustive": 2}


def layer_signature(layer: Layer) -> str:
    """The layer fields a timing depends on (not weights, not the activation)."""
    dilated = "" if layer.dilation == (1, 1, 1) else f" d{'x'.join(map(str, layer.dilation))}"
    if isinstance(layer, Conv):
        return (f"conv k{'x'.join(map(str, layer.kernel))} {layer.in_channels}->"
                f"{layer.out_channels}{dilated}")
    assert isinstance(layer, Pool)
    kind = "filter" if layer.max_filter else "pool"
    return f"{kind} w{'x'.join(map(str, layer.window))}{dilated}"


def record_key(layer: Layer, shape_in: Shape5, primitive: str, threads: int) -> str:
    return json.dumps([layer_signature(layer), list(shape_in), primitive, threads, cpu_model(),
                       __version__])


@dataclass(frozen=True)
class Record:
    seconds: float        # median of ``times``
    times: tuple[float, ...]
    effort: str
    model_seconds: float  # the cost model's estimate for the same case, when measured


class TuningRecords:
    """The on-disk records of this user (``<cache dir>/tuning.json``)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config.cache_dir() / "tuning.json"
        self._records = self._read()

    def _read(self) -> dict[str, Record]:
        try:
            raw = json.loads(read_private(self.path))
            return {key: Record(float(r["seconds"]), tuple(float(t) for t in r["times"]),
                                str(r["effort"]), float(r["model_seconds"]))
                    for key, r in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            aside = self.path.with_name(f"{self.path.name}.damaged")
            log.warning("tuning records %s are damaged; moved to %s", self.path, aside)
            os.replace(self.path, aside)
            return {}

    def get(self, key: str, effort: str) -> Record | None:
        """A record made at least as rigorously as ``effort``, if any."""
        record = self._records.get(key)
        if record is None or _RANK.get(record.effort, 0) < _RANK[effort]:
            return None
        return record

    def count(self, signatures: set[str], threads: int, effort: str) -> int:
        """How many records of this machine time a layer of ``signatures`` on ``threads``
        threads at least as rigorously as ``effort``: what tuning a network has done so far."""
        return sum(1 for key, record in self._records.items()
                   if _RANK.get(record.effort, 0) >= _RANK[effort]
                   and _mine(key, threads, signatures))

    def corrections(self, threads: int) -> dict[str, float]:
        """Per primitive, the median measured/model ratio of this machine's records: applied
        to model estimates of shapes not measured yet."""
        ratios: dict[str, list[float]] = {}
        for key, record in self._records.items():
            if _mine(key, threads):
                primitive = json.loads(key)[2]
                ratios.setdefault(primitive, []).append(record.seconds / record.model_seconds)
        return {p: statistics.median(r) for p, r in ratios.items()}

    def add(self, updates: dict[str, Record]) -> None:
        """Merge ``updates`` into the file (locked read-modify-write, atomic replace)."""
        with locked(self.path.with_name(f".{self.path.name}.lock")):
            self._records = {**self._read(), **updates}
            data = {key: {"seconds": r.seconds, "times": list(r.times), "effort": r.effort,
                          "model_seconds": r.model_seconds}
                    for key, r in self._records.items()}
            write_private(self.path, json.dumps(data, indent=0, sort_keys=True).encode())


def _mine(key: str, threads: int, signatures: set[str] | None = None) -> bool:
    """Whether record ``key`` was timed on this CPU and znni version with ``threads`` threads
    (and, given ``signatures``, on one of those layers)."""
    signature, _, _, rec_threads, cpu, version = json.loads(key)
    return (rec_threads == threads and cpu == cpu_model() and version == __version__
            and (signatures is None or signature in signatures))


def measure(layer: Layer, shape_in: Shape5, primitive: str, threads: int,
            effort: str) -> tuple[float, ...]:
    """Wall times of ``primitive`` on ``layer`` for ``shape_in`` (random weights and input),
    after the effort's warm-up runs (kernels compiled, FFTW plans measured, pages touched);
    long runs are repeated only until the effort's time cap."""
    warmup, repeats, cap = EFFORTS[effort]
    rng = np.random.default_rng(0)
    weights: Any = None
    if isinstance(layer, Conv):
        fan_in = layer.in_channels * int(np.prod(layer.kernel))
        w = rng.standard_normal((layer.out_channels, layer.in_channels, *layer.kernel),
                                dtype=np.float32) / np.float32(np.sqrt(fan_in))
        weights = (w, np.zeros(layer.out_channels, np.float32))
    step = PRIMITIVES[primitive].prepare(0, layer, shape_in, weights, threads)
    x = padded_empty(shape_in, step.input_slack)
    x[...] = rng.random(shape_in, dtype=np.float32)
    times: list[float] = []
    runs = 0
    while len(times) < repeats and (not times or sum(times) < cap):
        planned = plans_measured()
        start = time.perf_counter()
        step.run(x, 0)
        seconds = time.perf_counter() - start
        runs += 1
        if runs > warmup:
            times.append(seconds)
        elif seconds >= LONG_RUN_SECONDS and plans_measured() == planned:
            warmup = runs  # warm enough: the next run is timed
    return tuple(times)
