"""The GPU half of a ``kind: "gpu"`` device description (docs/design.md §6): what the GPU
planner needs.

A GPU description is a CPU description of the host (its rates run the CPU head of a CPU–GPU
pipeline; its ``memory_bytes`` is host RAM) plus a ``gpu`` object with the card's memory and
rates. Rates are sustained figures for the generated kernels, not datasheet peaks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import PlanError


@dataclass(frozen=True)
class GpuSpec:
    """- ``memory_bytes``: device memory the plan may use.
    - ``direct_flops``: the direct conv kernel's FLOP/s (every computed lane counted).
    - ``mac_flops``: the spectral MAC's FLOP/s; ``fft_flops``: cuFFT's (5·n·log2 n per line).
    - ``bandwidth``: device memory read + write bytes/s.
    - ``link_bandwidth``: host↔device bytes/s per direction (pinned; both directions at once).
    - ``launch_seconds``: fixed cost per kernel launch or transfer."""

    name: str
    memory_bytes: int
    direct_flops: float
    mac_flops: float
    fft_flops: float
    bandwidth: float
    link_bandwidth: float
    launch_seconds: float

    @classmethod
    def from_dict(cls, data: Any, source: str) -> GpuSpec:
        if not isinstance(data, Mapping):
            raise PlanError(f"{source}: 'gpu' must be an object",
                            "see znni/data/devices/h100.json")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                raise PlanError(f"{source}: gpu is missing {f.name!r}",
                                "see znni/data/devices/h100.json")
            value = data[f.name]
            if f.name == "name":
                if not isinstance(value, str):
                    raise PlanError(f"{source}: gpu 'name' must be a string", "fix the file")
            elif (isinstance(value, bool) or not isinstance(value, (int, float))
                  or not math.isfinite(value) or value <= 0):
                raise PlanError(f"{source}: gpu {f.name!r} must be a positive number, got "
                                f"{value!r}", "fix the file")
            values[f.name] = value
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise PlanError(f"{source}: unknown gpu field(s) {sorted(unknown)}", "remove them")
        values["memory_bytes"] = int(values["memory_bytes"])
        return cls(**values)
