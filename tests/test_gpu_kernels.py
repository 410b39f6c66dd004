"""GPU kernels without a GPU: the generated CUDA bodies run as C++ through the emulation header
and must equal independent references; the same sources compile with nvcc -Werror."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import znni
from znni.codegen.nvcc import NvccToolchain
from znni.primitives.direct import pack_weights
from znni.primitives.gpu_fft import gpu_fft_source
from znni.primitives.gpu_kernels import (EMULATE_ENV, direct_block, gpu_direct_source,
                                         gpu_mpf_source, load_gpu_kernel)
from znni.primitives.mpf import mpf_output_shape
from znni.reference import forward
from znni.spec import Conv, Pool

from .conftest import net_from_layers, random_volume, relative_error

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


def _fragments(x: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    """MPF by its definition (DESIGN §4), slicing per offset: an oracle independent of both
    kernels' index arithmetic."""
    s, c, *n = x.shape
    m = [(n[a] + 1) // window[a] - 1 for a in range(3)]
    out = []
    for sample in range(s):
        for oz in range(window[0]):
            for oy in range(window[1]):
                for ox in range(window[2]):
                    v = x[sample, :, oz:oz + m[0] * window[0], oy:oy + m[1] * window[1],
                          ox:ox + m[2] * window[2]]
                    v = v.reshape(c, m[0], window[0], m[1], window[1], m[2], window[2])
                    out.append(v.max(axis=(2, 4, 6)))
    return np.stack(out)


@pytest.mark.parametrize(("window", "size", "channels", "batch"), [
    ((2, 2, 2), (7, 9, 5), 3, 1), ((2, 2, 1), (5, 7, 6), 2, 2), ((3, 1, 2), (8, 4, 7), 1, 2),
    ((1, 1, 1), (3, 3, 3), 2, 1)])
def test_emulated_mpf_equals_fragments_by_definition(window, size, channels, batch) -> None:
    layer = Pool(channels, window)
    x = random_volume((batch, channels, *size), seed=5)
    module = load_gpu_kernel(gpu_mpf_source(layer, x.shape), "mpf test")
    out = np.full(mpf_output_shape(layer, x.shape), np.nan, np.float32)  # type: ignore[arg-type]
    module.forward(x, out, 1)
    np.testing.assert_array_equal(out, _fragments(x, window))


def gpu_sources(net: znni.Network) -> list[str]:
    """Every GPU source a plan of ``net`` at its smallest patch renders (deduplicated)."""
    sources: dict[str, None] = {}
    for shapes in net.layer_shapes(net.fragmentation, 1):
        layer = shapes.layer
        if isinstance(layer, Conv):
            sources[gpu_direct_source(layer, shapes.input)] = None
            sources[gpu_fft_source(layer, shapes.input)] = None
        else:
            sources[gpu_mpf_source(layer, shapes.input)] = None
    return list(sources)


@needs_nvcc
@pytest.mark.parametrize("net_name", ["n337", "n537", "n726", "n926", "aniso2d3d", "tiny"])
def test_generated_cuda_compiles_warning_free(net_name: str, tmp_path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from znni.codegen.nvcc import find_cufft

    if find_cufft() is None:
        pytest.skip("cuFFT headers not installed (pip install nvidia-cufft)")
    monkeypatch.delenv(EMULATE_ENV)
    toolchain = NvccToolchain.from_config(with_cufft=True)
    for j, source in enumerate(gpu_sources(znni.load(net_name))):
        path = tmp_path / f"k{j}.cu"
        path.write_text(source)
        toolchain.check(path)  # raises CompileError with nvcc's output on any warning
