"""The interface every primitive implements, and the slack-padded buffers they exchange."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import mmap
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..spec import Layer, Shape5

if TYPE_CHECKING:
    from ..hardware import Device

FLOAT_BYTES = 4


@dataclass(frozen=True)
class Memory:
    """Bytes a layer needs: ``resident`` for as long as the plan lives (weights, packed
    kernels), ``working`` while it runs (its input and output included)."""

    resident: int
    working: int


class Step(Protocol):
    """A layer ready to run on one shape: ``run(x, out_slack)`` consumes ``x`` (which has at
    least ``input_slack`` floats of readable memory past its end) and returns the output, in
    ``out`` where the caller passes one (see :func:`output_buffer`)."""

    input_slack: int

    def run(self, x: np.ndarray, out_slack: int,
            out: np.ndarray | None = None) -> np.ndarray: ...


class Primitive(Protocol):
    name: str
    layer_kind: str  # the Layer.kind it runs: "conv" or "pool"
    precision: str   # the number format of its arithmetic (znni.precision.PRECISIONS)

    def supports(self, layer: Layer) -> bool: ...

    def flops(self, layer: Layer, shape_in: Shape5) -> int: ...

    def memory(self, layer: Layer, shape_in: Shape5) -> Memory: ...

    def estimate(self, layer: Layer, shape_in: Shape5, device: Device) -> float:
        """Modelled seconds for one run on ``device`` (the planner's effort=estimate cost)."""
        ...

    def prepare(self, index: int, layer: Layer, shape_in: Shape5,
                weights: tuple[np.ndarray, np.ndarray] | None, threads: int) -> Step: ...


def padded_empty(shape: tuple[int, ...], slack: int) -> np.ndarray:
    """An uninitialised float32 array followed by ``slack`` readable floats (kernels read past
    the end of their input instead of masking tail vectors; those lanes are discarded)."""
    size = int(np.prod(shape))
    flat = np.empty(size + max(0, slack), dtype=np.float32)
    return flat[:size].reshape(shape)


def output_buffer(shape: tuple[int, ...], slack: int, out: np.ndarray | None) -> np.ndarray:
    """Where a step writes its output: the caller's ``out`` or a fresh padded array.

    A fresh array of this size is a fresh ``mmap``: every page faults and is zeroed by the
    kernel on first touch, which took 14–28 % of a Winograd layer here (perf: clear_page). A
    layer run in passes (in_place) hands each pass the same buffer, so only the first pass
    pays that. ``out`` must be exactly the output (C-contiguous float32 of ``shape``; its slack
    is the caller's business).
    """
    if out is None:
        return padded_empty(shape, slack)
    if out.shape != tuple(shape) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"output buffer {out.shape} {out.dtype} is not a C-contiguous "
                         f"float32 array of shape {tuple(shape)}")
    return out


def release_tail(buffer: np.ndarray, keep: int) -> None:
    """Give the pages of 1-D ``buffer`` past its first ``keep`` floats back to the OS.

    An in-place chain of layers (see in_place) runs in the buffer of its first input; each
    layer's output is smaller, but every page of that buffer was written once and would stay
    resident until the chain ends — on n537 at 4 GiB that was 1.25 GiB above the plan, which
    counts each layer's input at its own size. ``madvise(MADV_DONTNEED)`` drops the whole
    pages inside the tail (they read back as zeros if touched again); without it (not Linux
    or no libc) this does nothing and RSS stays as before.
    """
    address = buffer.__array_interface__["data"][0]
    first = -(-(address + FLOAT_BYTES * keep) // _PAGE) * _PAGE
    last = (address + buffer.nbytes) // _PAGE * _PAGE
    if last > first and _madvise is not None:
        _madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


def _libc_madvise() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None  # MADV_DONTNEED elsewhere does not free (macOS), or is absent
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).madvise
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_madvise = _libc_madvise()


def tensor_bytes(shape: Shape5) -> int:
    return math.prod(shape) * FLOAT_BYTES
