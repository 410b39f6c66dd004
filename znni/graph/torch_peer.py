"""A DAG network run by PyTorch with the same weights: the peer znni's DAG inference is
measured against (``znni bench`` on a v2 spec), on the whole volume (valid nets) or in the same
blended windows (padded nets; what MONAI's ``sliding_window_inference`` does)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..torch_dense import require_torch
from .nodes import (
    INPUT,
    Act,
    Activation,
    Add,
    Concat,
    Conv,
    MaxFilter,
    Pool,
    Upsample,
    Vec3,
)
from .sliding import blend_windows
from .spec import Graph


def _activate(torch: Any, activation: Activation, x: Any) -> Any:
    f = torch.nn.functional
    name, p = activation.name, activation.parameter
    ops = {"relu": lambda: torch.relu(x), "leaky_relu": lambda: f.leaky_relu(x, p),
           "elu": lambda: f.elu(x, p), "sigmoid": lambda: torch.sigmoid(x),
           "tanh": lambda: torch.tanh(x), "softmax": lambda: torch.softmax(x, 1),
           "linear": lambda: x}
    return ops[name]()


def _crop(t: Any, size: tuple[int, ...]) -> Any:
    s = [(t.shape[2 + a] - size[a]) // 2 for a in range(3)]
    return t[:, :, s[0]:s[0] + size[0], s[1]:s[1] + size[1], s[2]:s[2] + size[2]]


class GraphTorch:
    """``graph`` as a PyTorch forward on ``(C, Z, Y, X)`` float32 numpy volumes."""

    def __init__(self, graph: Graph, threads: int | None = None,
                 channels_last: bool = False) -> None:
        self.torch = require_torch()
        if threads is not None:
            self.torch.set_num_threads(threads)
        self.graph = graph
        self.layout = (self.torch.channels_last_3d if channels_last
                       else self.torch.contiguous_format)
        self.weights = {k: self.torch.from_numpy(np.ascontiguousarray(v))
                        for k, v in graph.require_weights().items()}

    def forward(self, x: Any) -> Any:
        """The output tensor of an input tensor ``(N, C, Z, Y, X)``."""
        torch, f = self.torch, self.torch.nn.functional
        values = {INPUT: x.to(memory_format=self.layout)}
        for node in self.graph.nodes:
            t = values[node.inputs[0]]
            if isinstance(node, Conv):
                w, b = self.weights[f"{node.name}.weight"], self.weights[f"{node.name}.bias"]
                out = f.conv3d(t, w.to(memory_format=self.layout), b, padding=node.padding,
                               dilation=node.dilation)
                out = _activate(torch, node.activation, out)
            elif isinstance(node, Pool):
                out = f.max_pool3d(t, node.window)
            elif isinstance(node, MaxFilter):
                out = f.max_pool3d(t, node.window, 1, dilation=node.dilation)
            elif isinstance(node, Upsample) and node.mode == "nearest":
                out = f.interpolate(t, scale_factor=node.factor, mode="nearest")
            elif isinstance(node, Upsample):
                out = f.conv_transpose3d(t, self.weights[f"{node.name}.weight"],
                                         self.weights[f"{node.name}.bias"], node.factor)
            elif isinstance(node, (Concat, Add)):
                size = tuple(min(values[s].shape[2 + a] for s in node.inputs) for a in range(3))
                parts = [_crop(values[s], size) for s in node.inputs]
                out = torch.cat(parts, 1) if isinstance(node, Concat) else sum(parts[1:],
                                                                                parts[0])
            else:
                assert isinstance(node, Act)
                out = _activate(torch, node.activation, t)
            values[node.name] = out
        return values[self.graph.output]

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            out: np.ndarray = self.forward(self.torch.from_numpy(volume)[None])[0].contiguous(
            ).numpy()
        return out

    def windows(self, volume: np.ndarray, roi: Vec3, overlap: float) -> np.ndarray:
        """Gaussian-blended windows of ``roi`` (a volume at least that large), as
        :func:`~znni.graph.sliding.sliding_window` and MONAI place and weigh them."""
        return blend_windows(volume, roi, overlap, "gaussian", self, self.graph.output_channels)
