"""Import ONNX 3D ConvNets (the ``onnx`` extra; onnxruntime is not needed).

Accepted graphs are chains: one input, each node reading the previous node's output (its other
inputs are initializers), one output. Ops: Conv (3D, stride 1, no padding, dilation 1,
group 1), MaxPool (strides = kernel_shape, no padding, floor mode), BatchNormalization (folded
into the preceding Conv, inference mode), Relu, Sigmoid, Tanh, Identity, Dropout. Anything else
is refused naming the op and the node.

The check evaluates the original graph (BatchNorm unfolded) with a small numpy interpreter of
exactly these ops, independent of the translation, and compares it with znni's oracle.
The file is parsed as protobuf only; external tensor data (files beside the model) is refused
rather than followed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..activations import apply, from_onnx
from ..errors import SpecError, ZnniError
from ..spec import Network
from .chain import ChainBuilder, UnsupportedModelError, unsupported
from .check import check_import, correlate, max_pool

_ACTIVATIONS = from_onnx()
_HINT_OPS = f"znni imports Conv, MaxPool, BatchNormalization, {', '.join(_ACTIVATIONS)}"


def require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ZnniError("the onnx package is not installed", "pip install 'znni[onnx]'") from None
    return onnx


def _name(node: Any, index: int) -> str:
    return node.name or f"#{index} {node.op_type}"


def _attributes(onnx: Any, node: Any) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(value: Any, default: tuple[int, ...]) -> tuple[int, ...]:
    return default if value is None else tuple(int(v) for v in value)


Chain = list[tuple[str, Any, dict[str, Any], list[np.ndarray]]]


def _chain(onnx: Any, model: Any) -> Chain:
    """(node name, node, attributes, parameter arrays) per node, in chain order."""
    graph = model.graph
    params: dict[str, np.ndarray] = {}
    for tensor in graph.initializer:
        if onnx.external_data_helper.uses_external_data(tensor):
            raise UnsupportedModelError(f"initializer {tensor.name!r} keeps its data in an "
                                        "external file", "save the model with all tensors "
                                        "inside (onnx.save(model, PATH))")
        try:
            params[tensor.name] = onnx.numpy_helper.to_array(tensor)
        except (ValueError, TypeError, KeyError) as exc:  # dims ≠ data, unknown data type
            raise UnsupportedModelError(f"initializer {tensor.name!r} cannot be read: {exc}",
                                        "its dims, data type and data disagree: re-export "
                                        "the model") from None
    inputs = [i.name for i in graph.input if i.name not in params]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedModelError(f"the graph has {len(inputs)} inputs and {len(graph.output)} "
                                    "outputs", "znni imports chains with one input and one output")
    current = inputs[0]
    chain = []
    for index, node in enumerate(graph.node):
        name = _name(node, index)
        if not node.input or node.input[0] != current:
            raise unsupported(name, node.op_type, f"it reads {list(node.input)[:1]}, not the "
                              f"output {current!r} of the node before", "znni imports chains")
        missing = [i for i in node.input[1:] if i and i not in params]
        if missing:
            raise unsupported(name, node.op_type, f"its inputs {missing} are not initializers",
                              "fold constants into initializers (e.g. onnx-simplifier)")
        if len([o for o in node.output if o]) != 1:
            raise unsupported(name, node.op_type, "it has more than one output",
                              "export without extra outputs (e.g. MaxPool indices)")
        chain.append((name, node, _attributes(onnx, node),
                      [params[i] for i in node.input[1:] if i]))
        current = node.output[0]
    if current != graph.output[0].name:
        raise UnsupportedModelError(f"the graph's output {graph.output[0].name!r} is not the "
                                    "last node's", "znni imports chains")
    return chain


def _check_conv(name: str, attrs: dict[str, Any], params: list[np.ndarray]) -> None:
    weight = params[0] if params else None
    if weight is None or weight.ndim != 5:
        raise unsupported(name, "Conv", "not a 3D convolution with an initializer weight",
                          "znni runs 3D convolutions (weight (out, in, kz, ky, kx))")
    kernel = _ints(attrs.get("kernel_shape"), weight.shape[2:])
    problems = [
        (kernel != weight.shape[2:], f"kernel_shape {list(kernel)} ≠ weight's "
         f"{list(weight.shape[2:])}"),
        (_ints(attrs.get("strides"), (1, 1, 1)) != (1, 1, 1), f"strides {attrs.get('strides')}"),
        (any(_ints(attrs.get("pads"), (0,) * 6)), f"pads {attrs.get('pads')}"),
        (attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"),
         f"auto_pad {attrs.get('auto_pad')!r}"),
        (_ints(attrs.get("dilations"), (1, 1, 1)) != (1, 1, 1),
         f"dilations {attrs.get('dilations')}"),
        (int(attrs.get("group", 1)) != 1, f"group {attrs.get('group')}")]
    for bad, why in problems:
        if bad:
            raise unsupported(name, "Conv", why, "znni computes stride-1, unpadded, undilated, "
                              "ungrouped (valid) correlations: the output shrinks by the field "
                              "of view; `znni infer --mode same` pads a volume at its border")


def _window(name: str, attrs: dict[str, Any]) -> tuple[int, int, int]:
    window = _ints(attrs.get("kernel_shape"), ())
    if len(window) != 3:
        raise unsupported(name, "MaxPool", f"kernel_shape {list(window)}", "use a 3D max pool")
    problems = [
        (_ints(attrs.get("strides"), (1, 1, 1)) != window,
         f"strides {list(_ints(attrs.get('strides'), (1, 1, 1)))} ≠ kernel_shape {list(window)}"),
        (any(_ints(attrs.get("pads"), (0,) * 6)), f"pads {attrs.get('pads')}"),
        (attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"),
         f"auto_pad {attrs.get('auto_pad')!r}"),
        (_ints(attrs.get("dilations"), (1, 1, 1)) != (1, 1, 1),
         f"dilations {attrs.get('dilations')}"),
        (int(attrs.get("ceil_mode", 0)) != 0, "ceil_mode 1")]
    for bad, why in problems:
        if bad:
            raise unsupported(name, "MaxPool", why, "znni's pools are max pools with stride = "
                              "kernel, no padding, dilation 1, floor mode")
    return (window[0], window[1], window[2])


def _translate(chain: Chain) -> ChainBuilder:
    builder = ChainBuilder()
    for name, node, attrs, params in chain:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise unsupported(name, f"{node.domain}.{op}", "custom op domain", _HINT_OPS)
        if op == "Conv":
            _check_conv(name, attrs, params)
            builder.conv(name, params[0], params[1] if len(params) > 1 else None)
        elif op == "MaxPool":
            builder.pool(name, _window(name, attrs))
        elif op == "BatchNormalization":
            if int(attrs.get("training_mode", 0)):
                raise unsupported(name, op, "training_mode=1", "export the model in eval mode")
            scale, shift, mean, var = params
            builder.batchnorm(name, scale, shift, mean, var, float(attrs.get("epsilon", 1e-5)))
        elif op in _ACTIVATIONS:
            builder.activation(name, _ACTIVATIONS[op])
        else:
            raise unsupported(name, op, "not a supported op", _HINT_OPS)
    return builder


def _evaluate(chain: Chain, x: np.ndarray) -> np.ndarray:
    """The original graph on ``x`` (1, C, Z, Y, X) in float64 numpy, op by op, BatchNorm
    unfolded."""
    t = x[0].astype(np.float64)
    for _, node, attrs, params in chain:
        op = node.op_type
        if op == "Conv":
            t = correlate(t, params[0].astype(np.float64))
            if len(params) > 1:
                t = t + params[1][:, None, None, None]
        elif op == "MaxPool":
            t = max_pool(t, _window("", attrs))
        elif op == "BatchNormalization":
            scale, shift, mean, var = (a.astype(np.float64)[:, None, None, None]
                                       for a in params)
            t = (t - mean) / np.sqrt(var + float(attrs.get("epsilon", 1e-5))) * scale + shift
        else:
            t = apply(_ACTIVATIONS[op], t.copy())
    out: np.ndarray = t[None]
    return out


def load_file(path: str | os.PathLike[str], check: bool = True) -> Network:
    """The znni network of an ``.onnx`` file (checked against the graph itself)."""
    onnx = require_onnx()
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise SpecError(f"model file {str(path)!r} not found", "check the path") from None
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise UnsupportedModelError(f"{path} is not a readable ONNX model: {exc}",
                                    "export it with torch.onnx.export or onnx.save") from None
    chain = _chain(onnx, model)
    net = _translate(chain).network(model.graph.name or path.stem)
    if check:
        check_import(net, lambda x: _evaluate(chain, x), f"the ONNX graph {net.name!r}")
    return net
