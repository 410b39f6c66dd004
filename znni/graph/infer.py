"""Dense inference of a DAG network over a volume in memory, block by block with exact
tiling (docs/design.md §8.1)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import config
from ..errors import ShapeError
from ..runtime.volume import as_float32
from .executor import CompiledGraph
from .nodes import Vec3
from .planner import plan_graph
from .spec import Graph
from .tiling import exact_tiling


def infer_graph(graph: Graph, volume: np.ndarray, block: Vec3 | None = None,
                threads: int | None = None, memory: int | str | None = None,
                primitives: Mapping[str, str] | None = None) -> np.ndarray:
    """The output ``(C_out, z, y, x)`` of a valid DAG network on ``volume`` (``(Z, Y, X)`` or
    ``(C, Z, Y, X)``; uint8/uint16 scaled to [0, 1]), computed in blocks of ``block`` input
    voxels (rounded down to sizes the net takes; default: the planner's block and primitives
    within ``memory``), conv node → primitive as ``primitives`` says (default: the ``auto``
    rule). Output voxel ``j`` is the one whose context starts at input voxel ``j``; input past
    the largest size the net takes is not used."""
    graph.require_weights()
    arr = np.asarray(volume)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[0] != graph.input_channels:
        raise ShapeError(f"volume of shape {arr.shape} for network {graph.name!r} of "
                         f"{graph.input_channels} input channel(s)",
                         "pass (C, Z, Y, X), or (Z, Y, X) for one channel")
    vol = as_float32(arr)
    extent = (vol.shape[1], vol.shape[2], vol.shape[3])
    if block is None:
        plan = plan_graph(graph, memory, threads, extent)
        block, primitives = plan.block_input, dict(plan.primitives)
    tiling = exact_tiling(graph, extent, block)
    compiled = CompiledGraph(graph, tiling.block_input, threads or config.default_threads(),
                             primitives if tiling.block_input == block else None)
    out = np.empty((graph.output_channels, *tiling.output_extent), np.float32)
    n, m = tiling.block_input, tiling.block_output
    for tile in tiling.tiles:
        s = tile.start
        x = np.ascontiguousarray(vol[:, s[0]:s[0] + n[0], s[1]:s[1] + n[1], s[2]:s[2] + n[2]])
        y = compiled.run(x)
        w = [tile.write[a] - s[a] for a in range(3)]
        out[:, tile.write[0]:s[0] + m[0], tile.write[1]:s[1] + m[1],
            tile.write[2]:s[2] + m[2]] = y[:, w[0]:, w[1]:, w[2]:]
    return out
