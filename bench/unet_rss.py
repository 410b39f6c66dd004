"""Does `znni infer` on a DAG network stay within its memory budget? Peak RSS, measured.

    python bench/unet_rss.py [--memory 2GiB] [--blocks 1.5] [--nets unet,basic]

Two nets, imported from PyTorch with random weights (bench/unet.py's valid U-Net; MONAI's
BasicUNet with batch norm and deconvolutions): the planner's block (window) for ``--memory`` is
found first, a uniform volume ``--blocks`` blocks wide per axis is written to a temporary .npy,
and ``znni infer --memory M`` runs in a subprocess under ``/usr/bin/time -v``. Its maximum
resident set size is compared with the budget.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from budget_rss import znni_peak_rss
from unet import valid_unet

from znni.config import parse_bytes
from znni.graph.planner import plan_graph
from znni.importers.graph_torch import import_torch_graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", default="2GiB")
    parser.add_argument("--blocks", type=float, default=1.5)
    parser.add_argument("--nets", default="unet,basic", help="unet: the valid U-Net; basic: "
                        "MONAI's BasicUNet")
    args = parser.parse_args()
    budget = parse_bytes(args.memory)
    monai = __import__("monai.networks.nets", fromlist=["BasicUNet"])
    torch.manual_seed(0)
    models = {"unet": ("valid U-Net 12-36-108", lambda: valid_unet((12, 36, 108)),
                       (40, 124, 124)),
              "basic": ("BasicUNet", lambda: monai.BasicUNet(
                  spatial_dims=3, in_channels=1, out_channels=2, norm="batch").eval(),
                  (32, 32, 32))}
    for key in args.nets.split(","):
        name, make, traced = models[key]
        model = make()
        graph = import_torch_graph(model, traced)
        plan = plan_graph(graph, budget)
        shape = tuple(int(args.blocks * n) // 16 * 16 + (n % 16) for n in plan.block_input)
        with tempfile.TemporaryDirectory() as tmp:
            spec, weights = Path(tmp) / "net.json", Path(tmp) / "w.npz"
            spec.write_text(json.dumps(graph.to_dict()))
            graph.save_weights(weights)
            src, dst = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
            np.save(src, np.random.default_rng(0).random(shape, dtype=np.float32))
            run, peak = znni_peak_rss(["infer", str(spec), "--weights", str(weights),
                                       "--input", str(src), "--output", str(dst),
                                       "--memory", args.memory])
        if peak is None:
            print(f"{name}: infer failed\n{run.stderr[-2000:]}")
            continue
        print(f"{name}: volume {list(shape)}, planned block {list(plan.block_input)} (peak "
              f"{plan.peak_bytes / 2**30:.2f} GiB predicted for the block), peak RSS "
              f"{peak / 2**30:.2f} GiB = {100 * peak / budget:.0f} % of {args.memory}; "
              f"{run.stdout.strip()}")


if __name__ == "__main__":
    main()
