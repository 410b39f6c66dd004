"""Planner regret: the planned throughput against the best of a measured sweep.

    python bench/regret.py [--nets n337,n726] [--memory 4GiB] [--leaders 4] [--floor 0.5]
                           [--within 3] [--top 3] [--repeats 3] [--out FILE.json]
                           [--plans DIR]

For each net, at the given budget:

1. the planner's plan, ``znni.plan(net, memory, effort="measure")``, made from the tuning
   records present before the sweep (start from an empty cache dir to test what a new user
   gets; ``--plans`` keeps it for a resumed sweep);
2. the sweep. Every (patch, batch, pooling mode) that fits the budget is a candidate; patches
   that are permutations of each other form one class (the best-ranked permutation stands for
   it). Swept: the ``--leaders`` best classes, the best class of every (pooling mode, batch)
   pair and of every output-size class (voxels within 20 %) predicted at least ``--floor`` ×
   the best — so modes, batches and sizes the model disfavours are measured too, not only the
   plan's neighbours. For every layer of each, every way to run it (primitive × fresh or in
   place, largest fitting pass) that fits and is modelled within ``--within`` × the layer's
   best is timed (tuning records, effort measure; shared with the planner, so reruns are
   fast). With layer times measured, each candidate's best assignment is exact: layers run one
   after another and each may take any way that fits next to the others (peak = Σ resident +
   max working);
3. end to end: the plan and the ``--top`` swept configurations with the best measured sums,
   compiled side by side and run in alternating rounds (one warm-up round, then
   ``--repeats``), medians — machine noise hits all alike.

Regret = 1 − (plan's measured throughput) / (best measured throughput). Acceptance: ≤ 10 %
on n337 and n726 at 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import znni
import znni.config
from znni.planner import costing, search
from znni.planner.device import this_machine
from znni.planner.plan import Plan
from znni.planner.tuning import TuningRecords
from znni.runtime.executor import CompiledPlan
from znni.spec import Layer, Shape5
from znni.synthetic import em_like_volume

Key = tuple[tuple[int, ...], int, int]  # (sorted patch, batch, pools max-filtered)


class MeasuredCosts(costing.CostModel):
    """Costs from tuning records only: a way never timed is never chosen, so each swept
    candidate's assignment is the best of what the sweep measured (the corrected model could
    otherwise prefer an untimed way and leave no candidate fully measured)."""

    def _lookup(self, name: str, layer: Layer, shape: Shape5,
                refill: bool = False) -> tuple[float, str]:
        seconds, source = super()._lookup(name, layer, shape, refill)
        return (seconds, source) if source == "measured" else (math.inf, source)


def _class(p: Plan) -> Key:
    return tuple(sorted(p.output_patch)), p.batch, p.max_filtered


def _size_class(p: Plan) -> int:
    return round(math.log(p.output_voxels) / math.log(1.2))


def sweep_set(found: list[Plan], leaders: int, floor: float) -> list[Plan]:
    """The candidates to measure (see the module docstring), best-ranked first."""
    best: dict[Key, Plan] = {}
    for p in found:  # ``found`` is ranked: the first permutation of a class stands for it
        best.setdefault(_class(p), p)
    ranked = list(best.values())
    chosen = {_class(p): p for p in ranked[:leaders]}
    top = ranked[0].predicted_throughput or 0
    for group in (lambda p: (p.max_filtered, p.batch), _size_class):
        firsts: dict[object, Plan] = {}
        for p in ranked:
            if (p.predicted_throughput or 0) >= floor * top:
                firsts.setdefault(group(p), p)
        chosen.update({_class(p): p for p in firsts.values()})
    return sorted(chosen.values(), key=lambda p: -(p.predicted_throughput or 0))


def side_by_side(plans: dict[str, Plan], net: znni.Network, threads: int,
                 repeats: int) -> dict[str, list[float]]:
    """Seconds per run of each plan: all compiled first, then one warm-up round and
    ``repeats`` timed rounds, each round running every plan once."""
    compiled = {label: CompiledPlan(p, net, threads) for label, p in plans.items()}
    inputs = {}
    for label, c in compiled.items():
        x = c.new_input()
        for sample in range(c.plan.batch):
            x[sample, 0] = em_like_volume(c.plan.input_patch, seed=sample) / 255.0
        inputs[label] = x
    times: dict[str, list[float]] = {label: [] for label in plans}
    for round_ in range(repeats + 1):
        for label, c in compiled.items():
            start = time.perf_counter()
            c.run(inputs[label])
            if round_:
                times[label].append(time.perf_counter() - start)
    return times


def _label(p: Plan) -> str:
    ways = ",".join(lp.primitive + (f"@{lp.in_place}" if lp.in_place else "") for lp in p.layers)
    mode = f" mf{p.max_filtered}" if p.max_filtered else ""
    return f"{'x'.join(map(str, p.output_patch))} b{p.batch}{mode} [{ways}]"


def regret(name: str, budget: int, args: argparse.Namespace) -> dict[str, object]:
    device = this_machine(args.threads)
    net = znni.load(name).random_weights(0)
    start = time.perf_counter()
    saved = args.plans / f"{name}.plan.json" if args.plans else None
    if saved is not None and saved.exists():  # a resumed sweep tests the same plan
        planned = Plan.from_json(saved.read_text(), net)
    else:
        planned = znni.plan(net, budget, args.threads, effort="measure")
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(planned.to_json())
    plan_seconds = time.perf_counter() - start
    records = TuningRecords()  # read after planning: with the planner's timings
    costs = costing.CostModel(device, records, "measure")
    swept = sweep_set(search.candidates(net, budget, costs), args.leaders, args.floor)
    print(f"{name} @ {args.memory}: planned in {plan_seconds:.0f} s: {_label(planned)}; "
          f"sweeping {len(swept)} candidates", flush=True)
    start = time.perf_counter()
    for n, candidate in enumerate(swept, 1):
        print(f"  [{n}/{len(swept)}] timing {_label(candidate)}", flush=True)
        search.measure_layers(net, candidate, costs, records, "measure", args.threads,
                              args.within)
    sweep_seconds = time.perf_counter() - start
    keys = {(p.output_patch, p.batch, p.max_filtered) for p in swept}
    measured = search.candidates(net, budget, MeasuredCosts(device, records, "measure"))
    ranked = [c for c in measured
              if (c.output_patch, c.batch, c.max_filtered) in keys and c.predicted_throughput]
    print(f"{name}: swept {len(swept)} candidates × their layers' ways within {args.within}× "
          f"({sweep_seconds:.0f} s of timing); best measured sums:")
    for c in ranked[:args.top + 2]:
        print(f"  {_label(c)}: {c.predicted_throughput:,.0f} voxels/s (sum of layer times)")
    contenders = {_label(planned): planned}
    for c in ranked[:args.top]:
        contenders.setdefault(_label(c), c)
    times = side_by_side(contenders, net, args.threads, args.repeats)
    rates = {label: contenders[label].output_voxels / statistics.median(t)
             for label, t in times.items()}
    best, mine = max(rates.values()), rates[_label(planned)]
    for label, rate in rates.items():
        tag = "plan " if label == _label(planned) else "sweep"
        print(f"  {tag} {label}: measured {rate:,.0f} voxels/s, predicted "
              f"{contenders[label].predicted_throughput or 0:,.0f}")
    print(f"{name}: regret {100 * (1 - mine / best):.1f} % (plan {mine:,.0f} vs best "
          f"{best:,.0f} voxels/s, end to end, median of {args.repeats})", flush=True)
    return {"net": name, "memory": args.memory, "threads": args.threads,
            "plan": _label(planned), "plan_seconds": plan_seconds,
            "swept": [_label(p) for p in swept], "sweep_seconds": sweep_seconds,
            "measured_sums": {_label(c): c.predicted_throughput for c in ranked},
            "end_to_end": {label: {"voxels_per_second": rates[label], "seconds": times[label],
                                   "predicted": contenders[label].predicted_throughput}
                           for label in rates},
            "regret": 1 - mine / best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="n337,n726")
    parser.add_argument("--memory", default="4GiB")
    parser.add_argument("--leaders", type=int, default=4)
    parser.add_argument("--floor", type=float, default=0.5)
    parser.add_argument("--within", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=znni.config.default_threads())
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--plans", type=Path, help="keep each net's plan here (NET.plan.json) "
                        "and reuse it: the plan is made from the records present before the "
                        "sweep, so a resumed sweep (records already richer) tests the same plan")
    args = parser.parse_args()
    budget = znni.config.parse_bytes(args.memory)
    results = [regret(name, budget, args) for name in args.nets.split(",")]
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
