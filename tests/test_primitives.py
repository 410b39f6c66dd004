"""Each primitive alone against numpy: direct conv (generated C++) and MPF + recombination."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from znni.primitives import PRIMITIVES, DirectConv, MaxFilter, MaxPoolFragments
from znni.primitives.base import padded_empty
from znni.primitives.mpf import recombine
from znni.reference import _dilated_max_filter, dilated_correlation
from znni.spec import Conv, Pool
from znni.winograd_tiles import TILES

from .conftest import relative_error


def random_layer_data(rng, batch, fi, fo, kernel, shape):
    """Input, He-scaled weights and bias for one conv layer."""
    x = rng.standard_normal((batch, fi, *shape)).astype(np.float32)
    w = (rng.standard_normal((fo, fi, *kernel)).astype(np.float32)
         / math.sqrt(fi * math.prod(kernel)))
    return x, w, rng.standard_normal(fo).astype(np.float32)


def conv_reference(x, w, b, act, dilation=(1, 1, 1)):
    """float64 oracle: per-sample valid (dilated) correlation + bias + activation."""
    acts = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh, "linear": lambda v: v,
            "sigmoid": lambda v: 1 / (1 + np.exp(-v))}
    return np.stack([acts[act](dilated_correlation(xs.astype(np.float64), w.astype(np.float64),
                                                    list(dilation)) + b[:, None, None, None])
                     for xs in x])


def run_direct(layer: Conv, x: np.ndarray, w: np.ndarray, b: np.ndarray, threads: int = 2):
    step = DirectConv().prepare(0, layer, x.shape, (w, b), threads)
    buf = padded_empty(x.shape, step.input_slack)
    buf[...] = x
    return step.run(buf, 0)


@pytest.mark.parametrize("fi,fo,kernel,shape,act", [
    (1, 1, (1, 1, 1), (1, 1, 1), "linear"),
    (1, 7, (2, 2, 2), (5, 6, 7), "relu"),
    (3, 13, (3, 3, 1), (4, 9, 5), "tanh"),
    (5, 2, (1, 3, 3), (3, 7, 31), "sigmoid"),
    (2, 33, (3, 1, 2), (9, 4, 40), "relu"),
    (16, 17, (3, 3, 3), (7, 7, 7), "linear"),
    (4, 3, (5, 4, 3), (5, 4, 3), "relu"),    # image == kernel: one output voxel
])
def test_direct_conv_matches_numpy(fi, fo, kernel, shape, act, rng) -> None:
    layer = Conv(fi, fo, kernel, act)
    batch = 3
    x, w, b = random_layer_data(rng, batch, fi, fo, kernel, shape)
    out = run_direct(layer, x, w, b)
    ref = conv_reference(x, w, b, act)
    assert relative_error(out, ref) < 1e-5


def test_direct_conv_single_thread_equals_multi_thread(rng) -> None:
    layer = Conv(6, 10, (3, 3, 3), "relu")
    x = rng.standard_normal((2, 6, 11, 12, 13)).astype(np.float32)
    w = rng.standard_normal((10, 6, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    np.testing.assert_array_equal(run_direct(layer, x, w, b, 1), run_direct(layer, x, w, b, 2))


@pytest.mark.parametrize("name", ["direct", "winograd-f4", "fft-pruned"])
def test_a_step_writes_into_the_callers_buffer_and_refuses_a_wrong_one(name, rng) -> None:
    """In-place layers hand every pass the same output buffer (its pages fault once)."""
    layer = Conv(3, 4, (3, 3, 3), "relu")
    x, w, b = random_layer_data(rng, 2, 3, 4, (3, 3, 3), (7, 8, 9))
    step = PRIMITIVES[name].prepare(0, layer, x.shape, (w, b), 2)
    buf = padded_empty(x.shape, step.input_slack)
    buf[...] = x
    out = np.full((2, 4, 5, 6, 7), np.nan, np.float32)
    assert step.run(buf, 0, out) is out
    assert relative_error(out, conv_reference(x, w, b, "relu")) < 1e-5
    with pytest.raises(ValueError, match="C-contiguous float32 array of shape"):
        step.run(buf, 0, np.empty((2, 4, 5, 6, 8), np.float32))


@pytest.mark.parametrize("batch,fi,fo,shape,act", [
    (2, 3, 5, (5, 6, 7), "relu"),       # odd sizes: last tiles half outside
    (1, 16, 17, (7, 7, 7), "linear"),   # output maps not a multiple of the block
    (3, 4, 30, (3, 3, 3), "tanh"),      # one output voxel
    (2, 8, 3, (4, 9, 12), "sigmoid"),
    (1, 1, 80, (20, 11, 9), "relu"),    # a first layer: one input map, many tasks
    (1, 80, 80, (8, 8, 8), "relu"),     # n337's late layers, 80 maps
    (2, 5, 6, (13, 10, 11), "relu"),    # last F(4³) tiles shifted back inside the image
    (1, 6, 7, (4, 5, 15), "linear"),    # axes shorter than an F(4³) patch
])
@pytest.mark.parametrize("name,tolerance", [("winograd", 1e-5), ("winograd-f4", 1e-4)])
def test_winograd_conv_matches_numpy(batch, fi, fo, shape, act, name, tolerance, rng) -> None:
    layer = Conv(fi, fo, (3, 3, 3), act)
    x, w, b = random_layer_data(rng, batch, fi, fo, (3, 3, 3), shape)
    step = PRIMITIVES[name].prepare(0, layer, x.shape, (w, b), 2)
    assert step.input_slack == 0  # every read stays inside the image
    out = step.run(x, 0)
    assert relative_error(out, conv_reference(x, w, b, act)) < tolerance
    one_thread = PRIMITIVES[name].prepare(0, layer, x.shape, (w, b), 1)
    np.testing.assert_array_equal(one_thread.run(x, 0), out)  # each output written once


@pytest.mark.parametrize("kernel,shape", [
    ((3, 3, 1), (9, 10, 5)),     # 2-D kernels of anisotropic EM nets, odd sizes
    ((1, 3, 3), (2, 13, 11)),    # a z edge shorter than the identity tile's patch
    ((3, 1, 3), (7, 6, 8)),
    ((3, 1, 1), (12, 3, 4)),     # 1-D Winograd along z
])
@pytest.mark.parametrize("name,tolerance", [("winograd", 1e-5), ("winograd-f4", 1e-4)])
def test_winograd_anisotropic_kernels_match_numpy(kernel, shape, name, tolerance, rng) -> None:
    layer = Conv(5, 9, kernel, "relu")
    x, w, b = random_layer_data(rng, 2, 5, 9, kernel, shape)
    step = PRIMITIVES[name].prepare(0, layer, x.shape, (w, b), 2)
    out = step.run(x, 0)
    assert relative_error(out, conv_reference(x, w, b, "relu")) < tolerance
    one_thread = PRIMITIVES[name].prepare(0, layer, x.shape, (w, b), 1)
    np.testing.assert_array_equal(one_thread.run(x, 0), out)


@pytest.mark.parametrize("name", ["winograd", "winograd-f4"])
def test_winograd_runs_undilated_kernels_of_edges_3_and_1(name: str) -> None:
    wino = PRIMITIVES[name]
    for kernel in ((3, 3, 3), (3, 3, 1), (1, 3, 3), (3, 1, 1)):
        assert wino.supports(Conv(4, 4, kernel, "relu"))
    for kernel in ((1, 1, 1), (3, 3, 5), (2, 3, 3)):
        assert not wino.supports(Conv(4, 4, kernel, "relu"))
    assert not wino.supports(Conv(4, 4, (3, 3, 3), "relu", dilation=(2, 2, 2)))


@pytest.mark.parametrize("tile", list(TILES.values()), ids=list(TILES))
def test_winograd_matrices_compute_correlation_exactly(tile) -> None:
    """y = Aᵀ[(G g) ⊙ (Bᵀ d)] equals Σ_k g_k d_{i+k} for every basis g, d, in exact
    arithmetic (the generated transforms are these matrices' rows, term by term); identity
    tiles too (1 tap)."""
    alpha, taps = tile.alpha, tile.taps
    for k in range(taps):
        for j in range(alpha):
            gk = [Fraction(int(i == k)) for i in range(taps)]
            dj = [Fraction(int(i == j)) for i in range(alpha)]
            u = [sum((row[i] * gk[i] for i in range(taps)), Fraction(0)) for row in tile.g]
            v = [sum((row[i] * dj[i] for i in range(alpha)), Fraction(0)) for row in tile.bt]
            y = [sum((row[p] * u[p] * v[p] for p in range(alpha)), Fraction(0))
                 for row in tile.at]
            assert y == [Fraction(int(j == i + k)) for i in range(tile.m)]


def mpf_numpy(x: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    """Fragments by definition: for each offset, strided max pooling starting there."""
    s, c, *n = x.shape
    p = window
    m = [(n[a] + 1) // p[a] - 1 for a in range(3)]
    frags = []
    for si in range(s):
        for oz in range(p[0]):
            for oy in range(p[1]):
                for ox in range(p[2]):
                    v = x[si, :, oz:oz + m[0] * p[0], oy:oy + m[1] * p[1], ox:ox + m[2] * p[2]]
                    v = v.reshape(c, m[0], p[0], m[1], p[1], m[2], p[2]).max(axis=(2, 4, 6))
                    frags.append(v)
    return np.stack(frags)


@pytest.mark.parametrize("window,size", [((2, 2, 2), (7, 9, 11)), ((1, 2, 2), (4, 5, 7)),
                                         ((3, 1, 2), (8, 3, 5)), ((1, 1, 1), (3, 4, 5)),
                                         ((2, 3, 4), (5, 8, 11))])
def test_mpf_matches_definition(window, size, rng) -> None:
    x = rng.standard_normal((2, 3, *size)).astype(np.float32)
    step = MaxPoolFragments().prepare(0, Pool(3, window), x.shape, None, 2)
    np.testing.assert_array_equal(step.run(x, 0), mpf_numpy(x, window))


def test_recombine_places_fragment_voxels_by_mixed_radix() -> None:
    windows = [(2, 1, 3), (1, 2, 2)]
    m = (2, 3, 1)
    frag = [2 * 1, 1 * 2, 3 * 2]
    n = 2 * 1 * 3 * 1 * 2 * 2
    fragments = np.arange(n * 1 * math.prod(m), dtype=np.float32).reshape(n, 1, *m)
    dense = recombine(fragments, windows, batch=1)[0, 0]
    assert dense.shape == (m[0] * frag[0], m[1] * frag[1], m[2] * frag[2])
    for item in range(n):
        o1, o2 = divmod(item, 4)
        o1z, o1y, o1x = o1 // 3, 0, o1 % 3
        o2z, o2y, o2x = 0, o2 // 2, o2 % 2
        for mz in range(m[0]):
            for my in range(m[1]):
                z = o1z + 2 * o2z + frag[0] * mz
                y = o1y + 1 * o2y + frag[1] * my
                x = o1x + 3 * o2x
                assert dense[z, y, x] == fragments[item, 0, mz, my, 0]


def test_memory_and_flops_formulas() -> None:
    layer = Conv(4, 8, (3, 3, 3), "relu")
    shape = (2, 4, 10, 10, 10)
    assert DirectConv().flops(layer, shape) == 2 * 2 * 8 * 8 ** 3 * 4 * 27
    mem = DirectConv().memory(layer, shape)
    assert mem.working == 4 * (2 * 4 * 1000 + 2 * 8 * 512)
    pool = MaxPoolFragments().memory(Pool(4, (2, 2, 2)), (1, 4, 9, 9, 9))
    assert pool.working == 4 * (4 * 729 + 8 * 4 * 64)


FFT_PRIMITIVES = ["fft", "fft-pruned", "fft-data", "fft-pruned-data", "fft-pruned-lean"]


@pytest.mark.parametrize("name", FFT_PRIMITIVES)
@pytest.mark.parametrize("fi,fo,kernel,shape,act,batch", [
    (3, 5, (3, 3, 1), (7, 9, 11), "tanh", 2),
    (2, 7, (5, 5, 5), (12, 13, 9), "relu", 3),
    (1, 4, (1, 1, 1), (4, 5, 6), "sigmoid", 1),
    (6, 9, (2, 3, 4), (13, 11, 17), "linear", 2),   # 13, 11, 17: padded to 14, 12, 18
    (4, 3, (4, 4, 4), (4, 4, 4), "relu", 5),        # image == kernel: one output voxel
])
def test_fft_conv_matches_numpy(name, fi, fo, kernel, shape, act, batch, rng) -> None:
    from znni.primitives import PRIMITIVES

    layer = Conv(fi, fo, kernel, act)
    x, w, b = random_layer_data(rng, batch, fi, fo, kernel, shape)
    out = PRIMITIVES[name].prepare(0, layer, x.shape, (w, b), 2).run(x, 0)
    ref = conv_reference(x, w, b, act)
    assert relative_error(out, ref) < 1e-4


def test_pruned_transforms_match_numpy(rng) -> None:
    from znni.fft import SpectralShape, forward, forward_unpruned, inverse_cropped

    for extent, size in [((3, 2, 5), (8, 10, 12)), ((7, 9, 11), (7, 9, 12)), ((1, 1, 1), (4, 5, 6)),
                         ((16, 16, 16), (16, 16, 16))]:
        x = rng.random((3, *extent)).astype(np.float32)
        shape = SpectralShape(size)
        ref = np.fft.rfftn(x.astype(np.float64), s=size, axes=(1, 2, 3))
        for transform in (forward, forward_unpruned):
            assert relative_error(transform(x, shape, 2), ref) < 1e-5
        full = np.fft.irfftn(ref, s=size, axes=(1, 2, 3)) * np.prod(size)
        start, stop = (1, 0, min(2, size[2] - 1)), (size[0], size[1] - 1, size[2])
        got = inverse_cropped(forward(x, shape, 2), shape, start, stop, 2)
        want = full[:, start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
        assert relative_error(got, want) < 1e-5


def test_fft_friendly_sizes() -> None:
    from znni.fft import fft_size

    assert [fft_size(n) for n in (1, 11, 13, 17, 71, 97, 127)] == [1, 12, 14, 18, 72, 98, 128]


@pytest.mark.parametrize("name", [*FFT_PRIMITIVES, "direct"])
def test_memory_formula_predicts_measured_peak(name, rng) -> None:
    """memory().working against tracemalloc's peak of numpy/pyfftw buffers during a run (plus the
    input, which the caller holds): within ±15 %, the acceptance bound."""
    import tracemalloc

    from znni.primitives import PRIMITIVES
    from znni.primitives.base import tensor_bytes

    layer = Conv(24, 20, (5, 5, 5), "relu")
    shape = (4, 24, 30, 30, 30)
    w = rng.standard_normal((20, 24, 5, 5, 5)).astype(np.float32)
    step = PRIMITIVES[name].prepare(0, layer, shape, (w, np.zeros(20, np.float32)), 2)
    x = padded_empty(shape, step.input_slack)
    x[...] = 1
    step.run(x, 0)  # plans, wisdom, kernel loading
    tracemalloc.start()
    try:
        step.run(x, 0)
        peak = tracemalloc.get_traced_memory()[1] + tensor_bytes(shape)
    finally:
        tracemalloc.stop()
    predicted = PRIMITIVES[name].memory(layer, shape).working
    assert abs(predicted - peak) <= 0.15 * peak, (predicted, peak)


def test_fftw_wisdom_is_persisted_in_the_cache_dir(rng) -> None:
    from znni import config
    from znni.fft import SpectralShape, forward

    if config.fftw_effort() == "FFTW_ESTIMATE":
        pytest.skip("no wisdom is gathered with FFTW_ESTIMATE")
    from znni.fft.fftw import fftw

    forward(rng.random((2, 11, 13, 9), dtype=np.float32), SpectralShape((11, 13, 10)), 2)
    path = fftw().wisdom_path()
    assert path.parent == config.cache_dir() and path.stat().st_size > 0




@pytest.mark.parametrize("primitive", ["direct", "fft-pruned", "fft-data"])
@pytest.mark.parametrize("kernel,dilation,shape", [
    ((3, 3, 3), (2, 2, 2), (9, 10, 11)),
    ((3, 3, 1), (1, 2, 4), (5, 9, 6)),       # anisotropic kernel and dilation
    ((2, 1, 3), (3, 1, 2), (7, 4, 12)),
])
def test_dilated_convs_match_numpy(primitive, kernel, dilation, shape, rng) -> None:
    """Convs after max-filtered pools run dilated: direct by dilated taps, FFT by its
    zero-stuffed equivalent."""
    layer = Conv(3, 5, kernel, "linear", dilation)
    x, w, b = random_layer_data(rng, 2, 3, 5, kernel, shape)
    step = PRIMITIVES[primitive].prepare(0, layer, x.shape, (w, b), 2)
    buf = padded_empty(x.shape, step.input_slack)
    buf[...] = x
    assert relative_error(step.run(buf, 0), conv_reference(x, w, b, "linear", dilation)) < 1e-5


@pytest.mark.parametrize("window,dilation,size", [((2, 2, 2), (1, 1, 1), (7, 9, 11)),
                                                  ((2, 2, 2), (2, 2, 2), (7, 9, 11)),
                                                  ((1, 2, 3), (4, 1, 2), (5, 6, 13)),
                                                  ((3, 1, 2), (1, 1, 1), (3, 3, 2))])
def test_max_filter_matches_numpy(window, dilation, size, rng) -> None:
    x = rng.standard_normal((2, 3, *size)).astype(np.float32)
    step = MaxFilter().prepare(0, Pool(3, window, True, dilation), x.shape, None, 2)
    ref = np.stack([_dilated_max_filter(xs, window, list(dilation)) for xs in x])
    np.testing.assert_array_equal(step.run(x, 0), ref)
