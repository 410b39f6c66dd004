"""The planner's search (DESIGN §7): the fastest plan under a memory budget.

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
from collections.abc import Iterator
from dataclasses import replace

from .. import config
from ..errors import PlanError
from ..primitives import PRIMITIVES
from ..spec import Layer, Network, Shape5, Vec3
from .device import Device, this_machine
from .plan import Alternative, LayerPlan, Plan, Planning, held_bytes, make_plan
from .tuning import EFFORTS, Record, TuningRecords, measure, record_key

log = logging.getLogger("znni")

EFFORT_LEVELS = ("estimate", *EFFORTS)
#: Batches tried for every patch: batching amortises kernel transforms and small-image layers.
BATCHES = (1, 2, 4)
#: Plans whose layers are measured by effort=measure (exhaustive: twice as many).
MEASURED_CANDIDATES = 3
#: Unmeasured primitives slower than this factor × the layer's best estimate are not timed.
MEASURE_WITHIN = 2.0
#: Fraction of the available RAM the default budget takes (the rest: volumes, Python, libs).
DEFAULT_BUDGET_FRACTION = 0.8


class CostModel:
    """Seconds per (layer, shape, primitive): a tuning record, else the corrected model."""

    def __init__(self, device: Device, records: TuningRecords | None, effort: str) -> None:
        self.device = device
        self.records = records
        self.effort = effort
        self.corrections = records.corrections(device.threads) if records else {}

    def seconds(self, lp: LayerPlan, layer: Layer) -> tuple[float, str]:
        primitive = PRIMITIVES[lp.primitive]
        if self.records is not None:
            key = record_key(layer, lp.input_shape, lp.primitive, self.device.threads)
            record = self.records.get(key, self.effort)
            if record is not None:
                return record.seconds, "measured"
        estimate = primitive.estimate(layer, lp.input_shape, self.device)
        return estimate * self.corrections.get(lp.primitive, 1.0), "model"


def _costed_plan(net: Network, patch: Vec3, batch: int, budget: int,
                 costs: CostModel) -> Plan | None:
    """The fastest plan for ``patch`` and ``batch`` within ``budget``, or None."""
    options: list[list[LayerPlan]] = []
    for shapes in net.layer_shapes(patch, batch):
        per_layer = []
        for name, primitive in PRIMITIVES.items():
            if not primitive.supports(shapes.layer):
                continue
            memory = primitive.memory(shapes.layer, shapes.input)
            lp = LayerPlan(shapes.index, shapes.layer.kind, name, shapes.input, shapes.output,
                           memory.resident, memory.working,
                           primitive.flops(shapes.layer, shapes.input))
            seconds, source = costs.seconds(lp, shapes.layer)
            per_layer.append(replace(lp, seconds=seconds, cost=source))
        options.append(per_layer)
    resident = sum(max(o.resident_bytes for o in layer) for layer in options)
    room = budget - resident - held_bytes([options[0][0], options[-1][0]])
    chosen = []
    for layer_options in options:
        fitting = [o for o in layer_options if o.working_bytes <= room]
        if not fitting:
            return None
        chosen.append(min(fitting, key=lambda o: o.seconds))  # type: ignore[arg-type,return-value]
    plan = make_plan(net, patch, batch, {lp.index: lp.primitive for lp in chosen})
    return replace(plan, layers=tuple(chosen))


def _patches(net: Network, extent: Vec3 | None) -> Iterator[list[Vec3]]:
    """Growing groups of near-cubic patches: for m = 1, 2, … the patch whose extent per axis
    is closest to m·max(F) voxels, and its variants one fragmentation step larger on one or
    two axes. Capped per axis by ``extent`` (a volume needs no bigger patch)."""
    frag = net.fragmentation
    cap = (None if extent is None
           else [max(1, -(-extent[a] // frag[a])) for a in range(3)])
    for m in itertools.count(1):
        base = [max(1, round(m * max(frag) / frag[a])) for a in range(3)]
        group = set()
        for bump in itertools.product((0, 1), repeat=3):
            if sum(bump) == 3:
                continue
            units = [base[a] + bump[a] for a in range(3)]
            if cap is not None:
                units = [min(units[a], cap[a]) for a in range(3)]
            group.add((units[0] * frag[0], units[1] * frag[1], units[2] * frag[2]))
        yield sorted(group)


def _search(net: Network, budget: int, costs: CostModel, extent: Vec3 | None,
            batches: tuple[int, ...]) -> tuple[list[Plan], list[Alternative]]:
    """Every fitting candidate, best first, and the first patches that did not fit."""
    found: list[Plan] = []
    too_big: list[Alternative] = []
    seen: set[tuple[Vec3, int]] = set()
    for group in _patches(net, extent):
        new = [p for p in group if (p, 1) not in seen]
        if not new:
            break  # capped by the volume: nothing larger to try
        fitted_any = False
        for patch in new:
            for batch in batches:
                seen.add((patch, batch))
                plan = _costed_plan(net, patch, batch, budget, costs)
                if plan is None:
                    if batch == 1 and len(too_big) < 2:
                        lean = make_plan(net, patch, 1, _leanest(net, patch))
                        too_big.append(Alternative(
                            patch, 1, tuple(lp.primitive for lp in lean.layers), None,
                            lean.peak_bytes, f"needs {lean.peak_bytes / 2**30:.2f} GiB at least, "
                            f"over the {budget / 2**30:.2f} GiB budget"))
                    break  # larger batches need more memory still
                fitted_any = True
                found.append(plan)
        if not fitted_any:
            break
    found.sort(key=lambda p: -(p.predicted_throughput or 0))
    return found, too_big


def _leanest(net: Network, patch: Vec3) -> dict[int, str]:
    """Per layer, the primitive with the least working memory."""
    choice = {}
    for shapes in net.layer_shapes(patch, 1):
        names = [n for n, p in PRIMITIVES.items() if p.supports(shapes.layer)]
        choice[shapes.index] = min(names, key=lambda n: PRIMITIVES[n].memory(
            shapes.layer, shapes.input).working)
    return choice


def default_budget() -> int:
    return int(config.available_memory() * DEFAULT_BUDGET_FRACTION)


def plan(net: Network, memory: int | str | None = None, threads: int | None = None,
         device: Device | str | None = None, effort: str = "estimate",
         extent: Vec3 | None = None, batches: tuple[int, ...] = BATCHES) -> Plan:
    """The fastest plan for ``net`` within ``memory`` bytes (int or ``"4GiB"``; default: 80 %
    of the available RAM, cgroup-capped) on ``device`` (a :class:`Device`, a JSON path, or
    None: this machine, measured once). ``effort``: ``estimate`` (model only), ``measure``
    (time the layers of the best candidates, reusing tuning records) or ``exhaustive``.
    ``extent``: the output volume, when known, caps the patch."""
    if effort not in EFFORT_LEVELS:
        raise PlanError(f"unknown effort {effort!r}", f"use one of {', '.join(EFFORT_LEVELS)}")
    budget = config.parse_bytes(memory) if memory is not None else default_budget()
    if isinstance(device, str):
        device = Device.load(device)
    on_this_machine = device is None
    dev = device if device is not None else this_machine(threads)
    if effort != "estimate" and not on_this_machine:
        raise PlanError("effort measure/exhaustive times kernels on this machine",
                        "drop --device, or plan with --effort estimate")
    records = TuningRecords() if on_this_machine else None
    costs = CostModel(dev, records, effort if effort != "estimate" else "measure")
    found, too_big = _search(net, budget, costs, extent, batches)
    if effort != "estimate":
        # Time the layers of the model's leading candidates (deterministic, so a repeated plan
        # finds them recorded), then re-rank with measured costs; the plan is the best
        # candidate whose every layer was timed.
        assert records is not None
        count = MEASURED_CANDIDATES * (2 if effort == "exhaustive" else 1)
        model_ranked, _ = _search(net, budget, CostModel(dev, None, effort), extent, batches)
        _measure_missing(net, model_ranked[:count], costs, records, effort, dev.threads)
        costs = CostModel(dev, records, effort)
        found, too_big = _search(net, budget, costs, extent, batches)
        measured = [p for p in found if _measured(p)]
        if measured and not _measured(found[0]):
            found.remove(measured[0])
            found.insert(0, measured[0])
    if not found:
        lean = too_big[0] if too_big else None
        need = f"{lean.peak_bytes / 2**30:.2f} GiB" if lean else "more memory"
        raise PlanError(f"no plan of network {net.name!r} fits {budget / 2**30:.2f} GiB: the "
                        f"smallest patch {net.fragmentation} needs {need}",
                        f"raise the memory budget (--memory) to at least {need}")
    best = found[0]
    alternatives = [_as_alternative(p, best) for p in _distinct(found[1:], best)[:3]] + too_big
    return replace(best, planning=Planning(budget, dev.threads, dev.name, effort),
                   alternatives=tuple(alternatives))


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
    ratio = (p.predicted_throughput or 0) / (best.predicted_throughput or 1)
    return Alternative(p.output_patch, p.batch, tuple(lp.primitive for lp in p.layers),
                       p.predicted_throughput, p.peak_bytes,
                       f"predicted {100 * ratio:.0f} % of the chosen plan's throughput")


def _measure_missing(net: Network, plans: list[Plan], costs: CostModel, records: TuningRecords,
                     effort: str, threads: int) -> None:
    """Time every promising primitive of every layer shape in ``plans`` that has no record
    made at least as rigorously as ``effort``; store each timing as soon as it is taken."""
    todo: dict[str, tuple[Layer, Shape5, str, float]] = {}
    for p in plans:
        for shapes in net.layer_shapes(p.output_patch, p.batch):
            estimates = {}
            for name, primitive in PRIMITIVES.items():
                if not primitive.supports(shapes.layer):
                    continue
                working = primitive.memory(shapes.layer, shapes.input).working
                if working > p.peak_bytes * 1.5:
                    continue  # would not fit where this plan fits
                estimates[name] = primitive.estimate(shapes.layer, shapes.input, costs.device)
            best = min(estimates.values())
            for name, estimate in estimates.items():
                if effort != "exhaustive" and estimate > MEASURE_WITHIN * best:
                    continue
                key = record_key(shapes.layer, shapes.input, name, threads)
                if records.get(key, effort) is None and key not in todo:
                    todo[key] = (shapes.layer, shapes.input, name, estimate)
    for n, (key, (layer, shape_in, name, estimate)) in enumerate(todo.items(), 1):
        log.info("tuning %d/%d: %s on %s", n, len(todo), name, shape_in)
        times = measure(layer, shape_in, name, threads, effort)
        records.add({key: Record(sorted(times)[len(times) // 2], times, effort, estimate)})
