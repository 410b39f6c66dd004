"""DAG networks: znni against PyTorch on a valid U-Net (whole volume) and MONAI's BasicUNet
(sliding windows with Gaussian blending), same run, alternating, medians.

    python bench/unet.py [--repeats 3] [--threads N] [--volume 20] [--roi 64] [--blocks]

- Valid U-Net (funlib/LSD style, written here): 1 → 12 → 36 → 108 maps, 3×3×3 convs (1×3×3 on
  the first level), max pools (1,2,2) and (2,2,2), transposed-conv up-sampling, centre-cropped
  concat skips, sigmoid head. The volume is the smallest input plus ``--volume`` steps of the
  downsampling; PyTorch runs it whole, znni as its planner chooses (``infer_graph``; here one
  block) and, with ``--blocks``, in exact blocks of 4 steps over the smallest input.
- BasicUNet (MONAI, batch norm, deconvolution, default features 32…256): a 96³ volume in
  ``--roi``³ windows, overlap 0.25, Gaussian blending: ``sliding_window_inference`` against
  znni's ``sliding_window``.

znni's kernels are chosen by the ``auto`` rule per conv (the DAG planner does not exist yet);
PyTorch runs float32 with its default (oneDNN) kernels. Both import from the same weights; the
outputs are compared (max relative difference printed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

import znni.config
from znni.graph import shape_report
from znni.graph.infer import infer_graph
from znni.graph.sliding import sliding_window
from znni.importers.graph_torch import import_torch_graph


def valid_unet(f: tuple[int, int, int]) -> torch.nn.Module:
    nn = torch.nn

    def block(cin: int, cout: int, k: tuple[int, int, int]) -> nn.Module:
        return nn.Sequential(nn.Conv3d(cin, cout, k), nn.ReLU(), nn.Conv3d(cout, cout, k),
                             nn.ReLU())

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            flat, cube = (1, 3, 3), (3, 3, 3)
            self.d0, self.d1, self.b = block(1, f[0], flat), block(f[0], f[1], cube), block(
                f[1], f[2], cube)
            self.u1 = nn.ConvTranspose3d(f[2], f[1], 2, 2)
            self.u0 = nn.ConvTranspose3d(f[1], f[0], (1, 2, 2), (1, 2, 2))
            self.e1, self.e0 = block(2 * f[1], f[1], cube), block(2 * f[0], f[0], flat)
            self.head = nn.Conv3d(f[0], 3, 1)

        @staticmethod
        def crop(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            s = [(t.shape[i] - like.shape[i]) // 2 for i in (2, 3, 4)]
            return t[:, :, s[0]:s[0] + like.shape[2], s[1]:s[1] + like.shape[3],
                     s[2]:s[2] + like.shape[4]]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            d0 = self.d0(x)
            d1 = self.d1(nn.functional.max_pool3d(d0, (1, 2, 2)))
            b = self.b(nn.functional.max_pool3d(d1, 2))
            u1 = self.u1(b)
            e1 = self.e1(torch.cat([self.crop(d1, u1), u1], 1))
            u0 = self.u0(e1)
            return torch.sigmoid(self.head(self.e0(torch.cat([self.crop(d0, u0), u0], 1))))

    return UNet().eval()


def alternate(runs: dict[str, Callable[[], np.ndarray]], repeats: int
              ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    times: dict[str, list[float]] = {k: [] for k in runs}
    outs = {}
    for round_ in range(repeats + 1):  # round 0 warms up (compiles znni's kernels)
        for name, run in runs.items():
            start = time.perf_counter()
            outs[name] = run()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}, outs


def report(title: str, voxels: int, medians: dict[str, float],
           outs: dict[str, np.ndarray]) -> None:
    ref = outs["pytorch"]
    print(f"{title}: {voxels:,} output voxels")
    for name, t in medians.items():
        diff = float(np.abs(outs[name] - ref).max() / np.abs(ref).max())
        print(f"  {name:<24} {t:7.2f} s  {voxels / t:>12,.0f} voxels/s  "
              f"{medians['pytorch'] / t:5.2f}x PyTorch  (max rel. diff {diff:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=znni.config.default_threads())
    parser.add_argument("--volume", type=int, default=20, help="steps above the smallest input")
    parser.add_argument("--roi", type=int, default=64)
    parser.add_argument("--blocks", action="store_true",
                        help="also znni in exact blocks of 4 downsampling steps over the "
                        "smallest input")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{args.threads} threads; medians of {args.repeats} alternating runs after a warm-up")

    model = valid_unet((12, 36, 108))
    probe = import_torch_graph(model, (40, 124, 124), check=False)
    shapes = shape_report(probe.nodes, probe.output)
    size = tuple(n + args.volume * s for n, s in zip(shapes.smallest_input, shapes.step,
                                                     strict=True))
    graph = import_torch_graph(model, size)
    x = np.random.default_rng(0).random(size, dtype=np.float32)
    def torch_whole() -> np.ndarray:
        out: np.ndarray = model(torch.from_numpy(x)[None, None])[0].numpy()
        return out

    with torch.no_grad():
        runs = {"pytorch": torch_whole,
                "znni (planned)": lambda: infer_graph(graph, x, threads=args.threads)}
        if args.blocks:
            block = tuple(n + 4 * s for n, s in zip(shapes.smallest_input, shapes.step,
                                                    strict=True))
            runs["znni (blocks)"] = lambda: infer_graph(graph, x, block, threads=args.threads)
        medians, outs = alternate(runs, args.repeats)
    report(f"valid U-Net 12-36-108 on {list(size)}", int(np.prod(outs["pytorch"].shape[1:])),
           medians, outs)

    monai = __import__("monai.networks.nets", fromlist=["BasicUNet"])
    inferers = __import__("monai.inferers", fromlist=["sliding_window_inference"])
    basic = monai.BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, norm="batch").eval()
    roi = (args.roi,) * 3
    graph = import_torch_graph(basic, roi)
    v = np.random.default_rng(1).random((96, 96, 96), dtype=np.float32)
    def torch_windows() -> np.ndarray:
        out: np.ndarray = inferers.sliding_window_inference(
            torch.from_numpy(v)[None, None], roi, 1, basic, overlap=0.25,
            mode="gaussian")[0].numpy()
        return out

    with torch.no_grad():
        medians, outs = alternate({
            "pytorch": torch_windows,
            "znni": lambda: sliding_window(graph, v, roi, 0.25, "gaussian", args.threads)},
            args.repeats)
    report(f"MONAI BasicUNet, 96³ in {args.roi}³ windows, overlap 0.25, gaussian", 2 * 96 ** 3,
           medians, outs)


if __name__ == "__main__":
    main()
