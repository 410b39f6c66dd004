"""Direct convolution by generated C++ (docs/design.md §5.1).

Sizes are compile-time constants; the register block (OB output channels × XV vectors) is
chosen here from a small cost model of the inner loop, so the template stays logic-light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..codegen.loader import KernelModule, default_toolchain, load_kernel
from ..codegen.render import render
from ..precision import check_precision, pair_channels
from ..spec import Conv, Layer, Shape5, Vec3
from .base import FLOAT_BYTES, Memory, output_buffer, tensor_bytes

if TYPE_CHECKING:
    from ..hardware import Device

#: SIMD registers kept for accumulators (of 32 with AVX-512, 16 with AVX2).
_ACC_REGISTERS = {16: 24, 8: 12, 4: 12}
#: L1 bytes given to one input-channel chunk's rows (of 48 KiB). On n337 shapes chunking measured
#: within run-to-run noise (±15 %) of none; it bounds the working set for wider layers.
_L1_INPUT_BYTES = 32 * 1024
_MAX_UNROLLED_TAPS = 32
#: Multiply-adds per instruction of a bf16 dot product (vdpbf16ps) over an FMA: the model's
#: ideal; calibration measures what a CPU makes of it (2× on Zen 4, less where the instruction
#: issues on fewer ports than FMAs, ~0.5× where it is emulated).
BF16_GAIN = 2.0


@dataclass(frozen=True)
class RegisterBlock:
    ob: int  # output channels per block
    xv: int  # vectors along the flat position axis
    ic: int  # input channels per chunk (the chunk's input rows should stay in L1)


def _span(layer: Conv, shape_in: Shape5) -> tuple[Vec3, int]:
    """Valid output extent and the flat positions the kernel computes (whole rows between the
    first and the last valid output)."""
    _, _, nz, ny, nx = shape_in
    oz, oy, ox = (nz - layer.span[0] + 1, ny - layer.span[1] + 1, nx - layer.span[2] + 1)
    return (oz, oy, ox), (oz - 1) * ny * nx + (oy - 1) * nx + ox


def useful_fraction(layer: Conv, shape_in: Shape5) -> float:
    """Useful share of the lanes the kernel computes: valid positions of the flat span, times
    real output channels of the register blocks, times the last vector's filled lanes."""
    vw = default_toolchain().vector_width
    block = choose_block(layer, shape_in, vw)
    out, span = _span(layer, shape_in)
    lanes = -(-span // (block.xv * vw)) * block.xv * vw
    channels = -(-layer.out_channels // block.ob) * block.ob
    return math.prod(out) / lanes * layer.out_channels / channels


def choose_block(layer: Conv, shape_in: Shape5, vector_width: int) -> RegisterBlock:
    """Minimise modelled cycles: blocks × segments × cycles per inner iteration.

    An iteration issues ob·xv FMAs (2 per cycle) but needs ≥ 16 accumulators in flight to hide
    FMA latency behind the loads, plus xv loads and ob broadcasts (≈ ¼ cycle each once
    overlapped). Padding channels to a multiple of ob and positions to a multiple of xv·V is
    wasted work. Measured on n337 shapes: 5×4 / 6×4 / 8×3 blocks beat 4×2 by ~1.5×.
    """
    _, span = _span(layer, shape_in)
    budget = _ACC_REGISTERS[vector_width]
    best: tuple[float, RegisterBlock] | None = None
    for xv in range(1, 5):
        for ob in range(1, min(layer.out_channels, budget // xv) + 1):
            cycles = max(ob * xv, 16) / 2 + (ob + xv) / 4
            cost = (math.ceil(layer.out_channels / ob) * math.ceil(span / (xv * vector_width))
                    * cycles)
            if best is None or cost < best[0]:
                best = (cost, RegisterBlock(ob, xv, 0))
    assert best is not None
    block = best[1]
    row_bytes = (block.xv * vector_width + layer.span[2] - 1 + 15) // 16 * 64
    per_channel = layer.kernel[0] * layer.kernel[1] * row_bytes
    ic = max(1, min(layer.in_channels, _L1_INPUT_BYTES // per_channel))
    return RegisterBlock(block.ob, block.xv, ic)


def pack_weights(w: np.ndarray, b: np.ndarray, ob: int,
                 precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """(FO, FI, kz, ky, kx) → (blocks, FI, kz, ky, kx, ob), zero-padding FO to a multiple of ob,
    so each broadcast of the inner loop reads consecutive memory. bf16: FI becomes channel
    pairs (:func:`~znni.precision.pair_channels`), the words handed over as float32 bits."""
    if precision == "bf16":
        w = pair_channels(w)
    fo = w.shape[0]
    blocks = -(-fo // ob)
    wp = np.zeros((blocks * ob, *w.shape[1:]), w.dtype)
    wp[:fo] = w
    wp = wp.reshape(blocks, ob, *w.shape[1:]).transpose(0, 2, 3, 4, 5, 1)
    bp = np.zeros(blocks * ob, np.float32)
    bp[:fo] = b
    return np.ascontiguousarray(wp).view(np.float32), bp


def conv_output_shape(layer: Conv, shape_in: Shape5) -> Shape5:
    s, _, nz, ny, nx = shape_in
    kz, ky, kx = layer.span
    return (s, layer.out_channels, nz - kz + 1, ny - ky + 1, nx - kx + 1)


def conv_context(layer: Conv, shape_in: Shape5) -> dict[str, int | str]:
    """Template variables every direct-conv template (C++ and CUDA) needs: maps, kernel,
    dilation, image and activation."""
    _, _, nz, ny, nx = shape_in
    return {"f_in": layer.in_channels, "f_out": layer.out_channels,
            "kz": layer.kernel[0], "ky": layer.kernel[1], "kx": layer.kernel[2],
            "dz": layer.dilation[0], "dy": layer.dilation[1], "dx": layer.dilation[2],
            "nz": nz, "ny": ny, "nx": nx, "activation": layer.activation}


def direct_source(layer: Conv, shape_in: Shape5, vector_width: int,
                  precision: str = "fp32") -> str:
    """The generated C++ for one layer shape (viewable without compiling)."""
    block = choose_block(layer, shape_in, vector_width)
    return render("direct_conv.cpp.j2", {
        **conv_context(layer, shape_in), "precision": check_precision(precision),
        "vector_width": vector_width, "xv": block.xv, "ob": block.ob, "ic": block.ic,
        # Unrolling the tap rows pays on small kernels (+25 % on 3³) but makes g++ run for
        # minutes on 7³ and larger: unroll only kernels of at most _MAX_UNROLLED_TAPS taps.
        "row_unroll": 16 if math.prod(layer.kernel) <= _MAX_UNROLLED_TAPS else 1,
    })


class ConvStep:
    """A compiled conv kernel (direct or Winograd) for one input shape (any batch size), with
    its weights already packed the way that kernel reads them."""

    def __init__(self, module: KernelModule, layer: Conv, shape_in: Shape5,
                 packed: tuple[np.ndarray, np.ndarray], threads: int) -> None:
        self.module = module
        self.layer = layer
        self.shape_in = shape_in
        self.weights, self.bias = packed
        self.threads = threads
        self.input_slack = module.input_slack

    def run(self, x: np.ndarray, out_slack: int,
            out: np.ndarray | None = None) -> np.ndarray:
        if x.shape[1:] != self.shape_in[1:]:
            raise ValueError(f"conv compiled for {self.shape_in[1:]}, got {x.shape[1:]}")
        out = output_buffer(conv_output_shape(self.layer, (x.shape[0], *self.shape_in[1:])),
                            out_slack, out)
        self.module.forward(x, out, self.threads, self.weights, self.bias)
        return out


class DirectConv:
    """Primitive ``direct``: FLOPs 2·S·f·f′·n′·k³, memory S·f·n + S·f′·n′ (+ weights).

    ``direct-bf16`` (``precision="bf16"``) runs the same loops on bf16 channel pairs with
    float32 accumulation; its input is first rounded into a buffer of half its size."""

    layer_kind = "conv"

    def __init__(self, precision: str = "fp32") -> None:
        self.precision = check_precision(precision)
        self.name = "direct" if precision == "fp32" else f"direct-{precision}"

    def supports(self, layer: Layer) -> bool:
        return isinstance(layer, Conv)

    def flops(self, layer: Layer, shape_in: Shape5) -> int:
        assert isinstance(layer, Conv)
        out = conv_output_shape(layer, shape_in)
        return 2 * int(np.prod(out)) * layer.in_channels * math.prod(layer.kernel)

    def estimate(self, layer: Layer, shape_in: Shape5, device: Device) -> float:
        """Seconds: computed lanes at the calibrated direct rate, or streaming the input and
        output once at the memory bandwidth, whichever is slower (first layers, f = 1), plus
        the first touch of the fresh output tensor."""
        assert isinstance(layer, Conv)
        compute = self.flops(layer, shape_in) / useful_fraction(layer, shape_in)
        out = tensor_bytes(conv_output_shape(layer, shape_in))
        traffic = tensor_bytes(shape_in) + out
        rate = device.direct_flops * (BF16_GAIN if self.precision == "bf16" else 1.0)
        return (max(compute / rate, traffic / device.bandwidth)
                + (out + self._pairs_bytes(layer, shape_in)) / device.fresh_rate)

    def _pairs_bytes(self, layer: Conv, shape_in: Shape5) -> int:
        """The bf16 kernel's buffer of input channel pairs (none in float32)."""
        if self.precision != "bf16":
            return 0
        samples, _, *image = shape_in
        return FLOAT_BYTES * samples * -(-layer.in_channels // 2) * math.prod(image)

    def memory(self, layer: Layer, shape_in: Shape5) -> Memory:
        assert isinstance(layer, Conv)
        weights = (layer.out_channels + 32) * (layer.in_channels * math.prod(layer.kernel) + 1)
        return Memory(resident=weights * FLOAT_BYTES,
                      working=(tensor_bytes(shape_in) + self._pairs_bytes(layer, shape_in)
                               + tensor_bytes(conv_output_shape(layer, shape_in))))

    def prepare(self, index: int, layer: Layer, shape_in: Shape5,
                weights: tuple[np.ndarray, np.ndarray] | None, threads: int) -> ConvStep:
        assert isinstance(layer, Conv) and weights is not None
        toolchain = default_toolchain()
        vw = toolchain.vector_width
        block = choose_block(layer, shape_in, vw)
        source = direct_source(layer, shape_in, vw, self.precision)
        label = (f"layer {index} ({self.name} {layer.in_channels}->{layer.out_channels}, "
                 f"k {'x'.join(map(str, layer.kernel))}, n {'x'.join(map(str, shape_in[2:]))})")
        module = load_kernel(source, label, toolchain)
        return ConvStep(module, layer, shape_in,
                        pack_weights(*weights, block.ob, self.precision), threads)
