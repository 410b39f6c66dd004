"""Named scratch arrays that a layer reuses across its blocks, chunks and passes.

A fresh array larger than glibc's mmap threshold (32 MiB at most) is a fresh mapping: every
page faults and is zeroed by the kernel on first touch, and ``free`` unmaps it again. An FFT
layer allocated its spectra per pass and its kernel blocks' x/y buffers per block (16 blocks of
~130 MB per pass on n726's second layer), so that zeroing took 16 % of the layer (perf:
clear_page). A step keeps its big temporaries here instead: an array is allocated once, at the
largest size asked for, and handed out again as a view. Between calls of a step they are freed
(:meth:`Scratch.release`) unless the caller holds them (:meth:`Scratch.held`): an in-place
layer does, for its passes, which ask for the same arrays again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from .fft.fftw import aligned_empty


class Scratch:
    """Aligned arrays by name; a name is one buffer, so a step never holds two of them."""

    def __init__(self) -> None:
        self._raw: dict[str, np.ndarray] = {}
        self._holders = 0

    def empty(self, name: str, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` in the buffer called ``name``
        (whatever an earlier request wrote there is overwritten, not preserved)."""
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = self._raw.get(name)
        if raw is None or raw.size < size:
            self._raw.pop(name, None)  # free the smaller one before mapping the larger
            raw = self._raw[name] = aligned_empty((size,), np.uint8)
        array: np.ndarray = raw[:size].view(dtype).reshape(shape)
        return array

    def release(self) -> None:
        """Free every buffer (their memory goes back to the OS), unless held."""
        if not self._holders:
            self._raw.clear()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Keep the buffers across calls until the outermost ``held`` ends."""
        self._holders += 1
        try:
            yield
        finally:
            self._holders -= 1
            self.release()


def scratch_or_fresh(scratch: Scratch | None, name: str, shape: tuple[int, ...],
                     dtype: Any = np.float32) -> np.ndarray:
    """``scratch``'s buffer ``name`` as ``shape``, or a fresh aligned array without one (for
    callers whose buffers are kept only on some paths)."""
    return aligned_empty(shape, dtype) if scratch is None else scratch.empty(name, shape, dtype)
