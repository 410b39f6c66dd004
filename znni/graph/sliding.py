"""Sliding-window inference with blending, for nets whose convolutions pad (docs/design.md §8.1).

A same-padded net sees zeros past a window's border, so windows cannot tile exactly: they
overlap and their outputs are averaged with weights that fall towards the window's border. The
window placement and the Gaussian weights follow MONAI's ``sliding_window_inference`` (roi =
window, ``overlap``, ``sigma_scale = 0.125``, weights clamped below at their minimum or 1e-3,
zero padding where the volume is smaller than the window), so a user gets the same numbers as
there:

- per axis the windows start at multiples of ``int(roi·(1 − overlap))`` (the roi if it equals
  the image), the last ones shifted back to end at the image's edge, as many as needed;
- ``gaussian``: ``exp(−x²/(2σ²))`` per axis, ``x`` from the window's centre, ``σ = 0.125·roi``;
  ``constant``: equal weights (a plain mean); ``bump``: ``exp(1 − 1/(1 − t²))`` per axis, ``t``
  from −1 to 1 across the window, a weight that reaches 0 only past the border (smooth, compact);
  ``none``: no averaging, each voxel from the first window covering it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from .. import config
from ..errors import ShapeError
from ..runtime.volume import as_float32
from .executor import CompiledGraph
from .nodes import Vec3
from .shapes import node_sizes
from .spec import Graph

BLENDS = ("gaussian", "constant", "bump", "none")
SIGMA_SCALE = 0.125
#: MONAI's floor for weights (a window's far corner must still count a little).
MIN_WEIGHT = 1e-3


def window_starts(image: int, roi: int, overlap: float) -> list[int]:
    """MONAI's ``dense_patch_slices`` along one axis (``image ≥ roi``)."""
    interval = roi if roi == image else max(1, int(roi * (1 - overlap)))
    count = math.ceil(image / interval)
    needed = next((d for d in range(count) if d * interval + roi >= image), None)
    windows = 1 if needed is None else needed + 1
    return [i * interval - max(i * interval + roi - image, 0) for i in range(windows)]


def _axis_weights(roi: int, blend: str) -> np.ndarray:
    if blend == "gaussian":
        x = np.arange(-(roi - 1) / 2, (roi - 1) / 2 + 1, dtype=np.float32)
        bell: np.ndarray = np.exp(x ** 2 / np.float32(-2 * (roi * SIGMA_SCALE) ** 2))
        return bell
    if blend == "bump":
        t = (np.arange(roi, dtype=np.float64) + 0.5) / roi * 2 - 1
        return np.exp(1 - 1 / (1 - t ** 2)).astype(np.float32)
    return np.ones(roi, np.float32)


def importance_map(roi: Vec3, blend: str) -> np.ndarray:
    """The window's weights ``roi`` (float32), clamped below as MONAI does."""
    w = (_axis_weights(roi[0], blend)[:, None, None] * _axis_weights(roi[1], blend)[None, :, None]
         * _axis_weights(roi[2], blend)[None, None, :])
    out: np.ndarray = np.maximum(w, max(float(w.min()), MIN_WEIGHT)).astype(np.float32)
    return out


def blend_windows(vol: np.ndarray, roi: Vec3, overlap: float, blend: str,
                  run: Callable[[np.ndarray], np.ndarray], channels: int) -> np.ndarray:
    """``run`` on every window of ``vol`` ``(C, Z, Y, X)`` (each side ≥ the roi's), its
    ``channels`` outputs blended by :func:`importance_map` (``none``: first window wins)."""
    image = (vol.shape[1], vol.shape[2], vol.shape[3])

    def read(start: Vec3, stop: Vec3) -> np.ndarray:
        return vol[:, start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]

    return blend_region(read, image, roi, overlap, blend, run, channels, (0, 0, 0), image)


def region_windows(image: Vec3, roi: Vec3, overlap: float, lo: Vec3,
                   hi: Vec3) -> list[list[int]]:
    """Per axis, the starts of the windows over ``image`` that reach into ``[lo, hi)``."""
    return [[s for s in window_starts(image[a], roi[a], overlap)
             if s < hi[a] and s + roi[a] > lo[a]] for a in range(3)]


def blend_region(read: Callable[[Vec3, Vec3], np.ndarray], image: Vec3, roi: Vec3,
                 overlap: float, blend: str, run: Callable[[np.ndarray], np.ndarray],
                 channels: int, lo: Vec3, hi: Vec3) -> np.ndarray:
    """Output voxels ``[lo, hi)`` of the windows over an ``image``-sized volume blended as
    :func:`blend_windows` blends them: every window reaching into the region is run (its input
    from ``read(start, stop)``), in the same order, so a region's voxels equal the whole
    image's — which is what lets a volume be blended block by block (graph/job.py)."""
    weights = importance_map(roi, blend)
    size = (hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2])
    out = np.zeros((channels, *size), np.float32)
    total = np.zeros(size, np.float32)
    for z, y, x in itertools.product(*region_windows(image, roi, overlap, lo, hi)):
        start, stop = (z, y, x), (z + roi[0], y + roi[1], x + roi[2])
        result = run(np.ascontiguousarray(read(start, stop)))
        a = [max(start[i], lo[i]) for i in range(3)]
        b = [min(stop[i], hi[i]) for i in range(3)]
        src = tuple(slice(a[i] - start[i], b[i] - start[i]) for i in range(3))
        dst = tuple(slice(a[i] - lo[i], b[i] - lo[i]) for i in range(3))
        piece = result[(slice(None), *src)]
        if blend == "none":
            fresh = total[dst] == 0
            out[(slice(None), *dst)][:, fresh] = piece[:, fresh]
            total[dst][fresh] = 1
            continue
        out[(slice(None), *dst)] += piece * weights[src]
        total[dst] += weights[src]
    out /= total
    return out


def check_windows(graph: Graph, roi: Vec3, overlap: float, blend: str) -> None:
    """Refuse a blend, overlap or window that sliding windows cannot use on ``graph``."""
    if blend not in BLENDS:
        raise ShapeError(f"unknown blend {blend!r}", f"use one of {', '.join(BLENDS)}")
    if not 0 <= overlap < 1:
        raise ShapeError(f"overlap must be in [0, 1), got {overlap}", "e.g. --overlap 0.25")
    if node_sizes(graph.nodes, roi)[graph.output] != roi:
        raise ShapeError(f"the network's output for a {list(roi)} window is not {list(roi)}",
                         "sliding windows with blending are for same-padded nets; valid nets "
                         "tile exactly (no --overlap)")


def image_padding(extent: Vec3, roi: Vec3) -> list[tuple[int, int]]:
    """MONAI's zeros before and after a volume smaller than the window, per axis."""
    short = [max(roi[a] - extent[a], 0) for a in range(3)]
    return [(n // 2, n - n // 2) for n in short]


def sliding_window(graph: Graph, volume: np.ndarray, roi: Vec3, overlap: float = 0.25,
                   blend: str = "gaussian", threads: int | None = None) -> np.ndarray:
    """The output ``(C_out, Z, Y, X)`` of a net whose output is as large as its input (same
    padding) on ``volume`` ``(Z, Y, X)`` or ``(C, Z, Y, X)``, in windows of ``roi`` voxels."""
    check_windows(graph, roi, overlap, blend)
    graph.require_weights()
    arr = np.asarray(volume)
    vol = as_float32(arr[None] if arr.ndim == 3 else arr)
    if vol.ndim != 4 or vol.shape[0] != graph.input_channels:
        raise ShapeError(f"volume of shape {arr.shape} for a network of "
                         f"{graph.input_channels} input channel(s)",
                         "pass (C, Z, Y, X), or (Z, Y, X) for one channel")
    extent = (vol.shape[1], vol.shape[2], vol.shape[3])
    pad = image_padding(extent, roi)
    if any(p for pair in pad for p in pair):
        vol = np.pad(vol, [(0, 0), *pad])
    compiled = CompiledGraph(graph, roi, threads or config.default_threads())
    out = blend_windows(vol, roi, overlap, blend, compiled.run, graph.output_channels)
    crop = tuple(slice(p[0], p[0] + extent[a]) for a, p in enumerate(pad))
    return out[(slice(None), *crop)]
