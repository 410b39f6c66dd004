"""Running a layer over its own input buffer: the memory-frugal form of every primitive.

A layer normally needs its input and output tensors at once; deep in a network with large
patches (n537's 8×80×95³ and 64×80×45³ tensors at a 4 GiB budget) that pair alone nearly fills
the budget, leaving no room for FFT spectra. Every primitive handles its samples independently,
and a layer's output per sample is never larger than its input per sample (valid convs shrink,
pooling fragments regroup the same voxels), so the layer can run a few units at a time and
write each pass's output at its final place in the *input* buffer, which the passes already
consumed: output units ``[0, u)`` end before input unit ``u`` starts.

- conv: a unit is a sample; the primitive is prepared for ``group`` samples and run pass by pass
  (FFT kernel data is remade per pass: the planner weighs that against the memory saved).
- pool (MPF): a unit is one map of one sample; the fragments are produced map by map (the
  fragments of a map lie together, ``(S, C, P, …)``), then the C×P blocks of each sample are
  transposed in place into MPF's ``(S, P, C, …)`` order. This works for S = 1, where the first
  pool's input and output tensors are the largest of the whole network.

The in-place form is chosen per layer by the planner (``LayerPlan.in_place``: units per pass,
0 for a fresh output tensor). Never for layer 0, whose input buffer the caller reuses.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np

from ..scratch import Scratch
from ..spec import Conv, Layer, Pool, Shape5
from .base import Memory, Primitive, Step, release_tail, tensor_bytes
from .direct import conv_output_shape
from .mpf import mpf_output_shape

if TYPE_CHECKING:
    from ..hardware import Device

#: In-place MPF: the fragments of one pass take at most this share of the input tensor.
MPF_PASS_FRACTION = 1 / 16
#: Seconds of Python per block moved by the in-place transposition (measured ~1 µs, doubled).
BLOCK_MOVE_SECONDS = 2e-6
#: Seconds each pass costs beyond its share of the work: the kernel call, its threads' start
#: and scratch, the last task's imbalance. Measured on n337's 26³ Winograd layer (512 samples,
#: 80 maps): 512 passes of one sample took 0.29 s more than 2 of 256 (1.1 ms per pass); 32 of
#: 16 took no longer. Without it the reused pass buffer (below) made the smallest passes look
#: cheapest.
PASS_SECONDS = 1e-3


def output_shape(layer: Layer, shape_in: Shape5) -> Shape5:
    if isinstance(layer, Pool):
        return mpf_output_shape(layer, shape_in)
    assert isinstance(layer, Conv)
    return conv_output_shape(layer, shape_in)


def units(layer: Layer, shape_in: Shape5) -> int:
    """Units of ``shape_in`` that run independently: samples (conv) or sample maps (pool)."""
    return shape_in[0] * (shape_in[1] if isinstance(layer, Pool) else 1)


def groups(layer: Layer, shape_in: Shape5) -> list[int]:
    """The units-per-pass values worth planning (none where the output is not smaller than
    the input). Conv: S/2, S/4, … 1 samples; pool: one pass size, MPF_PASS_FRACTION; max
    filters: none (their output is barely smaller than their input)."""
    if isinstance(layer, Pool) and layer.max_filter:
        return []
    if math.prod(output_shape(layer, shape_in)) >= math.prod(shape_in):
        return []
    n = units(layer, shape_in)
    if isinstance(layer, Pool):
        return [max(1, int(n * MPF_PASS_FRACTION))] if n > 1 else []
    out = []
    d = 2
    while d <= 2 * n:
        g = -(-n // d)
        if g < n and g not in out:
            out.append(g)
        d *= 2
    return out


def pass_shape(layer: Layer, shape_in: Shape5, group: int) -> Shape5:
    """The shape the inner step is prepared for: ``group`` units."""
    _, c, *n = shape_in
    if isinstance(layer, Pool):
        return (group, 1, n[0], n[1], n[2])
    return (group, c, n[0], n[1], n[2])


def passes(layer: Layer, shape_in: Shape5, group: int) -> int:
    return -(-units(layer, shape_in) // group)


def memory(primitive: Primitive, layer: Layer, shape_in: Shape5, group: int) -> Memory:
    """The input buffer (which becomes the output) plus one pass's working memory beyond its
    input, which is a view of the buffer."""
    inner = primitive.memory(layer, pass_shape(layer, shape_in, group))
    extra = inner.working - tensor_bytes(pass_shape(layer, shape_in, group))
    return Memory(inner.resident, tensor_bytes(shape_in) + extra)


def overhead_seconds(layer: Layer, shape_in: Shape5, group: int, device: Device) -> float:
    """Copying each pass's output into place (read + write), and for pools the transposition
    (read + write, plus Python per block)."""
    out = tensor_bytes(output_shape(layer, shape_in))
    if isinstance(layer, Pool):
        blocks = shape_in[0] * shape_in[1] * math.prod(layer.window)
        return 4 * out / device.bandwidth + blocks * BLOCK_MOVE_SECONDS
    return 2 * out / device.bandwidth


def seconds(primitive: Primitive, pass_seconds: float, layer: Layer, shape_in: Shape5,
            group: int, device: Device) -> float:
    """The layer's time from one full pass's time, which includes the first touch of its
    output and scratch at the passes' rate (:meth:`Device.passing`): the passes after the
    first reuse the first one's buffers and pay none."""
    n = passes(layer, shape_in, group)
    one = pass_shape(layer, shape_in, group)
    scratch = getattr(primitive, "scratch_bytes", None)  # primitives that keep Scratch
    reused = (n - 1) * (tensor_bytes(output_shape(layer, one))
                        + (scratch(layer, one) if scratch else 0))
    return (n * (pass_seconds + PASS_SECONDS) - reused / device.passing().fresh_rate
            + overhead_seconds(layer, shape_in, group, device))


def prepare(primitive: Primitive, index: int, layer: Layer, shape_in: Shape5,
            weights: tuple[np.ndarray, np.ndarray] | None, threads: int, group: int) -> Step:
    inner = primitive.prepare(index, layer, pass_shape(layer, shape_in, group), weights,
                              threads)
    return InPlaceStep(inner, layer, shape_in, group)


def _owner(x: np.ndarray) -> np.ndarray:
    """The whole 1-D float32 allocation ``x`` starts (slack included), to write over."""
    base = x.base if x.base is not None else x
    if (base.ndim != 1 or not x.flags.c_contiguous
            or x.__array_interface__["data"][0] != base.__array_interface__["data"][0]):
        raise ValueError("in-place layer needs a contiguous buffer starting its allocation")
    return base


class InPlaceStep:
    """``inner`` run ``group`` units at a time, its outputs written over the consumed input."""

    def __init__(self, inner: Step, layer: Layer, shape_in: Shape5, group: int) -> None:
        self.inner = inner
        self.layer = layer
        self.shape_in = shape_in
        self.group = group
        self.input_slack = inner.input_slack

    def run(self, x: np.ndarray, out_slack: int,
            out: np.ndarray | None = None) -> np.ndarray:
        if out is not None:
            raise ValueError("an in-place layer writes over its input, not into another buffer")
        shape_out = output_shape(self.layer, x.shape)
        buffer = _owner(x)
        total = math.prod(shape_out)
        if total + out_slack > buffer.size:
            raise ValueError(f"in-place layer: output {shape_out} + {out_slack} floats of "
                             f"slack do not fit the input buffer of {buffer.size} floats")
        pool = isinstance(self.layer, Pool)
        unit_view = x.reshape(-1, 1, *x.shape[2:]) if pool else x
        n = unit_view.shape[0]
        per_unit = total // n
        # One pass output for all passes, and the inner step's scratch held across them:
        # their pages fault once, not once per pass.
        passes = np.empty(min(n, self.group) * per_unit, np.float32)
        scratch = getattr(self.inner, "scratch", None)
        with scratch.held() if isinstance(scratch, Scratch) else nullcontext():
            for u0 in range(0, n, self.group):
                units_in = unit_view[u0:u0 + self.group]
                part = passes[:units_in.shape[0] * per_unit].reshape(
                    output_shape(self.layer, units_in.shape))
                self.inner.run(units_in, 0, part)
                buffer[u0 * per_unit:u0 * per_unit + part.size] = part.reshape(-1)
        del passes, part
        out = buffer[:total]
        release_tail(buffer, total + out_slack)
        if isinstance(self.layer, Pool):  # = pool, narrowed for the type checker
            p = math.prod(self.layer.window)
            s, c = x.shape[:2]
            frag = total // (s * c * p)
            for sample in out.reshape(s, c * p, frag):
                transpose_blocks(sample, c, p)
        return out.reshape(shape_out)


def transpose_blocks(blocks: np.ndarray, rows: int, cols: int) -> None:
    """In place: ``blocks`` ``(rows·cols, n)``, a rows×cols matrix of n-float blocks in
    row-major order, becomes its cols×rows transpose (cycle following, one block of scratch)."""
    total = rows * cols
    done = np.zeros(total, bool)
    scratch = np.empty(blocks.shape[1], blocks.dtype)
    for start in range(1, total - 1):
        if done[start]:
            continue
        scratch[:] = blocks[start]
        i = start
        while True:
            done[i] = True
            src = (i % rows) * cols + i // rows  # the block that belongs at position i
            if src == start:
                blocks[i] = scratch
                break
            blocks[i] = blocks[src]
            i = src

