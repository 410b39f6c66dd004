"""Dense inference of an in-memory volume: plan (or take) a patch, compile, tile, stitch."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import config
from ..errors import PlanError
from ..planner.plan import Plan, PrimitiveChoice, default_patch, make_plan
from ..spec import Network, Vec3
from .executor import CompiledPlan
from .tiling import tiles
from .volume import as_volume

log = logging.getLogger("znni")

#: Fraction of available RAM a default plan may use (the rest: input/output volumes, Python).
DEFAULT_BUDGET_FRACTION = 0.5


@dataclass(frozen=True)
class InferStats:
    seconds: float
    output_voxels: int
    patches: int

    @property
    def voxels_per_second(self) -> float:
        return self.output_voxels / self.seconds if self.seconds > 0 else float("inf")


def output_extent(net: Network, volume_shape: tuple[int, ...]) -> Vec3:
    fov = net.fov
    z, y, x = volume_shape[-3:]
    return (z - fov[0] + 1, y - fov[1] + 1, x - fov[2] + 1)


def plan_for_volume(net: Network, extent: Vec3, patch: Vec3 | None,
                    memory: int | None, primitives: PrimitiveChoice = None) -> Plan:
    if patch is None:
        budget = memory if memory is not None else int(config.available_memory()
                                                       * DEFAULT_BUDGET_FRACTION)
        patch = default_patch(net, extent, budget, primitives)
    return make_plan(net, patch, 1, primitives)


def infer(net: Network, volume: np.ndarray, patch: Vec3 | None = None, *,
          plan: Plan | None = None, primitives: PrimitiveChoice = None,
          threads: int | None = None, memory: int | None = None,
          progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Dense output ``(C_out, Z−FOVz+1, Y−FOVy+1, X−FOVx+1)`` of ``net`` on ``volume``.

    ``volume`` is ``(Z, Y, X)`` or ``(C, Z, Y, X)``; float32 is used as is, uint8/uint16 scaled
    to [0, 1]. ``patch`` is the dense output patch per axis (multiples of the fragmentation);
    by default the largest one the volume needs that fits ``memory`` bytes (default: half the
    available RAM). ``primitives``: ``"auto"`` (default), one name for every conv layer
    (``"direct"``, ``"fft"``, ``"fft-pruned"``, ``"fft-data"``, ``"fft-pruned-data"``) or a
    ``{layer index: name}`` mapping. A saved ``plan`` fixes patch and primitives instead.
    """
    return infer_with_stats(net, volume, patch, plan=plan, primitives=primitives,
                            threads=threads, memory=memory, progress=progress)[0]


def infer_with_stats(net: Network, volume: np.ndarray, patch: Vec3 | None = None, *,
                     plan: Plan | None = None, primitives: PrimitiveChoice = None,
                     threads: int | None = None, memory: int | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     ) -> tuple[np.ndarray, InferStats]:
    net.require_weights()
    vol = as_volume(volume, net)
    extent = output_extent(net, vol.shape)
    if plan is None:
        plan = plan_for_volume(net, extent, None if patch is None else net.check_patch(patch),
                               memory, primitives)
    elif plan.batch != 1:
        raise PlanError("in-memory inference runs plans with batch 1", "re-plan with batch=1")
    compiled = CompiledPlan(plan, net, threads or config.default_threads())
    start = time.perf_counter()
    out = np.empty((net.output_channels, *extent), np.float32)
    in_patch, out_patch = plan.input_patch, plan.output_patch
    all_tiles = list(tiles(extent, out_patch))
    buf = compiled.new_input()
    for done, tile in enumerate(all_tiles, 1):
        src = tuple(slice(tile.start[a], min(tile.start[a] + in_patch[a], vol.shape[1 + a]))
                    for a in range(3))
        region = vol[(slice(None), *src)]
        if region.shape[1:] != in_patch:
            buf.fill(0)  # zero-pad beyond the volume (only patches at the far edge)
        buf[0][(slice(None), *(slice(0, n) for n in region.shape[1:]))] = region
        dense = compiled.run(buf)[0]
        dst = tuple(slice(tile.start[a], tile.start[a] + tile.size[a]) for a in range(3))
        out[(slice(None), *dst)] = dense[(slice(None), *(slice(0, n) for n in tile.size))]
        if progress is not None:
            progress(done, len(all_tiles))
    seconds = time.perf_counter() - start
    log.info("inferred %d patches of %s in %.2f s", len(all_tiles), list(out_patch), seconds)
    return out, InferStats(seconds, int(np.prod(extent)), len(all_tiles))
