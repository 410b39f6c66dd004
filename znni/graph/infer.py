"""Dense inference of a valid DAG network block by block with exact tiling (docs/design.md
§8.1): over a volume in memory, or any reader and writer (volumes on disk, graph/job.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .. import config
from ..errors import ShapeError
from ..runtime.volume import as_float32
from .dense import dense_graph
from .executor import CompiledGraph
from .nodes import Vec3
from .planner import plan_graph
from .spec import Graph
from .tiling import GraphTile, GraphTiling, exact_tiling

Reader = Callable[[Vec3, Vec3], np.ndarray]
Writer = Callable[[Vec3, np.ndarray], None]


def compile_tiles(graph: Graph, extent: Vec3, block: Vec3 | None, threads: int | None,
                  memory: int | str | None, primitives: Mapping[str, str] | None = None
                  ) -> tuple[GraphTiling, CompiledGraph]:
    """The exact tiling of an input of ``extent`` voxels and the net compiled for its blocks:
    ``block`` input voxels (rounded down to sizes the net takes; default: the planner's block
    and primitives within ``memory``), conv node → primitive as ``primitives`` says (default:
    the ``auto`` rule). A sliding-window net runs dense (:mod:`.dense`)."""
    graph.require_weights()
    if block is None:
        plan = plan_graph(graph, memory, threads, extent)
        block, primitives = plan.block_input, dict(plan.primitives)
    graph = dense_graph(graph)
    tiling = exact_tiling(graph, extent, block)
    compiled = CompiledGraph(graph, tiling.block_input, threads or config.default_threads(),
                             primitives if tiling.block_input == block else None)
    return tiling, compiled


def run_tile(tiling: GraphTiling, compiled: CompiledGraph, read: Reader,
             tile: GraphTile) -> np.ndarray:
    """``read(start, stop)`` the input ``(C, z, y, x)`` float32 of ``tile``, run it, and return
    the outputs no earlier tile wrote (they start at ``tile.write``)."""
    s, n = tile.start, tiling.block_input
    y = compiled.run(np.ascontiguousarray(read(s, (s[0] + n[0], s[1] + n[1], s[2] + n[2]))))
    w = [tile.write[a] - s[a] for a in range(3)]
    return y[:, w[0]:, w[1]:, w[2]:]


def run_tiles(tiling: GraphTiling, compiled: CompiledGraph, read: Reader,
              write: Writer) -> None:
    """Every tile through :func:`run_tile`, its outputs to ``write(start, data)``. Memory:
    one block."""
    for tile in tiling.tiles:
        write(tile.write, run_tile(tiling, compiled, read, tile))


def infer_graph(graph: Graph, volume: np.ndarray, block: Vec3 | None = None,
                threads: int | None = None, memory: int | str | None = None,
                primitives: Mapping[str, str] | None = None) -> np.ndarray:
    """The output ``(C_out, z, y, x)`` of a valid DAG network on ``volume`` (``(Z, Y, X)`` or
    ``(C, Z, Y, X)``; uint8/uint16 scaled to [0, 1]), in blocks (:func:`compile_tiles`).
    Output voxel ``j`` is the one whose context starts at input voxel ``j``; input past the
    largest size the net takes is not used."""
    arr = np.asarray(volume)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[0] != graph.input_channels:
        raise ShapeError(f"volume of shape {arr.shape} for network {graph.name!r} of "
                         f"{graph.input_channels} input channel(s)",
                         "pass (C, Z, Y, X), or (Z, Y, X) for one channel")
    vol = as_float32(arr)
    tiling, compiled = compile_tiles(graph, (vol.shape[1], vol.shape[2], vol.shape[3]), block,
                                     threads, memory, primitives)
    out = np.empty((graph.output_channels, *tiling.output_extent), np.float32)

    def read(start: Vec3, stop: Vec3) -> np.ndarray:
        return vol[:, start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]

    def write(start: Vec3, data: np.ndarray) -> None:
        out[:, start[0]:start[0] + data.shape[1], start[1]:start[1] + data.shape[2],
            start[2]:start[2] + data.shape[3]] = data

    run_tiles(tiling, compiled, read, write)
    return out
