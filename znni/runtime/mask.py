"""Masks that skip empty output blocks (docs/design.md §8): resin, out of tissue.

A mask is a volume (any input format) on the input's voxel grid or a coarser one — a lower mip:
each mask voxel stands for ``factor`` input voxels per axis, ``ceil(input / factor)`` mask voxels
in all. An output block is skipped when the mask is zero over the input voxels at the centres of
its output voxels' fields of view: it is filled with ``fill`` and recorded done, so a resumed run
skips it too. Blocks the mask touches are computed as without a mask, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError
from ..spec import Vec3
from .backends import Grid
from .storage import InputVolume, open_input


@dataclass(frozen=True)
class Mask:
    path: str
    factor: Vec3   # input voxels per mask voxel, per axis
    offset: Vec3   # the input voxel at the centre of output voxel 0's field of view
    fill: float    # the value of skipped output voxels

    def empty(self, volume: InputVolume, start: Vec3, stop: Vec3) -> bool:
        """Whether the mask (opened as ``volume``) is zero over output voxels [start, stop)."""
        lo = [(start[a] + self.offset[a]) // self.factor[a] for a in range(3)]
        hi = [min(-(-(stop[a] + self.offset[a]) // self.factor[a]), volume.shape[1 + a])
              for a in range(3)]
        return not np.any(volume.read(tuple(lo), tuple(hi)))


def open_mask(path: str, input_shape: Vec3, offset: Vec3, fill: float,
              input_grid: Grid | None = None) -> Mask:
    """The mask at ``path`` for an input volume of ``input_shape`` (Z, Y, X), checked: one
    channel, on the input's grid or a whole-factor coarser one — where both have world
    coordinates, with the voxel size that factor gives and the same origin."""
    volume = open_input(path)
    if volume.shape[0] != 1:
        raise ShapeError(f"mask {path!r} has {volume.shape[0]} channels",
                         "give a mask of one channel (Z, Y, X): nonzero where to compute")
    shape = volume.shape[1:]
    factor = [_factor(input_shape[a], shape[a]) for a in range(3)]
    if any(f is None for f in factor):
        raise ShapeError(f"mask {path!r} of shape {list(shape)} is neither on the input's grid "
                         f"{list(input_shape)} nor a whole-factor downsampling of it",
                         "give a mask of ceil(input / f) voxels per axis for whole factors f "
                         "(e.g. a lower mip of the same volume)")
    f = (factor[0] or 1, factor[1] or 1, factor[2] or 1)
    if volume.grid is not None and input_grid is not None:
        _check_grids(path, volume.grid, input_grid, f)
    return Mask(path, f, offset, float(fill))


def _check_grids(path: str, mask: Grid, image: Grid, factor: Vec3) -> None:
    """Refuse a mask whose voxels are not ``factor`` input voxels, or that starts elsewhere."""
    expected = [image.resolution[a] * factor[a] for a in range(3)]
    if any(abs(mask.resolution[a] - expected[a]) > 1e-6 * expected[a] for a in range(3)):
        raise ShapeError(f"mask {path!r} has voxels of {list(mask.resolution)} nm; its shape "
                         f"makes them {factor} input voxels, i.e. {expected} nm",
                         "give the mask at a resolution matching its shape (the right mip)")
    origins = [(mask.offset[a] * mask.resolution[a], image.offset[a] * image.resolution[a])
               for a in range(3)]
    if any(abs(m - i) > 1e-6 * max(abs(i), 1.0) for m, i in origins):
        raise ShapeError(f"mask {path!r} starts at {[m for m, _ in origins]} nm, the input at "
                         f"{[i for _, i in origins]} nm", "give a mask aligned with the input")


def _factor(extent: int, mask: int) -> int | None:
    """The whole factor f with ceil(extent / f) = mask, if any."""
    if mask < 1:
        return None
    low = max(1, extent // mask)
    return next((f for f in (low, low + 1) if -(-extent // f) == mask), None)
