"""Device descriptions: the handful of rates the cost model needs, as plain JSON.

A description can be measured on this machine (:func:`this_machine`, cached per CPU model,
thread count and znni version) or written by hand for a machine you are not on
(``znni plan NET --device other.json``), so plans can be made anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

from .. import __version__, config
from ..errors import PlanError
from .gpu_device import GpuSpec

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
    kind: str = "cpu"
    gpu: GpuSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.gpu is None:
            del data["gpu"]
        return {"version": DEVICE_VERSION, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "device description") -> Device:
        if not isinstance(data, Mapping) or data.get("version") != DEVICE_VERSION:
            raise PlanError(f"{source}: not a znni device description (version "
                            f"{DEVICE_VERSION} expected)",
                            "start from `znni plan --show-device --json` or the bundled examples")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "gpu":
                continue  # parsed below, for kind "gpu"
            if f.name not in data:
                if f.name == "kind":
                    continue
                raise PlanError(f"{source}: missing {f.name!r}", "add it (see DESIGN §7)")
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


def _cache_path(threads: int) -> Path:
    key = hashlib.sha256(f"{cpu_model()}|{threads}|{__version__}|{config.cxxflags()}".encode())
    return config.cache_dir() / "devices" / f"{key.hexdigest()[:16]}.json"


def this_machine(threads: int | None = None) -> Device:
    """This machine's description: ``ZNNI_DEVICE`` if set, else measured once (a few
    seconds) and then read from the cache."""
    threads = threads or config.default_threads()
    if config.device_file() is not None:
        return Device.load(config.device_file())  # type: ignore[arg-type]
    path = _cache_path(threads)
    try:
        return Device.from_dict(json.loads(path.read_text()), str(path))
    except (OSError, ValueError, PlanError):
        pass
    from .calibrate import calibrate  # compiles probes: only when no cached description

    device = calibrate(threads)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(device.to_json())
    os.replace(tmp, path)
    return device
