"""znni: dense sliding-window 3D ConvNet inference at maximum throughput.

Pipeline: spec (:func:`load`) → plan (:func:`plan` searches one; :func:`make_plan` takes a
given patch) → generated C++ → compiled, cached kernels → :func:`infer` (arrays in memory) or
:func:`infer_volume` (volumes on disk, block by block, resumable).
:mod:`znni.reference` is the slow numpy oracle.
"""

__version__ = "0.1.0"

import os as _os

# Kernels' OpenMP threads must not spin between calls: on 2 cores libgomp's default busy-wait
# after each parallel region starved FFTW's own threads in FFT convolution (2–5× slower, measured
# in bench/fft_pruned.py). Must be set before libgomp loads with the first kernel.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import ZnniError
from .runtime.allocator import keep_freed_memory

keep_freed_memory()
from .planner import Device, Plan, make_plan, plan
from .runtime.infer import infer
from .runtime.job import infer_volume
from .spec import Network, bundled_nets, load

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
