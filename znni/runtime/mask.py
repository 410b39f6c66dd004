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


def open_mask(path: str, input_shape: Vec3, offset: Vec3, fill: float) -> Mask:
    """The mask at ``path`` for an input volume of ``input_shape`` (Z, Y, X), checked: one
    channel, on the input's grid or a whole-factor coarser one."""
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
    return Mask(path, (factor[0] or 1, factor[1] or 1, factor[2] or 1), offset, float(fill))


def _factor(extent: int, mask: int) -> int | None:
    """The whole factor f with ceil(extent / f) = mask, if any."""
    if mask < 1:
        return None
    low = max(1, extent // mask)
    return next((f for f in (low, low + 1) if -(-extent // f) == mask), None)
