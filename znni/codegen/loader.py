"""Loading compiled kernel modules with cffi (ABI mode: no Python headers, no extension build)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import cffi
import numpy as np

from ..errors import CompileError, ZnniError
from . import cache as kernel_cache
from .render import abi_cdef
from .toolchain import GccToolchain

log = logging.getLogger("znni")
ABI_VERSION = 1


@lru_cache(maxsize=1)
def _ffi() -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(abi_cdef())
    return ffi


@dataclass(frozen=True, eq=False)
class KernelModule:
    """A loaded generated module: the ABI functions of one kernel."""

    path: Path
    lib: Any

    @property
    def ffi(self) -> cffi.FFI:
        return _ffi()

    @property
    def input_slack(self) -> int:
        return int(self.lib.znni_input_slack())

    def forward(self, x: np.ndarray, out: np.ndarray, threads: int,
                weights: np.ndarray | None = None, bias: np.ndarray | None = None,
                batch: int | None = None) -> None:
        """``znni_layer_forward`` on C-contiguous float32 arrays (batch: ``x.shape[0]``)."""
        rc = self._call(self.lib.znni_layer_forward, x, out, weights, bias,
                        x.shape[0] if batch is None else batch, threads)
        if rc != 0:  # the direct and Winograd kernels return 1 when a scratch malloc fails
            raise ZnniError(f"kernel {self.path.name} could not allocate its per-thread scratch "
                            f"memory (returned {rc})",
                            "free memory, or plan for a smaller --memory or fewer --threads")

    def gpu_host_forward(self, x: np.ndarray, out: np.ndarray, chunk: int,
                         weights: np.ndarray | None = None,
                         bias: np.ndarray | None = None) -> None:
        """A GPU module's ``znni_gpu_host_forward``: the layer on host arrays as GPU + host RAM
        sub-layers of ``chunk`` input items (two streams, pinned buffers)."""
        rc = self._call(self.lib.znni_gpu_host_forward, x, out, weights, bias, x.shape[0], chunk)
        if rc != 0:
            raise cuda_error(f"GPU kernel {self.path.name}", rc)

    @staticmethod
    def _call(entry: Any, x: np.ndarray, out: np.ndarray, weights: np.ndarray | None,
              bias: np.ndarray | None, batch: int, last: int) -> int:
        ffi = _ffi()

        def ptr(a: np.ndarray | None, ctype: str) -> Any:
            if a is None:
                return ffi.NULL
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                raise ValueError("kernel arguments must be C-contiguous float32")
            return ffi.cast(ctype, ffi.from_buffer(a))

        return int(entry(ptr(x, "const float *"), ptr(out, "float *"),
                         ptr(weights, "const float *"), ptr(bias, "const float *"), batch, last))


def cuda_error(what: str, rc: int) -> ZnniError:
    """The error for CUDA error code ``rc`` returned by ``what``, with what to do about it."""
    return ZnniError(f"{what} failed with CUDA error {rc}",
                     "2 is out of device memory: plan for a smaller GPU memory (a device "
                     "description with less 'memory'); others: check the driver (nvidia-smi)")


def _open(path: Path) -> KernelModule:
    """dlopen a module from the cache; an OSError if it is not a znni module of this ABI
    version (closed again, so that a rebuilt file at the same path is loaded afresh)."""
    ffi = _ffi()
    lib = ffi.dlopen(str(path))
    # getattr's default: cffi raises AttributeError for a shared object without the symbol.
    version = getattr(lib, "znni_abi_version", lambda: "missing")()
    if version != ABI_VERSION:
        ffi.dlclose(lib)
        raise OSError(f"ABI version {version}, expected {ABI_VERSION}")
    return KernelModule(path, lib)


@cache
def _load_source(source: str, toolchain: kernel_cache.Toolchain, label: str) -> KernelModule:
    start = time.perf_counter()
    path = kernel_cache.build(source, toolchain, label)
    try:
        module = _open(path)
    except OSError as exc:
        # A cache entry that passes its checksum but will not load (e.g. written by another
        # libc, or not a znni module at all): treat as a miss, rebuild once.
        log.warning("cached kernel %s failed to load (%s); rebuilding", path.name, exc)
        path = kernel_cache.build(source, toolchain, label, force=True)
        try:
            module = _open(path)
        except OSError as exc2:
            raise CompileError(f"freshly compiled kernel {label} cannot be loaded: {exc2}",
                               "check ZNNI_CXX/ZNNI_CXXFLAGS produce shared objects for this "
                               "machine") from None
    log.debug("loaded %s in %.1f ms", label, 1e3 * (time.perf_counter() - start))
    return module


def load_kernel(source: str, label: str,
                toolchain: kernel_cache.Toolchain | None = None) -> KernelModule:
    """Compile (or fetch from the cache) and load ``source``; memoised per process."""
    return _load_source(source, toolchain or default_toolchain(), label)


@lru_cache(maxsize=1)
def _default_toolchain_cached(cxx: str, flags: tuple[str, ...]) -> GccToolchain:
    return GccToolchain(cxx, flags)


def default_toolchain() -> GccToolchain:
    """The toolchain from ZNNI_CXX / ZNNI_CXXFLAGS (re-read so tests can change them)."""
    tc = GccToolchain.from_config()
    return _default_toolchain_cached(tc.cxx, tc.opt_flags)
