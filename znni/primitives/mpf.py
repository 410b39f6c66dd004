"""Max-pooling fragments (docs/design.md §4) and their recombination into a dense patch.

Generated C++: one fused, threaded pass (running max over z, y, x written straight into the
fragments). It replaced a vectorised-numpy form (separable max filter, then a strided
transpose-copy) that took 23 % of n337's time at a 64³ patch. Fragment
``(oz, oy, ox)`` of sample ``s`` gets batch index ``s·P + (oz·py + oy)·px + ox``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..codegen.loader import KernelModule, load_kernel
from ..codegen.render import render
from ..spec import Layer, Pool, Shape5, Vec3
from .base import Memory, output_buffer, tensor_bytes

if TYPE_CHECKING:
    from ..hardware import Device


def mpf_output_shape(layer: Pool, shape_in: Shape5) -> Shape5:
    s, c, *n = shape_in
    p = layer.window
    frag = [(n[a] + 1) // p[a] - 1 for a in range(3)]
    return (s * math.prod(p), c, frag[0], frag[1], frag[2])


def mpf_source(layer: Pool, shape_in: Shape5) -> str:
    _, c, nz, ny, nx = shape_in
    pz, py, px = layer.window
    return render("mpf.cpp.j2", {"channels": c, "nz": nz, "ny": ny, "nx": nx,
                                 "pz": pz, "py": py, "px": px})


class PoolStep:
    """A generated, threaded pool kernel (fragments or max filter) for one input shape, any
    batch size: ``output_shape(layer, shape_in)`` says what it writes."""

    input_slack = 0

    def __init__(self, module: KernelModule, layer: Pool, shape_in: Shape5, threads: int,
                 output_shape: Callable[[Pool, Shape5], Shape5]) -> None:
        self.module, self.layer, self.shape_in, self.threads = module, layer, shape_in, threads
        self.output_shape = output_shape

    def run(self, x: np.ndarray, out_slack: int,
            out: np.ndarray | None = None) -> np.ndarray:
        if x.shape[1:] != self.shape_in[1:]:
            raise ValueError(f"pool kernel compiled for {self.shape_in[1:]}, got {x.shape[1:]}")
        out = output_buffer(self.output_shape(self.layer, x.shape), out_slack, out)
        self.module.forward(x, out, self.threads)
        return out


class MaxPoolFragments:
    """Primitive ``mpf``: one pass over the input; working memory input + filter + output."""

    name = "mpf"
    layer_kind = "pool"
    precision = "fp32"

    def supports(self, layer: Layer) -> bool:
        return isinstance(layer, Pool) and not layer.max_filter

    def flops(self, layer: Layer, shape_in: Shape5) -> int:
        assert isinstance(layer, Pool)
        return int(np.prod(shape_in)) * sum(p - 1 for p in layer.window)

    def estimate(self, layer: Layer, shape_in: Shape5, device: Device) -> float:
        """Seconds: one streaming pass, input read and output written at memory bandwidth,
        plus the first touch of the fresh output tensor."""
        assert isinstance(layer, Pool)
        out = tensor_bytes(mpf_output_shape(layer, shape_in))
        return (tensor_bytes(shape_in) + out) / device.bandwidth + out / device.fresh_rate

    def memory(self, layer: Layer, shape_in: Shape5) -> Memory:
        assert isinstance(layer, Pool)
        return Memory(0, tensor_bytes(shape_in) + tensor_bytes(mpf_output_shape(layer, shape_in)))

    def prepare(self, index: int, layer: Layer, shape_in: Shape5,
                weights: tuple[np.ndarray, np.ndarray] | None, threads: int) -> PoolStep:
        assert isinstance(layer, Pool)
        label = f"layer {index} (mpf {'x'.join(map(str, layer.window))}, n {shape_in[2:]})"
        return PoolStep(load_kernel(mpf_source(layer, shape_in), label), layer, shape_in, threads,
                        mpf_output_shape)


def recombine(fragments: np.ndarray, windows: list[Vec3], batch: int) -> np.ndarray:
    """Dense ``(S, C, Z, Y, X)`` from the final fragments ``(S·P1·…·PL, C, mz, my, mx)``.

    Voxel m of the fragment with offsets (o1..oL) lands at o1 + p1·o2 + … + (p1·…·pL)·m per
    axis: a mixed-radix number whose digits, most significant first, are m, oL, …, o1.
    """
    levels = len(windows)
    c, m = fragments.shape[1], fragments.shape[2:]
    v = fragments.reshape(batch, *[p for w in windows for p in w], c, *m)
    # axes: 0 = sample, 1 + 3k + a = offset of pool k on axis a, 1 + 3L = channel, 2 + 3L + a = m
    order = [0, 1 + 3 * levels]
    for a in range(3):
        order += [2 + 3 * levels + a] + [1 + 3 * k + a for k in reversed(range(levels))]
    frag = [math.prod(w[a] for w in windows) for a in range(3)]
    return v.transpose(order).reshape(batch, c, *(m[a] * frag[a] for a in range(3)))
