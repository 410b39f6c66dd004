"""The import check: the imported network must compute what the source model computes.

A chain of valid convolutions and stride = window max pools, run by its own framework on an
input of FOV + F·(m − 1) voxels per axis (F the fragmentation), gives m outputs per axis: the
dense output at every F-th voxel. znni's oracle (:func:`znni.reference.forward`) on the same
input must agree there. This catches what the layer-by-layer translation cannot see, e.g. a
``forward`` that is not the chain of its children (skip connections, functional calls).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import reference
from ..spec import Network
from .chain import UnsupportedModelError

#: Relative tolerance (max |Δ| / max |reference|) of the check; float32 sums reorder.
TOLERANCE = 1e-4

SourceForward = Callable[[np.ndarray], np.ndarray]


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
    except Exception as exc:  # the model's own forward failed: the chain guess was wrong
        raise UnsupportedModelError(
            f"cannot run {what} on a {list(x.shape)} input to check the import: {exc}",
            "znni imports plain chains (each layer's output is the next one's input)") from None
    frag = net.fragmentation
    dense = reference.forward(net, x[0])
    ours = dense[:, ::frag[0], ::frag[1], ::frag[2]]
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
