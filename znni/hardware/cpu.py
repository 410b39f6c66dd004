"""A machine as the cost model sees it: the handful of rates it needs, as plain JSON.

A description is measured on this machine (:func:`znni.planner.device.this_machine`, cached per
CPU model, thread count and znni version) or written by hand for a machine you are not on
(``znni plan NET --device other.json``), so plans can be made anywhere. This module sits below
primitives and planner: both read a :class:`Device`, neither is imported here.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import PlanError
from .gpu import GpuSpec

DEVICE_VERSION = 1


@dataclass(frozen=True)
class Device:
    """Rates in FLOP/s and bytes/s, all for ``threads`` threads.

    - ``peak_flops``: an FMA loop on registers (the ceiling; for reporting efficiency).
    - ``direct_flops``: the generated direct conv on a cache-friendly layer, counting every
      computed lane (the model scales it by the useful-lane fraction of each shape).
    - ``mac_flops``: the spectral MAC on spectra resident in cache.
    - ``fft_flops``: FFTW batched 3D r2c transforms, at 2.5·N·log2 N FLOPs per transform.
    - ``bandwidth``: a large array copy (read + write bytes per second).
    - ``fresh_bandwidth``: bytes per second written to freshly allocated memory (the first
      touch of a page faults and the OS zeroes it: every layer's output and scratch is fresh,
      and on some VMs that is 3–10× slower than writing mapped memory). Optional in a
      hand-written description: a quarter of ``bandwidth``.
    - ``refill_bandwidth``: the same for memory freed a moment ago (an in-place layer's pass
      buffers, a calibration probe's repeats). On bare metal it equals ``fresh_bandwidth``;
      on a VM whose host takes back free pages within seconds it is up to 10× faster, and the
      big tensors of a run (freed seconds before the next is made) pay ``fresh_bandwidth``.
      Optional: ``fresh_bandwidth``.
    - ``corrections``: per primitive, measured ÷ modelled seconds of the real kernels on the
      calibration's probe layers (what the model's rates do not capture: FFTW's speed on
      these sizes, conversions, Python between stages), as ``(image voxels, factor)`` points:
      between two points the factor is interpolated in log image size, beyond them the
      nearest is used; 1 where absent.
    - ``gpu``: for ``kind`` "gpu", the card (the rates above are then its host's).
    """

    name: str
    threads: int
    memory_bytes: int
    peak_flops: float
    direct_flops: float
    mac_flops: float
    fft_flops: float
    bandwidth: float
    fresh_bandwidth: float = 0.0  # 0: not given (see fresh_rate)
    refill_bandwidth: float = 0.0  # 0: not given (see refill_rate)
    corrections: tuple[tuple[str, tuple[tuple[int, float], ...]], ...] = ()
    kind: str = "cpu"
    gpu: GpuSpec | None = None

    @property
    def fresh_rate(self) -> float:
        """``fresh_bandwidth``, or a quarter of ``bandwidth`` where a description lacks it."""
        return self.fresh_bandwidth or self.bandwidth / 4

    @property
    def refill_rate(self) -> float:
        """``refill_bandwidth``, or :attr:`fresh_rate` where a description lacks it."""
        return self.refill_bandwidth or self.fresh_rate

    def refilling(self) -> Device:
        """This device as a layer sees it whose fresh buffers were freed a moment ago."""
        return replace(self, fresh_bandwidth=self.refill_rate)

    def passing(self) -> Device:
        """This device as an in-place layer's passes see it: each pass's buffers reuse pages
        the pass before freed, some of which the host has taken back meanwhile. Their rate
        is the geometric mean of the fresh and refill rates: on the in-place FFT, Winograd
        and MPF layers of n337, n537, n726 and n926 at 2 and 4 GiB it put every plan's
        measured throughput within 0.85–1.27× of its prediction, where the refill rate gave
        0.68–1.05× and the harmonic mean 1.01–1.54× (docs/design.md §7.4)."""
        return replace(self, fresh_bandwidth=(self.fresh_rate * self.refill_rate) ** 0.5)

    def correction(self, primitive: str, image_voxels: int) -> float:
        """The calibrated factor for ``primitive`` on images of ``image_voxels`` voxels."""
        points = dict(self.corrections).get(primitive)
        if not points:
            return 1.0
        if image_voxels <= points[0][0]:
            return points[0][1]
        for (v0, c0), (v1, c1) in itertools.pairwise(points):
            if image_voxels <= v1:
                t = math.log(image_voxels / v0) / math.log(v1 / v0)
                return math.exp((1 - t) * math.log(c0) + t * math.log(c1))
        return points[-1][1]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.gpu is None:
            del data["gpu"]
        for optional in ("fresh_bandwidth", "refill_bandwidth"):
            if not data[optional]:
                del data[optional]
        data["corrections"] = {name: [list(p) for p in points]
                               for name, points in self.corrections}
        return {"version": DEVICE_VERSION, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "device description") -> Device:
        if not isinstance(data, Mapping) or data.get("version") != DEVICE_VERSION:
            raise PlanError(f"{source}: not a znni device description (version "
                            f"{DEVICE_VERSION} expected)",
                            "start from a bundled example (znni/data/devices) or a cached one "
                            "($ZNNI_CACHE_DIR/devices)")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in ("gpu", "corrections"):
                continue  # parsed below
            if f.name not in data:
                if f.name in ("kind", "fresh_bandwidth", "refill_bandwidth"):
                    continue
                raise PlanError(f"{source}: missing {f.name!r}", "add it (see docs/design.md §7)")
            value = data[f.name]
            if f.name in ("name", "kind"):
                if not isinstance(value, str):
                    raise PlanError(f"{source}: {f.name!r} must be a string", "fix the file")
            elif (isinstance(value, bool) or not isinstance(value, (int, float))
                  or not math.isfinite(value) or value <= 0):
                raise PlanError(f"{source}: {f.name!r} must be a positive number, got {value!r}",
                                "fix the file")
            values[f.name] = value
        if values.get("kind", "cpu") not in ("cpu", "gpu"):
            raise PlanError(f"{source}: device kind {values['kind']!r} is not supported",
                            "use kind 'cpu' or 'gpu'")
        if values.get("kind") == "gpu":
            values["gpu"] = GpuSpec.from_dict(data.get("gpu"), source)
        values["threads"] = int(values["threads"])
        values["memory_bytes"] = int(values["memory_bytes"])
        values["corrections"] = _corrections(data.get("corrections", {}), source)
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Device:
        """From a JSON file, or a bundled description by name (see :func:`bundled_devices`)."""
        p = Path(path)
        if not p.exists() and str(path) in bundled_devices():
            p = bundled_devices()[str(path)]
        try:
            data = json.loads(p.read_text())
        except OSError as exc:
            raise PlanError(f"cannot read device description {str(p)!r}: {exc.strerror}",
                            "check the path") from None
        except json.JSONDecodeError as exc:
            raise PlanError(f"device description {str(p)!r} is not valid JSON: {exc.msg} at line "
                            f"{exc.lineno}", "fix the file") from None
        return cls.from_dict(data, str(p))


def _positive(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and value > 0)


def _corrections(data: Any, source: str) -> tuple[tuple[str, tuple[tuple[int, float], ...]],
                                                     ...]:
    if not isinstance(data, Mapping):
        raise PlanError(f"{source}: 'corrections' must be an object", "fix the file")
    out = []
    for name, points in sorted(data.items()):
        if not isinstance(name, str):
            raise PlanError(f"{source}: correction names must be strings", "fix the file")
        if (not isinstance(points, list) or not points
                or any(not isinstance(p, list) or len(p) != 2 or not all(map(_positive, p))
                       for p in points)):
            raise PlanError(f"{source}: correction {name!r} must be a list of [image voxels, "
                            f"positive factor] points, got {points!r}", "fix the file")
        ordered = sorted((int(v), float(c)) for v, c in points)
        if len({v for v, _ in ordered}) != len(ordered):
            raise PlanError(f"{source}: correction {name!r} repeats an image size",
                            "give each size once")
        out.append((name, tuple(ordered)))
    return tuple(out)


def bundled_devices() -> dict[str, Path]:
    """Example descriptions shipped with znni, by name."""
    folder = Path(__file__).resolve().parent.parent / "data" / "devices"
    return {p.stem: p for p in sorted(folder.glob("*.json"))}


@cache
def cpu_model() -> str:
    """The CPU's model name (tuning records and device caches are per model)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
