"""Network spec v2: a DAG of nodes (docs/design.md §2.1), loaded and validated like v1.

A spec and its weights are untrusted input: every node is checked into the frozen dataclasses of
:mod:`.nodes` (identifiers, integers within :mod:`znni.limits`, enum names, finite activation
parameters), the graph is sorted topologically (a cycle, a dangling input or a node the output
does not use is an error naming the nodes), channels are inferred and checked along every edge,
and weights are checked against the shapes the nodes need. Spatial shapes are checked by
:mod:`.shapes` for the sizes a run uses.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .. import limits
from ..errors import SpecError, WeightsError
from ..spec import (
    check_keys,
    checked_array,
    key_names,
    parse_header,
    positive_int,
    read_npz,
    shown,
    spec_vec3,
)
from .nodes import (
    ACTIVATIONS,
    INPUT,
    PADDINGS,
    UPSAMPLE_MODES,
    WEIGHTED,
    Act,
    Activation,
    Add,
    Concat,
    Conv,
    Node,
    Pool,
    Upsample,
    weight_shapes,
)
from .shapes import scales

SPEC_VERSION = 2
_TOP_KEYS = {"version", "name", "description", "input_channels", "nodes", "output"}
_COMMON = {"name", "type", "inputs"}
_ACTIVATION_KEYS = {"activation", "slope", "alpha"}
_KEYS = {
    "conv": _COMMON | _ACTIVATION_KEYS | {"kernel", "out_channels", "padding", "dilation"},
    "pool": _COMMON | {"window"},
    "upsample": _COMMON | {"factor", "mode", "out_channels"},
    "concat": _COMMON,
    "add": _COMMON,
    "activation": _COMMON | _ACTIVATION_KEYS,
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}")
#: Largest |parameter| of an activation (a slope of 1e30 is a typo, not a network).
_MAX_PARAMETER = 1e3
_HINT = "see docs/design.md §2.1 for the format"


@dataclass(frozen=True, eq=False)
class Graph:
    """A validated DAG network: nodes in topological order, the output node's name, and
    (optionally) float32 weights keyed ``<node>.weight`` / ``<node>.bias``."""

    name: str
    input_channels: int
    nodes: tuple[Node, ...]
    output: str
    weights: Mapping[str, np.ndarray] | None = field(default=None, repr=False)
    description: str = ""

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    @property
    def output_channels(self) -> int:
        return self.node(self.output).channels

    def require_weights(self) -> Mapping[str, np.ndarray]:
        if self.weights is None:
            raise WeightsError(f"network {self.name!r} has no weights",
                               "pass weights=PATH.npz, or use random_weights(seed)")
        return self.weights

    def with_weights(self, weights: str | os.PathLike[str] | Mapping[str, Any]) -> Graph:
        """A copy holding validated weights from an ``.npz`` path or a name→array mapping."""
        arrays = dict(weights) if isinstance(weights, Mapping) else read_npz(weights)
        return replace(self, weights=_checked_weights(self, arrays))

    def random_weights(self, seed: int) -> Graph:
        """A copy with seeded He-initialised weights (fan-in of the conv, or of the input
        channels for transposed up-sampling) and small biases."""
        rng = np.random.default_rng(seed)
        arrays = {}
        for node in self.nodes:
            for key, shape in weight_shapes(node).items():
                if key.endswith(".bias"):
                    arrays[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
                    continue
                fan_in = shape[1] * math.prod(shape[2:]) if isinstance(node, Conv) else shape[0]
                arrays[key] = (rng.standard_normal(shape) * math.sqrt(2 / fan_in)).astype(
                    np.float32)
        return replace(self, weights=arrays)

    def save_weights(self, path: str | os.PathLike[str]) -> None:
        arrays: dict[str, Any] = dict(self.require_weights())
        np.savez(path, **arrays)

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON spec (weights not included)."""
        return {"version": SPEC_VERSION, "name": self.name, "description": self.description,
                "input_channels": self.input_channels,
                "nodes": [_node_dict(n) for n in self.nodes], "output": self.output}


def parse_graph(data: Any) -> Graph:
    """A validated :class:`Graph` from a v2 spec's JSON object."""
    if not isinstance(data, Mapping):
        raise SpecError("network spec must be a JSON object", _HINT)
    if data.get("version") != SPEC_VERSION:
        raise SpecError(f"'version' must be {SPEC_VERSION} for a spec with 'nodes', got "
                        f"{shown(data.get('version'))}", _HINT)
    name, description, channels, raw_nodes = parse_header(data, _TOP_KEYS, "nodes")
    raw_by_name = _named(raw_nodes)
    output = data.get("output", list(raw_by_name)[-1])
    if not isinstance(output, str) or output not in raw_by_name:
        raise SpecError(f"'output' {shown(output)} is not a node",
                        f"name one of the nodes: {key_names(set(raw_by_name))}")
    order = _topological(raw_by_name, output)
    nodes: dict[str, Node] = {}
    for node_name in order:
        nodes[node_name] = _parse_node(raw_by_name[node_name],
                                       lambda src: channels if src == INPUT
                                       else nodes[src].channels)
    built = tuple(nodes.values())
    if not any(isinstance(n, Conv) for n in built):
        raise SpecError("the network has no conv node", "add at least one conv node")
    pools = sum(isinstance(n, Pool) for n in built)
    if pools > limits.MAX_POOLS:
        raise SpecError(f"the network has {pools} pool nodes, more than the {limits.MAX_POOLS} "
                        "znni supports", "see znni.limits")
    scales(built)  # joins of different resolutions: an error now, not at run time
    return Graph(name, channels, built, output, None, description)


def _named(raw_nodes: list[Any]) -> dict[str, Mapping[str, Any]]:
    """The raw nodes by name: each an object with a unique identifier name (not ``input``)."""
    out: dict[str, Mapping[str, Any]] = {}
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, Mapping):
            raise SpecError(f"node {i}: must be a JSON object, got {type(raw).__name__}",
                            "write {\"name\": ..., \"type\": ..., \"inputs\": [...], ...}")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name == INPUT:
            raise SpecError(f"node {i}: 'name' must be an identifier (letters, digits, _ and ., "
                            f"at most 64, not {INPUT!r}), got {shown(name)}",
                            "name every node, e.g. \"name\": \"conv1\"")
        if name in out:
            raise SpecError(f"node {i}: name {name!r} is used twice", "give each node its own")
        out[name] = raw
    return out


def _inputs(raw: Mapping[str, Any], where: str) -> tuple[str, ...]:
    inputs = raw.get("inputs")
    if (not isinstance(inputs, list) or not inputs or len(inputs) > limits.MAX_LAYERS
            or not all(isinstance(i, str) for i in inputs)):
        raise SpecError(f"{where}: 'inputs' must be a non-empty list of node names, got "
                        f"{shown(inputs)}", f"e.g. \"inputs\": [\"{INPUT}\"]")
    return tuple(inputs)


def _topological(raw_by_name: Mapping[str, Mapping[str, Any]], output: str) -> list[str]:
    """The nodes in an order where each comes after its inputs (depth first from the output),
    refusing dangling inputs, cycles, and nodes the output does not depend on."""
    order: list[str] = []
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = [*path[path.index(name):], name]
            raise SpecError(f"the nodes form a cycle: {' -> '.join(cycle)}",
                            "a network is a DAG: every node may read only earlier results")
        state[name] = "open"
        where = f"node {name!r}"
        for src in _inputs(raw_by_name[name], where):
            if src == INPUT:
                continue
            if src not in raw_by_name:
                raise SpecError(f"{where}: input {shown(src)} is not a node",
                                f"use {INPUT!r} or one of {key_names(set(raw_by_name))}")
            visit(src, [*path, name])
        state[name] = "done"
        order.append(name)

    visit(output, [])
    unused = set(raw_by_name) - set(order)
    if unused:
        raise SpecError(f"node(s) {key_names(unused)} do not lead to the output {output!r}",
                        "remove them, or set 'output' to the node the network ends in")
    return order


def _activation(raw: Mapping[str, Any], where: str) -> Activation:
    name = raw.get("activation", "linear")
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise SpecError(f"{where}: unknown activation {shown(name)}",
                        f"use one of {', '.join(ACTIVATIONS)}")
    key = {"leaky_relu": "slope", "elu": "alpha"}.get(name)
    stray = sorted(({"slope", "alpha"} - {key}) & set(raw))
    if stray:
        raise SpecError(f"{where}: {stray[0]!r} does not apply to activation {name!r}",
                        "'slope' goes with leaky_relu, 'alpha' with elu")
    if key is None:
        return Activation(name)
    value = raw.get(key, {"slope": 0.01, "alpha": 1.0}[key])
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or abs(value) > _MAX_PARAMETER):
        raise SpecError(f"{where}: {key!r} must be a finite number within ±{_MAX_PARAMETER:g}, "
                        f"got {shown(value)}", f"e.g. \"{key}\": 0.01")
    return Activation(name, float(value))


def _parse_node(raw: Mapping[str, Any], channels_of: Any) -> Node:
    """One node, its input channels looked up by ``channels_of(name)`` (inputs come first)."""
    name = raw["name"]
    kind = raw.get("type")
    where = f"node {name!r}"
    if kind not in _KEYS:
        raise SpecError(f"{where}: unknown node type {shown(kind)}",
                        f"use one of {', '.join(_KEYS)}")
    check_keys(raw, _KEYS[kind], where)
    inputs = _inputs(raw, where)
    in_channels = [channels_of(src) for src in inputs]
    if kind in ("conv", "pool", "upsample", "activation") and len(inputs) != 1:
        raise SpecError(f"{where}: a {kind} node reads one input, got {len(inputs)}",
                        "join tensors with a concat or add node first")
    if kind in ("concat", "add") and len(inputs) < 2:
        raise SpecError(f"{where}: a {kind} node joins at least two inputs", "list them")
    if kind == "conv":
        for key in ("kernel", "out_channels"):
            if key not in raw:
                raise SpecError(f"{where}: conv needs 'kernel' and 'out_channels'",
                                "e.g. \"kernel\": [3, 3, 3], \"out_channels\": 16")
        padding = raw.get("padding", "valid")
        if padding not in PADDINGS:
            raise SpecError(f"{where}: padding must be one of {PADDINGS}, got {shown(padding)}",
                            "valid: no padding (the image shrinks); same: zeros keep its size")
        dilation = (spec_vec3(raw["dilation"], where, "dilation", limits.MAX_KERNEL)
                    if "dilation" in raw else (1, 1, 1))
        return Conv(name, (inputs[0],), in_channels[0],
                    positive_int(raw["out_channels"], where, "'out_channels'",
                                 limits.MAX_CHANNELS),
                    spec_vec3(raw["kernel"], where, "kernel", limits.MAX_KERNEL), padding,
                    dilation, _activation(raw, where))
    if kind == "pool":
        if "window" not in raw:
            raise SpecError(f"{where}: pool needs 'window'", "e.g. \"window\": [1, 2, 2]")
        return Pool(name, (inputs[0],), in_channels[0],
                    spec_vec3(raw["window"], where, "window", limits.MAX_WINDOW))
    if kind == "upsample":
        mode = raw.get("mode", "transposed")
        if mode not in UPSAMPLE_MODES:
            raise SpecError(f"{where}: mode must be one of {UPSAMPLE_MODES}, got {shown(mode)}",
                            "transposed: ConvTranspose3d with kernel = stride; nearest: repeat")
        if "factor" not in raw:
            raise SpecError(f"{where}: upsample needs 'factor'", "e.g. \"factor\": [1, 2, 2]")
        factor = spec_vec3(raw["factor"], where, "factor", limits.MAX_WINDOW)
        if mode == "nearest":
            if "out_channels" in raw:
                raise SpecError(f"{where}: nearest up-sampling keeps the channels",
                                "drop 'out_channels', or use mode transposed")
            return Upsample(name, (inputs[0],), in_channels[0], in_channels[0], factor, mode)
        if "out_channels" not in raw:
            raise SpecError(f"{where}: transposed up-sampling needs 'out_channels'",
                            "e.g. \"out_channels\": 32")
        return Upsample(name, (inputs[0],), in_channels[0],
                        positive_int(raw["out_channels"], where, "'out_channels'",
                                     limits.MAX_CHANNELS), factor, mode)
    if kind == "concat":
        total = sum(in_channels)
        if total > limits.MAX_CHANNELS:
            raise SpecError(f"{where}: {total} channels, more than {limits.MAX_CHANNELS}",
                            "see znni.limits")
        return Concat(name, inputs, total)
    if kind == "add":
        if len(set(in_channels)) != 1:
            raise SpecError(f"{where}: adds inputs of {in_channels} channels ({', '.join(inputs)})",
                            "the inputs of an add must have the same number of channels")
        return Add(name, inputs, in_channels[0])
    return Act(name, (inputs[0],), in_channels[0], _activation(raw, where))


def _checked_weights(graph: Graph, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every weight array the nodes need, float32, C-contiguous, finite; nothing else."""
    out: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        if not isinstance(node, WEIGHTED):
            continue
        for key, shape in weight_shapes(node).items():
            out[key] = checked_array(arrays, key, shape, f"node {node.name!r}",
                                     "export every conv and transposed up-sampling node's "
                                     "weight and bias, keyed <node name>.weight / .bias",
                                     "check the node's channels and kernel in the spec")
    extra = set(arrays) - set(out)
    if extra:
        raise WeightsError(f"unexpected weight array(s) {key_names(extra)}",
                           "keys are <node name>.weight / .bias of conv and transposed "
                           "up-sampling nodes; is this the weights file of another network?")
    return out


def _node_dict(node: Node) -> dict[str, Any]:
    """A node as canonical v2 JSON."""
    out: dict[str, Any] = {"name": node.name, "inputs": list(node.inputs)}
    if isinstance(node, (Conv, Act)):
        act = node.activation
        out["activation"] = act.name
        if act.name in ("leaky_relu", "elu"):
            out["slope" if act.name == "leaky_relu" else "alpha"] = act.parameter
    if isinstance(node, Conv):
        out |= {"type": "conv", "kernel": list(node.kernel), "out_channels": node.channels,
                "padding": node.padding, "dilation": list(node.dilation)}
    elif isinstance(node, Pool):
        out |= {"type": "pool", "window": list(node.window)}
    elif isinstance(node, Upsample):
        out |= {"type": "upsample", "factor": list(node.factor), "mode": node.mode}
        if node.mode == "transposed":
            out["out_channels"] = node.channels
    else:
        out["type"] = {Concat: "concat", Add: "add", Act: "activation"}[type(node)]
    return out
