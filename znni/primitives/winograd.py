"""Winograd convolution F(m³, 3³) by generated C++ (Lavin & Gray 2016, in 3D), m = 2 or 4.

For the 3³ kernels of nets like n337 FFT loses (its transforms cost more than the taps they
save) and direct convolution is compute-bound at 27 multiply-adds per output and map pair.
Winograd's minimal filtering needs (m+2)³/m³ of them — 8 for F(2³), 3.375 for F(4³) — plus
transforms whose cost is shared by all output (input transform) or input (output transform)
maps. Larger tiles lose digits: F(4³) uses the interpolation points 0, ±1, ½, −2 (Barabasz et
al. 2020: the most accurate set for F(4, 3)): float32 within ~1.2e-5 of the reference per
80-map layer against 3.5e-5 for 0, ±1, ±2 (docs/design.md §5.5); F(2³) stays within 1e-6.

The kernel transform U = G g Gᵀ (per axis) is computed here once per layer in float64 and
packed ((m+2)³ positions, input maps, output maps padded to the register block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..codegen.loader import default_toolchain, load_kernel
from ..codegen.render import render
from ..spec import Conv, Layer, Shape5
from ..winograd_tiles import TILES, WinogradTile
from .base import FLOAT_BYTES, Memory, tensor_bytes
from .direct import ConvStep, conv_context, conv_output_shape

if TYPE_CHECKING:
    from ..hardware import Device

#: SIMD registers kept for accumulators (of 32 with AVX-512, 16 with AVX2).
_ACC_REGISTERS = {16: 24, 8: 12, 4: 12}
#: Vectors of tiles per task: two amortise each weight broadcast over two FMAs.
_XV = 2
#: FLOP-equivalents (at the direct kernel's rate) of gathering and transforming one position
#: of one tile's patch of one input map (measured: 26 % of an n337 layer, 80→80 maps, 35³
#: images, F(2³): 6000 per 64 positions).
TRANSFORM_FLOPS_PER_POSITION = 94
#: FLOP-equivalents of extracting, activating and storing one output voxel.
SCATTER_FLOPS = 8


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


def tiles(shape_in: Shape5, m: int) -> int:
    """m³-output tiles per sample."""
    return math.prod(-(-(n - 2) // m) for n in shape_in[2:])


def transform_weights(w: np.ndarray, b: np.ndarray, tile: WinogradTile,
                      ob: int) -> tuple[np.ndarray, np.ndarray]:
    """(FO, FI, 3, 3, 3) → U ((m+2)³, FI, FO padded to a multiple of ob), in float64 then
    rounded."""
    fo, fi = w.shape[:2]
    g = np.array(tile.g, dtype=np.float64)
    u = np.einsum("ai,bj,ck,oxijk->abcxo", g, g, g, w.astype(np.float64))
    padded = np.zeros((tile.positions, fi, -(-fo // ob) * ob), np.float32)
    padded[:, :, :fo] = u.reshape(tile.positions, fi, fo)
    return padded, np.ascontiguousarray(b, dtype=np.float32)


def winograd_source(layer: Conv, shape_in: Shape5, tile: WinogradTile,
                    vector_width: int) -> str:
    block = choose_block(layer, vector_width)
    return render("winograd_conv.cpp.j2", {
        **conv_context(layer, shape_in), "tile": tile.name,
        "vector_width": vector_width, "xv": block.xv, "ob": block.ob})


class WinogradConv:
    """Primitive ``winograd`` (F(2³, 3³)) or ``winograd-f4`` (F(4³, 3³)): 3×3×3 undilated
    convs; (m+2)³ multiply-adds per m³-output tile and map pair (computed lanes: whole tasks
    of V·XV tiles, output maps padded to the block)."""

    layer_kind = "conv"

    def __init__(self, tile: str) -> None:
        self.tile: WinogradTile = TILES[tile]
        self.name = "winograd" if tile == "f2" else f"winograd-{tile}"

    def supports(self, layer: Layer) -> bool:
        return (isinstance(layer, Conv) and layer.kernel == (3, 3, 3)
                and layer.dilation == (1, 1, 1))

    def _computed_tiles(self, shape_in: Shape5) -> int:
        w = default_toolchain().vector_width * _XV
        return shape_in[0] * -(-tiles(shape_in, self.tile.m) // w) * w

    def flops(self, layer: Layer, shape_in: Shape5) -> int:
        """The products (2 per multiply-add) and the input and output transforms (per tile:
        three 1-D passes of dense matrices per input and per output map)."""
        assert isinstance(layer, Conv)
        t = shape_in[0] * tiles(shape_in, self.tile.m)
        a, m = self.tile.alpha, self.tile.m
        fi, fo = layer.in_channels, layer.out_channels
        return t * (2 * a ** 3 * fi * fo + 6 * a ** 4 * fi + 2 * a * m * (a * a + a * m + m * m)
                    * fo)

    def estimate(self, layer: Layer, shape_in: Shape5, device: Device) -> float:
        """Seconds at the direct kernel's rate (the same register-blocked broadcast-FMA loop,
        measured near peak here): the computed products; the input transforms in FLOP-
        equivalents (their gathers dominate: ~3 cycles per position, tile and input map on
        Zen 4, TRANSFORM_FLOPS_PER_POSITION); the output transforms (three 1-D passes) and
        the scatter; and the fresh output's first touch."""
        assert isinstance(layer, Conv)
        block = choose_block(layer, default_toolchain().vector_width)
        t = self._computed_tiles(shape_in)
        a, m = self.tile.alpha, self.tile.m
        fop = -(-layer.out_channels // block.ob) * block.ob
        products = 2 * a ** 3 * layer.in_channels * fop * t
        inputs = TRANSFORM_FLOPS_PER_POSITION * a ** 3 * layer.in_channels * t
        outputs = (2 * a * m * (a * a + a * m + m * m) + SCATTER_FLOPS * m ** 3) * fop * t
        out = tensor_bytes(conv_output_shape(layer, shape_in))
        return (products + inputs + outputs) / device.direct_flops + out / device.fresh_rate

    def memory(self, layer: Layer, shape_in: Shape5) -> Memory:
        """Input + output tensors; resident U ((m+2)³ taps per map pair); per thread the
        task's transformed patches and products (counted for 16 threads)."""
        assert isinstance(layer, Conv)
        block = choose_block(layer, default_toolchain().vector_width)
        fop = -(-layer.out_channels // block.ob) * block.ob
        v, p = default_toolchain().vector_width, self.tile.positions
        per_thread = FLOAT_BYTES * v * block.xv * p * (layer.in_channels + fop)
        return Memory(resident=FLOAT_BYTES * (p * layer.in_channels * fop + fop),
                      working=tensor_bytes(shape_in) + tensor_bytes(conv_output_shape(
                          layer, shape_in)) + 16 * per_thread)

    def prepare(self, index: int, layer: Layer, shape_in: Shape5,
                weights: tuple[np.ndarray, np.ndarray] | None, threads: int) -> ConvStep:
        assert isinstance(layer, Conv) and weights is not None
        toolchain = default_toolchain()
        block = choose_block(layer, toolchain.vector_width)
        label = (f"layer {index} ({self.name} {layer.in_channels}->{layer.out_channels}, "
                 f"n {'x'.join(map(str, shape_in[2:]))})")
        module = load_kernel(
            winograd_source(layer, shape_in, self.tile, toolchain.vector_width), label, toolchain)
        return ConvStep(module, layer, shape_in,
                        transform_weights(*weights, self.tile, block.ob), threads)
