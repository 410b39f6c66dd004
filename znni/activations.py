"""The activations a conv may end with: one table, read by everything that names or computes one.

Spec validation, the numpy reference and import check, the FFT layer's numpy epilogue, the
generated C++ and CUDA kernels, PyTorch baselines and the PyTorch/ONNX importers all take their
activation from here, so a new activation is one row. The C++/CUDA entries are expressions in a
float ``v``: fixed text from this table, selected by a validated enum name — nothing from a spec
reaches generated source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Activation:
    """- ``name``: the spec's name.
    - ``numpy``: applied in place to a float array (returns it).
    - ``cpp`` / ``cuda``: the value of a float ``v`` after the activation, as an expression.
    - ``torch``: the ``torch`` function name (None: identity).
    - ``onnx_ops`` / ``torch_modules``: the ONNX ops and ``torch.nn`` classes imported as it.
    """

    name: str
    numpy: Callable[[np.ndarray], np.ndarray]
    cpp: str
    cuda: str
    torch: str | None
    onnx_ops: tuple[str, ...]
    torch_modules: tuple[str, ...]


def _sigmoid(v: np.ndarray) -> np.ndarray:
    np.negative(v, out=v)
    np.exp(v, out=v)
    v += 1
    out: np.ndarray = np.reciprocal(v, out=v)
    return out


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    Activation("relu", lambda v: np.maximum(v, 0, out=v), "v > 0.0f ? v : 0.0f",
               "v > 0.0f ? v : 0.0f", "relu", ("Relu",), ("ReLU",)),
    Activation("sigmoid", _sigmoid, "1.0f / (1.0f + std::exp(-v))", "1.0f / (1.0f + expf(-v))",
               "sigmoid", ("Sigmoid",), ("Sigmoid",)),
    Activation("tanh", lambda v: np.tanh(v, out=v), "std::tanh(v)", "tanhf(v)", "tanh",
               ("Tanh",), ("Tanh",)),
    # Dropout is the identity at inference
    Activation("linear", lambda v: v, "v", "v", None, ("Identity", "Dropout"),
               ("Identity", "Dropout", "Dropout3d")),
)}


def apply(name: str, values: np.ndarray) -> np.ndarray:
    """``values`` after activation ``name``, computed in place."""
    return ACTIVATIONS[name].numpy(values)


def torch_function(torch: Any, name: str) -> Callable[[Any], Any]:
    """The activation as a function of a torch tensor (``torch`` passed in: it is optional)."""
    fn = ACTIVATIONS[name].torch
    return (lambda t: t) if fn is None else getattr(torch, fn)


def from_onnx() -> dict[str, str]:
    """ONNX op → activation name."""
    return {op: a.name for a in ACTIVATIONS.values() for op in a.onnx_ops}


def from_torch_modules() -> dict[str, str]:
    """``torch.nn`` class name → activation name."""
    return {cls: a.name for a in ACTIVATIONS.values() for cls in a.torch_modules}
