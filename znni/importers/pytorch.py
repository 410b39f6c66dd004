"""Import trained PyTorch 3D ConvNets: in-memory modules, TorchScript files, state_dict + spec.

What is accepted: a module whose leaves, in ``named_children`` order (containers such as
``nn.Sequential`` are walked recursively), are Conv3d (stride 1, no padding, no dilation,
groups 1), BatchNorm3d (folded, eval-mode running statistics), MaxPool3d (stride = kernel, no
padding/dilation/ceil_mode) and ReLU / Sigmoid / Tanh / Identity / Dropout (identity at
inference). The order of the leaves is only a guess at what ``forward`` does, so every import is
checked by running the model itself (:mod:`znni.importers.check`).

Files: ``torch.load`` of a pickled ``nn.Module`` runs arbitrary code from the file, so it happens
only with ``trust_pickle=True``. TorchScript archives (``torch.jit.script(m).save(path)``) and
state_dicts (``torch.load(..., weights_only=True)``, together with a znni spec) are the safe
ways in. ``torch`` is imported only when one of these functions runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..activations import from_torch_modules, torch_function
from ..errors import SpecError, ZnniError
from ..spec import Conv, Network, load
from ..torch_dense import require_torch
from .chain import ChainBuilder, UnsupportedModelError, unsupported
from .check import check_import

_ACTIVATIONS = from_torch_modules()
_HINT_LAYERS = (f"znni imports Conv3d, BatchNorm3d, MaxPool3d, {', '.join(_ACTIVATIONS)} "
                "(exactly these classes, not subclasses)")


def _require_torch() -> Any:
    try:
        return require_torch()
    except ZnniError:
        raise ZnniError("importing a PyTorch model needs PyTorch",
                        "pip install 'znni[torch]' (or export the model to ONNX and "
                        "pip install 'znni[onnx]')") from None


def _kind(module: Any) -> str:
    """The torch.nn class name, for eager and TorchScript modules alike."""
    torch = _require_torch()
    if isinstance(module, torch.jit.ScriptModule):
        return str(module.original_name)
    return type(module).__name__


def _triple(value: Any) -> tuple[int, int, int]:
    t = tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3
    return (int(t[0]), int(t[1]), int(t[2]))


def _array(tensor: Any) -> np.ndarray:
    out: np.ndarray = tensor.detach().cpu().double().numpy()
    return out


def _optional(tensor: Any) -> np.ndarray | None:
    """An optional parameter (a bias, BatchNorm's affine terms) as float64, or None."""
    return None if tensor is None else _array(tensor)


def _leaves(module: Any, prefix: str = "") -> list[tuple[str, Any]]:
    children = list(module.named_children())
    if not children:
        return [(prefix or _kind(module), module)]
    out = []
    for name, child in children:
        out += _leaves(child, f"{prefix}.{name}" if prefix else name)
    return out


def _conv(builder: ChainBuilder, node: str, m: Any) -> None:
    what = "Conv3d"
    if _triple(m.stride) != (1, 1, 1):
        raise unsupported(node, what, f"stride {list(_triple(m.stride))}",
                          "znni runs stride-1 convolutions densely; use a MaxPool3d to "
                          "downsample")
    if m.padding != "valid" and (isinstance(m.padding, str) or _triple(m.padding) != (0, 0, 0)):
        raise unsupported(node, what, f"padding {m.padding!r}",
                          "znni computes valid correlations (the output shrinks by the field of "
                          "view); retrain or re-create the layer with padding=0 — for volumes "
                          "znni's `infer --mode same` pads the input once, at the border")
    if _triple(m.dilation) != (1, 1, 1):
        raise unsupported(node, what, f"dilation {list(_triple(m.dilation))}",
                          "znni's dilations come from its own pooling; use dilation=1")
    if int(m.groups) != 1:
        raise unsupported(node, what, f"groups={m.groups}", "use groups=1")
    builder.conv(node, _array(m.weight), _optional(m.bias))


def _pool(builder: ChainBuilder, node: str, m: Any) -> None:
    what = "MaxPool3d"
    window = _triple(m.kernel_size)
    stride = window if m.stride is None else _triple(m.stride)
    problems = [(stride != window, f"stride {list(stride)} ≠ kernel {list(window)}"),
                (_triple(m.padding) != (0, 0, 0), f"padding {m.padding!r}"),
                (_triple(m.dilation) != (1, 1, 1), f"dilation {m.dilation!r}"),
                (bool(m.ceil_mode), "ceil_mode=True"),
                (bool(m.return_indices), "return_indices=True")]
    for bad, why in problems:
        if bad:
            raise unsupported(node, what, why, "znni's pools are max pools with stride = "
                              "kernel, no padding, dilation 1, floor mode")
    builder.pool(node, window)


def _translate(module: Any) -> ChainBuilder:
    builder = ChainBuilder()
    for node, m in _leaves(module):
        kind = _kind(m)
        if kind == "Conv3d":
            _conv(builder, node, m)
        elif kind == "BatchNorm3d":
            builder.batchnorm(node, _optional(m.weight), _optional(m.bias), _array(m.running_mean),
                              _array(m.running_var), float(m.eps))
        elif kind == "MaxPool3d":
            _pool(builder, node, m)
        elif kind in _ACTIVATIONS:
            builder.activation(node, _ACTIVATIONS[kind])
        else:
            raise unsupported(node, kind, "not a supported layer", _HINT_LAYERS)
    return builder


def from_module(module: Any, name: str | None = None, check: bool = True) -> Network:
    """The znni network of an in-memory ``nn.Module`` or TorchScript module (eval mode)."""
    torch = _require_torch()
    builder = _translate(module)
    net = builder.network(name or _kind(module))
    if check:
        training = module.training
        module.eval()
        try:
            with torch.no_grad():
                check_import(net, lambda x: module(torch.from_numpy(x)).numpy(),
                             f"the PyTorch model {net.name!r}")
        finally:
            module.train(training)
    return net


def from_state_dict(state: Mapping[str, Any], spec: str | os.PathLike[str] | Mapping[str, Any],
                    check: bool = True, bn_eps: float = 1e-5) -> Network:
    """The network of a znni ``spec`` with the weights of a PyTorch ``state_dict``.

    The state_dict's modules are taken in order: each conv weight (5 dimensions) belongs to the
    spec's next conv layer; a BatchNorm (``running_mean``…) right after a conv is folded into it
    (applied before the conv's activation; its ``eps``, not in a state_dict, is ``bn_eps``)."""
    torch = _require_torch()
    topology = load(spec)
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        prefix, _, attr = str(key).rpartition(".")
        if attr != "num_batches_tracked":
            groups.setdefault(prefix, {})[attr] = _array(value)
    entries = list(groups.items())
    builder = ChainBuilder()
    layers: list[tuple[Any, ...]] = []  # (kind, ...) for the check's functional forward
    for i, layer in enumerate(topology.layers):
        if not isinstance(layer, Conv):
            builder.pool(f"layers.{i}", layer.window)
            layers.append(("pool", layer.window))
            continue
        if not entries or "weight" not in entries[0][1] or entries[0][1]["weight"].ndim != 5:
            found = entries[0][0] if entries else "nothing"
            raise UnsupportedModelError(
                f"spec layer {i} is a conv but the state_dict's next module is {found!r}",
                "the state_dict must hold the spec's convs (and BatchNorms after them) in order")
        node, conv = entries.pop(0)
        builder.conv(node, conv["weight"], conv.get("bias"))
        bn = None
        if entries and "running_mean" in entries[0][1]:
            bn_node, bn = entries.pop(0)
            builder.batchnorm(bn_node, bn.get("weight"), bn.get("bias"), bn["running_mean"],
                              bn["running_var"], bn_eps)
        builder.activation(f"layers.{i}", layer.activation)
        layers.append(("conv", conv, bn, layer.activation))
    if entries:
        raise UnsupportedModelError(f"state_dict entries {[k for k, _ in entries][:3]} are left "
                                    "over after the spec's layers",
                                    "is this the state_dict of another network?")
    net = builder.network(topology.name, topology.input_channels)
    if net.to_dict()["layers"] != topology.to_dict()["layers"]:
        raise UnsupportedModelError("the state_dict's weight shapes do not match the spec's "
                                    "kernels or channels", "check the spec against the model")
    if check:
        check_import(net, lambda x: _functional(torch, layers, bn_eps, x),
                     "the state_dict run by PyTorch")
    return net


def _functional(torch: Any, layers: list[tuple[Any, ...]], eps: float, x: np.ndarray) -> Any:
    """The spec + state_dict run by torch.nn.functional (BatchNorm unfolded), for the check."""
    f = torch.nn.functional
    t = torch.from_numpy(x).double()

    def tensor(a: np.ndarray | None) -> Any:
        return None if a is None else torch.from_numpy(a)

    for kind, *args in layers:
        if kind == "pool":
            t = f.max_pool3d(t, args[0])
            continue
        conv, bn, activation = args
        t = f.conv3d(t, tensor(conv["weight"]), tensor(conv.get("bias")))
        if bn is not None:
            t = f.batch_norm(t, tensor(bn["running_mean"]), tensor(bn["running_var"]),
                             tensor(bn.get("weight")), tensor(bn.get("bias")), False, 0.0, eps)
        t = torch_function(torch, activation)(t)
    return t.numpy()


def load_file(path: str | os.PathLike[str], spec: str | os.PathLike[str] | None = None,
              trust_pickle: bool = False, check: bool = True) -> Network:
    """Import a PyTorch file: a state_dict (with ``spec``), a TorchScript archive, or — only
    with ``trust_pickle`` — a pickled ``nn.Module``."""
    torch = _require_torch()
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"model file {str(path)!r} not found", "check the path")
    if spec is not None:
        state = _load_weights_only(torch, path)
        if not isinstance(state, Mapping):
            raise UnsupportedModelError(f"{path} does not hold a state_dict",
                                        "save it with torch.save(model.state_dict(), PATH)")
        return from_state_dict(state, spec, check)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError):
        module = None
    if module is None and trust_pickle:
        module = torch.load(path, map_location="cpu", weights_only=False)
    if module is None:
        state = _load_weights_only(torch, path)
        if isinstance(state, Mapping):
            raise UnsupportedModelError(f"{path} is a state_dict: it has no layer structure",
                                        "pass the network's znni spec with --spec NET.json")
        raise UnsupportedModelError(f"{path} is neither TorchScript nor a state_dict",
                                    "re-save it as TorchScript (torch.jit.script(model)"
                                    ".save(PATH)); loading a pickled nn.Module runs code from "
                                    "the file, so znni does it only with --trust-pickle")
    if not isinstance(module, torch.nn.Module):
        raise UnsupportedModelError(f"{path} holds a {type(module).__name__}, not a module",
                                    "save the model (TorchScript) or its state_dict")
    return from_module(module, path.stem, check)


def _load_weights_only(torch: Any, path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, … for foreign files
        raise UnsupportedModelError(
            f"{path} cannot be read as a tensor-only torch file: {str(exc).splitlines()[0]}",
            "a pickled nn.Module needs --trust-pickle (it runs code from the file); prefer "
            "TorchScript or a state_dict + --spec") from None
