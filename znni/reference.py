"""The numpy oracle: dense output by max filters and dilated correlations (docs/design.md §3).

Deliberately independent of the fast path: no fragments, no generated code, no FFT. Each pool
becomes a stride-1 max filter dilated by the current dilation; each conv a dilated valid
correlation. Every fast primitive is tested against this.
"""

from __future__ import annotations

import numpy as np

from .activations import apply
from .runtime.volume import as_volume
from .spec import Conv, Network


def forward(net: Network, volume: np.ndarray) -> np.ndarray:
    """Dense output ``(C_out, Z-FOVz+1, Y-FOVy+1, X-FOVx+1)`` of ``net`` on ``volume``."""
    weights = net.require_weights()
    x = as_volume(volume, net).astype(np.float64)
    dil = [1, 1, 1]
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Conv):
            w, b = weights[i]
            x = dilated_correlation(x, w.astype(np.float64), dil)
            x = apply(layer.activation, x + b.astype(np.float64)[:, None, None, None])
        else:
            x = _dilated_max_filter(x, layer.window, dil)
            dil = [dil[a] * layer.window[a] for a in range(3)]
    return x.astype(np.float32)


#: Above this many kernel taps the oracle correlates through float64 FFTs (numpy's pocketfft,
#: not the FFTW that znni's FFT primitives use): a loop over 729 taps of a 9³ kernel is too slow.
_MAX_DIRECT_TAPS = 27


def dilated_correlation(x: np.ndarray, w: np.ndarray, dil: list[int]) -> np.ndarray:
    """out[o, v] = Σ_i Σ_k w[o, i, k] · x[i, v + k·dil] (valid mode)."""
    k = w.shape[2:]
    out_size = [x.shape[1 + a] - (k[a] - 1) * dil[a] for a in range(3)]
    if np.prod(k) > _MAX_DIRECT_TAPS:
        return _fft_correlation(x, w, dil, out_size)
    out = np.zeros((w.shape[0], *out_size))
    for kz in range(k[0]):
        for ky in range(k[1]):
            for kx in range(k[2]):
                sl = x[:, kz * dil[0]: kz * dil[0] + out_size[0],
                       ky * dil[1]: ky * dil[1] + out_size[1],
                       kx * dil[2]: kx * dil[2] + out_size[2]]
                out += np.tensordot(w[:, :, kz, ky, kx], sl, axes=(1, 0))
    return out


def _dilated_max_filter(x: np.ndarray, window: tuple[int, int, int], dil: list[int]) -> np.ndarray:
    """out[c, v] = max over 0 ≤ o < window of x[c, v + o·dil] (valid mode), axis by axis."""
    for a in range(3):
        span = (window[a] - 1) * dil[a]
        n = x.shape[1 + a] - span
        index = [slice(None)] * 4
        index[1 + a] = slice(0, n)
        result = x[tuple(index)]
        for o in range(1, window[a]):
            index[1 + a] = slice(o * dil[a], o * dil[a] + n)
            result = np.maximum(result, x[tuple(index)])
        x = result
    return x


def _fft_correlation(x: np.ndarray, w: np.ndarray, dil: list[int],
                     out_size: list[int]) -> np.ndarray:
    """The same correlation as a product of spectra: correlating with w is convolving with w
    flipped; the dilated, flipped kernel is zero-padded to the image size and the valid part
    (offset span per axis) is cut out of the circular result, which wrap-around cannot reach."""
    n = x.shape[1:]
    span = [(w.shape[2 + a] - 1) * dil[a] for a in range(3)]
    kernel = np.zeros((*w.shape[:2], *(s + 1 for s in span)))
    kernel[:, :, ::dil[0], ::dil[1], ::dil[2]] = w
    kernel = kernel[:, :, ::-1, ::-1, ::-1]
    xf = np.fft.rfftn(x, s=n, axes=(1, 2, 3))
    kf = np.fft.rfftn(kernel, s=n, axes=(2, 3, 4))
    full = np.fft.irfftn(np.einsum("oi...,i...->o...", kf, xf), s=n, axes=(1, 2, 3))
    return full[:, span[0]:span[0] + out_size[0], span[1]:span[1] + out_size[1],
                span[2]:span[2] + out_size[2]]
