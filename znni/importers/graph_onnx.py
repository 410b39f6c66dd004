"""Import ONNX DAG models (U-Nets, residual nets) into spec v2.

Ops: Conv (stride 1, group 1; pads 0 = valid, or (k − 1)/2 each side = same), ConvTranspose
(kernel = strides, no pads), MaxPool (strides = kernel), BatchNormalization (folded), Resize and
Upsample (nearest, integer factors), Concat (channels), Add (two tensors), Slice (centre crops
of the spatial axes before a join), Pad that pads nothing, Relu, LeakyRelu, Elu, Sigmoid, Tanh,
Softmax over channels, Identity, Dropout, Constant (for Slice/Resize parameters). Spatial sizes
are followed from the input's (the graph's static shape, or ``input_size``). The import is
checked with onnxruntime: the graph and znni's oracle on the same random input.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecError, ZnniError
from ..graph import Graph
from ..graph.reference import forward
from .chain import UnsupportedModelError, unsupported
from .check import TOLERANCE
from .graph_builder import GraphBuilder
from .onnx import _attributes, _ints, _name, _window, require_onnx

Size = tuple[int, int, int]
_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "LeakyRelu": "leaky_relu",
                "Elu": "elu"}
_NON_LOCAL = {"InstanceNormalization": "InstanceNorm normalises by whole-patch statistics",
              "GroupNormalization": "GroupNorm normalises by whole-patch statistics",
              "LayerNormalization": "LayerNorm normalises over the whole patch",
              "GlobalAveragePool": "global pooling reads the whole patch",
              "GlobalMaxPool": "global pooling reads the whole patch",
              "ReduceMean": "a mean over the patch depends on the patch",
              "Attention": "attention mixes every voxel of the patch"}


def _size3(values: Any) -> Size:
    return (int(values[0]), int(values[1]), int(values[2]))


class _Translator:
    def __init__(self, onnx: Any, model: Any, input_size: Size | None) -> None:
        graph = model.graph
        self.params: dict[str, np.ndarray] = {}
        for tensor in graph.initializer:
            if onnx.external_data_helper.uses_external_data(tensor):
                raise UnsupportedModelError(f"initializer {tensor.name!r} keeps its data in an "
                                            "external file", "save the model with all tensors "
                                            "inside (onnx.save(model, PATH))")
            self.params[tensor.name] = onnx.numpy_helper.to_array(tensor)
        inputs = [i for i in graph.input if i.name not in self.params]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise UnsupportedModelError(f"the graph has {len(inputs)} inputs and "
                                        f"{len(graph.output)} outputs",
                                        "znni imports models with one input and one output")
        dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) != 5 or not dims[1]:
            raise UnsupportedModelError(f"the input has shape {dims}",
                                        "export with an input (N, C, Z, Y, X) of fixed C")
        if input_size is None:
            if not all(dims[2:]):
                raise UnsupportedModelError("the input's spatial size is not fixed in the graph",
                                            "give --input-size Z,Y,X")
            input_size = _size3(dims[2:])
        self.input_size = input_size
        self.onnx, self.graph = onnx, graph
        self.builder = GraphBuilder(inputs[0].name, int(dims[1]))
        self.size: dict[str, Size] = {inputs[0].name: input_size}

    def array(self, name: str, node: str) -> np.ndarray:
        if name not in self.params:
            raise unsupported(node, "input", f"{name!r} is computed, not a constant",
                              "fold constants (e.g. onnx-simplifier)")
        return self.params[name]

    def run(self) -> Graph:
        taken: set[str] = set()
        for index, node in enumerate(self.graph.node):
            self._node(node, _node_name(_name(node, index), index, taken),
                       _attributes(self.onnx, node))
        return self.builder.graph(self.graph.output[0].name, self.graph.name or "imported")

    def _node(self, node: Any, name: str, attrs: dict[str, Any]) -> None:
        op, b = node.op_type, self.builder
        ins, out = list(node.input), node.output[0]
        if node.domain not in ("", "ai.onnx"):
            raise unsupported(name, f"{node.domain}.{op}", "custom op domain", "re-export")
        if op == "Constant":
            self.params[out] = self.onnx.numpy_helper.to_array(attrs["value"])
            return
        if all(not i or i in self.params for i in ins):  # shape arithmetic: fold it here
            self._fold(node, name)
            return
        if op in _NON_LOCAL:
            raise unsupported(name, op, f"{_NON_LOCAL[op]}, so its result would change when "
                              "znni cuts the volume into blocks", "use BatchNorm or none")
        size = self.size.get(ins[0]) if ins else None
        if size is None:
            raise unsupported(name, op, f"reads {ins[:1]}, which znni did not import",
                              "the graph computes something znni has no node for before it")
        if op == "Conv":
            w = self.array(ins[1], name)
            kernel = w.shape[2:]
            dil = _ints(attrs.get("dilations"), (1, 1, 1))
            pads = _ints(attrs.get("pads"), (0,) * 6)
            same = tuple((k - 1) * d // 2 for k, d in zip(kernel, dil, strict=True))
            auto = attrs.get("auto_pad", b"NOTSET")
            if (_ints(attrs.get("strides"), (1, 1, 1)) != (1, 1, 1)
                    or int(attrs.get("group", 1)) != 1):
                raise unsupported(name, op, "strided or grouped", "stride 1, group 1")
            if auto in (b"SAME_UPPER", b"SAME_LOWER") or (pads == same * 2 and any(same)):
                if any((k - 1) * d % 2 for k, d in zip(kernel, dil, strict=True)):
                    raise unsupported(name, op, "same padding of an even kernel",
                                      "use odd kernels with same padding")
                mode = "same"
            elif not any(pads) and auto in (b"NOTSET", b"VALID"):
                mode = "valid"
            else:
                raise unsupported(name, op, f"pads {list(pads)}", "pads 0 or (k − 1)/2")
            b.conv(out, name, ins[0], w, self.array(ins[2], name) if len(ins) > 2 else None,
                   mode, _size3(dil))
            self.size[out] = size if mode == "same" else _size3(
                [n - (k - 1) * d for n, k, d in zip(size, kernel, dil, strict=True)])
        elif op == "ConvTranspose":
            w = self.array(ins[1], name)
            factor = _size3(w.shape[2:])
            if (_ints(attrs.get("strides"), (1, 1, 1)) != factor or any(
                    _ints(attrs.get("pads"), (0,) * 6)) or any(
                    _ints(attrs.get("output_padding"), (0,) * 3))
                    or int(attrs.get("group", 1)) != 1):
                raise unsupported(name, op, "kernel ≠ strides, or padded",
                                  "znni up-samples with kernel = stride, no padding")
            b.upsample(out, name, ins[0], factor, w,
                       self.array(ins[2], name) if len(ins) > 2 else None)
            self.size[out] = _size3([n * f for n, f in zip(size, factor, strict=True)])
        elif op == "MaxPool":
            if len([o for o in node.output if o]) != 1:
                raise unsupported(name, op, "it returns indices", "export without indices")
            window = _window(name, attrs)
            b.pool(out, name, ins[0], window)
            self.size[out] = _size3([n // w for n, w in zip(size, window, strict=True)])
        elif op in ("Resize", "Upsample"):
            self._nearest(name, attrs, ins, out, size)
        elif op == "BatchNormalization":
            scale, shift, mean, var = (self.array(i, name) for i in ins[1:5])
            b.batchnorm(out, name, ins[0], scale, shift, mean, var,
                        float(attrs.get("epsilon", 1e-5)))
            self.size[out] = size
        elif op in _ACTIVATIONS:
            kind = _ACTIVATIONS[op]
            default = {"leaky_relu": 0.01, "elu": 1.0}.get(kind)
            b.activation(out, name, ins[0], kind,
                         None if default is None else float(attrs.get("alpha", default)))
            self.size[out] = size
        elif op == "Softmax":
            if int(attrs.get("axis", -1)) not in (1, -4):
                raise unsupported(name, op, f"over axis {attrs.get('axis', -1)}",
                                  "znni takes softmax over channels (axis 1)")
            b.activation(out, name, ins[0], "softmax")
            self.size[out] = size
        elif op in ("Identity", "Dropout") or (op == "Pad" and not np.any(
                self.array(ins[1], name))):
            b.alias(out, ins[0], name)
            self.size[out] = size
        elif op in ("Concat", "Add"):
            if op == "Concat" and int(attrs.get("axis", 0)) not in (1, -4):
                raise unsupported(name, op, f"along axis {attrs.get('axis')}",
                                  "znni concatenates channels (axis 1)")
            if any(i in self.params for i in ins):
                raise unsupported(name, op, "joins a constant", "fold it into a bias")
            sizes = [self.size[i] for i in ins]
            if len(set(sizes)) != 1:
                raise unsupported(name, op, f"joins images of sizes {sizes}",
                                  "crop them to one size first (Slice)")
            b.join(out, name, "concat" if op == "Concat" else "add", ins, sizes[0])
            self.size[out] = sizes[0]
        elif op == "Slice":
            self._slice(name, ins, out, size)
        else:
            raise unsupported(name, op, "znni has no node for this op",
                              "see the ops znni imports in docs/design.md §2.1")

    def _fold(self, node: Any, name: str) -> None:
        """Evaluate a node of constants (exports compute pads and crops from constants)."""
        from onnx.reference import ReferenceEvaluator

        if node.op_type in ("RandomNormal", "RandomUniform", "Multinomial"):
            raise unsupported(name, node.op_type, "random", "export in eval mode")
        try:
            results = ReferenceEvaluator(node).run(
                None, {i: self.params[i] for i in node.input if i})
        except Exception as exc:  # noqa: BLE001 - the reference runtime raises many kinds
            raise unsupported(name, node.op_type, f"cannot evaluate its constants: {exc}",
                              "fold constants (e.g. onnx-simplifier)") from None
        for output, value in zip(node.output, results, strict=False):
            self.params[output] = np.asarray(value)

    def _nearest(self, name: str, attrs: dict[str, Any], ins: list[str], out: str,
                 size: Size) -> None:
        if attrs.get("mode", b"nearest") != b"nearest":
            raise unsupported(name, "Resize", f"mode {attrs.get('mode')!r}", "use nearest")
        scales = next((self.params[i] for i in ins[1:] if i in self.params
                       and self.params[i].size == 5 and self.params[i].dtype.kind == "f"), None)
        sizes = next((self.params[i] for i in ins[1:] if i in self.params
                      and self.params[i].size == 5 and self.params[i].dtype.kind == "i"), None)
        after = (_size3(sizes[2:]) if sizes is not None else None if scales is None
                 else _size3([round(n * s) for n, s in zip(size, scales[2:], strict=True)]))
        if after is None or any(a % n for a, n in zip(after, size, strict=True)):
            raise unsupported(name, "Resize", "not by whole factors", "up-sample by integers")
        factor = _size3([a // n for a, n in zip(after, size, strict=True)])
        self.builder.upsample(out, name, ins[0], factor)
        self.size[out] = after

    def _slice(self, name: str, ins: list[str], out: str, size: Size) -> None:
        starts, ends = self.array(ins[1], name), self.array(ins[2], name)
        axes = self.array(ins[3], name) if len(ins) > 3 and ins[3] else np.arange(len(starts))
        steps = self.array(ins[4], name) if len(ins) > 4 and ins[4] else np.ones(len(starts))
        shape = [0, 0, *size]
        start, new = [0, 0, 0], list(size)
        for raw_axis, raw_lo, raw_hi, step in zip(axes, starts, ends, steps, strict=True):
            axis = int(raw_axis) % 5
            if axis < 2:
                continue  # batch and channels: znni keeps them whole
            n = shape[axis]
            lo = max(0, int(raw_lo) + n if raw_lo < 0 else min(int(raw_lo), n))
            hi = max(0, int(raw_hi) + n if raw_hi < 0 else min(int(raw_hi), n))
            if int(step) != 1:
                raise unsupported(name, "Slice", f"step {step}", "crop with step 1")
            start[axis - 2], new[axis - 2] = lo, hi - lo
        self.builder.crop(out, ins[0], name, _size3(start), _size3(new), size)
        self.size[out] = _size3(new)


def _node_name(raw: str, index: int, taken: set[str]) -> str:
    """An identifier for a znni node from an ONNX node's name (``/down1/conv/Conv``), unique."""
    name = re.sub(r"[^A-Za-z0-9_.]", "_", raw).strip("_")
    name = (name if name[:1].isalpha() else f"n{index}_{name}")[:56]
    if name in taken:
        name = f"{name}_{index}"
    taken.add(name)
    return name


def load_onnx_graph(path: str | os.PathLike[str], input_size: Size | None = None,
                    check: bool = True) -> Graph:
    """The znni DAG of an ``.onnx`` file, checked against onnxruntime's run of it."""
    onnx = require_onnx()
    try:
        model = onnx.load(str(Path(path)), load_external_data=False)
    except FileNotFoundError:
        raise SpecError(f"model file {str(path)!r} not found", "check the path") from None
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise UnsupportedModelError(f"{path} is not a readable ONNX model: {exc}",
                                    "export it with torch.onnx.export or onnx.save") from None
    translator = _Translator(onnx, model, input_size)
    graph = translator.run()
    if check:
        check_onnx(graph, str(path), translator.input_size)
    return graph


def check_onnx(graph: Graph, path: str, size: Size, seed: int = 0) -> float:
    """Max relative difference between onnxruntime's run of ``path`` and ``graph``."""
    try:
        import onnxruntime
    except ImportError:
        raise ZnniError("checking an ONNX import runs the model with onnxruntime",
                        "pip install onnxruntime, or pass --no-check") from None
    x = np.random.default_rng(seed).standard_normal(
        (1, graph.input_channels, *size)).astype(np.float32)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    expected = np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0][0],
                          np.float64)
    ours = forward(graph, x[0])
    scale = float(np.abs(expected).max()) or 1.0
    error = (float(np.abs(ours - expected).max()) / scale if ours.shape == expected.shape
             else float("inf"))
    if not error <= TOLERANCE:
        raise UnsupportedModelError(f"the imported graph differs from the ONNX model: max "
                                    f"relative error {error:.2e} (tolerance {TOLERANCE:.0e})",
                                    "report this as a znni bug, with the model")
    return error
