"""Exact tiling of valid DAG networks (docs/design.md §8.1): blocks on a grid of the
downsampling factor, so that the tiled output equals the network applied to the whole volume at
once, to float rounding (the funlib/daisy property).

In a net of valid convolutions, output voxel ``j`` (pitch 1) is a function of the input voxels
``[j, j + context]`` alone — provided every pooling window it passes through is the one the whole
volume's pooling would use, i.e. the block's input starts at a multiple of the downsampling ``D``.
Valid input sizes are ``n₀ + k·D``, and their outputs ``m₀ + k·D``, so blocks whose outputs start
at multiples of ``D`` tile the output exactly; where a block's output is not a multiple of ``D``
long, consecutive blocks overlap and each voxel is written by the first block that computes it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction

from ..errors import ShapeError
from .nodes import Conv, Vec3
from .shapes import ShapeReport, scales, shape_report
from .spec import Graph


@dataclass(frozen=True)
class GraphTile:
    start: Vec3   # output (= input) corner of the block in the volume
    write: Vec3   # first output voxel per axis this block writes (earlier ones: a neighbour)


@dataclass(frozen=True)
class GraphTiling:
    input_extent: Vec3   # the part of the volume the output needs (the largest valid size)
    output_extent: Vec3
    block_input: Vec3
    block_output: Vec3
    tiles: tuple[GraphTile, ...]


def _check_tileable(graph: Graph) -> ShapeReport:
    padded = [n.name for n in graph.nodes if isinstance(n, Conv) and n.padding == "same"]
    if padded:
        raise ShapeError(f"node(s) {', '.join(padded[:3])} pad their input (padding same): "
                         "exact tiling needs a network of valid convolutions",
                         "run the whole volume as one block (block = the volume's size)")
    if scales(graph.nodes)[graph.output] != (Fraction(1), Fraction(1), Fraction(1)):
        raise ShapeError("the network's output is not at the input's resolution",
                         "end the network at full resolution (up-sample back to pitch 1)")
    return shape_report(graph.nodes, graph.output)


@dataclass(frozen=True)
class _Axis:
    used: int       # input extent the output needs
    total: int      # output extent
    block: int      # block input
    out: int        # block output
    starts: tuple[tuple[int, int], ...]  # (start, first written voxel) per block


def _axis(n0: int, m0: int, d: int, extent: int, block: int | None, axis: str) -> _Axis:
    """One axis of the tiling: smallest input ``n0`` giving ``m0`` outputs, step ``d``."""
    if extent < n0:
        raise ShapeError(f"the volume is {extent} voxels along {axis}, less than the smallest "
                         f"input the network takes ({n0})", "give a larger volume")
    used = n0 + (extent - n0) // d * d
    total = m0 + used - n0
    size = used if block is None else min(used, max(n0, n0 + (block - n0) // d * d))
    out = m0 + size - n0
    while out < d and size < used:  # a block must advance by at least one D
        size, out = size + d, out + d
    stride = out - out % d if out >= d else out
    starts = list(range(0, total - out + 1, stride))
    if starts[-1] + out < total:
        starts.append(total - out)
    written = tuple((s, s if i == 0 else max(s, starts[i - 1] + out))
                    for i, s in enumerate(starts))
    return _Axis(used, total, size, out, written)


def exact_tiling(graph: Graph, volume: Vec3, block_input: Vec3 | None = None) -> GraphTiling:
    """Blocks of input ``block_input`` (rounded down to a valid size; default: the whole usable
    volume) covering the output of a ``volume``-sized input exactly."""
    report = _check_tileable(graph)
    axes = [_axis(report.smallest_input[a], report.output[a], report.downsampling[a],
                  volume[a], None if block_input is None else block_input[a], "zyx"[a])
            for a in range(3)]
    z, y, x = axes
    tiles = tuple(GraphTile((a[0], b[0], c[0]), (a[1], b[1], c[1]))
                  for a, b, c in itertools.product(z.starts, y.starts, x.starts))
    return GraphTiling((z.used, y.used, x.used), (z.total, y.total, x.total),
                       (z.block, y.block, x.block), (z.out, y.out, x.out), tiles)
