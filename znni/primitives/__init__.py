"""Layer primitives: the planner's vocabulary. Each knows its FLOPs, its memory and how to
prepare (render, compile, pack weights) a runnable step for one layer shape."""

from .base import Memory, Primitive, Step
from .direct import DirectConv
from .mpf import MaxPoolFragments

PRIMITIVES: dict[str, Primitive] = {p.name: p for p in (DirectConv(), MaxPoolFragments())}

__all__ = ["PRIMITIVES", "DirectConv", "MaxPoolFragments", "Memory", "Primitive", "Step"]
