"""Plans: which primitive runs each layer, on which shapes, with how much memory."""

from .plan import LayerPlan, Plan, default_patch, make_plan, network_digest

__all__ = ["LayerPlan", "Plan", "default_patch", "make_plan", "network_digest"]
