"""The CPU–GPU planner (docs/design.md §6–7): θ, the GPU tail's sub-batch and per-layer GPU ways.

For each output patch and batch, and each cut θ (layers < θ on the CPU, the rest on the GPU;
θ = 0 is GPU-only), the head takes per layer the fastest CPU way that fits the host RAM (the
CPU search's own options and cost model), and the tail is costed two ways:

- *resident*: ``sub_batch`` of the tail's input items per pass, tensors kept on the card; per
  layer the fastest resident GPU primitive whose scratch fits next to what the runtime
  allocates for the whole tail (runtime/gpu.py's DeviceChain: all tail weights, the
  double-buffered pass input and output, and the two buffers the intermediate tensors
  alternate in; exact, as in the CPU search: the rest is choice-independent). Passes overlap
  their upload, compute and download (two streams).
- *host* (GPU + host RAM): each tail layer streamed from host RAM in the fastest split that
  fits (batch splits first, then map chunks).

The pipeline runs head and tail on consecutive patches (a queue of two: runtime/pipeline.py),
so its time per patch is max(head, tail). Ties go to less GPU memory, so a smaller card never
gets a plan that uses more of it. Host RAM, as run: the input batch and the dense output
(held), the head's peak (patch k+1), the queued patch's tensor at θ (patch k, the tail's
input, pinned in place: no staging copy) and the tail's own host tensors — resident: its
output before recombination; host: the largest layer input + output after its first input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from ..errors import PlanError
from ..hardware import Device, GpuSpec
from ..primitives.base import tensor_bytes
from ..primitives.gpu import (
    HOST_RAM,
    RESIDENT,
    intermediate_buffers,
    output_shape,
    scaled_shape,
    weight_bytes,
)
from ..spec import LayerShapes, Network, Vec3
from .costing import BATCHES, CostModel, layer_options
from .gpu_plan import GpuLayerPlan, GpuPlan
from .plan import LayerPlan, Plan, Planning, held_bytes, limit_problem, make_plan, patches_needed

#: Patches tried grow until the host RAM is full, or up to this many fragmentation steps.
MAX_PATCH_STEPS = 48


@dataclass(frozen=True)
class _Tail:
    mode: str
    sub_batch: int
    device_bytes: int
    host_bytes: int  # the tail's own host tensors beyond its input (see the module docstring)
    seconds: float
    layers: tuple[GpuLayerPlan, ...]


def _resident_tail(tail: list[LayerShapes], sub: int, gpu: GpuSpec) -> _Tail | None:
    total = tail[0].input[0]
    passes = -(-total // sub)
    inputs = [scaled_shape(s.input, sub, total) for s in tail]
    outputs = [scaled_shape(s.output, sub, total) for s in tail]
    first, last = tensor_bytes(inputs[0]), tensor_bytes(outputs[-1])
    fixed = (sum(weight_bytes(s.layer) for s in tail) + 2 * (first + last)
             + sum(intermediate_buffers(outputs[:-1])))
    room = gpu.memory_bytes - fixed
    chosen, compute, peak = [], 0.0, 0
    for shapes, shape in zip(tail, inputs, strict=True):
        ways = [(p.seconds(shapes.layer, shape, gpu), p.scratch_bytes(shapes.layer, shape), p)
                for p in RESIDENT.values() if p.supports(shapes.layer)]
        fitting = [w for w in ways if w[1] <= room]
        if not fitting:
            return None
        seconds, scratch, primitive = min(fitting, key=lambda w: (w[0], w[1]))
        out_maps = output_shape(shapes.layer, shape)[1]
        chosen.append(GpuLayerPlan(shapes.index, primitive.name, shape, out_maps,
                                   primitive.working_bytes(shapes.layer, shape)
                                   + weight_bytes(shapes.layer), seconds * passes))
        compute += seconds
        peak = max(peak, scratch)
    up, down = first / gpu.link_bandwidth, last / gpu.link_bandwidth
    seconds = passes * max(compute, up, down) + up + down
    return _Tail("resident", sub, fixed + peak, tensor_bytes(tail[-1].output), seconds,
                 tuple(chosen))


def _host_tensors(tail: list[LayerShapes]) -> int:
    """Host bytes of a host-mode tail beyond its input: each layer's output, and its input
    after the first (each layer frees its input when it ends)."""
    return max(tensor_bytes(s.output) + (tensor_bytes(s.input) if i else 0)
               for i, s in enumerate(tail))


def _host_tail(tail: list[LayerShapes], gpu: GpuSpec) -> _Tail | None:
    chosen, seconds, peak = [], 0.0, 0
    for shapes in tail:
        ways = []
        for p in HOST_RAM.values():
            if not p.supports(shapes.layer):
                continue
            for split in p.splits(shapes.layer, shapes.input):
                need = p.device_bytes(shapes.layer, shapes.input, split)
                if need <= gpu.memory_bytes:
                    ways.append((p.seconds(shapes.layer, shapes.input, split, gpu), need, p,
                                 split))
        if not ways:
            return None
        t, need, p, split = min(ways, key=lambda w: (w[0], w[1]))
        chunk = (split.samples, split.in_maps, *shapes.input[2:])
        chosen.append(GpuLayerPlan(shapes.index, p.name, chunk, split.out_maps, need, t))
        seconds += t
        peak = max(peak, need)
    return _Tail("host", tail[0].input[0], peak, _host_tensors(tail), seconds, tuple(chosen))


def _tails(tail: list[LayerShapes], gpu: GpuSpec) -> Iterator[_Tail]:
    total = tail[0].input[0]
    for sub in sorted({*(2 ** e for e in range(total.bit_length())), total}):
        if sub <= total and (found := _resident_tail(tail, sub, gpu)) is not None:
            yield found
    if (host := _host_tail(tail, gpu)) is not None:
        yield host


def _head(options: list[list[LayerPlan]], theta: int, room: int) -> list[LayerPlan] | None:
    chosen = []
    for per_layer in options[:theta]:
        fitting = [o for o in per_layer if o.working_bytes <= room]
        if not fitting:
            return None
        chosen.append(min(fitting, key=lambda o: (o.seconds, o.working_bytes)))
    return chosen


def _candidates(net: Network, patch: Vec3, batch: int, budget: int, device: Device,
                costs: CostModel) -> Iterator[tuple[float, int, Plan]]:
    """(seconds per patch, GPU bytes, plan) for every θ and tail that fit."""
    assert device.gpu is not None
    shapes = net.layer_shapes(patch, batch)
    options = [[replace(lp, seconds=s, cost=c) for lp in layer_options(ls)
                for s, c in [costs.seconds(lp, ls.layer)]] for ls in shapes]
    held = held_bytes([options[0][0], options[-1][0]])
    for theta in range(len(shapes)):
        queued = tensor_bytes(shapes[theta].input) if theta else 0  # the tail's patch at θ
        resident = sum(max(o.resident_bytes for o in layer) for layer in options[:theta])
        room = budget - held - queued - resident
        head = _head(options, theta, room)
        if head is None or room < 0:
            continue
        head_peak = resident + max((o.working_bytes for o in head), default=0)
        cpu_seconds = sum(o.seconds or 0.0 for o in head)
        for tail in _tails(shapes[theta:], device.gpu):
            host = held + queued + head_peak + tail.host_bytes
            if host > budget:
                continue
            primitives = {lp.index: lp.primitive for lp in head}
            plan = make_plan(net, patch, batch, primitives, {lp.index: lp.in_place for lp in head})
            layers = tuple(head) + plan.layers[theta:]
            gpu = GpuPlan(theta, tail.sub_batch, tail.mode, device.gpu.name, tail.device_bytes,
                          host, cpu_seconds, tail.seconds, tail.layers)
            yield max(cpu_seconds, tail.seconds), tail.device_bytes, replace(
                plan, layers=layers, gpu=gpu)


def _patches(net: Network, extent: Vec3 | None) -> Iterator[Vec3]:
    frag = net.fragmentation
    for m in range(1, MAX_PATCH_STEPS + 1):
        units = [max(1, round(m * max(frag) / frag[a])) for a in range(3)]
        if extent is not None:
            units = [min(units[a], max(1, -(-extent[a] // frag[a]))) for a in range(3)]
        yield (units[0] * frag[0], units[1] * frag[1], units[2] * frag[2])


def plan_gpu(net: Network, budget: int, device: Device, extent: Vec3 | None = None,
             batches: tuple[int, ...] = BATCHES) -> Plan:
    """The fastest CPU–GPU pipeline plan of ``net`` for a ``kind: "gpu"`` device within
    ``budget`` bytes of host RAM (model costs: no GPU needed to plan)."""
    costs = CostModel(device, None, "estimate")
    best: tuple[float, int, Plan] | None = None
    seen = set()
    for patch in _patches(net, extent):
        if patch in seen:
            break  # capped by the volume
        seen.add(patch)
        fitted = False
        for batch in batches:
            if extent is not None and batch > patches_needed(extent, patch):
                break  # a batch of patches the volume does not have: pure padding
            if limit_problem(net.layer_shapes(patch, batch)):
                break  # past znni.limits: so is any larger batch
            for seconds, gpu_bytes, candidate in _candidates(net, patch, batch, budget, device,
                                                             costs):
                fitted = True
                p = replace(candidate, extent=extent)
                rate = p.output_voxels / seconds * (1 - p.padding_fraction)
                if best is None or (rate, -gpu_bytes) > (best[0], -best[1]):
                    best = (rate, gpu_bytes, p)
        if not fitted:
            break
    if best is None:
        raise PlanError(f"no CPU–GPU plan of network {net.name!r} fits "
                        f"{budget / 2**30:.2f} GiB of host RAM on {device.name}",
                        "raise the memory budget (--memory)")
    return replace(best[2], planning=Planning(budget, device.threads, device.name, "estimate"))
