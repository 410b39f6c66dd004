"""Cutting a dense output volume into patches, and patches into blocks (docs/design.md §8).

Output patches start on a global grid of multiples of the patch; the last one along an axis is
shifted back inside the volume and writes only the voxels its neighbour did not (results are
exact, but not bit-identical between two patches that overlap: FFT roundoff depends on the whole
patch). Every output voxel is written by exactly one patch, and a patch's input is fixed by its
position alone, so any grouping of the same patches — the whole volume in memory, or blocks of a
volume on disk, in any order, on any machine — writes the same bits.

When the output is smaller than a patch along an axis, the patch starts at 0 and its input is
zero-padded at the far end: outputs inside the volume never see the padding, since output v
depends only on input [v, v + FOV).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..spec import Vec3


def vec3(values: Iterable[int]) -> Vec3:
    """Exactly three ``values`` as a (z, y, x) triple (a typed ``tuple(values)``)."""
    z, y, x = values
    return z, y, x


def grow_evenly(cap: Vec3, unit: Vec3, fits: Callable[[list[int]], bool]) -> Vec3:
    """Counts of ``unit`` voxels per axis, from one each, grown one at a time on the axis that
    is shortest in voxels, up to ``cap``, while ``fits(counts)``: near-cubic blocks as large as
    a memory bound allows."""
    counts = [1, 1, 1]
    while True:
        grow = [a for a in range(3) if counts[a] < cap[a]]
        if not grow:
            return vec3(counts)
        axis = min(grow, key=lambda a: counts[a] * unit[a])
        bigger = counts.copy()
        bigger[axis] += 1
        if not fits(bigger):
            return vec3(counts)
        counts = bigger


@dataclass(frozen=True)
class Tile:
    start: Vec3   # output (= input) corner of the patch in the volume
    size: Vec3    # output voxels of the patch that lie inside the volume
    skip: Vec3    # leading voxels per axis that an earlier patch writes (shifted last patch)

    @property
    def write_start(self) -> Vec3:
        """The first output voxel this patch writes: always on the patch grid."""
        return (self.start[0] + self.skip[0], self.start[1] + self.skip[1],
                self.start[2] + self.skip[2])


def axis_tiles(extent: int, patch: int) -> list[tuple[int, int]]:
    """(start, skip) per patch along one axis."""
    if extent <= patch:
        return [(0, 0)]
    starts = [(s, 0) for s in range(0, extent - patch + 1, patch)]
    end = starts[-1][0] + patch
    if end < extent:
        starts.append((extent - patch, end - (extent - patch)))
    return starts


def tiles(output_extent: Vec3, patch: Vec3) -> Iterator[Tile]:
    """Every patch needed to cover ``output_extent``, in z-major order."""
    per_axis = [axis_tiles(output_extent[a], patch[a]) for a in range(3)]
    for (z, sz), (y, sy), (x, sx) in itertools.product(*per_axis):
        start = (z, y, x)
        size = vec3(min(patch[a], output_extent[a] - start[a]) for a in range(3))
        yield Tile(start, size, (sz, sy, sx))


@dataclass(frozen=True)
class Block:
    """A unit of out-of-core work: whole output chunks and the patches that write them."""

    index: Vec3
    start: Vec3          # output region written: [start, stop)
    stop: Vec3
    tiles: tuple[Tile, ...]

    @property
    def name(self) -> str:
        return "_".join(map(str, self.index))


def blocks(output_extent: Vec3, patch: Vec3, block: Vec3) -> list[Block]:
    """The output cut into blocks of ``block`` voxels (multiples of ``patch``, so that each
    patch writes into exactly one block: the one holding its write start)."""
    if any(block[a] % patch[a] for a in range(3)):
        raise ValueError(f"block {block} is not a multiple of the patch {patch}")
    counts = [-(-output_extent[a] // block[a]) for a in range(3)]
    grouped: dict[Vec3, list[Tile]] = {}
    for tile in tiles(output_extent, patch):
        key = vec3(tile.write_start[a] // block[a] for a in range(3))
        grouped.setdefault(key, []).append(tile)
    out = []
    for position in itertools.product(*(range(c) for c in counts)):
        index = vec3(position)
        start = vec3(index[a] * block[a] for a in range(3))
        stop = vec3(min(start[a] + block[a], output_extent[a]) for a in range(3))
        out.append(Block(index, start, stop, tuple(grouped[index])))
    return out
