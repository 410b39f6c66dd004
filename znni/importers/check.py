"""The import check: the imported network must compute what the source model computes.

A chain of valid convolutions and stride = window max pools, run by its own framework on an
input of FOV + F·(m − 1) voxels per axis (F the fragmentation), gives m outputs per axis: the
dense output at every F-th voxel. The imported network, run the same strided way
(:func:`strided_forward`, float64 numpy), must agree. This catches what the layer-by-layer
translation cannot see, e.g. a ``forward`` that is not the chain of its children (skip
connections, functional calls). That the dense output (znni's, the oracle's) equals the strided
one at every F-th voxel is docs/design.md §3, tested elsewhere; the strided form costs a fraction of
the dense oracle (an n337-sized import: 30 s instead of 70 s on this 2-core machine, most of it
the first two layers).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..activations import apply
from ..spec import Conv, Network
from .chain import UnsupportedModelError

#: Relative tolerance (max |Δ| / max |reference|) of the check; float32 sums reorder.
TOLERANCE = 1e-4

SourceForward = Callable[[np.ndarray], np.ndarray]

def correlate(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Valid correlation of ``x`` (C, Z, Y, X) with ``w`` (out, C, kz, ky, kx), tap by tap
    (memory: one output, never an unfolded input)."""
    k = w.shape[2:]
    n = [x.shape[1 + a] - k[a] + 1 for a in range(3)]
    out = np.zeros((w.shape[0], *n))
    for a in range(k[0]):
        for b in range(k[1]):
            for c in range(k[2]):
                out += np.tensordot(w[:, :, a, b, c],
                                    x[:, a:a + n[0], b:b + n[1], c:c + n[2]], axes=(1, 0))
    return out


def max_pool(x: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    """Max pooling with stride = window, floor mode, of ``x`` (C, Z, Y, X)."""
    m = [x.shape[1 + a] // window[a] for a in range(3)]
    x = x[:, :m[0] * window[0], :m[1] * window[1], :m[2] * window[2]]
    out: np.ndarray = x.reshape(x.shape[0], m[0], window[0], m[1], window[1], m[2],
                                window[2]).max(axis=(2, 4, 6))
    return out


def strided_forward(net: Network, x: np.ndarray) -> np.ndarray:
    """``net`` as a plain strided ConvNet on ``x`` (C, Z, Y, X), in float64."""
    weights = net.require_weights()
    t = x.astype(np.float64)
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Conv):
            w, b = weights[i]
            t = apply(layer.activation, correlate(t, w.astype(np.float64))
                      + b.astype(np.float64)[:, None, None, None])
        else:
            t = max_pool(t, layer.window)
    return t


def check_input(net: Network, outputs: int = 2, seed: int = 0) -> np.ndarray:
    """A random ``(1, C, …)`` float32 input giving ``outputs`` strided outputs per axis."""
    fov, frag = net.fov, net.fragmentation
    shape = tuple(fov[a] + frag[a] * (outputs - 1) for a in range(3))
    return np.random.default_rng(seed).standard_normal(
        (1, net.input_channels, *shape)).astype(np.float32)


def check_import(net: Network, source: SourceForward, what: str, seed: int = 0) -> float:
    """Max relative difference between ``source`` and ``net``; raises above :data:`TOLERANCE`."""
    x = check_input(net, seed=seed)
    try:
        expected = np.asarray(source(x), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - the model's own forward failed: wrong chain guess
        raise UnsupportedModelError(
            f"cannot run {what} on a {list(x.shape)} input to check the import: {exc}",
            "znni imports plain chains (each layer's output is the next one's input)") from None
    ours = strided_forward(net, x[0])
    if expected.shape != (1, *ours.shape):
        raise UnsupportedModelError(
            f"{what} gives an output of shape {list(expected.shape)} where the imported chain "
            f"gives {[1, *ours.shape]}",
            "the model's forward is not the chain of its layers (reshapes, skips, crops?)")
    scale = float(np.abs(expected).max()) or 1.0
    error = float(np.abs(ours - expected[0]).max()) / scale
    if not error <= TOLERANCE:
        raise UnsupportedModelError(
            f"the imported network differs from {what}: max relative error {error:.2e} "
            f"(tolerance {TOLERANCE:.0e})",
            "the model's forward is probably not the plain chain of its layers (functional "
            "calls, skip connections, or activations placed where znni cannot put them)")
    return error
