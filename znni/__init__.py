"""znni: dense sliding-window 3D ConvNet inference at maximum throughput.

Pipeline: spec (:func:`load`) → plan (:func:`plan` searches one; :func:`make_plan` takes a
given patch) → generated C++ → compiled, cached kernels → :func:`infer` (arrays in memory) or
:func:`infer_volume` (volumes on disk, block by block, resumable).
:mod:`znni.reference` is the slow numpy oracle.

The public names are imported on first use (PEP 562), so ``import znni`` and ``znni --help``
do not pay for numpy, the planner and the kernels' toolchain.
"""

import importlib as _importlib
import os as _os
from typing import Any as _Any

from .version import __version__

# Kernels' OpenMP threads must not spin between calls: on 2 cores libgomp's default busy-wait
# after each parallel region starved any other thread that needed the core (FFTW's own threads,
# when FFT passes still used them: 2–5× slower, bench/fft_pruned.py; Dask workers and PyTorch
# beside znni today). Every parallel region is large now (a layer, or a whole FFT pass), so
# waking sleeping threads costs < 1 % of a layer. Must be set before libgomp loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import ZnniError
from .runtime.allocator import keep_freed_memory

# Eager, not lazy: every kernel module is under this package, so this runs before any kernel
# allocates, however znni is entered (and it costs only ctypes and znni.config).
keep_freed_memory()

#: Public name → module that defines it, imported by :func:`__getattr__` on first access.
_LAZY = {
    "Device": ".planner",
    "Plan": ".planner",
    "make_plan": ".planner",
    "plan": ".planner",
    "infer": ".runtime.infer",
    "infer_volume": ".runtime.job",
    "Network": ".spec",
    "load": ".spec",
    "bundled_nets": ".bundled",
}

__all__ = [
           "Device",
           "Network",
           "Plan",
           "ZnniError",
           "__version__",
           "bundled_nets",
           "infer",
           "infer_volume",
           "load",
           "make_plan",
           "plan",
]


def __getattr__(name: str) -> _Any:
    """Import a public name's module on first access and keep the name here for the next."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
