"""znni: dense sliding-window 3D ConvNet inference at maximum throughput.

Pipeline: spec (:func:`load`) → plan (:func:`make_plan`) → generated C++ → compiled, cached
kernels → :func:`infer`. :mod:`znni.reference` is the slow numpy oracle.
"""

__version__ = "0.1.0"

from .errors import ZnniError
from .planner import Plan, make_plan
from .runtime.infer import infer
from .spec import Network, bundled_nets, load

__all__ = [
           "Network",
           "Plan",
           "ZnniError",
           "__version__",
           "bundled_nets",
           "infer",
           "load",
           "make_plan",
]
