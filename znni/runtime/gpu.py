"""Running the GPU tail of a plan: only where a CUDA device is present (or emulated).

A plan with a ``gpu`` section runs its layers ≥ θ through the generated CUDA modules. Without a
CUDA device that is a clear :class:`GpuUnavailableError`, never a silent CPU fallback;
``ZNNI_GPU_EMULATE=1`` runs the same kernels as C++ (cuda_emulation.h), which is how the tests
check GPU plans end to end. Each tail layer runs as GPU + host RAM batch splits of its planned
chunk (``znni_gpu_host_forward``: two streams, pinned host memory, uploads and downloads
overlapping compute); map-chunk splits run as batch splits of one item.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from pathlib import Path

import numpy as np

from ..codegen.loader import KernelModule
from ..errors import ZnniError
from ..planner.gpu_plan import GpuLayerPlan
from ..planner.plan import Plan
from ..primitives.base import padded_empty
from ..primitives.direct import pack_weights
from ..primitives.gpu import output_shape
from ..primitives.gpu_fft import gpu_fft_source
from ..primitives.gpu_kernels import (direct_block, emulating, gpu_direct_source,
                                      gpu_pool_source, load_gpu_kernel)
from ..spec import Conv, Layer, Pool


class GpuUnavailableError(ZnniError):
    """A GPU plan was asked to run where no CUDA device is usable."""


def _cudart_candidates() -> list[str]:
    names = [ctypes.util.find_library("cudart") or "libcudart.so"]
    for entry in sys.path:
        for sub in ("cu13", "cu12", "cuda_runtime"):
            names += [str(p) for p in sorted((Path(entry) / "nvidia" / sub / "lib")
                                             .glob("libcudart.so*"))]
    return names


@cache
def cuda_device_count() -> int:
    """CUDA devices the runtime library reports (0 without a driver, library or device)."""
    for name in _cudart_candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cudaGetDeviceCount(ctypes.byref(count)) == 0:
            return count.value
        return 0
    return 0


def require_gpu() -> None:
    """Return if GPU kernels can run here (a CUDA device, or emulation), else explain."""
    if not emulating() and cuda_device_count() == 0:
        raise GpuUnavailableError(
            "this plan runs layers on a GPU, but no CUDA device is available here",
            "run it on a machine with an NVIDIA GPU and driver, or re-plan for this machine "
            "without --device (ZNNI_GPU_EMULATE=1 runs the GPU kernels as slow C++, for tests)")


class GpuStep:
    """One tail layer: the whole batch in passes of the planned chunk's samples."""

    input_slack = 0

    def __init__(self, module: KernelModule, layer: Layer, lp: GpuLayerPlan,
                 weights: tuple[np.ndarray, np.ndarray] | None) -> None:
        self.module, self.layer, self.chunk = module, layer, lp.chunk_shape[0]
        self.weights: tuple[np.ndarray, np.ndarray] | tuple[None, None] = (None, None)
        if weights is not None and lp.primitive.endswith("direct"):
            self.weights = pack_weights(*weights, direct_block(layer))  # type: ignore[arg-type]
        elif weights is not None:
            self.weights = (np.ascontiguousarray(weights[0]), np.ascontiguousarray(weights[1]))

    def run(self, x: np.ndarray, out_slack: int) -> np.ndarray:
        out = padded_empty(output_shape(self.layer, x.shape), out_slack)  # type: ignore[arg-type]
        self.module.gpu_host_forward(x, out, self.chunk, *self.weights)
        return out


def _source(primitive: str, layer: Layer, shape: tuple[int, int, int, int, int]) -> str:
    if isinstance(layer, Pool):
        return gpu_pool_source(layer, shape)
    assert isinstance(layer, Conv)
    return (gpu_fft_source(layer, shape) if primitive.endswith("fft")
            else gpu_direct_source(layer, shape))


def gpu_steps(plan: Plan, layers: list[Layer],
              weights: dict[int, tuple[np.ndarray, np.ndarray]]) -> list[GpuStep]:
    """Steps for the plan's GPU layers (after :func:`require_gpu`)."""
    assert plan.gpu is not None
    require_gpu()
    steps = []
    for lp in plan.gpu.layers:
        layer = layers[lp.index]
        shape = plan.layers[lp.index].input_shape
        module = load_gpu_kernel(_source(lp.primitive, layer, shape),
                                 f"layer {lp.index} ({lp.primitive})",
                                 with_cufft=lp.primitive.endswith("fft"))
        steps.append(GpuStep(module, layer, lp, weights.get(lp.index)))
    return steps
