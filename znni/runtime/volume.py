"""Normalising user volumes: rank, channels, dtype and size checks in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ShapeError

if TYPE_CHECKING:
    from ..spec import Network


def as_volume(volume: np.ndarray, net: Network) -> np.ndarray:
    """``(C, Z, Y, X)`` float32 view/copy of a ``(Z,Y,X)`` or ``(C,Z,Y,X)`` volume.

    float32 is used as is, uint8 is scaled to [0, 1] (EM images are 8-bit), other float and
    uint16 types are converted. The volume must be at least the network's field of view.
    """
    arr = np.asarray(volume)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ShapeError(f"volume has {arr.ndim} dimensions, expected 3 (Z,Y,X) or 4 (C,Z,Y,X)",
                         "pass a 3D image, or a 4D array with channels first")
    if arr.shape[0] != net.input_channels:
        raise ShapeError(f"volume has {arr.shape[0]} channel(s), network {net.name!r} expects "
                         f"{net.input_channels}", "stack the input channels on the first axis")
    arr = as_float32(arr)
    fov = net.fov
    if any(arr.shape[1 + a] < fov[a] for a in range(3)):
        raise ShapeError(f"volume {list(arr.shape[1:])} (z,y,x) is smaller than the field of view "
                         f"{list(fov)} of network {net.name!r}",
                         "give a volume at least as large as the FOV on every axis")
    return arr


def as_float32(arr: np.ndarray) -> np.ndarray:
    """float32 voxels: float32 as is, uint8/uint16 scaled to [0, 1] (EM images are 8-bit),
    other floats converted; NaN or Inf is refused (it would spread through every patch)."""
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / np.float32(255)
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / np.float32(65535)
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
        if not np.all(np.isfinite(arr)):
            raise ShapeError("volume contains NaN or Inf", "clean the input volume")
    else:
        raise ShapeError(f"volume dtype {arr.dtype} is not supported",
                         "use float32 (used as is), uint8 or uint16 (scaled to [0, 1])")
    return arr


MODES = ("valid", "same")


def same_padding(net: Network) -> list[tuple[int, int]]:
    """Per axis (before, after): the reflected border that makes the output as large as, and
    aligned with, the input (``mode="same"``)."""
    return [((f - 1) // 2, f - 1 - (f - 1) // 2) for f in net.fov]


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ShapeError(f"unknown mode {mode!r}", "use valid (output shrinks by the FOV − 1) "
                         "or same (input reflected at its border; output as large as input)")
