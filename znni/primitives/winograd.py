"""Winograd convolution F(m³, 3³) by generated C++ (Lavin & Gray 2016, in 3D), m = 2 or 4,
and its anisotropic kin (3×3×1, 1×3×3, …: F(m, 3) on 3-tap axes, no transform on 1-tap ones).

For the 3³ kernels of nets like n337 FFT loses (its transforms cost more than the taps they
save) and direct convolution is compute-bound at 27 multiply-adds per output and map pair.
Winograd's minimal filtering needs (m+2)³/m³ of them — 8 for F(2³), 3.375 for F(4³) — plus
transforms whose cost is shared by all output (input transform) or input (output transform)
maps. Larger tiles lose digits: F(4³) uses the interpolation points 0, ±1, ½, −2 (Barabasz et
al. 2020: the most accurate set for F(4, 3)): float32 within ~1.2e-5 of the reference per
80-map layer against 3.5e-5 for 0, ±1, ±2 (docs/design.md §5.5); F(2³) stays within 1e-6.

The kernel transform U = G g Gᵀ (per axis) is computed here once per layer in float64 and
packed (P = α_z·α_y·α_x positions, input maps, output maps padded to the register block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..codegen.loader import default_toolchain, load_kernel
from ..codegen.render import render
from ..spec import Conv, Layer, Shape5
from ..winograd_tiles import TILES, WinogradTile, axis_tiles
from .base import FLOAT_BYTES, Memory, tensor_bytes
from .direct import ConvStep, conv_context, conv_output_shape

if TYPE_CHECKING:
    from ..hardware import Device

#: SIMD registers kept for accumulators (of 32 with AVX-512, 16 with AVX2).
_ACC_REGISTERS = {16: 24, 8: 12, 4: 12}
#: Vectors of tiles per task. One: a task's transformed patches and products then stay near
#: L2 size (P·FI·V floats each; 1.1 MB for F(4³), 80 maps, AVX-512), where two spilled to L3
#: and lost more than a broadcast per FMA costs (Zen 4, n337's layers: 1.2–1.46× faster with
#: blocks of 1×20 than 2×10, bench/results/winograd.md).
_XV = 1
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


Tiles = tuple[WinogradTile, ...]


def tiles(shape_in: Shape5, axes: Tiles) -> int:
    """Tiles per sample (m_z·m_y·m_x outputs each)."""
    return math.prod(-(-(n - t.taps + 1) // t.m) for n, t in zip(shape_in[2:], axes,
                                                                   strict=True))


def positions(axes: Tiles) -> int:
    """Transformed values per tile and map: α_z·α_y·α_x."""
    return math.prod(t.alpha for t in axes)


def transform_flops(axes: Tiles, per: str) -> int:
    """FLOPs of one tile's transform of one map (three 1-D passes of dense matrices, none
    along identity axes): ``per`` "input" (α → α per line) or "output" (α → m)."""
    flops, lines = 0, [t.alpha for t in axes]
    for axis in (2, 1, 0):  # x, then y, then z, as generated
        t = axes[axis]
        out = t.alpha if per == "input" else t.m
        if t.taps > 1:
            flops += 2 * math.prod(lines) * out  # lines of α values, each out × α FMAs
        lines[axis] = out
    return flops


def transform_weights(w: np.ndarray, b: np.ndarray, axes: Tiles,
                      ob: int) -> tuple[np.ndarray, np.ndarray]:
    """(FO, FI, kz, ky, kx) → U (P, FI, FO padded to a multiple of ob), in float64 then
    rounded."""
    fo, fi = w.shape[:2]
    gz, gy, gx = (np.array(t.g, dtype=np.float64) for t in axes)
    # axis by axis (optimize): the one-shot 4-operand contraction took ~3 s on 256² maps
    u = np.einsum("ai,bj,ck,oxijk->abcxo", gz, gy, gx, w.astype(np.float64), optimize=True)
    p = positions(axes)
    padded = np.zeros((p, fi, -(-fo // ob) * ob), np.float32)
    padded[:, :, :fo] = u.reshape(p, fi, fo)
    return padded, np.ascontiguousarray(b, dtype=np.float32)


def winograd_source(layer: Conv, shape_in: Shape5, tile: WinogradTile,
                    vector_width: int) -> str:
    block = choose_block(layer, vector_width)
    tz, ty, tx = axis_tiles(tile, layer.kernel)
    return render("winograd_conv.cpp.j2", {
        **conv_context(layer, shape_in), "tile_z": tz.name, "tile_y": ty.name,
        "tile_x": tx.name, "vector_width": vector_width, "xv": block.xv, "ob": block.ob})


class WinogradConv:
    """Primitive ``winograd`` (F(2, 3) per 3-tap axis) or ``winograd-f4`` (F(4, 3)):
    undilated convs whose kernel edges are 3 or 1, at least one 3 (3³, 3×3×1, 1×3×3, …);
    P = α_z·α_y·α_x multiply-adds per tile and map pair (computed lanes: whole tasks of
    V·XV tiles, output maps padded to the block)."""

    layer_kind = "conv"
    precision = "fp32"

    def __init__(self, tile: str) -> None:
        self.tile: WinogradTile = TILES[tile]
        self.name = "winograd" if tile == "f2" else f"winograd-{tile}"

    def supports(self, layer: Layer) -> bool:
        return (isinstance(layer, Conv) and set(layer.kernel) <= {1, 3}
                and 3 in layer.kernel and layer.dilation == (1, 1, 1))

    def _computed_tiles(self, shape_in: Shape5, axes: Tiles) -> int:
        w = default_toolchain().vector_width * _XV
        return shape_in[0] * -(-tiles(shape_in, axes) // w) * w

    def flops(self, layer: Layer, shape_in: Shape5) -> int:
        """The products (2 per multiply-add) and the input and output transforms (per tile:
        1-D passes of dense matrices per input and per output map)."""
        assert isinstance(layer, Conv)
        axes = axis_tiles(self.tile, layer.kernel)
        t = shape_in[0] * tiles(shape_in, axes)
        fi, fo = layer.in_channels, layer.out_channels
        return t * (2 * positions(axes) * fi * fo + transform_flops(axes, "input") * fi
                    + transform_flops(axes, "output") * fo)

    def estimate(self, layer: Layer, shape_in: Shape5, device: Device) -> float:
        """Seconds at the direct kernel's rate (the same register-blocked broadcast-FMA loop,
        measured near peak here): the computed products; the input transforms in FLOP-
        equivalents (their gathers dominate: ~3 cycles per position, tile and input map on
        Zen 4, TRANSFORM_FLOPS_PER_POSITION); the output transforms (three 1-D passes) and
        the scatter; and the fresh output's first touch."""
        assert isinstance(layer, Conv)
        block = choose_block(layer, default_toolchain().vector_width)
        axes = axis_tiles(self.tile, layer.kernel)
        t = self._computed_tiles(shape_in, axes)
        p, outputs_per_tile = positions(axes), math.prod(a.m for a in axes)
        fop = -(-layer.out_channels // block.ob) * block.ob
        products = 2 * p * layer.in_channels * fop * t
        inputs = TRANSFORM_FLOPS_PER_POSITION * p * layer.in_channels * t
        outputs = (transform_flops(axes, "output") + SCATTER_FLOPS * outputs_per_tile) * fop * t
        out = tensor_bytes(conv_output_shape(layer, shape_in))
        return (products + inputs + outputs) / device.direct_flops + out / device.fresh_rate

    def memory(self, layer: Layer, shape_in: Shape5) -> Memory:
        """Input + output tensors; resident U (P taps per map pair); per thread the task's
        transformed patches and products (counted for 16 threads)."""
        assert isinstance(layer, Conv)
        block = choose_block(layer, default_toolchain().vector_width)
        fop = -(-layer.out_channels // block.ob) * block.ob
        v, p = default_toolchain().vector_width, positions(axis_tiles(self.tile, layer.kernel))
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
                        transform_weights(*weights, axis_tiles(self.tile, layer.kernel),
                                          block.ob), threads)
