"""Sliding-window DAG networks made dense (docs/design.md §8.1): a net of valid convolutions
whose pools are never undone by up-sampling has an output coarser than its input, one voxel per
``D`` input voxels. Like ZNN's chain nets, it is meant to slide: its dense output at voxel ``j``
is the net applied to the input window starting at ``j``.

:func:`dense_graph` computes that in one pass, as the chain planner's max-filter mode does: every
pool becomes a max filter (stride 1) over voxels as far apart as the pitch it would have had,
and every node after it dilates its kernels by that pitch. The result is a net at pitch 1 that
tiles exactly with ``D = 1``; its output at ``j`` equals the pooled net's on the input shifted by
``j mod D`` at ``j div D`` (tested against the oracle). U-Nets, whose up-sampling undoes the
pools, keep their pools: their output is at the input's pitch already.
"""

from __future__ import annotations

from dataclasses import replace

from .nodes import INPUT, Conv, MaxFilter, Node, Pool, Upsample, Vec3
from .spec import Graph


def slides(graph: Graph) -> bool:
    """Whether ``graph`` is a sliding-window net to make dense: valid convs, pools, and no
    up-sampling (its output is coarser than its input)."""
    nodes = graph.nodes
    return (any(isinstance(n, Pool) for n in nodes)
            and not any(isinstance(n, Upsample) for n in nodes)
            and not any(isinstance(n, Conv) and n.padding == "same" for n in nodes))


def dense_graph(graph: Graph) -> Graph:
    """``graph`` with pools as max filters and later kernels dilated (see the module
    docstring), or ``graph`` itself if it is not a sliding-window net. Same weights."""
    if not slides(graph):
        return graph
    pitch: dict[str, Vec3] = {INPUT: (1, 1, 1)}
    nodes: list[Node] = []
    for node in graph.nodes:
        p = pitch[node.inputs[0]]  # joins share one pitch (shapes.scales checks)
        made: Node = node
        if isinstance(node, Pool):
            made = MaxFilter(node.name, node.inputs, node.channels, node.window, p)
            p = (p[0] * node.window[0], p[1] * node.window[1], p[2] * node.window[2])
        elif isinstance(node, Conv):
            made = replace(node, dilation=(node.dilation[0] * p[0], node.dilation[1] * p[1],
                                           node.dilation[2] * p[2]))
        pitch[node.name] = p
        nodes.append(made)
    return replace(graph, nodes=tuple(nodes))
