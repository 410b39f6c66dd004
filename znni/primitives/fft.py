"""FFT convolution (DESIGN §5.2–5.3): transforms by FFTW/pruned DFTs, spectral MAC by generated C++.

One algorithm, two schedules, two transform kinds — four primitives:

- ``fft-pruned`` / ``fft`` (task-parallel, ZNNi's algorithm 2): all S·f′ output spectra are
  accumulated at once; input spectra are freed before the inverse transforms.
- ``fft-pruned-data`` / ``fft-data`` (data-parallel, algorithm 1): output maps are accumulated a
  few at a time and inverse-transformed at once, so only S·(few) output spectra ever exist — the
  lean choice for the first layer's huge images.

Every schedule transforms each kernel once per patch and reuses it for all S samples (kernels
are transformed in blocks of ``out_chunk × in_block`` maps, sized to a fixed scratch budget).
Correlation is convolution with the flipped kernel; the valid part starts at k−1 per axis, where
circular wrap-around (transform size ≥ image) cannot reach. Inputs and outputs are real
``(S, C, Z, Y, X)``; spectra are planar (re, im) float32 for the MAC kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..codegen.loader import KernelModule, default_toolchain, load_kernel
from ..codegen.render import render
from ..fft.pruned import SpectralShape, forward, forward_planar, inverse_cropped, prunable
from ..fft.sizes import fft_size
from ..spec import Conv, Layer, Shape5
from .base import FLOAT_BYTES, Memory, padded_empty, tensor_bytes
from .direct import conv_output_shape

#: Scratch bytes for one block of kernel spectra (complex buffer + planar copy).
KERNEL_BLOCK_BYTES = 32 << 20
#: Output maps accumulated at once by the data-parallel schedule (at most).
DATA_PARALLEL_CHUNK = 4
_MAC_TILE = 512  # frequencies per MAC task: I, K, O tiles of a block stay in L2

_ACTIVATIONS = {
    "relu": lambda v: np.maximum(v, 0, out=v),
    "sigmoid": lambda v: np.reciprocal(1 + np.exp(-v, out=v), out=v),
    "tanh": lambda v: np.tanh(v, out=v),
    "linear": lambda v: v,
}


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


@dataclass(frozen=True)
class FftGeometry:
    """Everything sizes-related about one FFT conv layer shape, derived once."""

    spectral: SpectralShape
    nfp: int            # complex elements per map, padded to the vector width
    out_chunk: int      # output maps accumulated at once
    in_block: int       # input maps per kernel-spectra block
    vector_width: int

    @classmethod
    def of(cls, layer: Conv, shape_in: Shape5, task_parallel: bool,
           vector_width: int) -> FftGeometry:
        spectral = SpectralShape(tuple(fft_size(n) for n in shape_in[2:]))  # type: ignore[arg-type]
        nfp = -(-spectral.complex_elements // vector_width) * vector_width
        chunk = (layer.out_channels if task_parallel
                 else _largest_divisor(layer.out_channels, DATA_PARALLEL_CHUNK))
        per_map = 8 * (spectral.complex_elements + nfp)  # complex buffer + planar copy
        limit = max(1, KERNEL_BLOCK_BYTES // (per_map * chunk))
        return cls(spectral, nfp, chunk, _largest_divisor(layer.in_channels, limit), vector_width)

    @property
    def register_block(self) -> tuple[int, int]:
        """(samples, output maps) of accumulators: 2·SB·JR of 32 (16 with AVX2) registers."""
        jr = _largest_divisor(self.out_chunk, 4)
        return (2 if self.vector_width == 16 else 1), jr


def mac_source(layer: Conv, geometry: FftGeometry) -> str:
    sb, jr = geometry.register_block
    return render("spectral_mac.cpp.j2", {
        "nfp": geometry.nfp, "in_maps": layer.in_channels, "jb": geometry.out_chunk,
        "ib": geometry.in_block, "vector_width": geometry.vector_width, "sb": sb, "jr": jr,
        "tile": -(-_MAC_TILE // geometry.vector_width) * geometry.vector_width})


def _to_planar(spec: np.ndarray, planar: np.ndarray, scale: float = 1.0) -> None:
    """Complex ``(M, …)`` spectra into planar ``(M, 2, nfp)`` (padding lanes zeroed)."""
    m = planar.shape[0]
    flat = spec.reshape(m, -1)
    n = flat.shape[1]
    np.multiply(flat.real, scale, out=planar[:, 0, :n])
    np.multiply(flat.imag, scale, out=planar[:, 1, :n])
    planar[:, :, n:] = 0


def _from_planar(planar: np.ndarray, spec: np.ndarray) -> None:
    m = planar.shape[0]
    flat = spec.reshape(m, -1)
    n = flat.shape[1]
    flat.real = planar[:, 0, :n]
    flat.imag = planar[:, 1, :n]


class FftStep:
    """A prepared FFT conv for one input shape (any batch size)."""

    input_slack = 0

    def __init__(self, module: KernelModule, layer: Conv, shape_in: Shape5,
                 weights: tuple[np.ndarray, np.ndarray], geometry: FftGeometry, pruned: bool,
                 threads: int) -> None:
        self.module = module
        self.layer = layer
        self.shape_in = shape_in
        self.geometry = geometry
        self.pruned = pruned
        self.threads = threads
        w, b = weights
        # Correlation = convolution with the flipped kernel; 1/N folds the inverse's scaling.
        self.flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1, ::-1])
        self.bias = b.reshape(1, -1, 1, 1, 1)
        self.scale = 1.0 / math.prod(geometry.spectral.size)

    def run(self, x: np.ndarray, out_slack: int) -> np.ndarray:
        if x.shape[1:] != self.shape_in[1:]:
            raise ValueError(f"FFT conv prepared for {self.shape_in[1:]}, got {x.shape[1:]}")
        layer, g, threads = self.layer, self.geometry, self.threads
        s, f, *n = x.shape
        fo, k = layer.out_channels, layer.kernel
        out = padded_empty(conv_output_shape(layer, x.shape), out_slack)  # type: ignore[arg-type]
        start = (k[0] - 1, k[1] - 1, k[2] - 1)
        stop = (n[0], n[1], n[2])

        # Stage 1: input spectra, planar.
        spec = forward(x.reshape(s * f, *n), g.spectral, threads, self.pruned)
        planar_in = np.empty((s, f, 2, g.nfp), np.float32)
        _to_planar(spec, planar_in.reshape(s * f, 2, g.nfp))
        del spec

        direct_planar = self.pruned and prunable(k, g.spectral)
        kernel_spec = None if direct_planar else g.spectral.buffer(g.out_chunk * g.in_block)
        kernel_planar = np.empty((g.out_chunk, g.in_block, 2, g.nfp), np.float32)
        chunks = range(0, fo, g.out_chunk)
        for j0 in chunks:
            # Stage 2: accumulate this chunk's output spectra over all input maps.
            planar_out = np.zeros((s, g.out_chunk, 2, g.nfp), np.float32)
            for i0 in range(0, f, g.in_block):
                block = self.flipped[j0:j0 + g.out_chunk, i0:i0 + g.in_block].reshape(-1, *k)
                if kernel_spec is None:  # pruned DFT writes planar, scaled spectra directly
                    forward_planar(block, g.spectral, threads,
                                   kernel_planar.reshape(-1, 2, g.nfp), self.scale)
                else:
                    forward(block, g.spectral, threads, self.pruned, out=kernel_spec)
                    _to_planar(kernel_spec, kernel_planar.reshape(-1, 2, g.nfp), self.scale)
                # The kernel indexes samples with the full map stride: pass the block's first
                # map (a temporary view, so that `del planar_in` below really frees it).
                self.module.forward(planar_in.reshape(-1)[i0 * 2 * g.nfp:], planar_out,
                                    threads, kernel_planar, batch=s)
            if j0 == chunks[-1]:
                del planar_in, kernel_spec, kernel_planar  # stage 3 of the last chunk is leaner
            # Stage 3: inverse transforms of the chunk, crop, bias, activation.
            spec_out = g.spectral.buffer(s * g.out_chunk)
            _from_planar(planar_out.reshape(-1, 2, g.nfp), spec_out)
            del planar_out
            valid = inverse_cropped(spec_out, g.spectral, start, stop, threads)
            dst = out[:, j0:j0 + g.out_chunk]
            np.add(valid.reshape(dst.shape), self.bias[:, j0:j0 + g.out_chunk], out=dst)
            _ACTIVATIONS[layer.activation](dst)
            del spec_out, valid
        return out


class FftConv:
    """FFT convolution primitive; see the module docstring for the four variants."""

    def __init__(self, pruned: bool, task_parallel: bool) -> None:
        self.pruned = pruned
        self.task_parallel = task_parallel
        self.name = ("fft-pruned" if pruned else "fft") + ("" if task_parallel else "-data")

    def supports(self, layer: Layer) -> bool:
        return isinstance(layer, Conv)

    def _geometry(self, layer: Conv, shape_in: Shape5) -> FftGeometry:
        return FftGeometry.of(layer, shape_in, self.task_parallel,
                              default_toolchain().vector_width)

    def flops(self, layer: Layer, shape_in: Shape5) -> int:
        """Spectral MAC (8 per complex multiply-add) plus transforms (5·n·log2 n per line)."""
        assert isinstance(layer, Conv)
        s, f = shape_in[:2]
        spectral = SpectralShape(tuple(fft_size(n) for n in shape_in[2:]))  # type: ignore[arg-type]
        size = spectral.size
        volume = math.prod(size)
        transforms = (s * f + s * layer.out_channels + f * layer.out_channels)
        per_transform = 2.5 * volume * math.log2(volume)
        mac = 8 * s * f * layer.out_channels * spectral.complex_elements
        return int(mac + transforms * per_transform)

    def memory(self, layer: Layer, shape_in: Shape5) -> Memory:
        """Exact buffer accounting of :meth:`FftStep.run` (the input is held by the caller).

        Stage 1: input spectra (complex) + their planar copy. Stage 2: planar input spectra +
        one chunk of planar output spectra + the kernel-spectra block (complex + planar).
        Stage 3: the chunk's planar and complex output spectra (+ planar inputs while more
        chunks follow). The output tensor is allocated first and held throughout.
        """
        assert isinstance(layer, Conv)
        g = self._geometry(layer, shape_in)
        s, f = shape_in[:2]
        c8 = 8  # bytes per complex64 / per planar (re, im) pair
        ntilde = g.spectral.complex_elements
        planar_in = c8 * s * f * g.nfp
        planar_chunk = c8 * s * g.out_chunk * g.nfp
        blocks = g.out_chunk * g.in_block
        if self.pruned and prunable(layer.kernel, g.spectral):
            # planar spectra + the y pass's planes (the pruned z pass writes planar directly)
            kernels = c8 * blocks * (g.nfp + layer.kernel[0] * g.spectral.size[1]
                                     * g.spectral.half)
        else:
            kernels = c8 * blocks * (ntilde + g.nfp)
        stage1 = c8 * s * f * ntilde + planar_in
        stage2 = planar_in + planar_chunk + kernels
        more_chunks = layer.out_channels > g.out_chunk
        stage3 = planar_chunk + c8 * s * g.out_chunk * ntilde + (planar_in if more_chunks else 0)
        held = tensor_bytes(shape_in) + tensor_bytes(conv_output_shape(layer, shape_in))
        weights = FLOAT_BYTES * (layer.out_channels * layer.in_channels * math.prod(layer.kernel)
                                 + layer.out_channels)
        return Memory(resident=weights, working=held + max(stage1, stage2, stage3))

    def prepare(self, index: int, layer: Layer, shape_in: Shape5,
                weights: tuple[np.ndarray, np.ndarray] | None, threads: int) -> FftStep:
        assert isinstance(layer, Conv) and weights is not None
        g = self._geometry(layer, shape_in)
        label = (f"layer {index} ({self.name} MAC {layer.in_channels}->{layer.out_channels}, "
                 f"transform {'x'.join(map(str, g.spectral.size))})")
        module = load_kernel(mac_source(layer, g), label)
        return FftStep(module, layer, shape_in, weights, g, self.pruned, threads)
