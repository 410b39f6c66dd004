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

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from .. import config
from ..activations import ACTIVATIONS as KERNEL_ACTIVATIONS
from ..errors import PlanError, ShapeError
from ..hardware import Device
from ..planner.costing import CostModel, layer_options
from ..planner.device import load_device, this_machine
from ..planner.plan import LayerPlan, _count, _optional_seconds, _vec3
from ..planner.search import default_budget
from ..planner.tuning import TuningRecords
from ..primitives import CONV_PRIMITIVES
from ..primitives.base import FLOAT_BYTES
from ..spec import LayerShapes, parse_json, read_text, shown
from .dense import dense_graph
from .executor import kernel_layer
from .nodes import INPUT, Conv, Upsample, Vec3
from .shapes import axis_sizes, downsampling, node_sizes, shape_report
from .spec import Graph

#: Numpy passes per byte of a non-conv node's output (read inputs, write output, temporaries).
NUMPY_PASSES = 3.0
#: The ``version`` of a saved DAG plan; its ``kind`` tells it from a chain plan.
GRAPH_PLAN_VERSION = 1
GRAPH_PLAN_KIND = "graph"
_RECREATE = "re-create it with `znni plan SPEC.json -o PLAN.json`"
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
    network_digest: str = ""

    @property
    def throughput(self) -> float:
        return math.prod(self.useful) / self.seconds

    def to_dict(self) -> dict[str, Any]:
        """JSON data: what :meth:`from_dict` reads back (``throughput`` is for readers only)."""
        data = asdict(self)
        data["primitives"] = dict(self.primitives)
        return {"version": GRAPH_PLAN_VERSION, "kind": GRAPH_PLAN_KIND, **data,
                "throughput": self.throughput}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    def save(self, path: str) -> None:
        with open(path, "w") as handle:
            handle.write(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: Any, graph: Graph) -> GraphPlan:
        """A (possibly hand-edited) plan re-validated for ``graph``, as a chain plan is: the
        digest must match, the block must fit the net (the output size is recomputed) and every
        conv node must have a CPU conv primitive, so an edited file cannot smuggle anything into
        code generation (``znni export``); costs are kept as data."""
        if (not isinstance(data, Mapping) or data.get("version") != GRAPH_PLAN_VERSION
                or data.get("kind") != GRAPH_PLAN_KIND):
            raise PlanError("not a znni DAG plan (missing or unknown 'version' or 'kind')",
                            _RECREATE)
        if data.get("network_digest") != graph_digest(graph):
            raise PlanError(f"plan was made for another network than {graph.name!r}",
                            f"re-plan for this network: {_RECREATE}")
        try:
            block = _vec3(data["block_input"], "block_input")
            useful = _vec3(data["useful"], "useful")
            primitives = _conv_primitives(data["primitives"], graph)
            seconds = _optional_seconds(data["seconds"])
            peak, budget = (_count(data[key], key) for key in ("peak_bytes", "budget_bytes"))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise PlanError(f"malformed DAG plan: {exc!r}", _RECREATE) from None
        if not seconds:
            raise PlanError("malformed DAG plan: seconds must be positive", _RECREATE)
        # a ShapeError if it does not fit; sliding-window nets run dense
        out = node_sizes(dense_graph(graph).nodes, block)[graph.output]
        return cls(block, out, useful, primitives, seconds, peak, budget, graph_digest(graph))

    @classmethod
    def load(cls, path: str, graph: Graph) -> GraphPlan:
        """A plan file (bounded read), validated for ``graph``."""
        return cls.from_dict(parse_json(read_text(path, "plan", PlanError, _RECREATE), path,
                                        PlanError, _RECREATE), graph)


def graph_digest(graph: Graph) -> str:
    """SHA-256 of the canonical topology (name and description excluded): a plan belongs to
    the nodes it was made for, whatever the network is called."""
    spec = graph.to_dict()
    topology = {k: spec[k] for k in ("input_channels", "nodes", "output")}
    return hashlib.sha256(json.dumps(topology, sort_keys=True).encode()).hexdigest()


def _conv_primitives(value: Any, graph: Graph) -> tuple[tuple[str, str], ...]:
    """``{conv node: primitive}`` naming exactly the conv nodes, each a CPU conv primitive."""
    if not isinstance(value, Mapping):
        raise TypeError(f"primitives must be an object, got {shown(value)}")
    convs = {n.name for n in graph.nodes if isinstance(n, Conv)}
    if set(value) != convs:
        raise ValueError(f"primitives must name exactly the conv nodes {sorted(convs)}, got "
                         f"{shown(sorted(map(str, value)))}")
    bad = {k: v for k, v in value.items() if v not in CONV_PRIMITIVES}
    if bad:
        raise ValueError(f"unknown primitive(s) {shown(bad)}; use one of {CONV_PRIMITIVES}")
    return tuple(sorted((str(k), str(v)) for k, v in value.items()))


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
               extent: Vec3 | None = None, overlap: float = 0.25,
               block: Vec3 | None = None) -> GraphPlan:
    """The fastest block within ``memory`` (default: 80 % of the available RAM) on this
    machine (``ZNNI_DEVICE`` or calibrated) for a volume of input ``extent`` if known; given
    ``block`` (a user's window), that block's primitives, or an error if it does not fit. A
    sliding-window net is planned dense, as it runs (:mod:`.dense`)."""
    digest, graph = graph_digest(graph), dense_graph(graph)
    budget = config.parse_bytes(memory) if memory is not None else default_budget()
    device_file = config.device_file()
    device = load_device(device_file) if device_file else this_machine(threads)
    costs = CostModel(device, TuningRecords() if device_file is None else None, "measure")
    padded = any(isinstance(n, Conv) and n.padding == "same" for n in graph.nodes)
    ds = downsampling(graph.nodes)
    best: GraphPlan | None = None
    misses = 0
    seen: set[Vec3] = set()
    for candidate in [block] if block is not None else _blocks(graph, extent, padded):
        if candidate in seen:
            break  # capped by the volume: nothing larger to try
        seen.add(candidate)
        problems = [p for a in range(3)
                    if isinstance(p := axis_sizes(graph.nodes, a, candidate[a]), str)]
        if problems and block is not None:
            raise ShapeError(f"the block {list(block)} does not fit the network: "
                             f"{problems[0]}", "give a --patch the network takes "
                             "(`znni plan SPEC` lists the valid sizes)")
        if problems:
            continue
        found = _cost_block(graph, candidate, budget, costs)
        if found is None:
            misses += 1
            if misses > _TRIES_PAST:
                break
            continue
        seconds, peak, chosen = found
        out = node_sizes(graph.nodes, candidate)[graph.output]
        useful = tuple(max(1, int(n * (1 - overlap))) if padded
                       else (m - m % d if m >= d else m)
                       for n, m, d in zip(candidate, out, ds, strict=True))
        plan = GraphPlan(candidate, out, (useful[0], useful[1], useful[2]),
                         tuple(sorted(chosen.items())), seconds, peak, budget, digest)
        if best is None or plan.throughput > best.throughput:
            best = plan
    if best is None:
        which = ("no block of network {!r} fits" if block is None
                 else f"the block {list(block)} of network {{!r}} does not fit")
        raise PlanError(f"{which.format(graph.name)} {budget / 2**30:.2f} GiB",
                        "raise the memory budget (--memory)"
                        + ("" if block is None else ", or give a smaller --patch"))
    return best
