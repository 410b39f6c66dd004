"""The GPU section of a plan: the CPU–GPU cut θ, the tail's sub-batch and per-layer GPU ways.

Plain frozen data that round-trips through the plan's canonical JSON. Layers ``< theta`` run on
the CPU as the plan's ordinary layers say; layers ``≥ theta`` run on the GPU as listed here.
``mode`` "resident": the tail runs ``sub_batch`` items at a time with its tensors on the card,
uploads and downloads overlapping compute (two streams); "host": every tail layer is a GPU +
host RAM sub-layer loop — a batch split where ``chunk_shape`` has all input maps and
``out_maps`` all output maps, else map chunks of that many input and output maps (pools:
``chunk_shape``'s maps). The pipeline's time per patch is the slower of the two halves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import PlanError
from ..primitives.gpu import HOST_RAM, RESIDENT

GPU_MODES = ("resident", "host")


@dataclass(frozen=True)
class GpuLayerPlan:
    index: int
    primitive: str
    chunk_shape: tuple[int, int, int, int, int]  # input of one GPU pass (sub-batch or split)
    out_maps: int                                # output maps per pass (split) or all
    device_bytes: int
    seconds: float


@dataclass(frozen=True)
class GpuPlan:
    theta: int
    sub_batch: int
    mode: str
    device: str
    device_bytes: int       # GPU memory the tail needs
    host_bytes: int         # host RAM: the CPU head, the queued patch and the tail's buffers
    cpu_seconds: float      # the head, per patch
    gpu_seconds: float      # the tail with its transfers, per patch
    layers: tuple[GpuLayerPlan, ...]

    @property
    def seconds(self) -> float:
        """Per patch in the steady state of the double-buffered pipeline."""
        return max(self.cpu_seconds, self.gpu_seconds)

    @classmethod
    def from_dict(cls, data: Any, layer_count: int) -> GpuPlan:
        """Type-checked rebuild of the JSON section (the search's figures are kept as data)."""
        if not isinstance(data, Mapping):
            raise PlanError("plan 'gpu' must be an object", "re-create it with `znni plan`")
        try:
            layers = tuple(GpuLayerPlan(int(e["index"]), str(e["primitive"]),
                                        _shape(e["chunk_shape"]), int(e["out_maps"]),
                                        int(e["device_bytes"]), float(e["seconds"]))
                           for e in data["layers"])
            plan = cls(int(data["theta"]), int(data["sub_batch"]), str(data["mode"]),
                       str(data["device"]), int(data["device_bytes"]), int(data["host_bytes"]),
                       float(data["cpu_seconds"]), float(data["gpu_seconds"]), layers)
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"malformed plan 'gpu' section: {exc!r}",
                            "re-create it with `znni plan --device GPU.json`") from None
        known = set(RESIDENT) | set(HOST_RAM)
        if (not 0 <= plan.theta < layer_count or plan.sub_batch < 1 or plan.mode not in GPU_MODES
                or [lp.index for lp in layers] != list(range(plan.theta, layer_count))
                or any(lp.primitive not in known or lp.out_maps < 1 for lp in layers)):
            raise PlanError("plan 'gpu' section is inconsistent with the network (theta, "
                            "mode, layer indices, primitive names or out_maps)",
                            f"GPU layers are theta..{layer_count - 1}; primitives "
                            f"{sorted(known)}")
        return plan


def _shape(value: Any) -> tuple[int, int, int, int, int]:
    shape = tuple(int(v) for v in value)
    if len(shape) != 5 or min(shape) < 1:
        raise ValueError(f"chunk_shape must be 5 positive integers, got {value!r}")
    return shape


def format_gpu(gpu: GpuPlan) -> list[str]:
    """The GPU section as report lines (``znni plan`` without ``--json``)."""
    gib = 2 ** 30
    lines = [f"CPU-GPU pipeline on {gpu.device}: layers 0..{gpu.theta - 1} on the CPU "
             f"({gpu.cpu_seconds:.3f} s), {gpu.theta}.. on the GPU ({gpu.gpu_seconds:.3f} s, "
             f"{gpu.mode}, sub-batch {gpu.sub_batch})" if gpu.theta else
             f"GPU only on {gpu.device} ({gpu.gpu_seconds:.3f} s, {gpu.mode}, sub-batch "
             f"{gpu.sub_batch})",
             f"GPU memory {gpu.device_bytes / gib:.2f} GiB, "
             f"host RAM {gpu.host_bytes / gib:.2f} GiB",
             f"{'layer':>5} {'GPU primitive':<16} {'pass input (S,C,Z,Y,X)':<24} "
             f"{'out maps':>8} {'GPU mem':>10} {'seconds':>9}"]
    for lp in gpu.layers:
        lines.append(f"{lp.index:>5} {lp.primitive:<16} {'x'.join(map(str, lp.chunk_shape)):<24} "
                     f"{lp.out_maps:>8} {lp.device_bytes / gib:>6.2f} GiB {lp.seconds:>9.3f}")
    return lines
