"""``znni bench`` on a DAG network: the planned znni run against PyTorch on the same volume,
same weights, same run, alternating, medians (docs/design.md §8.1).

Valid nets: znni in the planner's exact blocks, PyTorch on the whole volume at once (sliding-
window nets: both dense, PyTorch with max filters and dilated convs, :mod:`.dense`). Padded
nets: both in the same Gaussian-blended windows (the planner's window; MONAI's placement). The
default volume holds two blocks (windows) per axis, so tiling costs show.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .dense import dense_graph
from .infer import infer_graph
from .job import padded
from .nodes import Vec3
from .planner import GraphPlan, plan_graph
from .sliding import sliding_window
from .spec import Graph
from .torch_peer import GraphTorch


@dataclass(frozen=True)
class GraphBench:
    plan: GraphPlan
    volume: Vec3
    output_voxels: int
    seconds: dict[str, float]   # median per runner
    difference: float           # max |znni − PyTorch| / max |PyTorch|

    @property
    def ratio(self) -> float:
        """PyTorch's time over znni's (> 1: znni is faster)."""
        return self.seconds["pytorch"] / self.seconds["znni"]


def bench_graph(graph: Graph, memory: int | str | None, threads: int, repeats: int,
                volume: Vec3 | None = None, overlap: float = 0.25) -> GraphBench:
    plan = plan_graph(graph, memory, threads, volume, overlap)
    if volume is None:
        volume = (plan.block_input[0] + plan.useful[0], plan.block_input[1] + plan.useful[1],
                  plan.block_input[2] + plan.useful[2])
    x = np.random.default_rng(0).random((graph.input_channels, *volume), dtype=np.float32)
    peer = GraphTorch(dense_graph(graph), threads)
    runs: dict[str, Callable[[], np.ndarray]]
    if padded(graph):
        roi = plan.block_input
        runs = {"znni": lambda: sliding_window(graph, x, roi, overlap, "gaussian", threads),
                "pytorch": lambda: peer.windows(x, roi, overlap)}
    else:
        runs = {"znni": lambda: infer_graph(graph, x, plan.block_input, threads, memory,
                                            dict(plan.primitives)),
                "pytorch": lambda: peer(x)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    outs: dict[str, np.ndarray] = {}
    for round_ in range(repeats + 1):  # round 0: compiles znni's kernels, warms PyTorch
        for name, run in runs.items():
            start = time.perf_counter()
            outs[name] = run()
            if round_:
                times[name].append(time.perf_counter() - start)
    ref = outs["pytorch"]
    ours = outs["znni"][:, :ref.shape[1], :ref.shape[2], :ref.shape[3]]
    difference = float(np.abs(ours - ref).max() / (np.abs(ref).max() or 1.0))
    return GraphBench(plan, volume, int(np.prod(ref.shape[1:])),
                      {k: statistics.median(v) for k, v in times.items()}, difference)
