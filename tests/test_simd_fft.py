"""The generated SIMD FFTs against numpy's float64 FFTs: every radix, odd lengths, strided and
in-place views, whole-image 3D transforms with pruning and crops, every vector width."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from znni.errors import ZnniError
from znni.fft import SpectralShape, forward, inverse_cropped, simd
from znni.simd_fft_constants import factors, radix_coefficients, shuffle_masks

#: Every radix alone and mixed, odd and even, up to the planner's largest sizes.
LENGTHS = (1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 21, 25, 35, 45, 49, 54, 56, 64, 105, 108, 128)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def complex_data(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.mark.parametrize("n", LENGTHS)
def test_one_dimensional_passes_match_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    x = complex_data(rng, (2, n, 7, 19))  # 19 columns: a full vector block and a partial one
    out = np.empty_like(x)
    simd.transform("forward", x, out, 1, 2)
    assert relative_error(out, np.fft.fft(x.astype(np.complex128), axis=1)) < 1e-6
    inplace = np.ascontiguousarray(x.transpose(0, 2, 1, 3))
    simd.transform("backward", inplace, inplace, 2, 1)
    want = np.fft.ifft(x.transpose(0, 2, 1, 3).astype(np.complex128), axis=2) * n
    assert relative_error(inplace, want) < 1e-6
    rows = rng.standard_normal((2, 3, 37, n)).astype(np.float32)  # 37 rows: a partial block
    half = np.empty((2, 3, 37, n // 2 + 1), np.complex64)
    simd.transform("r2c", rows, half, 3, 2)
    assert relative_error(half, np.fft.rfft(rows.astype(np.float64), axis=3)) < 1e-6
    back = np.empty_like(rows)
    simd.transform("c2r", half, back, 3, 1)
    assert relative_error(back / n, rows) < 1e-6


def test_strided_views_and_in_place_rows() -> None:
    """Views into a larger buffer (the pruned passes' case): rows of a spectrum buffer viewed
    as real, transformed in place; a column pass on a sub-block of planes."""
    rng = np.random.default_rng(1)
    n = 20
    spec = np.zeros((3, 5, 6, n // 2 + 1), np.complex64)
    real = spec.view(np.float32)
    x = rng.standard_normal((3, 4, 5, n)).astype(np.float32)
    real[:, :4, :5, :n] = x
    simd.transform("r2c", real[:, :4, :5, :n], spec[:, :4, :5, :], 3, 2)
    assert relative_error(spec[:, :4, :5], np.fft.rfft(x.astype(np.float64), axis=3)) < 1e-6
    planes = spec[:, 1:4]
    before = planes.astype(np.complex128)
    simd.transform("forward", planes, planes, 2, 2)
    assert relative_error(spec[:, 1:4], np.fft.fft(before, axis=2)) < 1e-6
    assert np.all(spec[:, 4] == 0)  # nothing outside the view was written


def test_odd_row_pairs_ignore_imaginary_dc_like_fftw() -> None:
    """c2r takes its input as a Hermitian half: the imaginary parts of the DC (and, for even
    lengths, Nyquist) terms are ignored, as FFTW's c2r ignores them."""
    rng = np.random.default_rng(2)
    for n in (9, 10):
        half = complex_data(rng, (1, 1, 3, n // 2 + 1))
        out = np.empty((1, 1, 3, n), np.float32)
        simd.transform("c2r", half, out, 3, 1)
        assert relative_error(out, np.fft.irfft(half.astype(np.complex128), n, axis=3) * n) < 1e-6


@pytest.mark.parametrize("size,extent,batch", [
    ((8, 9, 10), (5, 7, 3), 3),      # pruned rows and planes, tiny
    ((21, 20, 21), (21, 20, 21), 5), # radices 3·7, 4·5; per-image threads
    ((25, 24, 25), (19, 24, 13), 1), # one image: shared passes
    ((56, 54, 56), (50, 47, 56), 2), # radix 8·7 and 2·27
    ((16, 16, 16), (16, 16, 16), 9),
])
@pytest.mark.parametrize("threads", [1, 2])
def test_3d_forward_and_cropped_inverse_match_numpy(size: tuple[int, int, int],
                                                    extent: tuple[int, int, int], batch: int,
                                                    threads: int) -> None:
    rng = np.random.default_rng(sum(size))
    shape = SpectralShape(size)
    x = rng.standard_normal((batch, *extent)).astype(np.float32)
    want = np.fft.rfftn(x.astype(np.float64), s=size, axes=(1, 2, 3))
    spec = shape.buffer(batch)
    simd.forward3d(x, spec, size, threads)
    assert relative_error(spec, want) < 2e-6
    simd.forward3d(x, spec, size, threads, pruned=False)
    assert relative_error(spec, want) < 2e-6
    full = np.fft.irfftn(want, s=size, axes=(1, 2, 3)) * np.prod(size)
    start = tuple((n - e) // 2 for n, e in zip(size, extent, strict=True))
    stop = tuple(s + e for s, e in zip(start, extent, strict=True))
    crop = full[:, start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
    # Into a chunk of a wider output tensor: image s·J + j → out[s, j].
    out = np.zeros((batch, 3, *extent), np.float32)
    simd.inverse3d(spec, out[:, 1:2], size, start, stop, threads)  # type: ignore[arg-type]
    assert np.abs(out[:, 1] - crop).max() < 2e-6 * np.abs(full).max()
    assert np.all(out[:, [0, 2]] == 0)


def test_pipeline_uses_simd_or_fftw_with_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """pruned.forward / inverse_cropped give the same spectra and crops on either backend."""
    rng = np.random.default_rng(3)
    shape = SpectralShape((12, 10, 15))
    x = rng.standard_normal((4, 12, 10, 15)).astype(np.float32)
    results = {}
    for backend in ("simd", "fftw"):
        monkeypatch.setenv("ZNNI_FFT", backend)
        assert simd.supports_size(shape.size) == (backend == "simd")
        spec = forward(x, shape, 2)
        results[backend] = (spec.copy(), inverse_cropped(spec, shape, (2, 2, 2), (10, 9, 14), 2))
    assert relative_error(results["simd"][0], results["fftw"][0]) < 1e-6
    assert relative_error(results["simd"][1], results["fftw"][1]) < 1e-5


def test_lengths_with_large_primes_fall_back_to_fftw() -> None:
    rng = np.random.default_rng(4)
    x = complex_data(rng, (1, 11, 2, 5))
    assert not simd.supported("forward", x, x, 1)
    out = np.empty_like(x)
    simd.transform("forward", x, out, 1, 1)
    assert relative_error(out, np.fft.fft(x.astype(np.complex128), axis=1)) < 1e-6
    assert not simd.supports_size((11, 8, 8))


def test_bad_backend_and_bad_shapes_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZNNI_FFT", "cufft")
    with pytest.raises(ZnniError, match="ZNNI_FFT"):
        simd.supports_size((8, 8, 8))
    monkeypatch.setenv("ZNNI_FFT", "simd")
    spec = SpectralShape((8, 8, 8)).buffer(1)
    with pytest.raises(ValueError, match="do not fit"):
        simd.forward3d(np.zeros((1, 9, 8, 8), np.float32), spec, (8, 8, 8), 1)
    with pytest.raises(ValueError, match="dense"):
        simd.forward3d(np.zeros((1, 8, 8, 16), np.float32)[..., ::2], spec, (8, 8, 8), 1)
    with pytest.raises(ValueError, match="cannot fill"):
        simd.inverse3d(spec, np.zeros((1, 1, 4, 4, 4), np.float32), (8, 8, 8), (6, 0, 0),
                       (10, 4, 4), 1)


@pytest.mark.parametrize("flags", ["-O3 -mavx2 -mfma", "-O3 -mno-avx"])
def test_other_vector_widths(flags: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """AVX2 (8 lanes, masked AVX loads) and SSE (4 lanes, copies) builds of the same source."""
    monkeypatch.setenv("ZNNI_CXXFLAGS", flags)
    monkeypatch.setattr(simd, "_module", simd._module.__wrapped__)  # a module for these flags
    rng = np.random.default_rng(5)
    shape = SpectralShape((21, 16, 15))
    x = rng.standard_normal((3, 17, 16, 11)).astype(np.float32)
    spec = shape.buffer(3)
    simd.forward3d(x, spec, shape.size, 2)
    want = np.fft.rfftn(x.astype(np.float64), s=shape.size, axes=(1, 2, 3))
    assert relative_error(spec, want) < 2e-6
    out = np.empty((3, 1, 17, 16, 11), np.float32)
    simd.inverse3d(spec, out, shape.size, (0, 0, 0), (17, 16, 11), 2)
    assert relative_error(out[:, 0] / np.prod(shape.size), x) < 2e-6


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000))
def test_factors_multiply_back_or_refuse(n: int) -> None:
    radices = factors(n)
    rest = n
    for p in (2, 3, 5, 7):
        while rest % p == 0:
            rest //= p
    if rest != 1:
        assert radices is None
    else:
        assert radices is not None and int(np.prod(radices, dtype=np.int64)) == n


def test_render_constants() -> None:
    masks = shuffle_masks(4)
    rows = np.arange(16).reshape(4, 4)
    r = [list(row) for row in rows]
    for stage, (lo, hi) in enumerate(masks["transpose"]):  # the template's stages, simulated
        bit = 1 << stage
        for i in range(4):
            if not i & bit:
                both = r[i] + r[i | bit]
                r[i], r[i | bit] = [both[j] for j in lo], [both[j] for j in hi]
    assert np.array_equal(np.array(r), rows.T)
    cosines, sines = radix_coefficients(5)
    assert len(cosines) == 2
    assert float(sines[0][0].rstrip("f")) == pytest.approx(np.sin(0.4 * np.pi))
    with pytest.raises(ValueError):
        radix_coefficients(4)
    with pytest.raises(ValueError):
        shuffle_masks(6)


@pytest.mark.parametrize("batch,threads", [(5, 2), (1, 2), (3, 1)])
def test_planar_spectra_match_the_layout_converters(batch: int, threads: int) -> None:
    """Straight into and out of the spectral MAC's tiled planar layout: the same values as
    the complex spectra converted by the layout kernels, with the last tile's padding zero."""
    from znni.primitives.fft import SpectralLayout

    rng = np.random.default_rng(6)
    size, extent = (9, 14, 15), (7, 12, 15)
    shape = SpectralShape(size)
    plane = size[1] * shape.half
    tile = 64  # 112 values per plane: one whole tile, one padded
    x = rng.standard_normal((batch, *extent)).astype(np.float32)
    layout = SpectralLayout(size[0], plane, tile, threads)
    tiles = size[0] * -(-plane // tile)
    want = np.empty((tiles, batch, 2, tile), np.float32)
    layout.to_planar(forward(x, shape, threads), want)
    planar = np.full((tiles, batch, 2, tile), np.nan, np.float32)
    simd.forward3d(x, planar, size, threads, tile=tile)
    assert relative_error(planar, want) < 2e-6
    start, stop = (2, 3, 4), (9, 14, 15)
    out = np.zeros((batch, 2, 7, 11, 11), np.float32)
    simd.inverse3d(planar, out[:, :1], size, start, stop, threads, tile=tile)  # type: ignore[arg-type]
    full = np.fft.irfftn(np.fft.rfftn(x.astype(np.float64), s=size, axes=(1, 2, 3)), s=size,
                         axes=(1, 2, 3)) * np.prod(size)
    crop = full[:, 2:9, 3:14, 4:15]
    assert np.abs(out[:, 0] - crop).max() < 2e-6 * np.abs(full).max()
    assert np.all(out[:, 1] == 0)
    with pytest.raises(ValueError, match="not"):
        simd.forward3d(x, planar[:, :, :, :32], size, threads, tile=tile)
