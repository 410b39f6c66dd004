"""Planner regret: the planned throughput against the best of a measured sweep.

    python bench/regret.py [--nets n337,n726] [--memory 4GiB] [--patches 8] [--within 3]
                           [--top 3] [--repeats 3]

For each net, at the given budget:

1. the planner's plan, ``znni.plan(net, memory, effort="measure")``;
2. the sweep: the ``--patches`` leading (patch, batch) candidates that fit the budget (each a
   distinct patch), and for every layer of each, every way to run it (primitive × fresh or
   in place × pass size) that fits and is modelled within ``--within`` × the layer's best,
   timed (tuning records, effort measure; shared with the planner, so reruns are fast). With
   layer times measured, each candidate's best assignment is exact: layers run one after
   another and each may take any way that fits next to the others (peak = Σ resident + max
   working);
3. end to end, median of ``--repeats``: the plan, and the ``--top`` sweep configurations
   with the best measured sums.

Regret = 1 − (plan's measured throughput) / (best measured throughput). Acceptance: ≤ 10 %
on n337 and n726 at 4 GiB.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import znni
import znni.config
from znni.planner import search
from znni.planner.device import this_machine
from znni.planner.plan import Plan
from znni.planner.tuning import TuningRecords
from znni.runtime.executor import CompiledPlan
from znni.spec import Layer, Shape5
from znni.synthetic import em_like_volume


class MeasuredCosts(search.CostModel):
    """Costs from tuning records only: a way never timed is never chosen, so each swept
    candidate's assignment is the best of what the sweep measured (the corrected model could
    otherwise prefer an untimed way and leave no candidate fully measured)."""

    def _lookup(self, name: str, layer: Layer, shape: Shape5) -> tuple[float, str]:
        seconds, source = super()._lookup(name, layer, shape)
        return (seconds, source) if source == "measured" else (math.inf, source)


def end_to_end(plan: Plan, net: znni.Network, threads: int, repeats: int) -> float:
    """Median measured voxels/s of one run of ``plan`` (after a warm-up run)."""
    compiled = CompiledPlan(plan, net, threads)
    x = compiled.new_input()
    for sample in range(plan.batch):
        x[sample, 0] = em_like_volume(plan.input_patch, seed=sample) / 255.0
    compiled.run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        compiled.run(x)
        times.append(time.perf_counter() - start)
    return plan.output_voxels / statistics.median(times)


def _label(p: Plan) -> str:
    ways = ",".join(lp.primitive + (f"@{lp.in_place}" if lp.in_place else "") for lp in p.layers)
    return f"{'x'.join(map(str, p.output_patch))} b{p.batch} [{ways}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="n337,n726")
    parser.add_argument("--memory", default="4GiB")
    parser.add_argument("--patches", type=int, default=8)
    parser.add_argument("--within", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=znni.config.default_threads())
    args = parser.parse_args()
    budget = znni.config.parse_bytes(args.memory)
    device = this_machine(args.threads)
    records = TuningRecords()
    for name in args.nets.split(","):
        net = znni.load(name).random_weights(0)
        planned = znni.plan(net, budget, args.threads, effort="measure")
        costs = search.CostModel(device, records, "measure")
        swept, seen = [], set()
        for candidate in search.candidates(net, budget, costs):
            if candidate.output_patch not in seen and len(swept) < args.patches:
                seen.add(candidate.output_patch)
                swept.append((candidate.output_patch, candidate.batch))
        start = time.perf_counter()
        for candidate in search.candidates(net, budget, costs):
            if (candidate.output_patch, candidate.batch) in swept:
                search.measure_layers(net, candidate, costs, records, "measure", args.threads,
                                      args.within)
        sweep_seconds = time.perf_counter() - start
        ranked = [c for c in search.candidates(net, budget, MeasuredCosts(device, records,
                                                                          "measure"))
                  if (c.output_patch, c.batch) in swept and c.predicted_throughput]
        print(f"{name} @ {args.memory}: swept {len(swept)} patches × their layers' ways within "
              f"{args.within}× ({sweep_seconds:.0f} s of timing); best measured sums:")
        for c in ranked[:args.top + 2]:
            print(f"  {_label(c)}: {c.predicted_throughput:,.0f} voxels/s (sum of layer times)")
        runs = {_label(planned): (planned, end_to_end(planned, net, args.threads, args.repeats))}
        for c in ranked[:args.top]:
            if _label(c) not in runs:
                runs[_label(c)] = (c, end_to_end(c, net, args.threads, args.repeats))
        best = max(rate for _, rate in runs.values())
        mine = runs[_label(planned)][1]
        for label, (p, rate) in runs.items():
            tag = "plan " if label == _label(planned) else "sweep"
            print(f"  {tag} {label}: measured {rate:,.0f} voxels/s, predicted "
                  f"{p.predicted_throughput or 0:,.0f}")
        print(f"{name}: regret {100 * (1 - mine / best):.1f} % (plan {mine:,.0f} vs best "
              f"{best:,.0f} voxels/s, end to end, median of {args.repeats})")


if __name__ == "__main__":
    main()
