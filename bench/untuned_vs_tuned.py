"""What does tuning buy? The untuned plan against the tuned one, measured side by side.

    ZNNI_CACHE_DIR=$(mktemp -d) python bench/untuned_vs_tuned.py [--nets n337,n537,n726,n926]
        [--memory 4GiB] [--repeats 3] [--out FILE.json]

For each net, from the cache as it is (start from an empty one to see what a new user gets):

1. the untuned plan, ``znni.plan(net, memory, effort="estimate")`` — calibration only;
2. the tuned plan, ``znni.plan(net, memory, effort="measure")`` — the leading candidates'
   layers timed and stored as tuning records (the planning time is printed);
3. both compiled, then run in alternating rounds on one batch of their patches (one warm-up
   round, then ``--repeats``; medians), so the machine's noise hits both alike
   (:func:`regret.side_by_side`).

Prints each plan's patch, predicted and measured voxels/s, and untuned ÷ tuned (issue 17's
acceptance: ≥ 0.8 at 4 GiB on the four nets). When both efforts pick the same plan, it runs once
and the ratio is 1 by construction.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from regret import _label, side_by_side

import znni
import znni.config


def compare(name: str, memory: str, threads: int, repeats: int) -> dict[str, object]:
    net = znni.load(name).random_weights(0)
    plans, planning = {}, {}
    for effort in ("estimate", "measure"):
        start = time.perf_counter()
        plans[effort] = znni.plan(net, memory, threads, effort=effort)
        planning[effort] = time.perf_counter() - start
    same = plans["estimate"].to_json() == plans["measure"].to_json()
    run = {"estimate": plans["estimate"]} if same else plans
    timed = side_by_side(run, net, threads, repeats)
    times = {effort: timed["estimate" if same else effort] for effort in plans}
    measured = {effort: p.output_voxels / statistics.median(times[effort])
                for effort, p in plans.items()}
    result = {"net": name, "memory": memory, "same_plan": same,
              "ratio": measured["estimate"] / measured["measure"]}
    for effort, p in plans.items():
        result[effort] = {"plan": _label(p), "planning_s": planning[effort],
                          "predicted": p.predicted_throughput, "measured": measured[effort],
                          "seconds": times[effort]}
        print(f"{name} {effort:>8}: {_label(p)}; planned in {planning[effort]:.0f} s, "
              f"predicted {p.predicted_throughput or 0:,.0f}, measured {measured[effort]:,.0f} "
              f"voxels/s", flush=True)
    print(f"{name}: untuned / tuned = {result['ratio']:.2f}"
          + (" (same plan)" if same else ""), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="n337,n537,n726,n926")
    parser.add_argument("--memory", default="4GiB")
    parser.add_argument("--threads", type=int, default=znni.config.default_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)  # tuning progress
    results = []
    for name in args.nets.split(","):
        results.append(compare(name, args.memory, args.threads, args.repeats))
        if args.out:
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("\nnet    untuned    tuned   untuned/tuned")
    for r in results:
        print(f"{r['net']:<6} {r['estimate']['measured']:>8,.0f} {r['measure']['measured']:>8,.0f}"
              f"   {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
