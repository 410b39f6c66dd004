"""Scratch: named buffers reused across calls while held, freed otherwise."""

from __future__ import annotations

import numpy as np

from znni.fft.fftw import ALIGNMENT
from znni.scratch import Scratch


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def test_a_name_is_one_buffer_reused_while_it_is_large_enough() -> None:
    scratch = Scratch()
    a = scratch.empty("x", (4, 5), np.float32)
    assert a.shape == (4, 5) and a.dtype == np.float32 and a.flags.c_contiguous
    assert _address(a) % ALIGNMENT == 0
    smaller = scratch.empty("x", (3,), np.complex64)  # a view of the same memory
    assert _address(smaller) == _address(a) and smaller.dtype == np.complex64
    other = scratch.empty("y", (4, 5), np.float32)
    assert _address(other) != _address(a)
    larger = scratch.empty("x", (100, 100), np.float32)  # grows: a new buffer
    assert larger.shape == (100, 100)


def test_release_frees_unless_held() -> None:
    scratch = Scratch()
    first = _address(scratch.empty("x", (1000,), np.float32))
    with scratch.held():
        scratch.release()  # a step's own release while its caller holds: nothing freed
        assert _address(scratch.empty("x", (1000,), np.float32)) == first
        with scratch.held():
            pass
        assert _address(scratch.empty("x", (1000,), np.float32)) == first
    assert scratch._raw == {}  # the outermost hold ended: freed
