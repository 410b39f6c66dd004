"""Generated SIMD FFTs (templates/simd_fft.cpp.j2): batched 1D passes with no planning.

The same contract as :func:`znni.fft.fftw.transform` (unnormalised 1D transforms along one axis
of 4-D views, in place or not), for the layouts the pruned 3D transforms use: complex passes
along a strided axis of views whose last axis is contiguous, and r2c/c2r passes along a
contiguous last axis. One module, compiled once per machine and vector width, serves every
length whose prime factors are ≤ 7; the length's radices and twiddles are computed here
(microseconds), so a new layer shape costs nothing — where FFTW measures plans, and its
bundled build has no FMA/AVX2/AVX-512 codelets. Anything else falls back to FFTW.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import cffi
import numpy as np

from .. import config
from ..simd_fft_constants import factors
from . import fftw

_CDEF = """
typedef struct { long n; const int *factors; int count; const float *twiddles; } znni_fft_length;
void znni_fft_columns(int inverse, const float *src, float *dst, const znni_fft_length *length,
                      long cols, long axis_src, long axis_dst, long n0, long s0, long d0,
                      long n1, long s1, long d1, int threads);
void znni_fft_rows(int inverse, const float *src, float *dst, const znni_fft_length *length,
                   long rows, long row_src, long row_dst, long n0, long s0, long d0, long n1,
                   long s1, long d1, int threads);
void znni_fft3d_forward(const float *x, float *spec, long images, const long *extent,
                        const long *lines, const znni_fft_length *lengths, long tile,
                        int threads);
void znni_fft3d_inverse(float *spec, float *out, long images, long inner, long inner_step,
                        long outer_step, const long *start, const long *stop,
                        const znni_fft_length *lengths, long tile, int threads);
"""


class _Module:
    """The loaded kernel module and the process's per-length tables."""

    def __init__(self) -> None:
        from ..codegen import cache as kernel_cache
        from ..codegen.loader import default_toolchain
        from ..codegen.render import render

        toolchain = default_toolchain()
        self.ffi = cffi.FFI()
        self.ffi.cdef(_CDEF)
        self.width = toolchain.vector_width
        source = render("simd_fft.cpp.j2", {"vector_width": self.width})
        self.lib = self.ffi.dlopen(str(kernel_cache.build(source, toolchain, "SIMD FFT")))
        self._kept: list[Any] = []  # the C arrays the length structs point into

    @cache  # noqa: B019 - one module per process; the tables live as long as it
    def length(self, n: int) -> Any:
        """A ``znni_fft_length`` for n: its radices and, per pass of radix r over a sequence of
        length ``len``, the twiddles ω_len^{p·u} for p < len/r, 1 ≤ u < r, as (re, im)."""
        radices = factors(n)
        assert radices is not None
        twiddles: list[np.ndarray] = []
        length = n
        for r in radices:
            p = np.arange(length // r)[:, None]
            u = np.arange(1, r)[None, :]
            angle = -2 * np.pi * (p * u % length) / length
            twiddles.append(np.stack([np.cos(angle), np.sin(angle)], axis=-1).ravel())
            length //= r
        table = np.concatenate([*twiddles, np.zeros(1)]).astype(np.float32)
        arrays = (self.ffi.new("int[]", radices or [1]), self.ffi.new("float[]", table.tolist()))
        self._kept.append(arrays)
        return self.ffi.new("znni_fft_length *", {"n": n, "factors": arrays[0],
                                                  "count": len(radices), "twiddles": arrays[1]})

    def lengths(self, size: tuple[int, ...]) -> Any:
        structs = self.ffi.new("znni_fft_length[]", len(size))
        for i, n in enumerate(size):
            structs[i] = self.length(n)[0]
        return structs


@cache
def _module() -> _Module:
    return _Module()


def supported(kind: str, src: np.ndarray, dst: np.ndarray, axis: int) -> bool:
    """Whether these views take the SIMD path (else :func:`transform` uses FFTW): the
    configured backend (ZNNI_FFT), a length with prime factors ≤ 7, a supported layout."""
    if config.fft_backend() != "simd":
        return False
    n = dst.shape[axis] if kind == "c2r" else src.shape[axis]
    if factors(n) is None or src.ndim != 4 or src.size == 0:
        return False
    if kind in ("r2c", "c2r"):
        return axis == 3 and src.strides[3] == src.itemsize and dst.strides[3] == dst.itemsize
    return axis != 3 and src.strides[3] == 8 and dst.strides[3] == 8


def _loops(shape: tuple[int, ...], src: tuple[int, ...], dst: tuple[int, ...],
           keep: int) -> tuple[int, int, int, list[tuple[int, int, int]]]:
    """Axis ``keep`` (its count and strides) merged with the outer axes that continue it in
    both views, and the remaining axes as (count, src, dst) loops, padded to two."""
    count, s, d = shape[keep], src[keep], dst[keep]
    axes = [a for a in range(len(shape)) if a != keep]
    while axes and axes[-1] == keep - 1 and src[keep - 1] == count * s \
            and dst[keep - 1] == count * d:
        keep -= 1
        axes.pop()
        count *= shape[keep]
    loops = [(shape[a], src[a], dst[a]) for a in axes]
    while len(loops) < 2:
        loops.insert(0, (1, 0, 0))
    return count, s, d, loops


def transform(kind: str, src: np.ndarray, dst: np.ndarray, axis: int, threads: int) -> None:
    """As :func:`znni.fft.fftw.transform` (same arguments, same results to float32 rounding)."""
    if kind not in fftw.KINDS:
        raise ValueError(f"unknown transform kind {kind!r}")
    if not supported(kind, src, dst, axis):
        fftw.transform(kind, src, dst, axis, threads)
        return
    n = dst.shape[axis] if kind == "c2r" else src.shape[axis]
    module = _module()
    length = module.length(n)
    ffi = module.ffi
    in_ptr = ffi.cast("const float *", src.ctypes.data)
    out_ptr = ffi.cast("float *", dst.ctypes.data)
    src_floats = tuple(s // 4 for s in src.strides)
    dst_floats = tuple(s // 4 for s in dst.strides)
    if kind in ("r2c", "c2r"):
        # Rows: axis 2, merged with the outer axes wherever the views are dense across them.
        rows, row_src, row_dst, loops = _loops(src.shape[:3], src_floats[:3], dst_floats[:3], 2)
        (n0, s0, d0), (n1, s1, d1) = loops
        module.lib.znni_fft_rows(int(kind == "c2r"), in_ptr, out_ptr, length, rows, row_src,
                                 row_dst, n0, s0, d0, n1, s1, d1, threads)
        return
    others = [a for a in range(3) if a != axis]
    (n0, s0, d0), (n1, s1, d1) = ((src.shape[a], src_floats[a], dst_floats[a]) for a in others)
    module.lib.znni_fft_columns(int(kind == "backward"), in_ptr, out_ptr, length, src.shape[3],
                                src_floats[axis], dst_floats[axis], n0, s0, d0, n1, s1, d1,
                                threads)



def supports_size(size: tuple[int, ...]) -> bool:
    """Whether 3D transforms of this size take the SIMD kernels (backend and radices)."""
    return config.fft_backend() == "simd" and all(factors(n) is not None for n in size)


def _dense(a: np.ndarray, dtype: type, what: str) -> Any:
    if a.dtype != dtype or not a.flags.c_contiguous:
        raise ValueError(f"the {what} must be a dense (C-order) {np.dtype(dtype).name} array")
    return _module().ffi.cast("float *", a.ctypes.data)


def _spectra_pointer(spec: np.ndarray, size: tuple[int, int, int], images: int,
                     tile: int) -> Any:
    """``spec``'s data after checking its shape: complex ``(B, N0, N1, N2//2+1)``, or with
    ``tile`` the MAC's tiled planar ``(N0·tiles per plane, B, 2, tile)`` float32."""
    half = size[2] // 2 + 1
    if tile:
        if tile % _module().width:
            raise ValueError(f"planar tile {tile} is not a multiple of the vector width")
        want: tuple[int, ...] = (size[0] * -(-size[1] * half // tile), images, 2, tile)
        dtype: type = np.float32
    else:
        want, dtype = (images, size[0], size[1], half), np.complex64
    if spec.shape != want:
        raise ValueError(f"spectra {spec.shape} are not {want} for {images} images of {size}")
    return _dense(spec, dtype, "spectrum")


def forward3d(x: np.ndarray, spec: np.ndarray, size: tuple[int, int, int], threads: int,
              pruned: bool = True, tile: int = 0) -> None:
    """Unnormalised r2c 3D spectra ``spec`` of the real images ``x`` ``(B, a, b, c)``
    zero-padded to ``size`` = (N0, N1, N2): complex ``(B, N0, N1, N2//2+1)``, or with
    ``tile`` straight into the spectral MAC's tiled planar layout ``(N0·tiles, B, 2, tile)``
    (no complex spectra, no conversion pass). ``pruned``: all-zero lines are skipped. A whole
    image per thread where there are enough images (its passes stay in that core's cache),
    else each pass is shared."""
    batch, a, b, c = x.shape
    if a > size[0] or b > size[1] or c > size[2]:
        raise ValueError(f"images {x.shape} do not fit transforms of size {size}")
    target = _spectra_pointer(spec, size, batch, tile)
    module = _module()
    lines = [a, b] if pruned else [size[0], size[1]]
    module.lib.znni_fft3d_forward(_dense(x, np.float32, "image"), target, batch,
                                  module.ffi.new("long[3]", [a, b, c]),
                                  module.ffi.new("long[2]", lines), module.lengths(size), tile,
                                  threads)


def inverse3d(spec: np.ndarray, out: np.ndarray, size: tuple[int, int, int],
              start: tuple[int, int, int], stop: tuple[int, int, int], threads: int,
              tile: int = 0) -> None:
    """The real blocks [start, stop) of the unnormalised c2r inverses of ``spec`` (complex,
    destroyed; or with ``tile`` tiled planar, kept) into ``out`` ``(S, J, *(stop − start))``,
    image ``s·J + j`` → ``out[s, j]``: ``out`` may be a slice of a larger tensor along J (a
    chunk of output maps), its blocks dense."""
    block = tuple(e - s for s, e in zip(start, stop, strict=True))
    if out.ndim != 5 or out.shape[2:] != block \
            or not all(0 <= s < e <= n for s, e, n in zip(start, stop, size, strict=True)):
        raise ValueError(f"spectra of size {size} cannot fill {out.shape} with "
                         f"[{start}, {stop})")
    images = out.shape[0] * out.shape[1]
    source = _spectra_pointer(spec, size, images, tile)
    if out.dtype != np.float32 or not out[0, 0].flags.c_contiguous \
            or out.strides[1] % 4 or out.strides[0] % 4:
        raise ValueError("the output blocks must be dense float32")
    module = _module()
    ffi = module.ffi
    module.lib.znni_fft3d_inverse(source, ffi.cast("float *", out.ctypes.data), images,
                                  out.shape[1], out.strides[1] // 4, out.strides[0] // 4,
                                  ffi.new("long[3]", list(start)), ffi.new("long[3]", list(stop)),
                                  module.lengths(size), tile, threads)
