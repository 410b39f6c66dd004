"""Cutting a dense output volume into patches (DESIGN §8).

Output patches tile the output exactly; the last one along an axis is shifted back inside the
volume (overlapping its neighbour, which is harmless: results are exact, not blended). When the
output is smaller than a patch along an axis, the patch starts at 0 and its input is zero-padded
at the far end: outputs inside the volume never see the padding, since output v depends only on
input [v, v + FOV).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from ..spec import Vec3


@dataclass(frozen=True)
class Tile:
    start: Vec3   # output (= input) corner of the patch in the volume
    size: Vec3    # output voxels of the patch that lie inside the volume


def axis_starts(extent: int, patch: int) -> list[int]:
    if extent <= patch:
        return [0]
    starts = list(range(0, extent - patch + 1, patch))
    if starts[-1] + patch < extent:
        starts.append(extent - patch)
    return starts


def tiles(output_extent: Vec3, patch: Vec3) -> Iterator[Tile]:
    """Every patch needed to cover ``output_extent``, in z-major order."""
    per_axis = [axis_starts(output_extent[a], patch[a]) for a in range(3)]
    for z, y, x in itertools.product(*per_axis):
        start = (z, y, x)
        yield Tile(start, tuple(min(patch[a], output_extent[a] - start[a])  # type: ignore[arg-type]
                                for a in range(3)))
