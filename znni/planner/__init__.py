"""Plans: which primitive runs each layer, on which shapes, with how much memory — and the
search that picks the fastest one under a memory budget."""

from ..hardware import Device
from .device import this_machine
from .plan import Alternative, LayerPlan, Plan, Planning, default_patch, make_plan, network_digest
from .search import plan

__all__ = ["Alternative", "Device", "LayerPlan", "Plan", "Planning", "default_patch",
           "make_plan", "network_digest", "plan", "this_machine"]
