"""Max filter (docs/design.md §5.4): a pool run dense, at stride 1, dilated by the pools before it.

The alternative to fragments for the last pools of a net (:meth:`~znni.spec.Network.
layer_shapes`): the image stays one dense tensor and the layers after it run dilated. Same
FLOPs as MPF (fragments lose exactly the voxels the filter does), but bigger images: the direct
kernel's vectors stay full where 512 fragments of 16³ waste a quarter of their lanes, while FFT
layers lose the batch that amortises their kernel transforms — a choice for the planner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..codegen.loader import load_kernel
from ..codegen.render import render
from ..spec import Layer, Pool, Shape5
from .base import Memory, tensor_bytes
from .mpf import PoolStep

if TYPE_CHECKING:
    from ..hardware import Device


def max_filter_output_shape(layer: Pool, shape_in: Shape5) -> Shape5:
    s, c, *n = shape_in
    span = layer.span
    return (s, c, n[0] - span[0] + 1, n[1] - span[1] + 1, n[2] - span[2] + 1)


def max_filter_source(layer: Pool, shape_in: Shape5) -> str:
    _, c, nz, ny, nx = shape_in
    (pz, py, px), (dz, dy, dx) = layer.window, layer.dilation
    return render("max_filter.cpp.j2", {"channels": c, "nz": nz, "ny": ny, "nx": nx,
                                        "pz": pz, "py": py, "px": px,
                                        "dz": dz, "dy": dy, "dx": dx})


class MaxFilter:
    """Primitive ``maxfilter``: input read once per z tap, output written once."""

    name = "maxfilter"
    layer_kind = "pool"
    precision = "fp32"

    def supports(self, layer: Layer) -> bool:
        return isinstance(layer, Pool) and layer.max_filter

    def flops(self, layer: Layer, shape_in: Shape5) -> int:
        assert isinstance(layer, Pool)
        return int(np.prod(shape_in)) * sum(p - 1 for p in layer.window)

    def estimate(self, layer: Layer, shape_in: Shape5, device: Device) -> float:
        """Seconds: each input plane is read once per z tap, the output written once (to a
        fresh tensor)."""
        assert isinstance(layer, Pool)
        out = tensor_bytes(max_filter_output_shape(layer, shape_in))
        return ((layer.window[0] * tensor_bytes(shape_in) + out) / device.bandwidth
                + out / device.fresh_rate)

    def memory(self, layer: Layer, shape_in: Shape5) -> Memory:
        assert isinstance(layer, Pool)
        out = max_filter_output_shape(layer, shape_in)
        return Memory(0, tensor_bytes(shape_in) + tensor_bytes(out))

    def prepare(self, index: int, layer: Layer, shape_in: Shape5,
                weights: tuple[np.ndarray, np.ndarray] | None, threads: int) -> PoolStep:
        assert isinstance(layer, Pool)
        label = (f"layer {index} (max filter {'x'.join(map(str, layer.window))} dilated "
                 f"{'x'.join(map(str, layer.dilation))}, n {shape_in[2:]})")
        return PoolStep(load_kernel(max_filter_source(layer, shape_in), label), layer, shape_in,
                        threads, max_filter_output_shape)
