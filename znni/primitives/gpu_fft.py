"""FFT convolution on the GPU with cuFFT (docs/design.md §6): rendering, memory and FLOP models.

The layer transforms its inputs and kernels with pruned batched 1D passes, multiplies in the
frequency domain and inverse-transforms only what the valid crop keeps (``fft_conv.cu.j2``).
"""

from __future__ import annotations

import math

from ..codegen.render import render
from ..fft.sizes import fft_size
from ..spec import Conv, Shape5, Vec3
from .gpu_kernels import THREADS

COMPLEX_BYTES = 8


def transform_size(shape_in: Shape5) -> Vec3:
    """FFT-friendly transform extent per axis (≥ the image: the valid crop needs no more)."""
    return (fft_size(shape_in[2]), fft_size(shape_in[3]), fft_size(shape_in[4]))


def spectrum_elements(shape_in: Shape5) -> int:
    """Complex values of one image's half spectrum."""
    mz, my, mx = transform_size(shape_in)
    return mz * my * (mx // 2 + 1)


def gpu_fft_source(layer: Conv, shape_in: Shape5) -> str:
    _, _, nz, ny, nx = shape_in
    mz, my, mx = transform_size(shape_in)
    return render("fft_conv.cu.j2", {
        "f_in": layer.in_channels, "f_out": layer.out_channels,
        "kz": layer.kernel[0], "ky": layer.kernel[1], "kx": layer.kernel[2],
        "nz": nz, "ny": ny, "nx": nx, "mz": mz, "my": my, "mx": mx,
        "activation": layer.activation, "threads": THREADS})


def gpu_fft_scratch_bytes(layer: Conv, shape_in: Shape5) -> int:
    """Device bytes the layer allocates beyond its input and output (the template's
    allocations; all live until it returns): input, kernel and output spectra, the inverse's
    cropped planes and rows, and each forward transform's padded rows and transposed planes.
    cuFFT's own work areas (≲ one pass's buffer) are not counted."""
    s, f, nz, ny, _ = shape_in
    fo = layer.out_channels
    _, my, mx = transform_size(shape_in)
    cx = mx // 2 + 1
    oz, oy = nz - layer.kernel[0] + 1, ny - layer.kernel[1] + 1
    outputs = s * fo

    def forward(count: int, rz: int, ry: int) -> int:
        return count * rz * (ry * mx * 4 + (ry * cx + cx * my) * COMPLEX_BYTES)

    spectra = (s * f + f * fo + outputs) * spectrum_elements(shape_in) * COMPLEX_BYTES
    inverse = outputs * oz * (cx * my * COMPLEX_BYTES + oy * cx * COMPLEX_BYTES + oy * mx * 4)
    return (spectra + inverse + forward(s * f, nz, ny)
            + forward(f * fo, layer.kernel[0], layer.kernel[1]))


def gpu_fft_flops(layer: Conv, shape_in: Shape5) -> float:
    """Transform FLOPs (5·n·log2 n per complex line of n, half for real lines) of the pruned
    passes, plus 8 per complex MAC."""
    s, f = shape_in[0], layer.in_channels
    fo = layer.out_channels
    mz, my, mx = transform_size(shape_in)
    cx = mx // 2 + 1
    _, _, nz, ny, _ = shape_in
    oz, oy = nz - layer.kernel[0] + 1, ny - layer.kernel[1] + 1

    def forward(count: int, rz: int, ry: int) -> float:
        return count * (rz * ry * 2.5 * mx * math.log2(mx) + rz * cx * 5 * my * math.log2(my)
                        + cx * my * 5 * mz * math.log2(mz))

    kz, ky, _ = layer.kernel
    inverse = s * fo * (cx * my * 5 * mz * math.log2(mz) + oz * cx * 5 * my * math.log2(my)
                        + oz * oy * 2.5 * mx * math.log2(mx))
    mac = 8.0 * s * f * fo * mz * my * cx
    return forward(s * f, nz, ny) + forward(f * fo, kz, ky) + inverse + mac
