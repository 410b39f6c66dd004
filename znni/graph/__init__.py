"""DAG networks (spec v2, docs/design.md §2.1): U-Nets, residual blocks and other nets whose
layers read more than the previous layer — their nodes, validation, shape algebra and numpy
oracle."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import SpecError
from ..spec import parse_json, read_text
from .shapes import ShapeReport, node_sizes, shape_report
from .spec import Graph, parse_graph


def load_graph(spec: str | os.PathLike[str] | Mapping[str, Any],
               weights: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> Graph:
    """A validated v2 spec (a path or a dict) with, optionally, its weights (``.npz`` path or
    mapping ``<node>.weight`` / ``<node>.bias`` → array)."""
    if not isinstance(spec, Mapping):
        spec = parse_json(read_text(spec, "network spec", SpecError, "give a path to a JSON "
                                    "spec"), str(spec), SpecError,
                          "fix the JSON syntax (docs/design.md §2.1)")
    graph = parse_graph(spec)
    return graph.with_weights(weights) if weights is not None else graph


__all__ = ["Graph", "ShapeReport", "load_graph", "node_sizes", "parse_graph", "shape_report"]
