"""Planning a DAG network (docs/design.md §8.1): the block size and each conv node's primitive
that maximise useful output voxels per second within a memory budget.

Per candidate block (valid nets: input sizes ``n₀ + k·D``; padded nets: windows that are
multiples of ``D``), near-cubic and growing until nothing fits:

- every conv node is one layer for the chain planner's machinery: its ways to run
  (:func:`~znni.planner.costing.layer_options`, in-place excluded — a DAG's inputs are often read
  again) costed by the same :class:`~znni.planner.costing.CostModel` (calibration, tuning
  records);
- memory follows liveness: walking the nodes in order, a tensor lives from the node that makes
  it to its last reader, so the peak is the largest sum of live tensors plus one node's own
  scratch (a conv's padded copy and its primitive's working memory); weights are resident;
- a conv takes its fastest way whose scratch fits next to what is live there;
- the other nodes cost their bytes at the copy bandwidth (numpy), transposed up-sampling its
  matrix product at the peak rate.

The objective counts only the voxels a block adds: ``stride = m − m mod D`` per axis for
exact blocks (neighbours overlap by the rest), ``int(roi·(1 − overlap))`` for blended windows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

from .. import config
from ..activations import ACTIVATIONS as KERNEL_ACTIVATIONS
from ..errors import PlanError
from ..hardware import Device
from ..planner.costing import CostModel, layer_options
from ..planner.device import load_device, this_machine
from ..planner.plan import LayerPlan
from ..planner.search import default_budget
from ..planner.tuning import TuningRecords
from ..primitives.base import FLOAT_BYTES
from ..spec import LayerShapes
from .executor import kernel_layer
from .nodes import INPUT, Conv, Upsample, Vec3
from .shapes import axis_sizes, downsampling, node_sizes, shape_report
from .spec import Graph

#: Numpy passes per byte of a non-conv node's output (read inputs, write output, temporaries).
NUMPY_PASSES = 3.0
#: Candidate blocks tried past the last one that fitted (a larger block can fit again when a
#: node's fastest way changes to a leaner one).
_TRIES_PAST = 2


@dataclass(frozen=True)
class GraphPlan:
    """A block (input) size, the primitive of every conv node, and what they are predicted to
    cost: seconds per block, useful output voxels per block, peak bytes (liveness)."""

    block_input: Vec3
    block_output: Vec3
    useful: Vec3
    primitives: tuple[tuple[str, str], ...]
    seconds: float
    peak_bytes: int
    budget_bytes: int

    @property
    def throughput(self) -> float:
        return math.prod(self.useful) / self.seconds


def _blocks(graph: Graph, extent: Vec3 | None, padded: bool) -> Iterator[Vec3]:
    """Near-cubic candidate block inputs, growing: per axis the smallest valid size whose
    output reaches ``t`` voxels for t = D, 2D, … (capped by ``extent``)."""
    report = shape_report(graph.nodes, graph.output)
    ds = downsampling(graph.nodes)
    step = max(ds)
    for t in range(step, 1 << 16, step):
        block = []
        for a in range(3):
            if padded:
                n = max(ds[a], -(-t // ds[a]) * ds[a])
            else:
                grow = report.output_step[a]
                k = max(0, -(-(t - report.output[a]) // grow)) if grow else 0
                n = report.smallest_input[a] + k * report.step[a]
            if extent is not None:
                n = min(n, max(report.smallest_input[a], extent[a]))
            block.append(n)
        yield (block[0], block[1], block[2])


def _other_seconds(graph: Graph, sizes: dict[str, Vec3], device: Device) -> float:
    """The numpy nodes: bytes through memory; transposed up-sampling: a matrix product; and
    the first touch of every fresh tensor the kernels' estimates do not count (each node's
    output but a conv's, a conv's copy of its input)."""
    seconds = 0.0
    for node in graph.nodes:
        out = FLOAT_BYTES * node.channels * math.prod(sizes[node.name])
        if isinstance(node, Conv):
            copy = FLOAT_BYTES * node.in_channels * math.prod(sizes[node.inputs[0]])
            seconds += 2 * copy / device.bandwidth + copy / device.fresh_rate
            continue
        if isinstance(node, Upsample) and node.mode == "transposed":
            flops = 2 * node.in_channels * node.channels * math.prod(sizes[node.name])
            seconds += flops / device.peak_flops + 2 * out / device.bandwidth
        else:
            seconds += NUMPY_PASSES * out / device.bandwidth
        seconds += out / device.fresh_rate
    return seconds


def _cost_block(graph: Graph, block: Vec3, budget: int, costs: CostModel
                ) -> tuple[float, int, dict[str, str]] | None:
    """(seconds, peak bytes, conv primitives) of one block, or None if it cannot fit."""
    sizes = node_sizes(graph.nodes, block)
    tensor = {name: FLOAT_BYTES * math.prod(size) * (graph.input_channels if name == INPUT
                                                     else graph.node(name).channels)
              for name, size in sizes.items()}
    readers = {name: sum(name in n.inputs for n in graph.nodes) for name in tensor}
    readers[graph.output] += 1
    options: dict[str, list[LayerPlan]] = {}
    resident = 0
    for node in graph.nodes:
        if not isinstance(node, Conv):
            continue
        layer = kernel_layer(node)
        (z, y, x), ((bz, by, bx), (az, ay, ax)) = sizes[node.inputs[0]], node.pad
        out = sizes[node.name]
        shapes = LayerShapes(0, layer, (1, node.in_channels, z + bz + az, y + by + ay,
                                        x + bx + ax), (1, node.channels, *out))
        ways = []
        for lp in layer_options(shapes):
            if lp.in_place:
                continue
            seconds, source = costs.seconds(lp, layer)
            ways.append(replace(lp, seconds=seconds, cost=source))
        options[node.name] = ways
        resident += max(w.resident_bytes for w in ways)
    live = {INPUT: tensor[INPUT]}
    peak, seconds, chosen = 0, 0.0, {}
    for node in graph.nodes:
        held = sum(live.values()) + tensor[node.name]
        if isinstance(node, Conv):
            # the kernel's working memory holds its (padded) input and its output; the padded
            # copy is extra next to the live unpadded input
            room = budget - resident - held
            fitting = [w for w in options[node.name]
                       if w.working_bytes - FLOAT_BYTES * math.prod(w.output_shape) <= room]
            if not fitting:
                return None
            best = min(fitting, key=lambda w: w.seconds or 0.0)
            chosen[node.name] = best.primitive
            seconds += best.seconds or 0.0
            held += best.working_bytes - FLOAT_BYTES * math.prod(best.output_shape)
        if not isinstance(node, Conv) or node.activation.name not in KERNEL_ACTIVATIONS:
            # numpy's temporary: one more tensor of the output's size (measured: the peak
            # RSS of a U-Net and a BasicUNet run was 2–3 % over the budget without it)
            held += tensor[node.name]
        peak = max(peak, held)
        live[node.name] = tensor[node.name]
        for src in node.inputs:
            readers[src] -= 1
            if readers[src] == 0:
                live.pop(src, None)
    total = resident + peak
    if total > budget:
        return None
    return seconds + _other_seconds(graph, sizes, costs.device), total, chosen


def plan_graph(graph: Graph, memory: int | str | None = None, threads: int | None = None,
               extent: Vec3 | None = None, overlap: float = 0.25) -> GraphPlan:
    """The fastest block within ``memory`` (default: 80 % of the available RAM) on this
    machine (``ZNNI_DEVICE`` or calibrated) for a volume of input ``extent`` if known."""
    budget = config.parse_bytes(memory) if memory is not None else default_budget()
    device_file = config.device_file()
    device = load_device(device_file) if device_file else this_machine(threads)
    costs = CostModel(device, TuningRecords() if device_file is None else None, "measure")
    padded = any(isinstance(n, Conv) and n.padding == "same" for n in graph.nodes)
    ds = downsampling(graph.nodes)
    best: GraphPlan | None = None
    misses = 0
    seen: set[Vec3] = set()
    for block in _blocks(graph, extent, padded):
        if block in seen:
            break  # capped by the volume: nothing larger to try
        seen.add(block)
        if any(isinstance(axis_sizes(graph.nodes, a, block[a]), str) for a in range(3)):
            continue
        found = _cost_block(graph, block, budget, costs)
        if found is None:
            misses += 1
            if misses > _TRIES_PAST:
                break
            continue
        seconds, peak, chosen = found
        out = node_sizes(graph.nodes, block)[graph.output]
        useful = tuple(max(1, int(n * (1 - overlap))) if padded
                       else (m - m % d if m >= d else m)
                       for n, m, d in zip(block, out, ds, strict=True))
        plan = GraphPlan(block, out, (useful[0], useful[1], useful[2]),
                         tuple(sorted(chosen.items())), seconds, peak, budget)
        if best is None or plan.throughput > best.throughput:
            best = plan
    if best is None:
        raise PlanError(f"no block of network {graph.name!r} fits {budget / 2**30:.2f} GiB",
                        "raise the memory budget (--memory)")
    return best
