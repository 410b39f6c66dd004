"""Pruned 3D real FFTs (docs/design.md §5.3) as three passes of batched 1D transforms.

Forward, for real data whose non-zero part is ``a×b×c`` inside an ``N0×N1×N2`` transform: the r2c
pass along x runs on the a·b non-zero rows only, the y pass on the a non-zero planes only, the
z pass on everything — ∝ (a·b + a·N1 + N1·N2) lines instead of 3·N² — and all-zero lines are never
touched. For a short non-zero extent (kernels: a, b ≤ 2.5·log2 N) the y and z passes are
*pruned DFTs*: a (N × a) DFT-matrix product (complex GEMM), which reads only the a non-zero
inputs of each line, needs no zero fill and runs at GEMM speed — measured 4–7× faster than
FFTW's full 3D r2c of the padded array (bench/fft_pruned.py). Longer extents (images) use
the generated SIMD FFTs (znni.fft.simd), a whole image per thread. Inverse: the z pass on
everything, then only the planes and rows that survive the valid crop. Everything happens in
one complex buffer ``(B, N0, N1, N2//2+1)`` (r2c/c2r in place), so the only memory is the
spectrum itself.

1D passes (the kernels' x pass, and every pass where SIMD FFTs are off or a length has a prime
factor above 7) go through znni.fft.simd's ``transform``, which falls back to znni.fft.fftw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from . import simd
from .fftw import aligned_empty
from .simd import transform

if TYPE_CHECKING:
    from ..scratch import Scratch


@dataclass(frozen=True)
class SpectralShape:
    """Transform size ``(N0, N1, N2)`` and its half-spectrum buffer shape."""

    size: tuple[int, int, int]

    @property
    def half(self) -> int:
        return self.size[2] // 2 + 1

    @property
    def complex_elements(self) -> int:
        """ñ: complex values of one transformed image."""
        return self.size[0] * self.size[1] * self.half

    def buffer(self, batch: int) -> np.ndarray:
        return aligned_empty((batch, self.size[0], self.size[1], self.half), np.complex64)


def _gemm_worthy(extent: int, n: int) -> bool:
    """A pruned DFT (8·extent real FLOPs per output, at GEMM speed, ~4× FFTW's) beats an FFT
    (5·log2 n per output) when extent ≤ 2.5·log2 n."""
    return extent <= 2.5 * math.log2(max(n, 2))


@cache
def dft_table(n: int, extent: int) -> np.ndarray:
    """Re and Im of the first ``extent`` columns of the n-point DFT matrix, ``(2, n, extent)``."""
    m = np.arange(n)[:, None] * np.arange(extent)[None, :]
    angle = -2 * np.pi * (m % n) / n
    return np.ascontiguousarray(np.stack([np.cos(angle), np.sin(angle)]).astype(np.float32))


def _pruned_dft(x: np.ndarray, n: int, out: np.ndarray, threads: int) -> None:
    """``out[b, m, c] = Σ_t DFT_n[m, t] · x[b, t, c]`` for complex ``x`` ``(B, A, M)`` by a
    generated kernel (numpy's matmul here ran its own BLAS thread pool, which fought FFTW's and
    OpenMP's threads on 2 cores: 2–5× slower in the same pipeline)."""
    from ..codegen.loader import default_toolchain, load_kernel
    from ..codegen.render import render

    _, a, m = x.shape
    toolchain = default_toolchain()
    source = render("pruned_dft.cpp.j2", {"n": n, "a": a, "m": m,
                                          "vector_width": toolchain.vector_width})
    module = load_kernel(source, f"pruned DFT {a}->{n} x {m}", toolchain)
    module.forward(x.view(np.float32), out.view(np.float32), threads, dft_table(n, a))


def xy_passes(x: np.ndarray, shape: SpectralShape, threads: int,
              scratch: Scratch | None = None) -> np.ndarray:
    """Pruned x (FFTW r2c on the non-zero rows) and y (pruned DFT) passes of real ``x``
    ``(B, a, b, c)``: the ``a`` non-zero planes of the spectrum before its z pass,
    ``(B, a, N1, half)``. With ``scratch`` its buffers (the planes included) are reused
    from call to call."""
    batch, a, b, c = x.shape
    n1, n2 = shape.size[1], shape.size[2]
    half = shape.half
    from ..scratch import scratch_or_fresh  # here: znni.scratch imports this package

    rows = scratch_or_fresh(scratch, "xy rows", (batch, a, b, n2), np.float32)
    rows[..., :c] = x
    rows[..., c:] = 0
    line = scratch_or_fresh(scratch, "xy line", (batch, a, b, half), np.complex64)
    transform("r2c", rows, line, 3, threads)
    del rows
    planes = scratch_or_fresh(scratch, "xy planes", (batch, a, n1, half), np.complex64)
    _pruned_dft(line.reshape(batch * a, b, half), n1, planes.reshape(batch * a, n1, half), threads)
    return planes


def xy_pass_bytes(batch: int, extent: tuple[int, int, int], shape: SpectralShape) -> int:
    """Peak bytes of :func:`xy_passes`: its row and line buffers and the returned planes."""
    a, b = extent[0], extent[1]
    return batch * a * (4 * b * shape.size[2] + 8 * b * shape.half
                        + 8 * shape.size[1] * shape.half)


def prunable(extent: tuple[int, ...], shape: SpectralShape) -> bool:
    """Whether the y and z passes of short extents run as pruned DFTs (see the docstring)."""
    return _gemm_worthy(extent[0], shape.size[0]) and _gemm_worthy(extent[1], shape.size[1])


def forward(x: np.ndarray, shape: SpectralShape, threads: int,
            pruned: bool = True, out: np.ndarray | None = None) -> np.ndarray:
    """Unnormalised r2c spectrum ``(B, N0, N1, N2//2+1)`` of real ``x`` ``(B, a, b, c)``
    zero-padded to ``shape.size``; with ``pruned`` the zero lines are skipped. ``out`` (from
    :meth:`SpectralShape.buffer`) is reused when given."""
    batch, a, b, c = x.shape
    n0, n1, n2 = shape.size
    spec = shape.buffer(batch) if out is None else out
    if pruned and prunable((a, b), shape):
        half = shape.half
        planes = xy_passes(x, shape, threads)
        _pruned_dft(planes.reshape(batch, a, n1 * half), n0, spec.reshape(batch, n0, n1 * half),
                    threads)
        return spec
    if simd.supports_size(shape.size):
        simd.forward3d(np.ascontiguousarray(x, np.float32), spec, shape.size, threads, pruned)
        return spec
    if not pruned:
        a, b = n0, n1  # every line is transformed (the baseline pruning is measured against)
    real = spec.view(np.float32)
    rows = real[:, :a, :b, :n2]
    xa, xb = x.shape[1], x.shape[2]
    rows[:, :xa, :xb, :c] = x  # and zeros only where x does not reach
    rows[:, :xa, :xb, c:] = 0
    rows[:, :xa, xb:] = 0
    rows[:, xa:] = 0
    transform("r2c", rows, spec[:, :a, :b, :], 3, threads)
    spec[:, :a, b:, :] = 0
    transform("forward", spec[:, :a], spec[:, :a], 2, threads)
    spec[:, a:] = 0
    transform("forward", spec, spec, 1, threads)
    return spec


def forward_unpruned(x: np.ndarray, shape: SpectralShape, threads: int,
                     out: np.ndarray | None = None) -> np.ndarray:
    """The same spectrum with every line transformed (for benchmarks and tests)."""
    return forward(x, shape, threads, pruned=False, out=out)


def inverse_cropped(spec: np.ndarray, shape: SpectralShape, start: tuple[int, int, int],
                    stop: tuple[int, int, int], threads: int,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Real ``(B, stop−start)`` block of the unnormalised c2r inverse of ``spec`` (destroyed):
    after the z pass only planes [start0, stop0) and then rows [start1, stop1) are transformed.
    ``out`` ``(S, J, *(stop−start))`` with S·J = B (e.g. a chunk of a layer's output maps)
    receives the blocks, and is returned; else a new array (or a view into ``spec``)."""
    if simd.supports_size(shape.size):
        block = tuple(e - s for s, e in zip(start, stop, strict=True))
        target = np.empty((spec.shape[0], 1, *block), np.float32) if out is None else out
        simd.inverse3d(spec, target, shape.size, start, stop, threads)
        return target.reshape(spec.shape[0], *block) if out is None else target
    s0, s1, s2 = start
    e0, e1, e2 = stop
    n2 = shape.size[2]
    real = spec.view(np.float32)
    transform("backward", spec, spec, 1, threads)
    planes = spec[:, s0:e0]
    transform("backward", planes, planes, 2, threads)
    rows = spec[:, s0:e0, s1:e1, :]
    transform("c2r", rows, real[:, s0:e0, s1:e1, :n2], 3, threads)
    valid = real[:, s0:e0, s1:e1, s2:e2]
    if out is None:
        return valid
    out[...] = valid.reshape(out.shape)
    return out
