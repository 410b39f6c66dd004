"""``znni infer`` for DAG networks: a volume on disk through a graph, into a new output.

The volume is read whole and the output computed in memory (exact blocks for valid nets,
blended windows for padded ones), then written. Out-of-core blocks, resuming and Dask — what
chain nets have (runtime/job.py) — are not built for graphs yet; the output must not exist, and
a failed run removes what it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError, VolumeError
from ..runtime.identity import check_distinct
from ..runtime.storage import (
    check_output_spec,
    open_input,
    open_output,
    remove_output,
    volume_path,
)
from .infer import infer_graph
from .nodes import Conv, Vec3
from .planner import plan_graph
from .sliding import sliding_window
from .spec import Graph


@dataclass(frozen=True)
class GraphRun:
    output_shape: tuple[int, int, int, int]
    blended: bool  # windows averaged (padded net) rather than exact blocks


def padded(graph: Graph) -> bool:
    """Whether some conv pads (its net is run in blended windows, not exact blocks)."""
    return any(isinstance(n, Conv) and n.padding == "same" for n in graph.nodes)


def infer_graph_volume(graph: Graph, src: str, dst: str, patch: Vec3 | None,
                       overlap: float, blend: str, threads: int | None,
                       memory: int | str | None = None) -> GraphRun:
    """Run ``graph`` on the volume ``src`` into the new volume ``dst``. ``patch``: the window
    (input voxels) of each block; default: the planner's within ``memory``."""
    check_output_spec(dst, "float32")
    volume = open_input(src)
    check_distinct(src, volume_path(src), dst, {"the output": volume_path(dst)})
    if volume_path(dst).exists():
        raise VolumeError(f"output {dst!r} exists", "DAG networks write a new output (no "
                          "resuming yet): delete it or choose another --output")
    if volume.shape[0] != graph.input_channels:
        raise ShapeError(f"input volume has {volume.shape[0]} channel(s), network "
                         f"{graph.name!r} expects {graph.input_channels}",
                         "stack the channels on the first axis")
    data = volume.read((0, 0, 0), volume.shape[1:])
    extent = (data.shape[1], data.shape[2], data.shape[3])
    if padded(graph):
        roi = patch or plan_graph(graph, memory, threads, extent, overlap).block_input
        out = sliding_window(graph, data, roi, overlap, blend, threads)
    else:
        out = infer_graph(graph, data, patch, threads, memory)
    shape = (out.shape[0], out.shape[1], out.shape[2], out.shape[3])
    target = open_output(dst, shape, "float32", (shape[0], *(min(64, n) for n in shape[1:])))
    try:
        target.write((0, 0, 0), np.ascontiguousarray(out))
        target.close()
    except BaseException:
        remove_output(dst, whole_file=True)
        raise
    return GraphRun(shape, padded(graph))
