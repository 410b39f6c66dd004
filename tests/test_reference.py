"""The oracle itself, checked against the *definition* of dense output (docs/design.md §3): the net
applied to each FOV window separately, with ordinary strided pooling aligned to its corner."""

from __future__ import annotations

import itertools

import numpy as np

from znni.reference import forward
from znni.spec import Conv

from .conftest import net_from_layers, random_volume, relative_error

ACT = {"relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
       "tanh": np.tanh, "linear": lambda v: v}


def apply_to_window(net, window: np.ndarray) -> np.ndarray:
    """Plain (non-dense) forward pass of one FOV window → one output vector."""
    x = window.astype(np.float64)
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Conv):
            w, b = net.weights[i]
            k = layer.kernel
            out = np.zeros((w.shape[0], *(x.shape[1 + a] - k[a] + 1 for a in range(3))))
            for z, y, xx in itertools.product(*(range(n) for n in out.shape[1:])):
                patch = x[:, z:z + k[0], y:y + k[1], xx:xx + k[2]]
                out[:, z, y, xx] = np.einsum("oizyx,izyx->o", w, patch) + b
            x = ACT[layer.activation](out)
        else:
            p = layer.window
            n = [x.shape[1 + a] // p[a] for a in range(3)]
            x = x[:, :n[0] * p[0], :n[1] * p[1], :n[2] * p[2]]
            x = x.reshape(x.shape[0], n[0], p[0], n[1], p[1], n[2], p[2]).max(axis=(2, 4, 6))
    return x[:, 0, 0, 0]


def test_reference_equals_per_window_definition() -> None:
    net = net_from_layers([
        {"type": "conv", "kernel": [2, 3, 1], "out_channels": 3, "activation": "tanh"},
        {"type": "pool", "window": [1, 2, 2]},
        {"type": "conv", "kernel": [1, 2, 2], "out_channels": 2, "activation": "relu"},
        {"type": "pool", "window": [2, 1, 2]},
        {"type": "conv", "kernel": [1, 1, 2], "out_channels": 2, "activation": "sigmoid"},
    ], input_channels=2, seed=3)
    fov = net.fov
    vol = random_volume((2, fov[0] + 2, fov[1] + 3, fov[2] + 1), seed=5)
    dense = forward(net, vol)
    expected = np.zeros_like(dense, dtype=np.float64)
    for v in itertools.product(*(range(n) for n in dense.shape[1:])):
        window = vol[:, v[0]:v[0] + fov[0], v[1]:v[1] + fov[1], v[2]:v[2] + fov[2]]
        expected[(slice(None), *v)] = apply_to_window(net, window)
    assert relative_error(dense, expected) < 1e-6


def test_fft_and_direct_correlation_paths_agree(rng) -> None:
    from znni.reference import _fft_correlation, dilated_correlation

    x = rng.standard_normal((2, 19, 17, 21))
    w = rng.standard_normal((3, 2, 4, 2, 3))
    dil = [2, 3, 1]
    direct = dilated_correlation(x, w, dil)  # 24 taps: the direct loop
    fft = _fft_correlation(x, w, dil, list(direct.shape[1:]))
    np.testing.assert_allclose(fft, direct, atol=1e-10)
