"""Dense inference of an in-memory volume: plan (or take) a patch, compile, tile, stitch."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .. import config
from ..errors import NumericError, PlanError
from ..planner.plan import Plan, PrimitiveChoice, default_patch, make_plan
from ..planner.search import default_budget
from ..planner.search import plan as search_plan
from ..precision import check_precision
from ..spec import Network, Vec3
from ..tta import check_net_allows, check_tta
from .executor import CompiledPlan, finite
from .pipeline import run_batches
from .tiling import Tile, tiles
from .volume import as_volume, check_mode, same_padding

log = logging.getLogger("znni")

@dataclass(frozen=True)
class InferStats:
    seconds: float
    output_voxels: int
    patches: int

    @property
    def voxels_per_second(self) -> float:
        return self.output_voxels / self.seconds if self.seconds > 0 else float("inf")


def _load(sample: np.ndarray, tile: Tile, vol: np.ndarray, vol_origin: Vec3) -> None:
    """Fill one sample of the input buffer with ``tile``'s input from ``vol`` (whose voxel 0
    is volume voxel ``vol_origin``), zero past its end."""
    in_patch = sample.shape[1:]
    src = tuple(slice(tile.start[a] - vol_origin[a],
                      min(tile.start[a] - vol_origin[a] + in_patch[a], vol.shape[1 + a]))
                for a in range(3))
    region = vol[(slice(None), *src)]
    if region.shape[1:] != in_patch:
        sample.fill(0)  # zero-pad beyond the volume (patches at the far edge)
    sample[(slice(None), *(slice(0, n) for n in region.shape[1:]))] = region


def _written(tile: Tile, out_origin: Vec3) -> tuple[slice, ...]:
    """The voxels ``tile`` writes, in an output array whose voxel 0 is ``out_origin``."""
    return tuple(slice(tile.write_start[a] - out_origin[a],
                       tile.start[a] + tile.size[a] - out_origin[a]) for a in range(3))


def run_tiles(compiled: CompiledPlan, group: Sequence[Tile], vol: np.ndarray, vol_origin: Vec3,
              out: np.ndarray, out_origin: Vec3,
              progress: Callable[[int, int], None] | None = None) -> None:
    """Run ``group`` batch by batch: each tile's input from ``vol`` (``(C, …)``, whose voxel 0
    is volume voxel ``vol_origin``; zero past its end), its written voxels into ``out``
    (whose voxel 0 is output voxel ``out_origin``)."""
    plan = compiled.plan
    buf = compiled.new_input()
    done = 0

    def load(batch: Sequence[Tile]) -> np.ndarray:
        for sample, tile in enumerate(batch):
            _load(buf[sample], tile, vol, vol_origin)
        return buf  # a short last group leaves stale samples: ignored

    def store(batch: Sequence[Tile], dense: np.ndarray) -> None:
        nonlocal done
        for sample, tile in enumerate(batch):
            out[(slice(None), *_written(tile, out_origin))] = dense[sample][(
                slice(None), *(slice(tile.skip[a], tile.size[a]) for a in range(3)))]
        done += len(batch)
        if progress is not None:
            progress(done, len(group))

    # CPU–GPU plans overlap batch k's GPU tail with batch k+1's CPU head (pipeline.py)
    run_batches(compiled, [group[first:first + plan.batch]
                           for first in range(0, len(group), plan.batch)], load, store)


def check_finite(compiled: CompiledPlan, group: Sequence[Tile], vol: np.ndarray,
                 vol_origin: Vec3, out: np.ndarray, out_origin: Vec3, what: str) -> None:
    """Refuse an output ``out`` (written by :func:`run_tiles` with the same arguments) that
    holds NaN or Inf — float32 overflow, which no later step would notice (clipping to uint8
    turns NaN into 0). The check is two reductions over the output, a small fraction of the
    time the net took to make it. On failure the first patch with a non-finite voxel is rerun
    layer by layer to name the layer where it appeared; ``what`` names ``out`` in the
    message."""
    if finite(out):
        return
    tile = next(t for t in group if not finite(out[(slice(None), *_written(t, out_origin))]))
    buf = compiled.new_input()
    for sample in buf:  # every sample the same patch: nothing else can be blamed
        _load(sample, tile, vol, vol_origin)
    layer = compiled.first_nonfinite_layer(buf)
    patch = f"the patch at output voxel {list(tile.start)}"
    where = (f"in {patch} it first appears in the output of {layer}" if layer else
             f"rerunning {patch} layer by layer did not reproduce it")
    raise NumericError(f"{what} holds NaN or Inf (float32 overflow); {where}",
                       "the weights or the input values are too large (or the weights are "
                       "wrong): check them, or scale them down")


def output_extent(net: Network, volume_shape: tuple[int, ...]) -> Vec3:
    fov = net.fov
    z, y, x = volume_shape[-3:]
    return (z - fov[0] + 1, y - fov[1] + 1, x - fov[2] + 1)


#: Bytes of the process itself (interpreter, numpy, FFTW, cffi) kept out of the plan's budget.
PROCESS_BYTES = 128 << 20  # measured ~75 MiB after a small run, doubled


def plan_for_volume(net: Network, extent: Vec3, patch: Vec3 | None, memory: int | None,
                    primitives: PrimitiveChoice = None, threads: int | None = None,
                    held_bytes: int = 0, precision: str = "fp32", tta: str = "none") -> Plan:
    """The plan for a volume of output ``extent``. With a patch or a fixed primitive choice:
    that patch (default: the largest fitting) and choice; otherwise the planner's search
    (``precision``, ``tta``: see :func:`znni.planner.plan`). ``held_bytes`` (the volumes in
    RAM) and the process itself come out of the budget."""
    check_precision(precision)
    check_net_allows(tta, net, patch)
    budget = memory if memory is not None else default_budget()
    room = budget - held_bytes - PROCESS_BYTES
    if room <= 0:
        raise PlanError(f"the memory budget of {budget / 2**30:.2f} GiB does not even hold the "
                        f"input and output volumes ({held_bytes / 2**30:.2f} GiB) and znni itself",
                        "raise --memory, or process the volume in pieces")
    if patch is None and primitives in (None, "auto"):
        return search_plan(net, room, threads, extent=extent, precision=precision, tta=tta)
    if precision != "fp32":
        raise PlanError(f"precision {precision} is the planner's choice per layer, and a fixed "
                        "patch or primitive skips the planner",
                        "drop the patch and primitive, or name direct-bf16 for the inner "
                        "layers in a per-layer primitive mapping")
    if patch is None:
        patch = default_patch(net, extent, room, primitives)
        check_net_allows(tta, net, patch)
    return replace(make_plan(net, patch, 1, primitives), tta=tta)


def check_plan_tta(plan: Plan, tta: str) -> None:
    """Refuse a saved plan whose test-time augmentation is not the one asked for."""
    check_tta(tta)
    if tta not in ("none", plan.tta):
        raise PlanError(f"the saved plan runs --tta {plan.tta}, not {tta}",
                        f"re-plan with --tta {tta}, or drop --tta to run the plan's")


def infer(net: Network, volume: np.ndarray, patch: Vec3 | None = None, *,
          plan: Plan | None = None, primitives: PrimitiveChoice = None,
          threads: int | None = None, memory: int | None = None, mode: str = "valid",
          progress: Callable[[int, int], None] | None = None,
          precision: str = "fp32", tta: str = "none") -> np.ndarray:
    """Dense output ``(C_out, Z−FOVz+1, Y−FOVy+1, X−FOVx+1)`` of ``net`` on ``volume``.

    ``volume`` is ``(Z, Y, X)`` or ``(C, Z, Y, X)``; float32 is used as is, uint8/uint16 scaled
    to [0, 1]. By default the planner searches output patch, batch and per-layer primitives for
    the highest throughput within ``memory`` bytes (default: 80 % of the available RAM), less
    the volumes held in RAM. ``patch`` (multiples of the fragmentation) or ``primitives`` —
    one name for every conv layer (``"direct"``, ``"fft"``, ``"fft-pruned"``, ``"fft-data"``,
    ``"fft-pruned-data"``) or a ``{layer index: name}`` mapping — fix those instead (the rest
    by the simple ``auto`` rule, the patch as the largest that fits). A saved ``plan`` fixes
    everything. ``mode="same"`` reflects the input at its border so that the output is as large
    as the input and aligned with it. ``precision="bf16"`` lets the planner run the inner conv
    layers in bf16 where faster (float32 accumulation; docs/design.md §5.7). ``tta="flips"``
    (or ``"flips+transpose"``) averages the net over the flipped (and y/x-transposed) input
    (:mod:`znni.tta`), 8 (16) runs per patch.
    """
    return infer_with_stats(net, volume, patch, plan=plan, primitives=primitives,
                            threads=threads, memory=memory, mode=mode, progress=progress,
                            precision=precision, tta=tta)[0]


def infer_with_stats(net: Network, volume: np.ndarray, patch: Vec3 | None = None, *,
                     plan: Plan | None = None, primitives: PrimitiveChoice = None,
                     threads: int | None = None, memory: int | None = None,
                     mode: str = "valid", progress: Callable[[int, int], None] | None = None,
                     precision: str = "fp32", tta: str = "none") -> tuple[np.ndarray, InferStats]:
    net.require_weights()
    check_mode(mode)
    raw = np.asarray(volume)
    if mode == "same" and raw.ndim in (3, 4):  # other ranks: as_volume says what is wrong
        raw = raw[None] if raw.ndim == 3 else raw
        volume = np.pad(raw, [(0, 0), *same_padding(net)], mode="reflect")
    vol = as_volume(volume, net)
    extent = output_extent(net, vol.shape)
    out_bytes = 4 * net.output_channels * int(np.prod(extent))
    if plan is None:
        plan = plan_for_volume(net, extent, None if patch is None else net.check_patch(patch),
                               memory, primitives, threads, held_bytes=vol.nbytes + out_bytes,
                               precision=precision, tta=tta)
    check_plan_tta(plan, tta)
    compiled = CompiledPlan(plan, net, threads or config.default_threads())
    start = time.perf_counter()
    out = np.empty((net.output_channels, *extent), np.float32)
    all_tiles = list(tiles(extent, plan.output_patch))
    run_tiles(compiled, all_tiles, vol, (0, 0, 0), out, (0, 0, 0), progress)
    check_finite(compiled, all_tiles, vol, (0, 0, 0), out, (0, 0, 0), "the output")
    seconds = time.perf_counter() - start
    log.info("inferred %d patches of %s (batch %d) in %.2f s", len(all_tiles),
             list(plan.output_patch), plan.batch, seconds)
    return out, InferStats(seconds, int(np.prod(extent)), len(all_tiles))
