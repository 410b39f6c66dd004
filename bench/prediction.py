"""How well does the planner predict? Planned vs measured throughput, per net and per layer.

    python bench/prediction.py [--nets n337,n537,n726,n926] [--memory 4GiB]
                               [--effort measure] [--repeats 3] [--warmup 1]

For each net: ``znni.plan(net, memory, effort=...)`` (``measure`` times the leading candidates'
layers and stores tuning records; a second invocation reuses them), then the plan runs on one
batch of synthetic EM patches with its kernels compiled: median of ``--repeats`` runs after
``--warmup``. Prints predicted and measured voxels/s and their ratio (acceptance: within ±20 %
with tuning records), and per layer the predicted and the measured seconds of the median run
and the process's peak RSS while the layer ran vs the plan's Σ resident + working + held bytes.
"""

from __future__ import annotations

import argparse
import logging
import time

import psutil

import znni
import znni.config
from znni.benchmark import rss_peak
from znni.planner.plan import held_bytes
from znni.runtime.executor import CompiledPlan
from znni.synthetic import em_like_volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="n337,n537,n726,n926")
    parser.add_argument("--memory", default="4GiB")
    parser.add_argument("--effort", default="measure", choices=("estimate", "measure",
                                                                "exhaustive"))
    parser.add_argument("--threads", type=int, default=znni.config.default_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)  # tuning progress
    summary = []
    for name in args.nets.split(","):
        net = znni.load(name).random_weights(0)
        start = time.perf_counter()
        plan = znni.plan(net, args.memory, args.threads, effort=args.effort)
        planning = time.perf_counter() - start
        compiled = CompiledPlan(plan, net, args.threads)
        x = compiled.new_input()
        for sample in range(plan.batch):
            x[sample, 0] = em_like_volume(plan.input_patch, seed=sample) / 255.0
        for _ in range(args.warmup):
            compiled.run(x)
        runs = []
        for _ in range(args.repeats):
            y, split, rss = x, [], []
            for i, step in enumerate(compiled.steps):
                slack = compiled.steps[i + 1].input_slack if i + 1 < len(compiled.steps) else 0
                base = psutil.Process().memory_info().rss
                with rss_peak() as growth:
                    t = time.perf_counter()
                    y = step.run(y, slack)
                    split.append(time.perf_counter() - t)
                    rss.append(base + growth())
            del y
            runs.append((sum(split), split, rss))
        seconds, split, rss = sorted(runs)[len(runs) // 2]
        planned_base = plan.resident_bytes + held_bytes(plan.layers)
        measured = plan.output_voxels / seconds
        predicted = plan.predicted_throughput or 0.0
        print(f"{name}: patch {plan.output_patch} batch {plan.batch}, planned in "
              f"{planning:.0f} s ({args.effort}); predicted {predicted:,.0f} voxels/s, "
              f"measured {measured:,.0f} (median of {args.repeats}): "
              f"predicted/measured {predicted / measured:.2f}")
        for lp, t, peak in zip(plan.layers, split, rss, strict=False):
            place = f" in place {lp.in_place}" if lp.in_place else ""
            print(f"  layer {lp.index} {lp.primitive:>16}{place:<14} {lp.input_shape!s:>26} "
                  f"predicted {lp.seconds or 0:8.3f} s ({lp.cost}), measured {t:8.3f} s; "
                  f"planned {(planned_base + lp.working_bytes) / 2**30:5.2f} GiB, "
                  f"peak RSS {peak / 2**30:5.2f} GiB")
        summary.append((name, predicted, measured))
        del compiled, x
    print("\nnet    predicted   measured   ratio")
    for name, predicted, measured in summary:
        print(f"{name:<6} {predicted:>9,.0f} {measured:>10,.0f}   {predicted / measured:.2f}")


if __name__ == "__main__":
    main()
