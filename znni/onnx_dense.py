"""The same network, same weights, run densely by ONNX Runtime: the other peer znni is measured
against.

The graph is the dilated dense form of :mod:`znni.torch_dense` (every pool a stride-1 max filter,
every later conv and pool dilated by the product of the windows before it), built directly with
``onnx.helper`` — no exporter in between, so what runs is exactly one ``Conv`` or ``MaxPool``
node and one activation node per layer, and ONNX Runtime's own graph optimisations (fusing the
activation into the conv, its NCHWc layout for AVX2/AVX-512) decide how fast it goes.

``onnx`` and ``onnxruntime`` are optional (the ``bench`` extra); import errors say how to install
them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .activations import ACTIVATIONS
from .errors import ZnniError
from .spec import Conv, Network, Pool

#: The opset the graph is written for (Conv/MaxPool with dilations exist since opset 10).
OPSET = 17


def require_onnxruntime() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or a ZnniError saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ZnniError("ONNX Runtime is not installed",
                        "pip install 'znni[bench]' (or pip install onnx onnxruntime)") from None
    return onnx, onnxruntime


def dense_graph(onnx: Any, net: Network) -> Any:
    """``net`` (with weights) as an ONNX model: input ``x`` of shape ``(N, C, Z, Y, X)`` (any
    N, Z, Y, X), output ``y``, the dense output."""
    helper = onnx.helper
    weights = net.require_weights()
    nodes, initializers = [], []
    dilation = [1, 1, 1]
    name = "x"
    for i, layer in enumerate(net.layers):
        out = f"l{i}"
        if isinstance(layer, Conv):
            w, b = weights[i]
            initializers += [onnx.numpy_helper.from_array(np.ascontiguousarray(w), f"w{i}"),
                             onnx.numpy_helper.from_array(np.ascontiguousarray(b), f"b{i}")]
            op = ACTIVATIONS[layer.activation].onnx_ops[0]
            conv = out if op == "Identity" else f"c{i}"
            nodes.append(helper.make_node("Conv", [name, f"w{i}", f"b{i}"], [conv],
                                          kernel_shape=list(layer.kernel), dilations=dilation))
            if op != "Identity":
                nodes.append(helper.make_node(op, [conv], [out]))
        else:
            assert isinstance(layer, Pool)
            nodes.append(helper.make_node("MaxPool", [name], [out], kernel_shape=list(layer.window),
                                          strides=[1, 1, 1], dilations=dilation))
            dilation = [d * p for d, p in zip(dilation, layer.window, strict=True)]
        name = out
    nodes.append(helper.make_node("Identity", [name], ["y"]))
    f32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, net.name,
        [helper.make_tensor_value_info("x", f32, ["n", net.input_channels, "z", "y", "x"])],
        [helper.make_tensor_value_info("y", f32, ["n", net.output_channels, "oz", "oy", "ox"])],
        initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


class OnnxDense:
    """``net`` (with weights) run densely by ONNX Runtime's CPU provider on ``threads`` threads,
    all graph optimisations on."""

    def __init__(self, net: Network, threads: int | None = None) -> None:
        onnx, ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(dense_graph(onnx, net).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        """Dense output ``(C_out, Z−FOV+1, …)`` of a ``(C, Z, Y, X)`` float32 volume."""
        x = np.ascontiguousarray(volume, dtype=np.float32)[None]
        out: np.ndarray = self.session.run(["y"], {"x": x})[0][0]
        return out
