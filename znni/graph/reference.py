"""The float64 numpy oracle for DAG networks: each node as its definition says, on the whole
image at once (no tiles, no generated code). The fast path and the importers are tested
against it; it is tested against PyTorch where that is installed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ShapeError
from ..reference import dilated_correlation
from .nodes import INPUT, Act, Activation, Add, Concat, Conv, MaxFilter, Node, Pool, Upsample
from .shapes import node_sizes
from .spec import Graph

_ACTIVATE: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "relu": lambda x, _: np.maximum(x, 0),
    "leaky_relu": lambda x, slope: np.where(x > 0, x, slope * x),
    "elu": lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
    "sigmoid": lambda x, _: 1 / (1 + np.exp(-x)),
    "tanh": lambda x, _: np.tanh(x),
    "softmax": lambda x, _: _softmax(x),
    "linear": lambda x, _: x,
}


def _softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the channels (axis 0)."""
    e = np.exp(x - x.max(axis=0, keepdims=True))
    out: np.ndarray = e / e.sum(axis=0, keepdims=True)
    return out


def activate(activation: Activation, x: np.ndarray) -> np.ndarray:
    """``x`` (channels first) after ``activation``."""
    return _ACTIVATE[activation.name](x, activation.parameter)


def centre_crop(x: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """The centre ``size`` of ``x``'s image (channels first; differences are even)."""
    start = [(x.shape[1 + a] - size[a]) // 2 for a in range(3)]
    return x[:, start[0]:start[0] + size[0], start[1]:start[1] + size[1],
             start[2]:start[2] + size[2]]


def _conv(node: Conv, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    before, after = node.pad
    if node.padding == "same":
        x = np.pad(x, [(0, 0), *zip(before, after, strict=True)])
    out = dilated_correlation(x, w.astype(np.float64), list(node.dilation))
    return activate(node.activation, out + b.astype(np.float64)[:, None, None, None])


def _pool(node: Pool, x: np.ndarray) -> np.ndarray:
    c, (z, y, xx), (wz, wy, wx) = x.shape[0], x.shape[1:], node.window
    out: np.ndarray = x.reshape(c, z // wz, wz, y // wy, wy, xx // wx, wx).max(axis=(2, 4, 6))
    return out


def max_windows(x: np.ndarray, window: tuple[int, int, int], dilation: tuple[int, int, int],
                stride: tuple[int, int, int]) -> np.ndarray:
    """The max over ``window`` voxels ``dilation`` apart, every ``stride`` voxels of ``x``'s
    image (channels first): a max filter (stride 1) or max pooling (stride = window). Axis by
    axis (the max is separable), as maxima of strided views: a reduction over the small window
    axes of a reshaped array ran ~5× slower."""
    for axis, (w, d, step) in enumerate(zip(window, dilation, stride, strict=True), start=1):
        if w == 1 and step == 1:
            continue
        n = (x.shape[axis] - (w - 1) * d - 1) // step + 1
        views = [x[(slice(None),) * axis + (slice(o * d, o * d + (n - 1) * step + 1, step),)]
                 for o in range(w)]
        out = views[0].copy() if w == 1 else np.maximum(views[0], views[1])
        for view in views[2:]:
            np.maximum(out, view, out=out)
        x = out
    return x


def _upsample(node: Upsample, x: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    fz, fy, fx = node.factor
    z, y, xx = x.shape[1:]
    if node.mode == "nearest":
        near: np.ndarray = x.repeat(fz, axis=1).repeat(fy, axis=2).repeat(fx, axis=3)
        return near
    w = weights[f"{node.name}.weight"].astype(np.float64)  # (in, out, fz, fy, fx)
    b = weights[f"{node.name}.bias"].astype(np.float64)
    out: np.ndarray = np.einsum("izyx,ioabc->ozaybxc", x, w).reshape(
        node.channels, z * fz, y * fy, xx * fx)
    return out + b[:, None, None, None]


def forward(graph: Graph, volume: np.ndarray) -> np.ndarray:
    """The output ``(C_out, z, y, x)`` of ``graph`` on ``volume`` ``(C, Z, Y, X)`` (or
    ``(Z, Y, X)`` for one channel), float32; a ShapeError if the size does not fit the net."""
    weights = dict(graph.require_weights())
    x = np.asarray(volume)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != graph.input_channels:
        raise ShapeError(f"volume of shape {x.shape} for a network of {graph.input_channels} "
                         "input channel(s)", "pass (C, Z, Y, X), or (Z, Y, X) for one channel")
    sizes = node_sizes(graph.nodes, (x.shape[1], x.shape[2], x.shape[3]))
    values: dict[str, np.ndarray] = {INPUT: x.astype(np.float64)}
    for node in graph.nodes:
        values[node.name] = _node(node, values, weights, sizes)
    return values[graph.output].astype(np.float32)


def _node(node: Node, values: dict[str, np.ndarray], weights: dict[str, np.ndarray],
          sizes: dict[str, tuple[int, int, int]]) -> np.ndarray:
    x = values[node.inputs[0]]
    if isinstance(node, Conv):
        return _conv(node, x, weights[f"{node.name}.weight"], weights[f"{node.name}.bias"])
    if isinstance(node, Pool):
        return _pool(node, x)
    if isinstance(node, MaxFilter):
        return max_windows(x, node.window, node.dilation, (1, 1, 1))
    if isinstance(node, Upsample):
        return _upsample(node, x, weights)
    if isinstance(node, Concat):
        return np.concatenate([centre_crop(values[s], sizes[node.name]) for s in node.inputs])
    if isinstance(node, Add):
        return sum((centre_crop(values[s], sizes[node.name]) for s in node.inputs[1:]),
                   centre_crop(x, sizes[node.name]))
    assert isinstance(node, Act)
    return activate(node.activation, x)
