"""``znni view``: volumes in Neuroglancer, served from this machine (the ``neuroglancer``
package), for a user who would rather look than read.

Every volume is opened as ``znni infer`` opens its input (any format, ``#mip=N``) and served as
a local image layer in its world coordinates (nanometres, the voxel offset) where the format
has them, so an output shows where its input was. The server binds to 127.0.0.1 unless told
otherwise; the URL is printed, and the viewer lives until the process ends.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ZnniError
from .runtime.backends import UNIT_GRID
from .runtime.storage import InputVolume, open_input


class _Channels:
    """An input volume as the ``(C, Z, Y, X)`` array Neuroglancer slices."""

    def __init__(self, volume: InputVolume) -> None:
        self.volume = volume
        self.shape = volume.shape
        self.dtype = volume.dtype
        self.ndim = 4

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        spatial = [key[1 + a].indices(self.shape[1 + a])[:2] for a in range(3)]
        data = self.volume.read(tuple(lo for lo, _ in spatial), tuple(hi for _, hi in spatial))
        out: np.ndarray = data[key[0]]
        return out


def _neuroglancer() -> Any:
    try:
        return importlib.import_module("neuroglancer")
    except ImportError:
        raise ZnniError("znni view serves volumes through the Python package 'neuroglancer'",
                        'install it: pip install "znni[view]"') from None


def serve(paths: list[str], bind: str = "127.0.0.1", port: int = 0) -> Any:
    """A Neuroglancer viewer showing ``paths`` (each a layer named after its file); its URL is
    ``str(viewer)``. Every volume is opened before the server starts."""
    volumes = [open_input(p) for p in paths]
    neuroglancer = _neuroglancer()
    neuroglancer.set_server_bind_address(bind, port)
    viewer = neuroglancer.Viewer()
    with viewer.txn() as state:
        for path, volume in zip(paths, volumes, strict=True):
            grid = volume.grid or UNIT_GRID
            space = neuroglancer.CoordinateSpace(
                names=["c^", "z", "y", "x"], units=["", "nm", "nm", "nm"],
                scales=[1, *grid.resolution])
            source = neuroglancer.LocalVolume(_Channels(volume), dimensions=space,
                                              voxel_offset=[0, *grid.offset])
            state.layers[_name(path)] = neuroglancer.ImageLayer(source=source)
    return viewer


def _name(path: str) -> str:
    return Path(path.rstrip("/").split("#")[0]).name or path
