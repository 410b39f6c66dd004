"""A DAG network as ``znni plan`` describes it: nodes, shape algebra, how it is tiled."""

from __future__ import annotations

from .dense import slides
from .nodes import Conv, Vec3
from .shapes import shape_report
from .spec import Graph


def describe(graph: Graph) -> str:
    """What ``znni plan`` says of a DAG network: its nodes and its shape algebra."""
    report = shape_report(graph.nodes, graph.output)
    kinds: dict[str, int] = {}
    for node in graph.nodes:
        kinds[type(node).__name__.lower()] = kinds.get(type(node).__name__.lower(), 0) + 1
    same = any(isinstance(n, Conv) and n.padding == "same" for n in graph.nodes)

    def v(t: Vec3) -> str:
        return "x".join(map(str, t))

    return "\n".join([
        f"network {graph.name!r} (DAG): {len(graph.nodes)} nodes ("
        + ", ".join(f"{n} {k}" for k, n in kinds.items()) + f"), {graph.input_channels} -> "
        f"{graph.output_channels} channels",
        f"  input sizes: {v(report.smallest_input)} + k x {v(report.step)} (z, y, x)",
        f"  output: {v(report.output)} for the smallest input, + {v(report.output_step)} per "
        "step",
        f"  downsampling {v(report.downsampling)}, context {v(report.context)}",
        "  tiling: " + ("padded convs: overlapping windows blended (--overlap, --blend)" if same
                        else "pools as max filters, dense output: exact blocks" if slides(graph)
                        else "exact blocks on the downsampling grid"),
    ])
