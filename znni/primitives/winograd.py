"""Winograd convolution F(2×2×2, 3×3×3) by generated C++ (Lavin & Gray 2016, in 3D).

For the 3³ kernels of nets like n337 FFT loses (its transforms cost more than the taps they
save) and direct convolution is compute-bound at 216 multiply-adds per 2³ outputs and map
pair; Winograd's minimal filtering needs 64, plus transforms whose cost is shared by all
output (input transform) or input (output transform) maps. F(2,3) keeps float32 within 1e-5
of the reference; larger tiles (F(4,3): 27 % of direct's multiplies) lose digits in 3D.

The kernel transform U = G g Gᵀ (per axis) is computed here once per layer, packed
(64 positions, input maps, output maps padded to the register block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..codegen.loader import default_toolchain, load_kernel
from ..codegen.render import render
from ..spec import Conv, Layer, Shape5
from .base import FLOAT_BYTES, Memory, tensor_bytes
from .direct import ConvStep, conv_context, conv_output_shape

if TYPE_CHECKING:
    from ..hardware import Device

#: F(2, 3): the kernel transform (4×3) for correlation, y = Aᵀ[(G g) ⊙ (Bᵀ d)].
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
#: SIMD registers kept for accumulators (of 32 with AVX-512, 16 with AVX2).
_ACC_REGISTERS = {16: 24, 8: 12, 4: 12}
#: Vectors of tiles per task: two amortise each weight broadcast over two FMAs.
_XV = 2
#: FLOP-equivalents (at the direct kernel's rate) of gathering and transforming one tile's
#: patch of one input map (measured: 26 % of an n337 layer, 80→80 maps, 35³ images).
TRANSFORM_FLOPS = 6000


@dataclass(frozen=True)
class WinogradBlock:
    ob: int  # output maps per register block
    xv: int  # vectors of tiles per task


def choose_block(layer: Conv, vector_width: int) -> WinogradBlock:
    """The output-map block with the fewest padded maps among those filling at least half the
    accumulator registers (larger blocks on ties: fewer passes over the transformed inputs)."""
    budget = _ACC_REGISTERS[vector_width] // _XV
    fo = layer.out_channels
    options = range(max(1, min(fo, budget // 2)), min(fo, budget) + 1)
    ob = min(options, key=lambda b: (-(-fo // b) * b, -b))
    return WinogradBlock(ob, _XV)


def tiles(shape_in: Shape5) -> int:
    """2³-output tiles per sample."""
    return math.prod(-(-(n - 2) // 2) for n in shape_in[2:])


def transform_weights(w: np.ndarray, b: np.ndarray, ob: int) -> tuple[np.ndarray, np.ndarray]:
    """(FO, FI, 3, 3, 3) → U (64, FI, FO padded to a multiple of ob), in float64 then rounded."""
    fo, fi = w.shape[:2]
    u = np.einsum("ai,bj,ck,oxijk->abcxo", _G, _G, _G, w.astype(np.float64))
    padded = np.zeros((64, fi, -(-fo // ob) * ob), np.float32)
    padded[:, :, :fo] = u.reshape(64, fi, fo)
    return padded, np.ascontiguousarray(b, dtype=np.float32)


def winograd_source(layer: Conv, shape_in: Shape5, vector_width: int) -> str:
    block = choose_block(layer, vector_width)
    return render("winograd_conv.cpp.j2", {**conv_context(layer, shape_in),
                                           "vector_width": vector_width,
                                           "xv": block.xv, "ob": block.ob})


class WinogradConv:
    """Primitive ``winograd``: 3×3×3 undilated convs; 64 multiply-adds per 2³-output tile and
    map pair (computed lanes: whole tasks of V·2 tiles, output maps padded to the block)."""

    name = "winograd"
    layer_kind = "conv"

    def supports(self, layer: Layer) -> bool:
        return (isinstance(layer, Conv) and layer.kernel == (3, 3, 3)
                and layer.dilation == (1, 1, 1))

    def _computed_tiles(self, shape_in: Shape5) -> int:
        w = default_toolchain().vector_width * _XV
        return shape_in[0] * -(-tiles(shape_in) // w) * w

    def flops(self, layer: Layer, shape_in: Shape5) -> int:
        """The products (2 per multiply-add) and the input and output transforms' additions
        (per tile: 3·64 per input map, ~2·(64+16+4)·… per output map: 192 and 84)."""
        assert isinstance(layer, Conv)
        t = shape_in[0] * tiles(shape_in)
        fi, fo = layer.in_channels, layer.out_channels
        return t * (2 * 64 * fi * fo + 192 * fi + 84 * fo)

    def estimate(self, layer: Layer, shape_in: Shape5, device: Device) -> float:
        """Seconds: the computed products at the direct kernel's rate (the same register-
        blocked broadcast-FMA loop, measured near peak here), the input transforms in
        FLOP-equivalents at that rate (its 64 gathers per tile and input map dominate: ~190
        cycles per tile and map on Zen 4, TRANSFORM_FLOPS), and the fresh output's first
        touch."""
        assert isinstance(layer, Conv)
        block = choose_block(layer, default_toolchain().vector_width)
        t = self._computed_tiles(shape_in)
        fop = -(-layer.out_channels // block.ob) * block.ob
        products = 2 * 64 * layer.in_channels * fop * t
        transforms = TRANSFORM_FLOPS * layer.in_channels * t
        out = tensor_bytes(conv_output_shape(layer, shape_in))
        return (products + transforms) / device.direct_flops + out / device.fresh_rate

    def memory(self, layer: Layer, shape_in: Shape5) -> Memory:
        """Input + output tensors; resident U (64 taps per map pair); per thread the tasks'
        transformed patches and outputs (counted for 2 threads: < 1 MiB each at 80 maps)."""
        assert isinstance(layer, Conv)
        block = choose_block(layer, default_toolchain().vector_width)
        fop = -(-layer.out_channels // block.ob) * block.ob
        v = default_toolchain().vector_width
        per_thread = FLOAT_BYTES * v * block.xv * (64 * layer.in_channels + 8 * fop)
        return Memory(resident=FLOAT_BYTES * (64 * layer.in_channels * fop + fop),
                      working=tensor_bytes(shape_in) + tensor_bytes(conv_output_shape(
                          layer, shape_in)) + 16 * per_thread)

    def prepare(self, index: int, layer: Layer, shape_in: Shape5,
                weights: tuple[np.ndarray, np.ndarray] | None, threads: int) -> ConvStep:
        assert isinstance(layer, Conv) and weights is not None
        toolchain = default_toolchain()
        block = choose_block(layer, toolchain.vector_width)
        label = (f"layer {index} (winograd {layer.in_channels}->{layer.out_channels}, "
                 f"n {'x'.join(map(str, shape_in[2:]))})")
        module = load_kernel(winograd_source(layer, shape_in, toolchain.vector_width), label,
                             toolchain)
        return ConvStep(module, layer, shape_in, transform_weights(*weights, block.ob), threads)
