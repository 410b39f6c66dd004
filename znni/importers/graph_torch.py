"""Import PyTorch DAG models (U-Nets, residual nets) through ``torch.export``.

``torch.export`` traces ``forward`` on an example input of a size the model takes, so skip
connections, crops computed from shapes, functional calls and shape-dependent branches (MONAI's
``UpCat``) all become one graph of ATen ops. Each op is translated into a
:class:`~.graph_builder.GraphBuilder` call; ops znni has no node for are refused by name, the
ones that change meaning when a volume is cut into blocks (instance/group/layer norm, global
pooling, attention) with why. The result is checked by running the model itself on a random
input of the traced size against znni's float64 oracle. An ``ExportedProgram`` saved with
``torch.export.save`` (``.pt2``) is imported without the model's code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..graph import Graph
from ..graph.reference import forward
from .chain import UnsupportedModelError, unsupported
from .check import TOLERANCE
from .graph_builder import GraphBuilder
from .pytorch import _require_torch

#: What an op that only reorders, copies or (at inference) keeps its input is: the same tensor.
_ALIASES = {"aten.clone.default", "aten.alias.default", "aten.contiguous.default",
            "aten.detach.default", "aten.dropout.default", "aten.feature_dropout.default",
            "aten.dropout_.default", "aten.alpha_dropout.default", "aten.lift_fresh_copy.default"}
_ACTIVATIONS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
                "tanh": "tanh", "tanh_": "tanh", "leaky_relu": "leaky_relu",
                "leaky_relu_": "leaky_relu", "elu": "elu", "elu_": "elu"}
#: Ops whose result depends on the whole patch or volume: tiling would change it.
_NON_LOCAL = {
    "instance_norm": "InstanceNorm normalises by statistics of the whole patch",
    "group_norm": "GroupNorm normalises by statistics over the whole patch",
    "native_group_norm": "GroupNorm normalises by statistics over the whole patch",
    "layer_norm": "LayerNorm normalises over the whole patch",
    "adaptive_avg_pool3d": "global/adaptive pooling reads the whole patch",
    "adaptive_max_pool3d": "global/adaptive pooling reads the whole patch",
    "mean": "a mean over the patch depends on the patch",
    "scaled_dot_product_attention": "attention mixes every voxel of the patch",
}


def _op(node: Any) -> str:
    return str(node.target)


def _triple(value: Any, default: int) -> tuple[int, int, int]:
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return (default,) * 3
    t = tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3
    if len(t) == 1:
        t = t * 3
    return (int(t[0]), int(t[1]), int(t[2]))


def _spatial(node: Any) -> tuple[int, int, int]:
    shape = node.meta["val"].shape
    return (int(shape[-3]), int(shape[-2]), int(shape[-1]))


class _Translator:
    """One ExportedProgram's ATen graph, op by op, into a :class:`GraphBuilder`."""

    def __init__(self, program: Any, input_channels: int) -> None:
        self.program = program
        signature = program.graph_signature
        self.constants = {**{k: program.state_dict[v]
                             for k, v in signature.inputs_to_parameters.items()},
                          **{k: (program.state_dict.get(v) if v in program.state_dict
                                 else program.constants[v])
                             for k, v in signature.inputs_to_buffers.items()},
                          **{k: program.constants[v] for k, v in
                             signature.inputs_to_lifted_tensor_constants.items()}}
        user_inputs = list(signature.user_inputs)
        if len(user_inputs) != 1:
            raise UnsupportedModelError(f"the model takes {len(user_inputs)} inputs",
                                        "znni runs models of one input tensor (N, C, Z, Y, X)")
        self.builder = GraphBuilder(user_inputs[0], input_channels)
        self.handlers: dict[str, Callable[[Any, str, list[Any]], None]] = {
            "aten.conv3d.default": self._conv, "aten.conv3d.padding": self._conv,
            "aten.conv_transpose3d.input": self._conv_transpose,
            "aten.convolution.default": self._convolution,  # TorchScript's, converted
            "aten.batch_norm.default": self._batch_norm,
            "aten.max_pool3d.default": self._max_pool,
            "aten.upsample_nearest3d.vec": self._nearest,
            "aten.cat.default": self._cat, "aten.add.Tensor": self._add,
            "aten.slice.Tensor": self._slice,
            "aten.softmax.int": self._softmax, "aten._softmax.default": self._softmax,
            "aten.pad.default": self._pad, "aten.constant_pad_nd.default": self._pad,
        }

    def value(self, arg: Any) -> np.ndarray | None:
        """A parameter/buffer argument as float64 (None for a missing optional one)."""
        if arg is None:
            return None
        tensor = self.constants.get(getattr(arg, "name", None))
        if tensor is None:
            raise unsupported(str(arg), "parameter", "it is computed, not a stored weight",
                              "znni imports weights that are parameters or buffers")
        out: np.ndarray = tensor.detach().cpu().double().numpy()
        return out

    def run(self) -> Graph:
        for node in self.program.graph.nodes:
            if node.op != "call_function":
                continue
            op = _op(node)
            args = list(node.args)
            short = op.split(".")[1] if op.startswith("aten.") else op
            if op in _ALIASES:
                if op.startswith("aten.dropout") and len(args) > 2 and args[2]:
                    raise unsupported(node.name, op, "dropout in training mode",
                                      "call model.eval() before importing")
                self.builder.alias(node.name, args[0].name, node.name)
            elif short in _ACTIVATIONS:
                self._activation(node, _ACTIVATIONS[short], args)
            elif op in self.handlers:
                self.handlers[op](node, node.name, args)
            elif short in _NON_LOCAL:
                raise unsupported(node.name, short, f"{_NON_LOCAL[short]}, so its result would "
                                  "change when znni cuts the volume into blocks",
                                  "use BatchNorm (folded at inference) or none")
            else:
                raise unsupported(node.name, op, "znni has no node for this op",
                                  "znni imports Conv3d, ConvTranspose3d (kernel = stride), "
                                  "MaxPool3d (stride = kernel), BatchNorm3d, nearest "
                                  "up-sampling, cat, add, centre crops and ReLU, LeakyReLU, "
                                  "ELU, Sigmoid, Tanh, Softmax over channels")
        outputs = list(self.program.graph_signature.user_outputs)
        if len(outputs) != 1:
            raise UnsupportedModelError(f"the model returns {len(outputs)} tensors",
                                        "return one tensor (N, C, Z, Y, X)")
        return self.builder.graph(outputs[0], "imported")

    def _conv(self, node: Any, name: str, args: list[Any]) -> None:
        weight = self.value(args[1])
        assert weight is not None
        bias = self.value(args[2]) if len(args) > 2 else None
        stride, padding = (args + [None] * 7)[3:5]
        dilation = _triple((args + [None] * 7)[5], 1)
        groups = (args + [None] * 7)[6] or 1
        kernel = weight.shape[2:]
        if _triple(stride, 1) != (1, 1, 1) or groups != 1:
            raise unsupported(name, "Conv3d", f"stride {stride}, groups {groups}",
                              "znni convolutions have stride 1 and groups 1 (pool to "
                              "downsample)")
        if isinstance(padding, str):
            mode = padding
        else:
            pad = _triple(padding, 0)
            same = tuple((k - 1) * d // 2 for k, d in zip(kernel, dilation, strict=True))
            odd = all((k - 1) * d % 2 == 0 for k, d in zip(kernel, dilation, strict=True))
            mode = ("valid" if pad == (0, 0, 0) else "same" if pad == same and odd else "")
            if not mode:
                raise unsupported(name, "Conv3d", f"padding {list(pad)} with kernel "
                                  f"{list(kernel)}", "use padding 0 (valid) or (k − 1)/2 (same)")
        self.builder.conv(name, name, args[0].name, weight, bias, mode, dilation)

    def _convolution(self, node: Any, name: str, args: list[Any]) -> None:
        """``convolution(x, w, b, stride, padding, dilation, transposed, output_padding,
        groups)``: the conv or transposed conv it stands for."""
        x, w, b, stride, padding, dilation, transposed, output_padding, groups = args[:9]
        if transposed:
            self._conv_transpose(node, name, [x, w, b, stride, padding, output_padding,
                                              groups, dilation])
        else:
            self._conv(node, name, [x, w, b, stride, padding, dilation, groups])

    def _conv_transpose(self, node: Any, name: str, args: list[Any]) -> None:
        weight = self.value(args[1])
        assert weight is not None
        rest = (args + [None] * 8)[3:8]
        stride, padding, output_padding, groups, dilation = rest
        factor = tuple(int(k) for k in weight.shape[2:])
        if (_triple(stride, 1) != factor or _triple(padding, 0) != (0, 0, 0)
                or _triple(output_padding, 0) != (0, 0, 0) or (groups or 1) != 1
                or _triple(dilation, 1) != (1, 1, 1)):
            raise unsupported(name, "ConvTranspose3d", f"kernel {list(factor)} with stride "
                              f"{stride}", "znni up-samples with kernel = stride, no padding")
        self.builder.upsample(name, name, args[0].name, (factor[0], factor[1], factor[2]),
                              weight, self.value(args[2]) if len(args) > 2 else None)

    def _batch_norm(self, node: Any, name: str, args: list[Any]) -> None:
        training, eps = args[5], float(args[7])
        if training:
            raise unsupported(name, "BatchNorm3d", "in training mode",
                              "call model.eval() before importing")
        mean, var = self.value(args[3]), self.value(args[4])
        if mean is None or var is None:
            raise unsupported(name, "BatchNorm3d", "it has no running statistics",
                              "use track_running_stats=True and a trained model")
        self.builder.batchnorm(name, name, args[0].name, self.value(args[1]),
                               self.value(args[2]), mean, var, eps)

    def _max_pool(self, node: Any, name: str, args: list[Any]) -> None:
        kernel = _triple(args[1], 1)
        stride, padding, dilation, ceil = (args + [None] * 6)[2:6]
        if (_triple(stride, 0) not in ((0, 0, 0), kernel) or _triple(padding, 0) != (0, 0, 0)
                or _triple(dilation, 1) != (1, 1, 1) or ceil):
            raise unsupported(name, "MaxPool3d", f"kernel {list(kernel)}, stride {stride}, "
                              f"padding {padding}", "znni pools with stride = kernel, no "
                              "padding, dilation or ceil_mode")
        self.builder.pool(name, name, args[0].name, kernel)

    def _nearest(self, node: Any, name: str, args: list[Any]) -> None:
        before, after = _spatial(args[0]), _spatial(node)
        if any(a % b for a, b in zip(after, before, strict=True)):
            raise unsupported(name, "nearest up-sampling", f"{list(before)} to {list(after)} "
                              "is not by whole factors", "up-sample by integer factors")
        factor = tuple(a // b for a, b in zip(after, before, strict=True))
        self.builder.upsample(name, name, args[0].name, (factor[0], factor[1], factor[2]))

    def _cat(self, node: Any, name: str, args: list[Any]) -> None:
        dim = args[1] if len(args) > 1 else 0
        if dim not in (1, -4):
            raise unsupported(name, "cat", f"along dimension {dim}",
                              "znni concatenates channels (dimension 1)")
        self.builder.join(name, name, "concat", [a.name for a in args[0]], _spatial(node))

    def _add(self, node: Any, name: str, args: list[Any]) -> None:
        alpha = node.kwargs.get("alpha", 1)
        if (not all(hasattr(a, "name") and hasattr(a, "meta") for a in args[:2])
                or alpha != 1 or len(args) > 2):
            raise unsupported(name, "add", "adds a constant or a scaled tensor",
                              "znni adds tensors (residual connections) as they are")
        if any(self.constants.get(a.name) is not None for a in args[:2]):
            raise unsupported(name, "add", "adds a stored constant", "fold it into a bias")
        self.builder.join(name, name, "add", [a.name for a in args[:2]], _spatial(node))

    def _slice(self, node: Any, name: str, args: list[Any]) -> None:
        source, dim, start, end, step = [*args, *[None, 0, None, None, 1][len(args):]][:5]
        shape = source.meta["val"].shape
        dim = int(dim) % len(shape)
        size = int(shape[dim])
        lo = 0 if start is None else (int(start) + size if int(start) < 0 else int(start))
        hi = size if end is None else min(size, int(end) + size if int(end) < 0 else int(end))
        if (step or 1) != 1:
            raise unsupported(name, "slice", f"step {step}", "znni crops with step 1")
        if dim < 2:
            if (lo, hi) != (0, size):
                raise unsupported(name, "slice", f"of dimension {dim}",
                                  "znni crops the spatial dimensions only")
            self.builder.alias(name, source.name, name)
            return
        offset = [0, 0, 0]
        offset[dim - 2] = lo
        self.builder.crop(name, source.name, name, (offset[0], offset[1], offset[2]),
                          _spatial(node), _spatial(source))

    def _pad(self, node: Any, name: str, args: list[Any]) -> None:
        """Explicit padding that pads nothing at the traced size (MONAI's UpCat pads odd sizes
        only) is the identity; real padding is refused."""
        if any(int(p) for p in args[1]):
            raise unsupported(name, "pad", f"pads {list(args[1])} at the traced size",
                              "trace at a size the model needs no padding for (e.g. "
                              "multiples of its downsampling), or use padding='same' convs")
        self.builder.alias(name, args[0].name, name)

    def _activation(self, node: Any, kind: str, args: list[Any]) -> None:
        parameter = None
        if kind == "leaky_relu":
            parameter = float(args[1]) if len(args) > 1 else 0.01
        elif kind == "elu":
            alpha, scale, input_scale = ([*args[1:], 1.0, 1.0, 1.0])[:3]
            if float(scale) != 1 or float(input_scale) != 1:
                raise unsupported(node.name, "elu", "scaled (SELU/CELU-like)",
                                  "znni's elu has scale 1")
            parameter = float(alpha)
        self.builder.activation(node.name, node.name, args[0].name, kind, parameter)

    def _softmax(self, node: Any, name: str, args: list[Any]) -> None:
        if int(args[1]) not in (1, -4):
            raise unsupported(name, "softmax", f"over dimension {args[1]}",
                              "znni takes softmax over channels (dimension 1)")
        self.builder.activation(name, name, args[0].name, "softmax")


def import_torch_graph(model: Any, input_size: tuple[int, int, int], check: bool = True,
                       input_channels: int | None = None) -> Graph:
    """The znni DAG of ``model`` (an ``nn.Module`` or an ``ExportedProgram``), traced on an input
    of ``input_size`` voxels (a size the model takes); checked against the model on it."""
    torch = _require_torch()
    if isinstance(model, torch.export.ExportedProgram):
        program = model
    else:
        model = model.eval()
        channels = input_channels or _first_conv_channels(model)
        example = torch.zeros((1, channels, *input_size))
        if isinstance(model, torch.jit.ScriptModule):
            return _torchscript_graph(model, example, check)
        try:
            program = torch.export.export(model, (example,), strict=False)
        except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds
            raise UnsupportedModelError(f"torch.export could not trace the model on a "
                                        f"{list(example.shape)} input: {exc}",
                                        "give an input size the model takes (--input-size)"
                                        ) from None
    shape = next(n for n in program.graph.nodes if n.op == "placeholder"
                 and n.name in program.graph_signature.user_inputs).meta["val"].shape
    graph = _Translator(program, int(shape[1])).run()
    if check:
        check_graph(graph, program.module(), tuple(int(s) for s in shape[1:]))
    return graph


def _torchscript_graph(module: Any, example: Any, check: bool) -> Graph:
    """A TorchScript module's DAG: converted to an exported program (torch.export's
    TorchScript converter, exported again at the example's size). A traced module computes its
    crops with tensor arithmetic on sizes, which that leaves symbolic; then through the
    TorchScript ONNX exporter, which folds it, and znni's ONNX import. Checked against the
    module itself."""
    torch = _require_torch()
    try:
        from torch._export.converter import TS2EPConverter

        converted = TS2EPConverter(module, (example,)).convert()
        program = torch.export.export(converted.module(), (example,), strict=False)
        return import_torch_graph(program, tuple(example.shape[2:]), check)
    except Exception as exc:  # noqa: BLE001 - the converter and the translator raise many kinds
        first = exc
    from .graph_onnx import load_onnx_graph

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=False)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(f"the TorchScript module converts neither to an "
                                        f"exported program ({first}) nor to ONNX ({exc})",
                                        "export the model with torch.export.save (.pt2) or "
                                        "to ONNX yourself") from None
        graph = load_onnx_graph(path, None, check=False)
    if check:
        check_graph(graph, module, tuple(int(s) for s in example.shape[1:]))
    return graph


def _first_conv_channels(model: Any) -> int:
    torch = _require_torch()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d):
            return int(module.in_channels)
        if getattr(module, "original_name", None) == "Conv3d":  # TorchScript
            return int(module.weight.shape[1])
    raise UnsupportedModelError("the model has no Conv3d", "znni imports 3D ConvNets")


def check_graph(graph: Graph, run: Callable[[Any], Any], shape: tuple[int, ...],
                seed: int = 0) -> float:
    """Max relative difference between the model and ``graph`` on a random ``shape`` input
    ``(C, Z, Y, X)``; raises above the import tolerance."""
    torch = _require_torch()
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        expected = run(torch.from_numpy(x)[None])
    expected = np.asarray(expected.detach().cpu().numpy()[0], np.float64)
    ours = forward(graph, x)
    if ours.shape != expected.shape:
        raise UnsupportedModelError(f"the model gives {list(expected.shape)}, the imported "
                                    f"graph {list(ours.shape)}", "report this as a znni bug")
    scale = float(np.abs(expected).max()) or 1.0
    error = float(np.abs(ours - expected).max()) / scale
    if not error <= TOLERANCE:
        raise UnsupportedModelError(f"the imported graph differs from the model: max relative "
                                    f"error {error:.2e} (tolerance {TOLERANCE:.0e})",
                                    "report this as a znni bug, with the model")
    return error


def load_graph_file(path: str | os.PathLike[str], input_size: tuple[int, int, int] | None,
                    trust_pickle: bool = False, check: bool = True) -> Graph:
    """A DAG from a file: ``torch.export.save``'d program (``.pt2``, traced size included), a
    TorchScript archive (``torch.jit.script(m).save(path)``) or a pickled module
    (``trust_pickle``: unpickling runs the file's code), the last two traced at
    ``input_size``."""
    torch = _require_torch()
    if str(path).endswith(".pt2"):
        return import_torch_graph(torch.export.load(path), input_size or (0, 0, 0), check)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError):
        module = None
    if module is None and not trust_pickle:
        raise UnsupportedModelError("the file is not TorchScript, and loading a pickled "
                                    "PyTorch module runs code from the file",
                                    "save it with torch.export.save(...) as .pt2 or with "
                                    "torch.jit.script(model).save(...), or pass "
                                    "--trust-pickle if you trust the file")
    if input_size is None:
        raise UnsupportedModelError("a DAG model is traced on an example input",
                                    "give --input-size Z,Y,X (a size the model takes)")
    if module is None:
        module = torch.load(path, weights_only=False)
    return import_torch_graph(module, input_size, check)
