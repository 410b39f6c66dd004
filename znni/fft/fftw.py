"""FFTW through cffi: batched 1D passes, each planned once per geometry and run by znni's threads.

Why not pyfftw's ``FFTW`` objects (what znni used first): a plan there is made per call on the
call's arrays and executed by FFTW's own OpenMP threads. On a first run that meant minutes of
``FFTW_MEASURE`` planning on gigabyte arrays (every new layer shape measured the whole pass),
and FFTW's threads open a parallel region per inner loop of a strided pass: on 2 cores 84 % of
an FFT layer's samples sat in futex wake/wait, in a second OpenMP runtime beside the kernels'.

Here a pass over a 4-D view is a grid of *slabs* (the transform axis × the non-transform axis
with the smallest stride); FFTW plans one slab, single-threaded, on scratch memory — so
planning costs milliseconds, never touches the data, and is bounded by a time limit — and a
generated OpenMP loop (templates/fftw_passes.cpp.j2) executes that plan on every slab with
FFTW's thread-safe new-array execute. Plans live for the process, keyed by geometry; what
``FFTW_MEASURE`` learns is kept as wisdom in the cache dir.

The library is FFTW 3's single precision one: ``ZNNI_FFTW_LIBRARY`` if set, else the system's
``libfftw3f`` (often built with SIMD codelets), else the copy bundled with the pyfftw wheel.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cffi
import numpy as np

from .. import config
from ..codegen.private_files import read_private, write_private
from ..errors import ZnniError

_CDEF = """
typedef struct { int n; int is; int os; } fftwf_iodim;
void *fftwf_plan_guru_dft(int rank, const fftwf_iodim *dims, int howmany_rank,
                          const fftwf_iodim *howmany_dims, void *in, void *out, int sign,
                          unsigned flags);
void *fftwf_plan_guru_dft_r2c(int rank, const fftwf_iodim *dims, int howmany_rank,
                              const fftwf_iodim *howmany_dims, void *in, void *out,
                              unsigned flags);
void *fftwf_plan_guru_dft_c2r(int rank, const fftwf_iodim *dims, int howmany_rank,
                              const fftwf_iodim *howmany_dims, void *in, void *out,
                              unsigned flags);
void fftwf_execute_dft(const void *plan, void *in, void *out);
void fftwf_execute_dft_r2c(const void *plan, void *in, void *out);
void fftwf_execute_dft_c2r(const void *plan, void *in, void *out);
void fftwf_set_timelimit(double seconds);
char *fftwf_export_wisdom_to_string(void);
int fftwf_import_wisdom_from_string(const char *wisdom);
void fftwf_free(void *p);
void znni_fftw_passes(const void *execute, const void *plan, char *in, char *out,
                      long n0, long in0, long out0, long n1, long in1, long out1, int threads);
"""

#: FFTW planner flags (fftw3.h).
_FLAGS = {"FFTW_MEASURE": 0, "FFTW_DESTROY_INPUT": 1, "FFTW_UNALIGNED": 2,
          "FFTW_EXHAUSTIVE": 8, "FFTW_PATIENT": 32, "FFTW_ESTIMATE": 64}
_FORWARD, _BACKWARD = -1, 1
#: Bytes every pointer and step must be a multiple of for a plan without FFTW_UNALIGNED.
ALIGNMENT = 64
KINDS = ("r2c", "c2r", "forward", "backward")


@dataclass(frozen=True)
class _Axis:
    count: int
    src: int  # stride in elements of the source's type
    dst: int


@dataclass(frozen=True)
class _Geometry:
    """What a plan depends on: the transform, one slab's lines, in-placeness, alignment."""

    kind: str
    n: int          # logical transform length (the real length for r2c/c2r)
    axis: _Axis     # the transform axis (count: the complex or real extent of the source)
    lines: _Axis    # the slab's other axis
    in_place: bool
    aligned: bool


def _find_library() -> str:
    """Path of libfftw3f: ZNNI_FFTW_LIBRARY, the system's, or the pyfftw wheel's copy."""
    chosen = config.fftw_library()
    if chosen:
        return chosen
    system = ctypes.util.find_library("fftw3f")
    if system:
        return system
    spec = importlib.util.find_spec("pyfftw")  # locates the wheel without importing it
    if spec is not None and spec.submodule_search_locations:
        package = Path(next(iter(spec.submodule_search_locations)))
        for folder in (package.parent / "pyfftw.libs", package / ".dylibs", package):
            found = sorted(folder.glob("libfftw3f-*.so*")) + sorted(folder.glob("libfftw3f*.dylib"))
            found = [p for p in found if "_omp" not in p.name and "_threads" not in p.name]
            if found:
                return str(found[0])
    raise ZnniError("FFTW (single precision) was not found",
                    "pip install pyfftw (its wheel bundles FFTW), install libfftw3-single3, "
                    "or set ZNNI_FFTW_LIBRARY to a libfftw3f shared library")


class Fftw:
    """The loaded library, the pass runner and the process's plans."""

    def __init__(self) -> None:
        from ..codegen import cache as kernel_cache
        from ..codegen.loader import default_toolchain
        from ..codegen.render import render

        self.ffi = cffi.FFI()
        self.ffi.cdef(_CDEF)
        self.library = _find_library()
        try:
            self.lib = self.ffi.dlopen(self.library)
        except OSError as exc:
            raise ZnniError(f"cannot load FFTW from {self.library!r}: {exc}",
                            "set ZNNI_FFTW_LIBRARY to a working libfftw3f") from None
        runner = kernel_cache.build(render("fftw_passes.cpp.j2", {}), default_toolchain(),
                                    "FFT pass runner")
        self.runner = self.ffi.dlopen(str(runner))
        self.execute = {kind: self.ffi.cast("void *", self.ffi.addressof(self.lib, name))
                        for kind, name in (("r2c", "fftwf_execute_dft_r2c"),
                                           ("c2r", "fftwf_execute_dft_c2r"),
                                           ("forward", "fftwf_execute_dft"),
                                           ("backward", "fftwf_execute_dft"))}
        self.plans: dict[_Geometry, Any] = {}
        self.lock = threading.Lock()
        self.lib.fftwf_set_timelimit(config.fftw_timelimit())
        with contextlib.suppress(OSError):
            self.lib.fftwf_import_wisdom_from_string(read_private(self.wisdom_path()))

    def wisdom_path(self) -> Path:
        """Wisdom is per library file (another FFTW build would misread it)."""
        tag = hashlib.sha256(os.path.realpath(self.library).encode()).hexdigest()[:12]
        return config.cache_dir() / f"fftw_wisdom_{tag}"

    def save_wisdom(self) -> None:
        """Write the process's wisdom atomically (last writer wins: wisdom only grows)."""
        text = self.lib.fftwf_export_wisdom_to_string()
        try:
            data = self.ffi.string(text)
        finally:
            self.lib.fftwf_free(text)
        write_private(self.wisdom_path(), data)

    def plan(self, g: _Geometry) -> Any:
        with self.lock:  # FFTW's planner is not thread-safe
            if g not in self.plans:
                self.plans[g] = self._make(g)
            return self.plans[g]

    def _make(self, g: _Geometry) -> Any:
        """Plan one slab on scratch memory (a measuring planner overwrites its arrays)."""
        src_item, dst_item = _item_bytes(g.kind)
        spans = [((g.axis.count - 1) * g.axis.src + (g.lines.count - 1) * g.lines.src + 1)
                 * src_item,
                 ((_dst_count(g) - 1) * g.axis.dst + (g.lines.count - 1) * g.lines.dst + 1)
                 * dst_item]
        src = _aligned_bytes(max(spans) if g.in_place else spans[0])
        dst = src if g.in_place else _aligned_bytes(spans[1])
        ffi = self.ffi
        dims = ffi.new("fftwf_iodim[1]", [(g.n, g.axis.src, g.axis.dst)])
        lines = ffi.new("fftwf_iodim[1]", [(g.lines.count, g.lines.src, g.lines.dst)])
        effort = config.fftw_effort()
        flags = _FLAGS[effort] | (0 if g.aligned else _FLAGS["FFTW_UNALIGNED"])
        if g.kind == "c2r":
            flags |= _FLAGS["FFTW_DESTROY_INPUT"]
        pin, pout = ffi.from_buffer(src), ffi.from_buffer(dst)
        if g.kind == "r2c":
            plan = self.lib.fftwf_plan_guru_dft_r2c(1, dims, 1, lines, pin, pout, flags)
        elif g.kind == "c2r":
            plan = self.lib.fftwf_plan_guru_dft_c2r(1, dims, 1, lines, pin, pout, flags)
        else:
            sign = _FORWARD if g.kind == "forward" else _BACKWARD
            plan = self.lib.fftwf_plan_guru_dft(1, dims, 1, lines, pin, pout, sign, flags)
        if plan == ffi.NULL:
            raise ZnniError(f"FFTW could not plan a {g.kind} pass of length {g.n}",
                            f"report this with the geometry {g}")
        if effort != "FFTW_ESTIMATE":
            _planned[0] += 1
            self.save_wisdom()
        return plan

    def run(self, g: _Geometry, src: int, dst: int, outer: tuple[tuple[int, int, int], ...],
            threads: int) -> None:
        (n0, s0, d0), (n1, s1, d1) = outer
        ffi = self.ffi
        self.runner.znni_fftw_passes(self.execute[g.kind], self.plan(g),
                                     ffi.cast("char *", src), ffi.cast("char *", dst),
                                     n0, s0, d0, n1, s1, d1, threads)


def _item_bytes(kind: str) -> tuple[int, int]:
    return {"r2c": (4, 8), "c2r": (8, 4)}.get(kind, (8, 8))


def _dst_count(g: _Geometry) -> int:
    if g.kind == "r2c":
        return g.n // 2 + 1
    return g.n if g.kind == "c2r" else g.axis.count


def _aligned_bytes(size: int) -> np.ndarray:
    raw = np.empty(size + ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset:offset + size]


def aligned_empty(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """An uninitialised array whose data starts on an ALIGNMENT boundary (aligned plans)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return _aligned_bytes(size).view(dtype).reshape(shape)


@cache
def fftw() -> Fftw:
    """The process's FFTW (loaded, and the runner compiled, on first use)."""
    return Fftw()


_planned = [0]


def plans_measured() -> int:
    """Plans this process made by measuring: a run during which this grows spent time
    planning that later runs will not (tuning does not time such runs)."""
    return _planned[0]


def transform(kind: str, src: np.ndarray, dst: np.ndarray, axis: int, threads: int) -> None:
    """Unnormalised 1D transforms along ``axis`` of the 4-D views ``src`` → ``dst`` (the same
    memory for in place): ``r2c`` real → half spectrum, ``c2r`` back, ``forward``/``backward``
    complex. The views may be strided; their other axes must agree in extent."""
    if kind not in KINDS:
        raise ValueError(f"unknown transform kind {kind!r}")
    if src.ndim != 4 or dst.ndim != 4:
        raise ValueError(f"transform views must be 4-D, got {src.shape} → {dst.shape}")
    src_item, dst_item = _item_bytes(kind)
    others = [a for a in range(src.ndim) if a != axis]
    if any(src.shape[a] != dst.shape[a] for a in others):
        raise ValueError(f"transform views disagree: {src.shape} → {dst.shape} along {axis}")
    if any(s % src_item for s in src.strides) or any(s % dst_item for s in dst.strides):
        raise ValueError("transform views must be strided in whole elements")
    if src.size == 0:
        return
    n = dst.shape[axis] if kind == "c2r" else src.shape[axis]  # the real length for r2c/c2r
    axes = [_Axis(src.shape[a], src.strides[a] // src_item, dst.strides[a] // dst_item)
            for a in others]
    # The slab's lines: the non-transform axis with the smallest stride (longest in memory).
    inner = min(range(len(axes)), key=lambda i: (abs(axes[i].src) if axes[i].count > 1
                                                 else 1 << 62))
    loop = tuple((a.count, a.src * src_item, a.dst * dst_item)
                 for i, a in enumerate(axes) if i != inner)  # the two looped axes, in C
    src_ptr, dst_ptr = src.ctypes.data, dst.ctypes.data
    aligned = all(v % ALIGNMENT == 0 for v in (src_ptr, dst_ptr, *[s for a in loop for s in a[1:]]))
    g = _Geometry(kind, n, _Axis(src.shape[axis], src.strides[axis] // src_item,
                                 dst.strides[axis] // dst_item),
                  axes[inner], src_ptr == dst_ptr, aligned)
    fftw().run(g, src_ptr, dst_ptr, loop, threads)
