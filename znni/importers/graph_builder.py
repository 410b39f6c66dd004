"""A framework-neutral DAG of layers, folded into a znni :class:`~znni.graph.Graph` (spec v2).

The PyTorch and ONNX graph importers translate their ops into calls on :class:`GraphBuilder`,
each naming its input tensors; the rules live here once:

- BatchNorm folds into the conv that produced its input, if nothing else reads that conv;
- an activation becomes the ``activation`` of the conv before it under the same condition, else
  an activation node;
- a crop (slices of the spatial axes) is not a node: znni's concat and add centre-crop their
  inputs, so a crop must be exactly that — centred, to the size of the join it feeds — which
  :meth:`GraphBuilder.graph` checks;
- dropout and identities are aliases.

Everything else is refused with the source node's name and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph import Graph, load_graph
from ..graph.nodes import INPUT
from .chain import UnsupportedModelError, unsupported

Size = tuple[int, int, int]


@dataclass
class _Node:
    name: str
    spec: dict[str, Any]
    weight: np.ndarray | None = None   # float64 while folding
    bias: np.ndarray | None = None
    readers: int = 0
    merged: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Crop:
    """A spatial crop of ``source``'s tensor: ``start`` voxels in, ``size`` kept, of ``full``."""

    source: str
    start: Size
    size: Size
    full: Size


class GraphBuilder:
    """Nodes in the source graph's order; tensors are named by the source (strings)."""

    def __init__(self, input_tensor: str, input_channels: int) -> None:
        self.input_channels = input_channels
        self._nodes: dict[str, _Node] = {}
        self._tensor: dict[str, str | _Crop] = {input_tensor: INPUT}
        self._folded: dict[str, str] = {}  # pre-fold tensor marker → what was folded

    # ---- tensors -------------------------------------------------------------------------
    def _source(self, tensor: str, node: str) -> str:
        """The znni node producing ``tensor`` (a crop only where a join reads it)."""
        found = self._tensor.get(tensor)
        if found is None:
            raise unsupported(node, "input", f"reads {tensor!r}, which znni did not import",
                              "the model computes something znni has no node for before it")
        if found in self._folded:
            raise unsupported(node, "input", f"reads {tensor!r}, the output of a conv before "
                              f"the {self._folded[found]} folded into it",
                              "read the tensor after the BatchNorm/activation instead")
        if isinstance(found, _Crop):
            raise unsupported(node, "crop", "a cropped tensor feeds it; znni crops only where "
                              "a concat or add joins tensors",
                              "crop right before torch.cat / addition, to the joined size")
        if found in self._nodes:
            self._nodes[found].readers += 1
        return found

    def _add(self, tensor: str, name: str, spec: dict[str, Any],
             weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> None:
        self._nodes[name] = _Node(name, {"name": name, **spec}, weight, bias)
        self._tensor[tensor] = name

    def alias(self, tensor: str, source: str, node: str) -> None:
        """``tensor`` is ``source`` (dropout at inference, identity, a no-op view)."""
        found = self._tensor.get(source)
        if found is None:
            self._source(source, node)  # raises: unknown tensor
        assert found is not None
        self._tensor[tensor] = found

    def crop(self, tensor: str, source: str, node: str, start: Size, size: Size,
             full: Size) -> None:
        found = self._tensor.get(source)
        if found is None or found in self._folded:
            self._source(source, node)  # raises: why that tensor is not there
        assert found is not None
        if isinstance(found, _Crop):  # slices of slices: one crop
            start = (found.start[0] + start[0], found.start[1] + start[1],
                     found.start[2] + start[2])
            full, found = found.full, found.source
        self._tensor[tensor] = _Crop(found, start, size, full)

    # ---- layers --------------------------------------------------------------------------
    def conv(self, tensor: str, name: str, source: str, weight: np.ndarray,
             bias: np.ndarray | None, padding: str, dilation: Size) -> None:
        w = np.asarray(weight, np.float64)
        if w.ndim != 5:
            raise unsupported(name, "convolution", f"weight has {w.ndim} dimensions, not 5",
                              "znni runs 3D convolutions only")
        b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, np.float64)
        self._add(tensor, name, {"type": "conv", "inputs": [self._source(source, name)],
                                 "kernel": list(w.shape[2:]), "out_channels": w.shape[0],
                                 "padding": padding, "dilation": list(dilation),
                                 "activation": "linear"}, w, b)

    def upsample(self, tensor: str, name: str, source: str, factor: Size,
                 weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> None:
        """Transposed conv with kernel = stride = ``factor`` (``weight`` given), else nearest."""
        spec: dict[str, Any] = {"type": "upsample", "inputs": [self._source(source, name)],
                                "factor": list(factor)}
        if weight is None:
            self._add(tensor, name, spec | {"mode": "nearest"})
            return
        w = np.asarray(weight, np.float64)
        b = np.zeros(w.shape[1]) if bias is None else np.asarray(bias, np.float64)
        self._add(tensor, name, spec | {"mode": "transposed", "out_channels": w.shape[1]}, w, b)

    def batchnorm(self, tensor: str, name: str, source: str, scale: np.ndarray | None,
                  shift: np.ndarray | None, mean: np.ndarray, var: np.ndarray,
                  eps: float) -> None:
        """Fold y = (x − mean)/√(var + eps)·scale + shift into the conv before it."""
        producer = self._nodes.get(str(self._tensor.get(source)))
        if (producer is None or producer.spec["type"] != "conv" or producer.readers
                or producer.spec["activation"] != "linear"):
            raise unsupported(name, "batch norm", "it does not directly follow a convolution "
                              "that nothing else reads",
                              "znni folds BatchNorm into the conv before it")
        assert producer.weight is not None and producer.bias is not None
        gain = 1.0 / np.sqrt(np.asarray(var, np.float64) + float(eps))
        if scale is not None:
            gain = gain * np.asarray(scale, np.float64)
        offset = 0.0 if shift is None else np.asarray(shift, np.float64)
        producer.weight = producer.weight * gain[:, None, None, None, None]
        producer.bias = (producer.bias - np.asarray(mean, np.float64)) * gain + offset
        self._fold(producer, source, tensor, name)

    def _fold(self, producer: _Node, source: str, tensor: str, name: str) -> None:
        """``name`` (BatchNorm or activation) is now part of ``producer``: ``tensor`` is its
        output, and the tensor before (``source``) may not be read again."""
        producer.merged.append(name)
        self._tensor[tensor] = producer.name
        marker = f"{producer.name} before {name}"
        self._folded[marker] = name
        self._tensor[source] = marker

    def activation(self, tensor: str, name: str, source: str, kind: str,
                   parameter: float | None = None) -> None:
        """An activation: the conv's before it if that conv has none and no other reader."""
        extra = {} if parameter is None else {
            {"leaky_relu": "slope", "elu": "alpha"}[kind]: float(parameter)}
        producer = self._nodes.get(str(self._tensor.get(source)))
        if (producer is not None and producer.spec["type"] == "conv" and not producer.readers
                and producer.spec["activation"] == "linear"):
            producer.spec |= {"activation": kind, **extra}
            self._fold(producer, source, tensor, name)
            return
        self._add(tensor, name, {"type": "activation", "inputs": [self._source(source, name)],
                                 "activation": kind, **extra})

    def pool(self, tensor: str, name: str, source: str, window: Size) -> None:
        self._add(tensor, name, {"type": "pool", "inputs": [self._source(source, name)],
                                 "window": list(window)})

    def join(self, tensor: str, name: str, kind: str, sources: list[str], size: Size) -> None:
        """Concat (channels, in order) or add of ``sources``, each ``size`` after its crop."""
        inputs = []
        for source in sources:
            found = self._tensor.get(source)
            if isinstance(found, _Crop):
                centred = tuple((f - s) // 2 for f, s in zip(found.full, found.size,
                                                               strict=True))
                if found.start != centred or found.size != size:
                    raise unsupported(name, kind, f"an input is cropped at {list(found.start)} "
                                      f"to {list(found.size)} of {list(found.full)}; znni "
                                      f"crops the centre {list(size)}",
                                      "crop the centre (valid U-Nets' crop)")
                if found.source in self._nodes:
                    self._nodes[found.source].readers += 1
                inputs.append(found.source)
            else:
                inputs.append(self._source(source, name))
        self._add(tensor, name, {"type": kind, "inputs": inputs})

    # ---- result --------------------------------------------------------------------------
    def graph(self, output: str, name: str) -> Graph:
        """The validated graph ending in ``output`` (spec and float32 weights)."""
        last = self._tensor.get(output)
        if not isinstance(last, str) or last == INPUT:
            raise UnsupportedModelError("the model's output is not a node znni imported "
                                        "(a crop or the input itself)",
                                        "end the model with a conv or activation")
        weights: dict[str, np.ndarray] = {}
        nodes = []
        for node in self._nodes.values():
            nodes.append(node.spec)
            if node.weight is not None and node.bias is not None:
                weights[f"{node.name}.weight"] = node.weight.astype(np.float32)
                weights[f"{node.name}.bias"] = node.bias.astype(np.float32)
        used = _reachable(nodes, last)
        merged = [f"{n.name} + {' + '.join(n.merged)}" for n in self._nodes.values()
                  if n.merged and n.name in used]
        spec = {"version": 2, "name": name, "input_channels": self.input_channels,
                "nodes": [n for n in nodes if n["name"] in used], "output": last,
                "description": "imported" + (f"; folded: {', '.join(merged)}" if merged else "")}
        return load_graph(spec, {k: v for k, v in weights.items()
                                 if k.rsplit(".", 1)[0] in used})


def _reachable(nodes: list[dict[str, Any]], output: str) -> set[str]:
    """The nodes ``output`` depends on (a model may compute things it does not return)."""
    inputs = {n["name"]: n["inputs"] for n in nodes}
    seen, todo = set(), [output]
    while todo:
        name = todo.pop()
        if name in seen or name == INPUT:
            continue
        seen.add(name)
        todo.extend(inputs[name])
    return seen
