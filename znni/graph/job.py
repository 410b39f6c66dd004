"""``znni infer`` for DAG networks: a volume on disk through a graph, into a new output.

Valid nets run out of core: each exact block reads its input region from the volume and writes
its outputs to the new output (memory: one block). Padded nets blend overlapping windows, which
is done in memory (the volume and its output). Resuming and Dask — what chain nets have
(runtime/job.py) — are not built for graphs yet: the output must not exist, and a failed run
removes what it wrote.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import config
from ..errors import PlanError, ShapeError, VolumeError
from ..planner.search import default_budget
from ..primitives.base import FLOAT_BYTES
from ..runtime.allocator import fixed_mmap_threshold
from ..runtime.identity import check_distinct
from ..runtime.infer import PROCESS_BYTES
from ..runtime.lock import output_lock
from ..runtime.storage import (
    OutputVolume,
    check_output_spec,
    lock_path,
    open_input,
    open_output,
    release_pages,
    remove_output,
    volume_path,
)
from ..runtime.volume import as_float32
from .infer import compile_tiles, run_tiles
from .nodes import Conv, Vec3
from .planner import plan_graph
from .sliding import sliding_window
from .spec import Graph


@dataclass(frozen=True)
class GraphRun:
    output_shape: tuple[int, int, int, int]
    blended: bool  # windows averaged (padded net) rather than exact blocks


def padded(graph: Graph) -> bool:
    """Whether some conv pads (its net is run in blended windows, not exact blocks)."""
    return any(isinstance(n, Conv) and n.padding == "same" for n in graph.nodes)


def infer_graph_volume(graph: Graph, src: str, dst: str, patch: Vec3 | None,
                       overlap: float, blend: str, threads: int | None,
                       memory: int | str | None = None) -> GraphRun:
    """Run ``graph`` on the volume ``src`` into the new volume ``dst``. ``patch``: the window
    (input voxels) of each block; default: the planner's within ``memory``. One job per
    output: the output's lock (runtime/lock.py) is held from the check that it is new to the
    end."""
    check_output_spec(dst, "float32")
    check_distinct(src, volume_path(src), dst, {"the output": volume_path(dst),
                                                "its lock file": lock_path(dst)})
    with output_lock(lock_path(dst), dst):
        return _infer_new(graph, src, dst, patch, overlap, blend, threads, memory)


def _infer_new(graph: Graph, src: str, dst: str, patch: Vec3 | None, overlap: float,
               blend: str, threads: int | None, memory: int | str | None) -> GraphRun:
    fixed_mmap_threshold()
    volume = open_input(src)
    if volume_path(dst).exists():
        raise VolumeError(f"output {dst!r} exists", "DAG networks write a new output (no "
                          "resuming yet): delete it or choose another --output")
    if volume.shape[0] != graph.input_channels:
        raise ShapeError(f"input volume has {volume.shape[0]} channel(s), network "
                         f"{graph.name!r} expects {graph.input_channels}",
                         "stack the channels on the first axis")
    extent = (volume.shape[1], volume.shape[2], volume.shape[3])
    budget = config.parse_bytes(memory) if memory is not None else default_budget()
    if padded(graph):  # blending adds overlapping windows: in memory
        # held besides the windows: the volume, the weighted sums and their weights
        held = FLOAT_BYTES * math.prod(extent) * (graph.input_channels
                                                  + graph.output_channels + 1)
        data = volume.read((0, 0, 0), extent)
        roi = patch or plan_graph(graph, _room(budget, held), threads, extent,
                                  overlap).block_input
        out = sliding_window(graph, data, roi, overlap, blend, threads)
        shape = (out.shape[0], out.shape[1], out.shape[2], out.shape[3])
        _write_new(dst, shape, lambda target: target.write((0, 0, 0), out))
        return GraphRun(shape, True)
    tiling, compiled = compile_tiles(graph, extent, patch, threads, _room(budget, 0))
    shape = (graph.output_channels, *tiling.output_extent)

    def read(start: Vec3, stop: Vec3) -> np.ndarray:
        data = as_float32(volume.read(start, stop))
        release_pages(volume.array)
        return data

    def fill(target: OutputVolume) -> None:
        def write(start: Vec3, data: np.ndarray) -> None:
            target.write(start, data)
            release_pages(target.array)

        run_tiles(tiling, compiled, read, write)

    _write_new(dst, shape, fill)
    return GraphRun(shape, False)


def _room(budget: int, held: int) -> int:
    """What the blocks may use of ``budget``: less ``held`` and the process itself."""
    room = budget - held - PROCESS_BYTES
    if room <= 0:
        raise PlanError(f"the memory budget of {budget / 2**30:.2f} GiB does not hold the "
                        f"volumes in memory ({held / 2**30:.2f} GiB) and znni itself",
                        "raise --memory, or process the volume in pieces")
    return room


def _write_new(dst: str, shape: tuple[int, int, int, int],
               fill: Callable[[OutputVolume], None]) -> None:
    """Create ``dst`` (chunks of up to 64³) and ``fill`` it; a failure removes it (it did not
    exist before)."""
    c, z, y, x = shape
    target = open_output(dst, shape, "float32", (c, min(z, 64), min(y, 64), min(x, 64)))
    try:
        fill(target)
        target.close()
    except BaseException:
        remove_output(dst, whole_file=True)
        raise
