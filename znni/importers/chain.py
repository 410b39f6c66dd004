"""A framework-neutral chain of layers, folded into a znni :class:`~znni.spec.Network`.

The PyTorch and ONNX importers only translate their nodes into calls on :class:`ChainBuilder`;
the rules that make a chain expressible in znni live here once: BatchNorm folds into the conv
before it (eval-mode statistics), an activation becomes the ``activation`` of the conv before it,
and an activation after max pools moves in front of them (relu, sigmoid and tanh are monotone,
so they commute with max). Everything else is refused with the node's name and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SpecError
from ..spec import Network, load


class UnsupportedModelError(SpecError):
    """A model cannot be imported: names the module/node, what it is, and why."""


def unsupported(node: str, what: str, why: str, hint: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"cannot import {node!r} ({what}): {why}", hint)


@dataclass
class _Conv:
    node: str
    weight: np.ndarray  # (out, in, kz, ky, kx) float64 while folding
    bias: np.ndarray
    activation: str = "linear"
    merged: list[str] = field(default_factory=list)  # BatchNorm / activation nodes folded in


@dataclass
class _Pool:
    node: str
    window: tuple[int, int, int]


class ChainBuilder:
    """Collects convs, BatchNorms, activations and pools in order; :meth:`network` folds them."""

    def __init__(self) -> None:
        self._layers: list[_Conv | _Pool] = []

    def conv(self, node: str, weight: np.ndarray, bias: np.ndarray | None) -> None:
        w = np.asarray(weight, dtype=np.float64)
        if w.ndim != 5:
            raise unsupported(node, "convolution", f"weight has {w.ndim} dimensions, not 5",
                              "znni runs 3D convolutions only (weight (out, in, kz, ky, kx))")
        convs = [layer for layer in self._layers if isinstance(layer, _Conv)]
        if convs and convs[-1].weight.shape[0] != w.shape[1]:
            raise unsupported(node, "convolution", f"it takes {w.shape[1]} input channels, "
                              f"the layer before gives {convs[-1].weight.shape[0]}",
                              "the model's layers do not form a chain")
        b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
        self._layers.append(_Conv(node, w, b))

    def batchnorm(self, node: str, scale: np.ndarray | None, shift: np.ndarray | None,
                  mean: np.ndarray, var: np.ndarray, eps: float) -> None:
        """Fold y = (x − mean)/√(var + eps)·scale + shift into the preceding conv."""
        last = self._layers[-1] if self._layers else None
        if not isinstance(last, _Conv) or last.activation != "linear":
            raise unsupported(node, "batch norm", "it does not directly follow a convolution",
                              "znni folds BatchNorm into the conv before it; put it right "
                              "after a Conv3d (before the activation)")
        if mean is None or var is None:
            raise unsupported(node, "batch norm", "it has no running statistics",
                              "use track_running_stats=True and a trained (eval-mode) model")
        inv = 1.0 / np.sqrt(np.asarray(var, np.float64) + float(eps))
        gain = inv * (1.0 if scale is None else np.asarray(scale, np.float64))
        if gain.shape != last.bias.shape:
            raise unsupported(node, "batch norm", f"{gain.shape[0]} channels, the conv before "
                              f"has {last.bias.shape[0]}", "check the model")
        offset = 0.0 if shift is None else np.asarray(shift, np.float64)
        last.weight = last.weight * gain[:, None, None, None, None]
        last.bias = (last.bias - np.asarray(mean, np.float64)) * gain + offset
        last.merged.append(node)

    def activation(self, node: str, kind: str) -> None:
        """``kind`` ∈ relu/sigmoid/tanh/linear: the activation of the last conv."""
        if kind == "linear":
            return
        convs = [layer for layer in self._layers if isinstance(layer, _Conv)]
        if not convs:
            raise unsupported(node, kind, "no convolution before it",
                              "znni networks start with a conv layer")
        if convs[-1].activation != "linear":
            raise unsupported(node, kind, f"the conv before it already has a "
                              f"{convs[-1].activation} activation",
                              "znni applies one activation per conv layer")
        # Behind pools is fine: max commutes with monotone non-decreasing functions.
        convs[-1].activation = kind
        convs[-1].merged.append(node)

    def pool(self, node: str, window: tuple[int, int, int]) -> None:
        if not self._layers:
            raise unsupported(node, "max pool", "the model starts with a pool",
                              "znni networks start with a conv layer")
        self._layers.append(_Pool(node, window))

    def network(self, name: str, input_channels: int | None = None) -> Network:
        """The validated znni network (spec and float32 weights) of the chain."""
        convs = [layer for layer in self._layers if isinstance(layer, _Conv)]
        if not convs:
            raise UnsupportedModelError("the model has no 3D convolution",
                                        "znni imports chains of Conv3d / MaxPool3d layers")
        channels = convs[0].weight.shape[1] if input_channels is None else input_channels
        layers: list[dict[str, Any]] = []
        weights: dict[str, np.ndarray] = {}
        origin = []  # which source nodes each znni layer came from, for the description
        for i, layer in enumerate(self._layers):
            merged = layer.merged if isinstance(layer, _Conv) else []
            origin.append(f"{i}: {' + '.join([layer.node, *merged])}")
            if isinstance(layer, _Pool):
                layers.append({"type": "pool", "window": list(layer.window)})
                continue
            layers.append({"type": "conv", "kernel": list(layer.weight.shape[2:]),
                           "out_channels": int(layer.weight.shape[0]),
                           "activation": layer.activation})
            weights[f"layers.{i}.weight"] = layer.weight.astype(np.float32)
            weights[f"layers.{i}.bias"] = layer.bias.astype(np.float32)
        # znni.load validates everything again (channel chaining, shapes, finiteness).
        return load({"name": name, "input_channels": int(channels), "layers": layers,
                     "description": "imported; layer: source nodes — " + ", ".join(origin)},
                    weights)
