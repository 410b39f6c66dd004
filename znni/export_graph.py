"""Export a DAG plan (spec v2, :class:`~znni.graph.planner.GraphPlan`) as a standalone C/C++
library: the chain export's pieces (:mod:`znni.export`) with a DAG driver.

Every conv node is the kernel the chain export writes for a conv layer (:func:`export_conv`:
the runtime's generated direct kernel, or FFTW3 with ``fftw``; Winograd and FFT nodes run as
direct, reported in the notes), each in its own translation unit with its ABI symbols renamed
``znni_l<node index>_*``. The other nodes — pooling, up-sampling, joins with centre crops,
activations, same padding — are small fixed C++ functions in the driver template
(``export_graph_net.cpp.j2``), which walks ``nodes.inc``: one X-macro row per node in
topological order, made only of validated integers (sizes, node and activation codes, offsets).
Float parameters (elu's alpha, leaky_relu's slope) are not written into source at all: they go
into ``weights.bin`` next to the weights, and a row holds their offset. The header, C API,
example program, weights file format and build files are the chain export's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .codegen.loader import default_toolchain
from .codegen.render import render
from .export import (
    ExportResult,
    WeightsFile,
    api_context,
    build_files,
    export_conv,
    new_directory,
    write_library,
)
from .graph.dense import dense_graph
from .graph.executor import kernel_layer
from .graph.nodes import (
    ACTIVATIONS,
    INPUT,
    Act,
    Add,
    Concat,
    Conv,
    MaxFilter,
    Node,
    Pool,
    Upsample,
    Vec3,
)
from .graph.planner import GraphPlan
from .graph.shapes import node_sizes
from .graph.spec import Graph

#: The driver's node kinds; a code is the index (rendered into the driver's ``enum Op``).
OPS = ("conv", "pool", "max_filter", "upsample", "nearest", "concat", "add", "activation")
#: Activations whose float parameter the driver reads from the weights file.
PARAMETRIC = ("elu", "leaky_relu")


def _op(node: Node) -> str:
    if isinstance(node, Upsample):
        return "upsample" if node.mode == "transposed" else "nearest"
    kinds: dict[type, str] = {Conv: "conv", Pool: "pool", MaxFilter: "max_filter",
                              Concat: "concat", Add: "add", Act: "activation"}
    return kinds[type(node)]


def _vec(prefix: str, values: Vec3) -> dict[str, int]:
    return {f"{prefix}{a}": v for a, v in enumerate(values)}


@dataclass
class _Library:
    """The sources and tables of one export, built node by node in topological order."""

    graph: Graph
    sizes: Mapping[str, Vec3]
    primitives: Mapping[str, str]
    vector_width: int
    fftw: bool
    floats: WeightsFile = field(default_factory=WeightsFile)
    sources: dict[str, str] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    converted: list[tuple[int | str, str]] = field(default_factory=list)
    uses_fftw: bool = False
    _tensors: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        # tensor 0 is the input, tensor i + 1 node i's output: the driver's numbering
        self._tensors = {INPUT: 0} | {n.name: i + 1 for i, n in enumerate(self.graph.nodes)}

    def tensor(self, name: str) -> int:
        return self._tensors[name]

    def add(self, index: int, node: Node) -> None:
        """Node ``index``'s row of nodes.inc and its inputs' rows of inputs.inc (a conv's
        kernel too): every field an integer, the unused ones 0 (-1: no kernel, no parameter)."""
        z, y, x = self.sizes[node.name]
        row = {"op": OPS.index(_op(node)), "activation": ACTIVATIONS.index("linear"),
               "parameter": -1, "channels": node.channels, "z": z, "y": y, "x": x,
               "first_input": len(self.inputs), "inputs": len(node.inputs), "layer": -1,
               **_vec("a", (0, 0, 0)), **_vec("b", (0, 0, 0)),
               "weight_offset": 0, "bias_offset": 0}
        self.inputs += [render("export_graph_input_row.inc.j2", {"tensor": self.tensor(src)})
                        for src in node.inputs]
        if isinstance(node, Conv):
            row |= self._conv(index, node)
        elif isinstance(node, Pool):
            row |= _vec("a", node.window)
        elif isinstance(node, MaxFilter):
            row |= _vec("a", node.window) | _vec("b", node.dilation)
        elif isinstance(node, Upsample):
            row |= _vec("a", node.factor) | self._transposed_weights(node)
        if isinstance(node, (Conv, Act)):
            row |= self._activation(node)
        self.nodes.append(render("export_graph_node_row.inc.j2", row))

    def _conv(self, index: int, node: Conv) -> dict[str, int]:
        """The node's kernel (on its input with the same padding's zeros around it) as a
        translation unit and a layers.inc row; the row's kernel index and padding."""
        weights = self.graph.require_weights()
        before, after = node.pad
        (z, y, x) = self.sizes[node.inputs[0]]
        padded = (1, node.in_channels, z + before[0] + after[0], y + before[1] + after[1],
                  x + before[2] + after[2])
        primitive = self.primitives[node.name]
        conv = export_conv(index, kernel_layer(node), padded,
                           primitive, (weights[f"{node.name}.weight"],
                                       weights[f"{node.name}.bias"]),
                           self.floats, self.vector_width, self.fftw)
        self.sources[f"layer_{index}.cpp"] = conv.source
        self.layers.append(conv.row)
        self.uses_fftw |= conv.fftw
        if conv.converted:
            self.converted.append((node.name, primitive))
        return {"layer": len(self.layers) - 1, **_vec("a", before), **_vec("b", after)}

    def _transposed_weights(self, node: Upsample) -> dict[str, int]:
        if node.mode != "transposed":
            return {}
        weights = self.graph.require_weights()
        return {"weight_offset": self.floats.add(weights[f"{node.name}.weight"]),
                "bias_offset": self.floats.add(weights[f"{node.name}.bias"])}

    def _activation(self, node: Conv | Act) -> dict[str, int]:
        """The activation the driver applies: a conv's only where its kernel does not (the
        kernels fuse relu, sigmoid, tanh, linear); a parameter as an offset into the floats."""
        activation = node.activation
        if isinstance(node, Conv) and kernel_layer(node).activation == activation.name:
            return {}
        parameter = -1
        if activation.name in PARAMETRIC:
            parameter = self.floats.add(np.array([activation.parameter], np.float32))
        return {"activation": ACTIVATIONS.index(activation.name), "parameter": parameter}


def export_graph_plan(plan: GraphPlan, graph: Graph, directory: str | os.PathLike[str],
                      vector_width: int | None = None, fftw: bool = False) -> ExportResult:
    """Write the library running ``graph`` (with weights) on one block of ``plan`` into
    ``directory`` (created; must be empty if it exists). ``vector_width`` and ``fftw`` as for
    :func:`~znni.export.export_plan`; the library's API is the chain export's with a batch of
    one block."""
    graph.require_weights()
    plan = GraphPlan.from_dict(plan.to_dict(), graph)  # re-validated before any codegen
    out = new_directory(directory)
    runs = dense_graph(graph)  # a sliding-window net runs dense, as in znni (graph/dense.py)
    library = _Library(runs, node_sizes(runs.nodes, plan.block_input), dict(plan.primitives),
                       vector_width or default_toolchain().vector_width, fftw)
    for index, node in enumerate(runs.nodes):
        library.add(index, node)
    api = api_context(1, graph.input_channels, plan.block_input, graph.output_channels,
                      plan.block_output)
    sources = {**library.sources, "layers.inc": "".join(library.layers),
               "nodes.inc": "".join(library.nodes), "inputs.inc": "".join(library.inputs),
               **build_files(api, graph=True, fftw=library.uses_fftw)}
    sources["znni_net.cpp"] = render("export_graph_net.cpp.j2", {
        **api, "weight_floats": library.floats.count,
        "output": library.tensor(graph.output),
        **{f"op_{name}": code for code, name in enumerate(OPS)},
        **{f"act_{name}": code for code, name in enumerate(ACTIVATIONS)}})
    sources["plan.json"] = plan.to_json() + "\n"
    sources["net.json"] = json.dumps(graph.to_dict(), indent=1) + "\n"
    files = write_library(out, sources, library.floats)
    return ExportResult(out, files, tuple(library.converted))
