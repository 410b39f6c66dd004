"""Layer primitives: the planner's vocabulary. Each knows its FLOPs, its memory and how to
prepare (render, compile, pack weights) a runnable step for one layer shape."""

from .base import Memory, Primitive, Step
from .direct import DirectConv
from .fft import FftConv
from .max_filter import MaxFilter
from .mpf import MaxPoolFragments
from .winograd import WinogradConv

PRIMITIVES: dict[str, Primitive] = {p.name: p for p in (
    DirectConv(), DirectConv("bf16"), WinogradConv("f2"), WinogradConv("f4"),
    MaxPoolFragments(), MaxFilter(),
    FftConv(pruned=True, task_parallel=True), FftConv(pruned=False, task_parallel=True),
    FftConv(pruned=True, task_parallel=False), FftConv(pruned=False, task_parallel=False),
    FftConv(pruned=True, task_parallel=False, lean=True))}
#: Those that run conv layers (the CLI's and export's choices derive from this).
CONV_PRIMITIVES = tuple(name for name, p in PRIMITIVES.items() if p.layer_kind == "conv")

__all__ = ["CONV_PRIMITIVES", "PRIMITIVES", "DirectConv", "FftConv", "MaxFilter",
           "MaxPoolFragments", "Memory", "Primitive", "Step", "WinogradConv"]
