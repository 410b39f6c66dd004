"""Bring your own model: PyTorch and ONNX 3D ConvNets → a znni :class:`~znni.spec.Network`
(chains) or :class:`~znni.graph.Graph` (DAGs: U-Nets, residual nets; graph_builder.py).

Each importer translates its framework's layers into :class:`~.chain.ChainBuilder` calls (which
fold BatchNorm and activations) and then checks the result against the source model
(:mod:`.check`). Framework packages are imported only when an importer runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..graph import Graph
from ..spec import Network
from .chain import UnsupportedModelError


def import_model(path: str | os.PathLike[str], spec: str | os.PathLike[str] | None = None,
                 trust_pickle: bool = False, check: bool = True) -> Network:
    """The network of a model file: ``.onnx`` → ONNX, anything else → PyTorch (TorchScript,
    state_dict with ``spec``, or a pickled module with ``trust_pickle``)."""
    if Path(path).suffix.lower() == ".onnx":
        if spec is not None or trust_pickle:
            raise UnsupportedModelError("--spec and --trust-pickle apply to PyTorch files only",
                                        "an ONNX file carries its own graph; drop them")
        from .onnx import load_file as load_onnx
        return load_onnx(path, check)
    from .pytorch import load_file as load_torch
    return load_torch(path, spec, trust_pickle, check)


def import_graph(path: str | os.PathLike[str], input_size: tuple[int, int, int] | None = None,
                 trust_pickle: bool = False, check: bool = True) -> Graph:
    """The DAG network (spec v2) of a model file: ``.onnx`` → ONNX (spatial size from the
    graph or ``input_size``), ``.pt2`` → a ``torch.export`` program, else a pickled PyTorch
    module (``trust_pickle``) traced at ``input_size``."""
    if Path(path).suffix.lower() == ".onnx":
        from .graph_onnx import load_onnx_graph
        return load_onnx_graph(path, input_size, check)
    from .graph_torch import load_graph_file
    return load_graph_file(path, input_size, trust_pickle, check)


__all__ = ["UnsupportedModelError", "import_graph", "import_model"]
