"""The FFTW pass layer (znni.fft.fftw) against numpy.fft: every kind, strided and offset views,
in place and out of place, any thread count."""

from __future__ import annotations

import numpy as np
import pytest

from znni.fft.fftw import aligned_empty, transform


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("axis", [1, 2, 3])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_complex_passes_match_numpy_in_place(axis, threads, rng) -> None:
    a = (rng.standard_normal((3, 5, 6, 7)) + 1j * rng.standard_normal((3, 5, 6, 7)))
    a = a.astype(np.complex64)
    buf = aligned_empty(a.shape, np.complex64)
    buf[...] = a
    transform("forward", buf, buf, axis, threads)
    np.testing.assert_allclose(buf, np.fft.fft(a, axis=axis), rtol=1e-4, atol=1e-4)
    transform("backward", buf, buf, axis, threads)
    np.testing.assert_allclose(buf / a.shape[axis], a, rtol=1e-4, atol=1e-5)


def test_passes_on_strided_offset_views(rng) -> None:
    """Sub-views (misaligned starts, gaps between slabs) transform only what they cover."""
    full = aligned_empty((4, 9, 8, 10), np.complex64)
    full[...] = rng.standard_normal(full.shape) + 1j * rng.standard_normal(full.shape)
    before = full.copy()
    view = full[1:3, 2:7, 1:6, 3:8]  # a 5-long axis 1, nothing aligned
    transform("forward", view, view, 1, 2)
    expected = before.copy()
    expected[1:3, 2:7, 1:6, 3:8] = np.fft.fft(before[1:3, 2:7, 1:6, 3:8], axis=1)
    np.testing.assert_allclose(full, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [8, 9, 15])
def test_real_passes_match_numpy(n, rng) -> None:
    x = rng.standard_normal((2, 3, 4, n)).astype(np.float32)
    half = n // 2 + 1
    spec = aligned_empty((2, 3, 4, half), np.complex64)
    transform("r2c", x, spec, 3, 2)
    np.testing.assert_allclose(spec, np.fft.rfft(x, axis=3), rtol=1e-4, atol=1e-4)
    back = aligned_empty(x.shape, np.float32)
    transform("c2r", spec, back, 3, 2)
    np.testing.assert_allclose(back / n, x, rtol=1e-4, atol=1e-5)


def test_in_place_real_pass_in_a_padded_row_buffer(rng) -> None:
    """r2c in place: the real rows live in the complex buffer's float view (FFTW's padding)."""
    n = 10
    spec = aligned_empty((2, 3, 4, n // 2 + 1), np.complex64)
    rows = spec.view(np.float32)[..., :n]
    x = rng.standard_normal(rows.shape).astype(np.float32)
    rows[...] = x
    transform("r2c", rows, spec, 3, 2)
    np.testing.assert_allclose(spec, np.fft.rfft(x, axis=3), rtol=1e-4, atol=1e-4)


def test_views_that_disagree_are_refused() -> None:
    with pytest.raises(ValueError, match="disagree"):
        transform("forward", np.zeros((2, 3, 4, 5), np.complex64),
                  np.zeros((2, 3, 5, 5), np.complex64), 1, 1)
    with pytest.raises(ValueError, match="kind"):
        transform("sideways", np.zeros((1, 1, 1, 2), np.complex64),
                  np.zeros((1, 1, 1, 2), np.complex64), 1, 1)
