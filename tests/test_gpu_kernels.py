"""GPU kernels without a GPU: the generated CUDA bodies run as C++ through the emulation header
and must equal independent references; the same sources compile with nvcc -Werror."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import znni
from znni.codegen.nvcc import NvccToolchain
from znni.codegen.render import render
from znni.primitives.direct import pack_weights
from znni.primitives.gpu_fft import gpu_fft_source
from znni.primitives.gpu_kernels import (
    EMULATE_ENV,
    direct_block,
    gpu_direct_source,
    gpu_pool_source,
    load_gpu_kernel,
)
from znni.primitives.max_filter import max_filter_output_shape
from znni.primitives.mpf import mpf_output_shape
from znni.reference import _dilated_max_filter, dilated_correlation, forward
from znni.spec import Conv, Pool

from .conftest import net_from_layers, random_volume, relative_error
from .test_primitives import mpf_numpy

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")


@pytest.fixture(autouse=True)
def _emulate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EMULATE_ENV, "1")


CONV_CASES = [
    ((3, 3, 3), 1, 4, (9, 8, 7), "relu", 1),
    ((3, 3, 1), 3, 11, (7, 6, 5), "tanh", 2),   # anisotropic; 11 = a full and a partial block
    ((1, 2, 3), 2, 3, (4, 5, 9), "sigmoid", 3),
    ((4, 4, 4), 5, 8, (6, 7, 5), "linear", 1),
    ((2, 5, 3), 2, 3, (11, 13, 9), "relu", 2),  # transforms padded to 12x14x9 (odd x)
]


@pytest.mark.parametrize("primitive", ["direct", "fft"])
@pytest.mark.parametrize(("kernel", "f_in", "f_out", "size", "activation", "batch"), CONV_CASES)
def test_emulated_conv_equals_reference(primitive, kernel, f_in, f_out, size, activation,
                                        batch) -> None:
    """Direct and cuFFT conv (cuFFT emulated by a naive DFT: pruning, transposes, MAC, crop and
    epilogue are the generated code's own) against the numpy oracle."""
    net = net_from_layers([{"type": "conv", "kernel": list(kernel), "out_channels": f_out,
                            "activation": activation}], input_channels=f_in, seed=3)
    layer = net.layers[0]
    assert isinstance(layer, Conv)
    x = random_volume((batch, f_in, *size), seed=4)
    if primitive == "direct":
        module = load_gpu_kernel(gpu_direct_source(layer, x.shape), "direct test")
        w, b = pack_weights(*net.require_weights()[0], direct_block(layer))
    else:
        module = load_gpu_kernel(gpu_fft_source(layer, x.shape), "fft test")
        w, b = net.require_weights()[0]
    out_shape = (batch, f_out, *(size[a] - kernel[a] + 1 for a in range(3)))
    out = np.full(out_shape, np.nan, np.float32)
    module.forward(x, out, 1, w, b)
    for s in range(batch):
        assert relative_error(out[s], forward(net, x[s])) < 1e-4


@pytest.mark.parametrize(("window", "size", "channels", "batch"), [
    ((2, 2, 2), (7, 9, 5), 3, 1), ((2, 2, 1), (5, 7, 6), 2, 2), ((3, 1, 2), (8, 4, 7), 1, 2),
    ((1, 1, 1), (3, 3, 3), 2, 1)])
def test_emulated_mpf_equals_fragments_by_definition(window, size, channels, batch) -> None:
    layer = Pool(channels, window)
    x = random_volume((batch, channels, *size), seed=5)
    module = load_gpu_kernel(gpu_pool_source(layer, x.shape), "mpf test")
    out = np.full(mpf_output_shape(layer, x.shape), np.nan, np.float32)  # type: ignore[arg-type]
    module.forward(x, out, 1)
    np.testing.assert_array_equal(out, mpf_numpy(x, window))


@pytest.mark.parametrize(("kernel", "dilation", "size", "activation"), [
    ((3, 3, 3), (2, 2, 2), (9, 10, 11), "relu"),
    ((3, 3, 1), (1, 2, 4), (5, 9, 6), "linear"),    # anisotropic kernel and dilation
    ((2, 1, 3), (4, 1, 2), (7, 3, 9), "sigmoid")])
def test_emulated_dilated_direct_equals_numpy(kernel, dilation, size, activation, rng) -> None:
    """Convs after max-filtered pools run with dilated taps."""
    layer = Conv(3, 5, kernel, activation, dilation)
    w = rng.standard_normal((5, 3, *kernel)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    x = random_volume((2, 3, *size), seed=6)
    module = load_gpu_kernel(gpu_direct_source(layer, x.shape), "dilated direct test")
    wp, bp = pack_weights(w, b, direct_block(layer))
    expected = np.stack([dilated_correlation(xs.astype(np.float64), w.astype(np.float64),
                                              list(dilation)) + b[:, None, None, None]
                         for xs in x])
    act = {"relu": lambda v: np.maximum(v, 0), "linear": lambda v: v,
           "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[activation]
    out = np.full(expected.shape, np.nan, np.float32)
    module.forward(x, out, 1, wp, bp)
    assert relative_error(out, act(expected)) < 1e-4


@pytest.mark.parametrize(("window", "dilation", "size"), [
    ((2, 2, 2), (1, 1, 1), (7, 8, 9)), ((2, 2, 2), (2, 4, 2), (9, 11, 7)),
    ((3, 1, 2), (1, 1, 3), (5, 4, 8))])
def test_emulated_max_filter_equals_numpy(window, dilation, size) -> None:
    layer = Pool(3, window, max_filter=True, dilation=dilation)
    x = random_volume((2, 3, *size), seed=7)
    module = load_gpu_kernel(gpu_pool_source(layer, x.shape), "max filter test")
    out = np.full(max_filter_output_shape(layer, x.shape), np.nan, np.float32)
    module.forward(x, out, 1)
    expected = np.stack([_dilated_max_filter(xs, window, list(dilation)) for xs in x])
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
@pytest.mark.parametrize("kind", ["direct", "fft", "mpf", "max_filter"])
def test_emulated_gpu_host_ram_chunks_equal_one_pass(kind: str, chunk: int) -> None:
    """GPU + host RAM batch splits (two streams and buffer sets alternating, a last partial
    chunk): the same output as the whole batch in one pass, bit for bit."""
    x = random_volume((5, 2, 7, 6, 9), seed=8)
    weights: tuple = ()
    if kind in ("direct", "fft"):
        net = net_from_layers([{"type": "conv", "kernel": [3, 2, 3], "out_channels": 3,
                                "activation": "relu"}], input_channels=2, seed=9)
        layer = net.layers[0]
        assert isinstance(layer, Conv)
        source = (gpu_direct_source if kind == "direct" else gpu_fft_source)(layer, x.shape)
        weights = (pack_weights(*net.require_weights()[0], direct_block(layer))
                   if kind == "direct" else net.require_weights()[0])
        shape = (5, 3, 5, 5, 7)
    else:
        pool = Pool(2, (2, 1, 2), max_filter=kind == "max_filter", dilation=(1, 1, 2))
        source = gpu_pool_source(pool, x.shape)
        shape = (max_filter_output_shape if pool.max_filter else mpf_output_shape)(pool, x.shape)
    module = load_gpu_kernel(source, f"{kind} chunk test")
    whole, chunked = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
    module.forward(x, whole, 1, *weights)
    module.gpu_host_forward(x, chunked, chunk, *weights)
    assert not np.isnan(whole).any()
    np.testing.assert_array_equal(chunked, whole)


HELD_OUT = {"name": "held_out", "input_channels": 2, "layers": [
    {"type": "conv", "kernel": [2, 3, 5], "out_channels": 7, "activation": "tanh"},
    {"type": "pool", "window": [3, 1, 2]},
    {"type": "conv", "kernel": [1, 3, 3], "out_channels": 9, "activation": "relu"},
    {"type": "pool", "window": [1, 2, 2]},
    {"type": "conv", "kernel": [3, 1, 1], "out_channels": 3, "activation": "sigmoid"}]}
def gpu_sources(net: znni.Network) -> list[str]:
    """Every GPU source of ``net``'s layers at its smallest patch (deduplicated), with
    fragments and with the last pool max-filtered (the dilated kernels after it)."""
    sources: dict[str, None] = {}
    for max_filtered in (0, 1):
        for shapes in net.layer_shapes(net.fragmentation_with(max_filtered), 1, max_filtered):
            layer = shapes.layer
            if isinstance(layer, Conv):
                sources[gpu_direct_source(layer, shapes.input)] = None
                if layer.dilation == (1, 1, 1):
                    sources[gpu_fft_source(layer, shapes.input)] = None
            else:
                sources[gpu_pool_source(layer, shapes.input)] = None
    return list(sources)


_ENTRY_POINTS = ("znni_abi_version", "znni_input_slack", "znni_layer_forward",
                 "znni_gpu_layer_forward", "znni_gpu_host_forward",
                 "znni_gpu_conv_chunk_forward")


def one_translation_unit(sources: list[str]) -> str:
    """All ``sources`` as one .cu file, so one nvcc run checks them all: the shared headers come
    first (include guards keep them out of the rest; cuFFT's only if a source uses it), each
    source sits in its own namespace and its extern "C" entry points are renamed apart by
    macros."""
    headers = ["znni_abi.h", "cuda_emulation.h", "znni_gpu_abi.h"]
    if any("cufft_emulation.h" in s for s in sources):
        headers.append("cufft_emulation.h")
    parts = ["".join(f'#include "{h}"\n' for h in headers) + "#include <cmath>\n"]
    for j, source in enumerate(sources):
        body = "\n".join(line for line in source.splitlines()
                         if not line.startswith("#include"))
        defines = "".join(f"#define {e} {e}_{j}\n" for e in _ENTRY_POINTS)
        undefs = "".join(f"#undef {e}\n" for e in _ENTRY_POINTS)
        parts.append(f"{defines}namespace k{j} {{\n{body}\n}}  // namespace k{j}\n{undefs}")
    return "\n".join(parts)


@needs_nvcc
@pytest.mark.parametrize("with_cufft", [True, False])
def test_generated_cuda_compiles_warning_free(with_cufft: bool, tmp_path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Every GPU source of the four benchmark nets and a held-out net, and the GPU runtime
    module, compiles with nvcc --Werror all-warnings, in one nvcc run; without cuFFT's headers
    (not every CUDA toolkit has them) all but the FFT layers."""
    from znni.codegen.nvcc import find_cufft

    if with_cufft and find_cufft() is None:
        pytest.skip("cuFFT headers not installed (pip install nvidia-cufft)")
    monkeypatch.delenv(EMULATE_ENV)
    nets = [znni.load(name) for name in ("n337", "n537", "n726", "n926")]
    sources = [render("gpu_runtime.cu.j2", {}),
               *(s for net in [*nets, znni.load(HELD_OUT)] for s in gpu_sources(net))]
    if not with_cufft:
        sources = [s for s in sources if "cufft_emulation.h" not in s]
    path = tmp_path / "all.cu"
    path.write_text(one_translation_unit(list(dict.fromkeys(sources))))
    NvccToolchain.from_config(with_cufft=with_cufft).check(path)  # CompileError on a warning


@needs_nvcc
def test_nvcc_cache_key_holds_version_arch_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """A different -arch or flag set is a different binary, so a different cache entry; the
    fingerprint holds nvcc's own version line."""
    from znni.codegen.cache import cache_key

    source = gpu_pool_source(Pool(1, (2, 2, 2)), (1, 1, 5, 5, 5))
    keys = set()
    for arch, flags in (("sm_90", "-O3"), ("sm_80", "-O3"), ("sm_90", "-O2")):
        monkeypatch.setenv("ZNNI_CUDA_ARCH", arch)
        monkeypatch.setenv("ZNNI_NVCCFLAGS", flags)
        keys.add(cache_key(source, NvccToolchain.from_config()))
    assert len(keys) == 3
    monkeypatch.setenv("ZNNI_CUDA_ARCH", "sm_90; rm -rf /")
    with pytest.raises(znni.ZnniError, match="not a CUDA architecture"):
        NvccToolchain.from_config()


@needs_nvcc
def test_nvcc_builds_a_loadable_module_through_the_cache(tmp_path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real build (nvcc -shared, CUDA runtime linked) goes through the kernel cache (a
    fresh one: one compile, then a hit) and loads with the usual ABI check; running it is for
    a GPU machine."""
    from znni.codegen import cache as kernel_cache

    monkeypatch.delenv(EMULATE_ENV)
    monkeypatch.setenv("ZNNI_CACHE_DIR", str(tmp_path))
    source = gpu_pool_source(Pool(2, (1, 2, 2)), (1, 2, 3, 5, 7))
    toolchain = NvccToolchain.from_config()
    before = kernel_cache.compile_count
    path = kernel_cache.build(source, toolchain, "nvcc build test")
    assert path.is_relative_to(tmp_path) and kernel_cache.compile_count == before + 1
    assert kernel_cache.build(source, toolchain, "nvcc build test") == path
    assert kernel_cache.compile_count == before + 1
    assert load_gpu_kernel(source, "nvcc build test").input_slack == 0
