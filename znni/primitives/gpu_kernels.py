"""Rendering and building the GPU kernels (``*.cu.j2``), for nvcc or for the C++ emulation.

Every GPU template is rendered from the same validated integers as its C++ twin and builds two
ways: :func:`gpu_toolchain` picks nvcc on a machine with a CUDA device, or — with
``ZNNI_GPU_EMULATE=1`` (the tests) — the C++ compiler, which runs the same ``__global__`` bodies
through ``cuda_emulation.h``. The modules export the usual ABI, so the usual loader runs them.
"""

from __future__ import annotations

import os

from ..codegen.cache import Toolchain
from ..codegen.loader import KernelModule, default_toolchain, load_kernel
from ..codegen.nvcc import NvccToolchain
from ..codegen.render import render
from ..spec import Conv, Pool, Shape5
from .direct import conv_context

#: Threads per block of the elementwise kernels (a multiple of the warp size).
THREADS = 256
#: Output channels one direct-conv thread keeps in registers.
_DIRECT_OB = 8
EMULATE_ENV = "ZNNI_GPU_EMULATE"


def emulating() -> bool:
    """True when GPU kernels run as C++ through the emulation header (no GPU needed)."""
    return os.environ.get(EMULATE_ENV, "0").strip() in ("1", "true", "yes")


def gpu_toolchain(with_cufft: bool = False) -> Toolchain:
    """The compiler for GPU modules: g++ when emulating, else nvcc (cuFFT linked if asked)."""
    return default_toolchain() if emulating() else NvccToolchain.from_config(with_cufft)


def direct_block(layer: Conv) -> int:
    """Output channels per thread: all of them up to _DIRECT_OB (fewer idle lanes)."""
    return min(_DIRECT_OB, layer.out_channels)


def gpu_direct_source(layer: Conv, shape_in: Shape5) -> str:
    return render("direct_conv.cu.j2", {**conv_context(layer, shape_in),
                                        "ob": direct_block(layer), "threads": THREADS})


def gpu_pool_source(layer: Pool, shape_in: Shape5) -> str:
    """MPF (``mpf.cu.j2``), or the dilated dense max filter where the plan max-filters this
    pool (``max_filter.cu.j2``): the pool's mode decides, as on the CPU."""
    _, c, nz, ny, nx = shape_in
    (pz, py, px), (dz, dy, dx) = layer.window, layer.dilation
    context = {"channels": c, "nz": nz, "ny": ny, "nx": nx, "pz": pz, "py": py, "px": px,
               "threads": THREADS}
    if not layer.max_filter:
        return render("mpf.cu.j2", context)
    return render("max_filter.cu.j2", {**context, "dz": dz, "dy": dy, "dx": dx})


def load_gpu_kernel(source: str, label: str, with_cufft: bool = False) -> KernelModule:
    return load_kernel(source, f"gpu {label}", gpu_toolchain(with_cufft))
