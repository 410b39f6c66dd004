"""A DAG network compiled for one input block size: generated conv kernels per conv node (the
primitives of the chain planner, chosen by its ``auto`` rule until the DAG planner exists), numpy
for the rest, tensors freed after their last reader (docs/design.md §2.1, §8.1)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..activations import ACTIVATIONS as KERNEL_ACTIVATIONS
from ..config import check_threads
from ..planner.plan import auto_primitive
from ..primitives import PRIMITIVES, Step
from ..primitives.base import padded_empty
from ..spec import Conv as ChainConv
from .nodes import (
    INPUT,
    Act,
    Activation,
    Add,
    Concat,
    Conv,
    MaxFilter,
    Node,
    Pool,
    Upsample,
    Vec3,
)
from .reference import activate, centre_crop, max_windows
from .shapes import node_sizes
from .spec import Graph

log = logging.getLogger("znni")


def kernel_layer(node: Conv) -> ChainConv:
    """The chain conv a kernel runs for ``node``: its activation fused where the kernels have
    it (relu, sigmoid, tanh, linear), else linear with the activation applied after."""
    fused = node.activation.name if node.activation.name in KERNEL_ACTIVATIONS else "linear"
    return ChainConv(node.in_channels, node.channels, node.kernel, fused, node.dilation)


class CompiledGraph:
    """``run`` maps an input block ``(C, *input_size)`` to the output node's tensor."""

    def __init__(self, graph: Graph, input_size: Vec3, threads: int,
                 primitives: Mapping[str, str] | None = None) -> None:
        self.graph = graph
        self.input_size = input_size
        self.threads = check_threads(threads)
        self.sizes = node_sizes(graph.nodes, input_size)
        weights = graph.require_weights()
        convs = [n for n in graph.nodes if isinstance(n, Conv)]
        self.primitives: dict[str, str] = {}
        shapes = {}
        for node in convs:
            layer = kernel_layer(node)
            shapes[node.name] = (1, node.in_channels, *self._padded(node))
            name = (primitives or {}).get(node.name) or auto_primitive(layer,
                                                                      shapes[node.name])
            self.primitives[node.name] = name
        start = time.perf_counter()

        def prepare(node: Conv) -> Step:
            return PRIMITIVES[self.primitives[node.name]].prepare(
                0, kernel_layer(node), shapes[node.name],
                (weights[f"{node.name}.weight"], weights[f"{node.name}.bias"]), threads)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # g++ outside the GIL
            self.steps = dict(zip((n.name for n in convs), pool.map(prepare, convs),
                                  strict=True))
        log.info("prepared %d conv nodes in %.2f s", len(convs), time.perf_counter() - start)
        self.readers = {name: sum(name in n.inputs for n in graph.nodes)
                        for name in (INPUT, *(n.name for n in graph.nodes))}
        self.readers[graph.output] += 1  # the caller reads the output
        self._upsampling = {n.name: _upsampling_matrix(n, weights) for n in graph.nodes
                            if isinstance(n, Upsample) and n.mode == "transposed"}

    def _padded(self, node: Conv) -> Vec3:
        """The image a conv kernel runs on: its input plus the zeros of same padding."""
        size = self.sizes[node.inputs[0]]
        before, after = node.pad
        return (size[0] + before[0] + after[0], size[1] + before[1] + after[1],
                size[2] + before[2] + after[2])

    def run(self, x: np.ndarray) -> np.ndarray:
        """The output tensor ``(C_out, z, y, x)`` of one input block ``(C, *input_size)``."""
        values: dict[str, np.ndarray] = {INPUT: x}
        left = dict(self.readers)
        for node in self.graph.nodes:
            values[node.name] = self._node(node, values)
            for src in node.inputs:  # free what no later node reads
                left[src] -= 1
                if left[src] == 0:
                    del values[src]
        return values[self.graph.output]

    def _node(self, node: Node, values: dict[str, np.ndarray]) -> np.ndarray:
        x = values[node.inputs[0]]
        if isinstance(node, Conv):
            step = self.steps[node.name]
            buf = padded_empty((1, node.in_channels, *self._padded(node)), step.input_slack)
            before, _ = node.pad
            if node.padding == "same":
                buf.fill(0)
            buf[0, :, before[0]:before[0] + x.shape[1], before[1]:before[1] + x.shape[2],
                before[2]:before[2] + x.shape[3]] = x
            out: np.ndarray = step.run(buf, 0)[0]
            if node.activation.name not in KERNEL_ACTIVATIONS:
                out = _activate_in_place(node.activation, out)
            return out
        if isinstance(node, Pool):
            return max_windows(x, node.window, (1, 1, 1), node.window)
        if isinstance(node, MaxFilter):
            return max_windows(x, node.window, node.dilation, (1, 1, 1))
        if isinstance(node, Upsample):
            return self._upsample(node, x)
        size = self.sizes[node.name]
        if isinstance(node, Concat):
            joined: np.ndarray = np.concatenate([centre_crop(values[s], size)
                                                 for s in node.inputs])
            return joined
        if isinstance(node, Add):
            total = centre_crop(x, size).copy()
            for src in node.inputs[1:]:
                total += centre_crop(values[src], size)
            return total
        assert isinstance(node, Act)
        return activate(node.activation, x)

    def _upsample(self, node: Upsample, x: np.ndarray) -> np.ndarray:
        fz, fy, fx = node.factor
        c, z, y, xx = x.shape
        if node.mode == "nearest":
            near: np.ndarray = x.repeat(fz, axis=1).repeat(fy, axis=2).repeat(fx, axis=3)
            return near
        # kernel = stride: every input voxel writes its own f³ outputs, a matrix product
        matrix, bias = self._upsampling[node.name]
        product = matrix @ x.reshape(c, z * y * xx)  # (out·fz·fy·fx, voxels)
        out = np.empty((node.channels, z, fz, y, fy, xx, fx), np.float32)
        out[...] = product.reshape(node.channels, fz, fy, fx, z, y, xx).transpose(
            0, 4, 1, 5, 2, 6, 3)
        out += bias[:, None, None, None, None, None, None]
        return out.reshape(node.channels, z * fz, y * fy, xx * fx)


def _activate_in_place(activation: Activation, x: np.ndarray) -> np.ndarray:
    """The activations the kernels do not fuse, on a float32 tensor the caller owns, without
    the float64 oracle's temporaries where it can."""
    slope = activation.parameter
    if activation.name == "leaky_relu" and 0 <= slope <= 1:
        np.maximum(x, x * np.float32(slope), out=x)  # max(v, s·v) is v for v ≥ 0, s·v below
        return x
    if activation.name == "elu":
        negative = x < 0
        x[negative] = np.float32(slope) * np.expm1(x[negative])
        return x
    return activate(activation, x)


def _upsampling_matrix(node: Upsample, weights: Mapping[str, np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Transposed-conv weights ``(in, out, fz, fy, fx)`` as a ``(out·fz·fy·fx, in)`` matrix."""
    w = weights[f"{node.name}.weight"]
    matrix = np.ascontiguousarray(w.reshape(w.shape[0], -1).T)
    return matrix, weights[f"{node.name}.bias"]
