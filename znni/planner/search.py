"""The planner's search (docs/design.md §7): the fastest plan under a memory budget.

For each candidate output patch (multiples of the fragmentation per axis, near-cubic in voxels,
growing until even the leanest plan no longer fits) and batch, every conv layer independently
takes its fastest primitive whose working memory fits next to the plan's resident bytes — exact,
since peak = Σ resident + max working, so a layer's choice cannot crowd out another's. The
objective is output voxels per second. Costs come from :class:`CostModel`: tuning records where
they exist (``effort`` measure/exhaustive), else the device model scaled by this machine's
measured/model ratios.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
from collections.abc import Iterator
from dataclasses import replace

from .. import config
from ..errors import PlanError
from ..hardware import Device
from ..precision import check_precision
from ..primitives import PRIMITIVES, in_place
from ..spec import Layer, Network, Shape5, Vec3
from ..tta import check_net_allows
from .costing import BATCHES, CostModel, layer_options, timed_shape
from .device import load_device, this_machine
from .gpu import plan_gpu
from .plan import (
    Alternative,
    LayerPlan,
    Plan,
    Planning,
    held_bytes,
    layer_precisions,
    limit_problem,
    make_plan,
    patches_needed,
)
from .tuning import EFFORTS, Record, TuningRecords, layer_signature, measure, record_key

log = logging.getLogger("znni")

EFFORT_LEVELS = ("estimate", *EFFORTS)
#: Candidate plans whose layers effort=measure times at most (exhaustive: twice as many).
MEASURED_CANDIDATES = 2
#: Tuning a network stops once this many timings per layer (exhaustive: twice as many) are
#: recorded: a safety net against re-rankings that keep promoting new candidates.
TIMINGS_PER_LAYER = 8
#: A candidate is timed only if predicted within this fraction of the best measured one.
MEASURE_MARGIN = 0.1
#: Primitives slower than this factor × a layer's best estimate are not timed (measure).
MEASURE_WITHIN = 1.25
#: Fraction of the available RAM the default budget takes (the rest: volumes, Python, libs).
DEFAULT_BUDGET_FRACTION = 0.8
#: FFT schedules that exist to save memory (ZNNi's data-parallel algorithm): the planner takes
#: them only for layers where no task-parallel FFT way fits. Where both fit, their modelled
#: advantage was never real: untuned plans that picked them ran 1.3–1.6× slower than
#: predicted (their cost grows with the samples and image size faster than the model's), while
#: plans on task-parallel FFT, direct and Winograd held within 10 % (bench/prediction.py).
MEMORY_FALLBACKS = ("fft-pruned-data", "fft-data", "fft-pruned-lean")
TASK_PARALLEL_FFT = ("fft-pruned", "fft")


def _costed_seconds(lp: LayerPlan) -> float:
    """The predicted seconds of a layer option that has been costed."""
    assert lp.seconds is not None
    return lp.seconds


def _costed_plan(net: Network, patch: Vec3, batch: int, max_filtered: int, budget: int,
                 costs: CostModel, extent: Vec3 | None = None,
                 precision: str = "fp32", tta: str = "none") -> Plan | None:
    """The fastest plan for ``patch`` and ``batch`` (the last ``max_filtered`` pools as max
    filters) within ``budget``, or None; ``extent`` is the volume it will cover; ``precision``
    the format the inner conv layers may take besides fp32; ``tta`` the test-time
    augmentation (its buffers come out of the budget, its runs multiply the time)."""
    allowed = layer_precisions(net, precision)
    options: list[list[LayerPlan]] = []
    for shapes in net.layer_shapes(patch, batch, max_filtered):
        per_layer = []
        for lp in layer_options(shapes, allowed.get(shapes.index, "fp32")):
            seconds, source = costs.seconds(lp, shapes.layer)
            per_layer.append(replace(lp, seconds=seconds, cost=source))
        options.append(per_layer)
    resident = sum(max(o.resident_bytes for o in layer) for layer in options)
    room = budget - resident - held_bytes([options[0][0], options[-1][0]]) * (
        1 if tta == "none" else 2)
    chosen: list[LayerPlan] = []
    for per_layer in options:
        fitting = [o for o in per_layer if o.working_bytes <= room]
        if not fitting:
            return None
        if any(o.primitive in TASK_PARALLEL_FFT for o in fitting):
            fitting = [o for o in fitting if o.primitive not in MEMORY_FALLBACKS]
        chosen.append(min(fitting, key=_costed_seconds))
    return replace(_plan_of(net, patch, batch, chosen), layers=tuple(chosen), extent=extent,
                   tta=tta)


def _plan_of(net: Network, patch: Vec3, batch: int, layers: list[LayerPlan]) -> Plan:
    return make_plan(net, patch, batch, {lp.index: lp.primitive for lp in layers},
                     {lp.index: lp.in_place for lp in layers})


def _patches(frag: Vec3, unit: int, extent: Vec3 | None) -> Iterator[list[Vec3]]:
    """Growing groups of near-cubic patches, multiples of the fragmentation ``frag``: for
    m = 1, 2, … the patch whose extent per axis is closest to m·``unit`` voxels, and its
    variants one fragmentation step larger on one or two axes. Capped per axis by ``extent``
    (a volume needs no bigger patch)."""
    cap = (None if extent is None
           else [max(1, -(-extent[a] // frag[a])) for a in range(3)])
    for m in itertools.count(1):
        base = [max(1, round(m * unit / frag[a])) for a in range(3)]
        group = set()
        for bump in itertools.product((0, 1), repeat=3):
            if sum(bump) == 3:
                continue
            units = [base[a] + bump[a] for a in range(3)]
            if cap is not None:
                units = [min(units[a], cap[a]) for a in range(3)]
            group.add((units[0] * frag[0], units[1] * frag[1], units[2] * frag[2]))
        yield sorted(group)


def candidates(net: Network, budget: int, costs: CostModel, extent: Vec3 | None = None,
               batches: tuple[int, ...] = BATCHES, precision: str = "fp32",
               tta: str = "none") -> list[Plan]:
    """Every (patch, batch) that fits ``budget``, each with its fastest assignment of ways to
    run its layers under ``costs``, best first."""
    return _search(net, budget, costs, extent, batches, precision, tta)[0]


def _search(net: Network, budget: int, costs: CostModel, extent: Vec3 | None,
            batches: tuple[int, ...], precision: str = "fp32",
            tta: str = "none") -> tuple[list[Plan], list[Alternative]]:
    """Every fitting candidate, best first, and the first patches that did not fit. Each
    pooling mode — the last 0, 1, … pools as max filters, the rest as fragments — has its own
    patch grid (multiples of the fragmentation of its fragment pools)."""
    found: list[Plan] = []
    too_big: list[Alternative] = []
    for max_filtered in range(len(net.pools) + 1):
        seen: set[tuple[Vec3, int]] = set()
        # Every mode grows at the all-fragments pace (a finer grid only multiplies the
        # candidates); its finer fragmentation shows in the one-step variants.
        for group in _patches(net.fragmentation_with(max_filtered), max(net.fragmentation),
                              extent):
            new = [p for p in group if (p, 1) not in seen]
            if not new:
                break  # capped by the volume: nothing larger to try
            fitted_any = False
            for patch in new:
                if tta == "flips+transpose" and patch[1] != patch[2]:
                    seen.add((patch, 1))
                    continue  # the transposed patch must be the same patch
                for batch in batches:
                    if extent is not None and batch > patches_needed(extent, patch):
                        break  # a batch of patches the volume does not have: pure padding
                    if limit_problem(net.layer_shapes(patch, batch, max_filtered)):
                        break  # past znni.limits: so is any larger batch
                    seen.add((patch, batch))
                    plan = _costed_plan(net, patch, batch, max_filtered, budget, costs, extent,
                                        precision, tta)
                    if plan is None:
                        if batch == 1 and max_filtered == 0 and len(too_big) < 2:
                            lean = _leanest(net, patch)
                            too_big.append(Alternative(
                                patch, 1, tuple(lp.primitive for lp in lean.layers), None,
                                lean.peak_bytes, f"needs {lean.peak_bytes / 2**30:.2f} GiB at "
                                f"least, over the {budget / 2**30:.2f} GiB budget"))
                        break  # larger batches need more memory still
                    fitted_any = True
                    found.append(plan)
            if not fitted_any:
                break
    found.sort(key=lambda p: -(p.predicted_volume_throughput or 0))
    return found, too_big


def _leanest(net: Network, patch: Vec3) -> Plan:
    """The plan with the least working memory per layer."""
    leanest = [min(layer_options(shapes), key=lambda o: o.working_bytes)
               for shapes in net.layer_shapes(patch, 1)]
    return _plan_of(net, patch, 1, leanest)


def default_budget() -> int:
    return int(config.available_memory() * DEFAULT_BUDGET_FRACTION)


def check_saved_plan(plan: Plan, net: Network, extent: Vec3, memory: int | str | None) -> None:
    """Refuse a saved plan that a volume of output ``extent`` should not run, before anything is
    compiled or written: a patch larger on some axis than the volume needs, or a batch of more
    patches than it has (the planner makes neither: they only compute padding, and an edited
    patch can ask for gigabytes), or a predicted peak over ``memory`` (default: the planner's
    default budget)."""
    hint = ("re-plan for this volume (`znni plan SPEC --extent Z,Y,X --memory M -o PLAN.json`), "
            "or run without --plan")
    frag = net.fragmentation_with(plan.max_filtered)
    needed = [-(-extent[a] // frag[a]) * frag[a] for a in range(3)]
    if any(plan.output_patch[a] > needed[a] for a in range(3)):
        raise PlanError(f"the plan's output patch {list(plan.output_patch)} is larger than this "
                        f"volume needs: its output is {list(extent)}, so patches of at most "
                        f"{needed} (multiples of {list(frag)})", hint)
    patches = patches_needed(extent, plan.output_patch)
    if plan.batch > patches:
        raise PlanError(f"the plan's batch of {plan.batch} patches is more than the {patches} "
                        "this volume has", hint)
    budget = config.parse_bytes(memory) if memory is not None else default_budget()
    if plan.peak_bytes > budget:
        whose = "--memory" if memory is not None else "80 % of the available RAM"
        raise PlanError(f"the plan needs {plan.peak_bytes / 2**30:.2f} GiB at its peak, more than "
                        f"the memory budget of {budget / 2**30:.2f} GiB ({whose})",
                        f"pass a larger --memory if that much is free, or {hint}")


def plan(net: Network, memory: int | str | None = None, threads: int | None = None,
         device: Device | str | None = None, effort: str = "estimate",
         extent: Vec3 | None = None, batches: tuple[int, ...] = BATCHES,
         precision: str = "fp32", tta: str = "none") -> Plan:
    """The fastest plan for ``net`` within ``memory`` bytes (int or ``"4GiB"``; default: 80 %
    of the available RAM, cgroup-capped) on ``device`` (a :class:`Device`, a JSON path, or
    None: this machine, measured once). ``effort``: ``estimate`` (model only), ``measure``
    (time the layers of the best candidates, reusing tuning records) or ``exhaustive``.
    ``extent``: the output volume, when known, caps the patch. ``precision="bf16"`` lets the
    inner conv layers run in bf16 where that is predicted faster (docs/design.md §5.7).
    ``tta``: test-time augmentation (``flips``, ``flips+transpose``; znni/tta.py), its runs
    and buffers in the costs."""
    check_precision(precision)
    check_net_allows(tta, net)
    if effort not in EFFORT_LEVELS:
        raise PlanError(f"unknown effort {effort!r}", f"use one of {', '.join(EFFORT_LEVELS)}")
    if threads is not None:
        config.check_threads(threads)
    budget = config.parse_bytes(memory) if memory is not None else default_budget()
    if isinstance(device, str):
        device = load_device(device)
    on_this_machine = device is None
    dev = device if device is not None else this_machine(threads)
    if dev.kind == "gpu":  # the CPU–GPU pipeline planner (planner/gpu.py)

        if effort != "estimate":
            raise PlanError("GPU plans are made from the cost model only",
                            "plan with --effort estimate")
        if precision != "fp32" or tta != "none":
            raise PlanError(f"GPU plans run in fp32 without test-time augmentation, not "
                            f"{precision} with --tta {tta}", "plan with --precision fp32 and "
                            "--tta none, or for this CPU (drop --device)")
        host = budget if memory is not None else int(dev.memory_bytes * DEFAULT_BUDGET_FRACTION)
        return plan_gpu(net, host, dev, extent, batches)
    if effort != "estimate" and not on_this_machine:
        raise PlanError("effort measure/exhaustive times kernels on this machine",
                        "drop --device, or plan with --effort estimate")
    records = TuningRecords() if on_this_machine else None
    if effort == "estimate":  # records of any rigour still beat the model
        found, too_big = _search(net, budget, CostModel(dev, records, "measure"), extent,
                                 batches, precision, tta)
    else:
        assert records is not None
        found, too_big = _tune(net, budget, dev, records, effort, extent, batches, precision,
                               tta)
    if not found and not too_big:  # the search stopped at the limits before the budget
        problem = limit_problem(net.layer_shapes(net.fragmentation, 1))
        raise PlanError(f"no plan of network {net.name!r} stays within znni's limits: "
                        f"{problem or 'its smallest patches exceed them'}",
                        "use a smaller field of view or fewer pools (see znni.limits)")
    if not found:
        need = f"{too_big[0].peak_bytes / 2**30:.2f} GiB"
        raise PlanError(f"no plan of network {net.name!r} fits {budget / 2**30:.2f} GiB: the "
                        f"smallest patch {net.fragmentation} needs {need}",
                        f"raise the memory budget (--memory) to at least {need}")
    best = found[0]
    shown = _distinct(found[1:], best)[:3]
    for mode in range(len(net.pools) + 1):  # and the best of every other pooling mode
        mode_best = next((p for p in found if p.max_filtered == mode), None)
        if mode != best.max_filtered and mode_best is not None and all(
                mode_best is not p for p in shown):
            shown.append(mode_best)
    alternatives = [_as_alternative(p, best) for p in shown] + too_big
    return replace(best, planning=Planning(budget, dev.threads, dev.name, effort, precision),
                   alternatives=tuple(alternatives))


def _tune(net: Network, budget: int, dev: Device, records: TuningRecords, effort: str,
          extent: Vec3 | None, batches: tuple[int, ...], precision: str,
          tta: str = "none") -> tuple[list[Plan], list[Alternative]]:
    """Candidates ranked by measured costs: time the layers of the best candidate not yet
    fully measured, re-rank (unmeasured shapes now use the corrected model), and repeat while
    such a candidate is predicted within MEASURE_MARGIN of the best measured one, until
    MEASURED_CANDIDATES candidates (exhaustive: twice as many) are fully measured, a round
    times nothing new, or TIMINGS_PER_LAYER timings per layer are recorded. Every stop
    depends on the records alone, not on how many rounds this call ran, so a repeated plan
    stops where the last one did and times nothing — even though the corrected model (and so
    the ranking of unmeasured candidates) shifts with every record added. The best measured
    candidate leads."""
    scale = 2 if effort == "exhaustive" else 1
    signatures = {layer_signature(layer) for layer in net.layers}
    while True:
        costs = CostModel(dev, records, effort)
        found, too_big = _search(net, budget, costs, extent, batches, precision, tta)
        measured = [p for p in found if _measured(p)]
        pending = [p for p in found if not _measured(p)]
        if not pending or len(measured) >= scale * MEASURED_CANDIDATES or (
                records.count(signatures, dev.threads, effort)
                >= scale * TIMINGS_PER_LAYER * len(net.layers)) or (
                measured and (pending[0].predicted_volume_throughput or 0)
                < (1 - MEASURE_MARGIN) * (measured[0].predicted_volume_throughput or 0)):
            break
        if not measure_layers(net, pending[0], costs, records, effort, dev.threads,
                              precision=precision):
            break
    if measured and found[0] is not measured[0]:
        found.remove(measured[0])
        found.insert(0, measured[0])
    return found, too_big


def _measured(p: Plan) -> bool:
    return all(lp.cost == "measured" for lp in p.layers)


def _distinct(plans: list[Plan], best: Plan) -> list[Plan]:
    """The best plan per size class (output voxels per run within 20 % of each other count as
    one class): alternatives worth reporting, not near-copies of the chosen patch."""
    def size_class(p: Plan) -> int:
        return round(math.log(p.output_voxels) / math.log(1.2))

    out, seen = [], {size_class(best)}
    for p in plans:
        if size_class(p) not in seen:
            seen.add(size_class(p))
            out.append(p)
    return out


def _as_alternative(p: Plan, best: Plan) -> Alternative:
    ratio = (p.predicted_volume_throughput or 0) / (best.predicted_volume_throughput or 1)
    mode = (f"the last {p.max_filtered} pool(s) as max filters: " if p.max_filtered
            else "all pools as fragments: " if best.max_filtered else "")
    return Alternative(p.output_patch, p.batch, tuple(lp.primitive for lp in p.layers),
                       p.predicted_throughput, p.peak_bytes,
                       f"{mode}predicted {100 * ratio:.0f} % of the chosen plan's throughput")


def measure_layers(net: Network, plan: Plan, costs: CostModel, records: TuningRecords,
                   effort: str, threads: int, within: float = MEASURE_WITHIN,
                   precision: str = "fp32") -> int:
    """Time, per layer of ``plan``, its chosen way and the other fitting ways whose modelled
    time is within ``within`` × the layer's best — per primitive its fresh form and its largest
    fitting in-place pass (smaller passes only redo more per-pass work); exhaustive: every
    fitting way — unless recorded at least as rigorously as ``effort``. Each timing is stored
    as soon as it is taken. Returns how many were taken."""
    room = plan.peak_bytes - held_bytes(plan.layers) - plan.resident_bytes
    todo: dict[str, tuple[Layer, Shape5, str, float]] = {}
    allowed = layer_precisions(net, precision)
    for shapes, picked in zip(net.layer_shapes(plan.output_patch, plan.batch,
                                               plan.max_filtered), plan.layers, strict=True):
        fitting = [lp for lp in layer_options(shapes, allowed.get(shapes.index, "fp32"))
                   if lp.working_bytes <= max(room, picked.working_bytes)]
        largest = {lp.primitive: lp.in_place for lp in sorted(fitting, key=lambda o: o.in_place)}
        modelled = {}
        for lp in fitting:
            if (effort != "exhaustive" and lp.in_place not in (0, largest[lp.primitive])
                    and _way(lp) != _way(picked)):
                continue
            shape = timed_shape(lp, shapes.layer)
            primitive = PRIMITIVES[lp.primitive]
            pass_seconds = primitive.estimate(shapes.layer, shape, costs.device)
            total = (in_place.seconds(primitive, pass_seconds, shapes.layer, lp.input_shape,
                                      lp.in_place, costs.device) if lp.in_place else pass_seconds)
            # the record's model: as timed, on refilled pages (its ratio corrects the model)
            as_timed = primitive.estimate(shapes.layer, shape, costs.device.refilling())
            modelled[(lp.primitive, shape)] = (total, as_timed, _way(lp) == _way(picked))
        best = min(total for total, _, _ in modelled.values())
        for (name, shape), (total, as_timed, is_picked) in modelled.items():
            if not is_picked and effort != "exhaustive" and total > within * best:
                continue
            key = record_key(shapes.layer, shape, name, threads)
            if records.get(key, effort) is None:
                todo.setdefault(key, (shapes.layer, shape, name, as_timed))
    for n, (key, (layer, shape_in, name, estimate)) in enumerate(todo.items(), 1):
        log.info("tuning %d/%d: %s on %s", n, len(todo), name, shape_in)
        times = measure(layer, shape_in, name, threads, effort)
        records.add({key: Record(statistics.median(times), times, effort, estimate)})
    return len(todo)


def _way(lp: LayerPlan) -> tuple[str, int]:
    return lp.primitive, lp.in_place
