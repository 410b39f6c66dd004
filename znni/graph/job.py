"""``znni infer`` for DAG networks: a volume on disk through a graph, block by block, into an
output on disk; resumable (docs/design.md §8.1).

- Valid nets run the exact blocks of :mod:`.tiling`: each reads its input region and writes the
  outputs no earlier block wrote.
- Padded nets blend overlapping windows (:mod:`.sliding`). The output is cut into blocks of
  whole groups of windows; a block runs every window reaching into it and writes its own
  voxels, which are bit for bit the whole volume's blend (:func:`~.sliding.blend_region`).
  Windows reaching into two blocks run once for each: blocks are as large as the memory budget
  allows — one block, nothing run twice, when the volume fits — and the log says how many
  windows ran again.

Memory: the net's working memory for one block or window plus one block's buffers, never the
volume (unless it fits the budget). Each block is recorded done (:mod:`~znni.runtime.ledger`)
after its output is written and flushed; running the same job again skips done blocks, and a
killed run resumes to the output an uninterrupted one writes. The records belong to the graph,
its weights, the blocks, the window settings and the input's content. Data safety as for chain
jobs (:mod:`znni.runtime.job`): the output is not the input under any name, one job holds an
output at a time, nothing is made on disk before the checks pass and the kernels are compiled,
a failure before the first block is done removes what the run made, and a block whose output is
not finite is an error and is never recorded done.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import config
from ..errors import PlanError, ShapeError, ZnniError
from ..planner.search import default_budget
from ..primitives.base import FLOAT_BYTES
from ..runtime.allocator import fixed_mmap_threshold
from ..runtime.backends import PRECOMPUTED, UNIT_GRID
from ..runtime.identity import check_distinct
from ..runtime.infer import PROCESS_BYTES
from ..runtime.job import VolumeStats, initialised, report_cleared
from ..runtime.ledger import Ledger
from ..runtime.lock import output_lock
from ..runtime.storage import (
    InputVolume,
    OutputVolume,
    check_output_spec,
    input_identity,
    ledger_folder,
    lock_path,
    open_input,
    open_output,
    release_pages,
    volume_path,
)
from ..runtime.tiling import grow_evenly
from ..runtime.volume import as_float32
from .executor import CompiledGraph
from .infer import compile_tiles, run_tile
from .nodes import Conv, Vec3
from .planner import plan_graph
from .sliding import blend_region, check_windows, image_padding, region_windows, window_starts
from .spec import Graph
from .tiling import GraphTile

log = logging.getLogger("znni")

Progress = Callable[[int, int, VolumeStats], None]


@dataclass(frozen=True)
class GraphBlock:
    name: str
    start: Vec3                     # the first output voxel it writes, per axis
    run: Callable[[], np.ndarray]   # its output voxels (C, z, y, x), written at ``start``


@dataclass(frozen=True)
class GraphJob:
    output_shape: tuple[int, int, int, int]
    blocks: tuple[GraphBlock, ...]
    settings: dict[str, Any]  # what the output's bits and the blocks' names depend on
    blended: bool             # windows averaged (padded net) rather than exact blocks
    centre: Vec3 = (0, 0, 0)  # the input voxel at the centre of output voxel 0's context


@dataclass(frozen=True)
class GraphRun:
    output_shape: tuple[int, int, int, int]
    blended: bool
    stats: VolumeStats


def padded(graph: Graph) -> bool:
    """Whether some conv pads (its net is run in blended windows, not exact blocks)."""
    return any(isinstance(n, Conv) and n.padding == "same" for n in graph.nodes)


def infer_graph_volume(graph: Graph, src: str, dst: str, patch: Vec3 | None,
                       overlap: float, blend: str, threads: int | None,
                       memory: int | str | None = None,
                       progress: Progress | None = None) -> GraphRun:
    """Run ``graph`` on the volume ``src`` into ``dst``, or resume the same job there.
    ``patch``: each block's input (valid nets) or the window (padded nets); default: the
    planner's within ``memory``. ``progress(done, total, stats)`` after each block."""
    check_output_spec(dst, "float32")
    if dst.startswith(PRECOMPUTED):
        raise ZnniError("a DAG network's blocks do not align with a precomputed layer's chunks, "
                        "whose files CloudVolume rewrites in place: a killed run could tear a "
                        "finished neighbour's chunk", "write .zarr, .ome.zarr or .n5 (chunk "
                        "files written atomically), or .npy")
    check_distinct(src, volume_path(src), dst, {"the output": volume_path(dst),
                                                "its done records": ledger_folder(dst),
                                                "its lock file": lock_path(dst)})
    graph.require_weights()
    fixed_mmap_threshold()
    volume = open_input(src)
    if volume.shape[0] != graph.input_channels:
        raise ShapeError(f"input volume has {volume.shape[0]} channel(s), network "
                         f"{graph.name!r} expects {graph.input_channels}",
                         "stack the channels on the first axis")
    budget = config.parse_bytes(memory) if memory is not None else default_budget()
    n_threads = threads or config.default_threads()
    job = (_blended(graph, volume, patch, overlap, blend, n_threads, budget) if padded(graph)
           else _tiled(graph, volume, patch, n_threads, budget))
    identity = input_identity(src)
    ledger = Ledger(ledger_folder(dst), {"digest": _digest(graph, volume, job),
                                         "input": identity})
    held: list[OutputVolume] = []

    def make() -> OutputVolume:
        c, z, y, x = job.output_shape
        return open_output(dst, job.output_shape, "float32",
                           (c, min(z, 64), min(y, 64), min(x, 64)),
                           (volume.grid or UNIT_GRID).shifted(job.centre))

    def close() -> None:
        while held:
            held.pop().close()

    def report(cleared: dict[str, str] | None, created: bool) -> None:
        report_cleared(dst, src, identity, cleared, created)

    with output_lock(lock_path(dst), dst):
        ledger.check()
        try:
            with initialised(dst, make, ledger, report, close):
                held.append(make())
                stats = _run(job, held[0], ledger, progress)
        finally:
            close()
    return GraphRun(job.output_shape, job.blended, stats)


def _run(job: GraphJob, out: OutputVolume, ledger: Ledger,
         progress: Progress | None) -> VolumeStats:
    """The blocks of ``job`` not yet done: run, check, write, flush, record."""
    todo = [b for b in job.blocks if not ledger.done(b.name)]
    skipped = len(job.blocks) - len(todo)
    start, voxels = time.perf_counter(), 0
    for n, block in enumerate(todo, 1):
        data = block.run()
        if not np.isfinite(data).all():
            raise ZnniError(f"block {block.name} of the output holds NaN or Inf values",
                            "check the weights and the input (values in range?); the block "
                            "is not recorded done")
        out.write(block.start, data)
        out.flush()
        release_pages(out.array)
        ledger.mark(block.name)
        voxels += math.prod(data.shape[1:])
        if progress is not None:
            progress(skipped + n, len(job.blocks),
                     VolumeStats(time.perf_counter() - start, voxels, n, skipped))
    return VolumeStats(time.perf_counter() - start, voxels, len(todo), skipped)


def _digest(graph: Graph, volume: InputVolume, job: GraphJob) -> str:
    """What the output's bits and the blocks' names depend on (the input's content identity
    goes beside it in the ledger)."""
    h = hashlib.sha256(json.dumps(graph.to_dict(), sort_keys=True).encode())
    for key, array in sorted(graph.require_weights().items()):
        h.update(key.encode() + np.ascontiguousarray(array).tobytes())
    h.update(json.dumps({"settings": job.settings, "input": [
        volume.path, volume.shape, str(volume.dtype)]}, sort_keys=True).encode())
    return h.hexdigest()


def _name(start: Vec3) -> str:
    return f"{start[0]}_{start[1]}_{start[2]}"


def _reader(volume: InputVolume) -> Callable[[Vec3, Vec3], np.ndarray]:
    def read(start: Vec3, stop: Vec3) -> np.ndarray:
        data = as_float32(volume.read(start, stop))
        release_pages(volume.array)
        return data

    return read


def _tiled(graph: Graph, volume: InputVolume, patch: Vec3 | None, threads: int,
           budget: int) -> GraphJob:
    """A valid net's exact blocks (compiled here: before anything is made on disk)."""
    extent = (volume.shape[1], volume.shape[2], volume.shape[3])
    tiling, compiled = compile_tiles(graph, extent, patch, threads, _room(budget, 0))
    read = _reader(volume)

    def block(tile: GraphTile) -> GraphBlock:
        return GraphBlock(_name(tile.write), tile.write,
                          lambda: run_tile(tiling, compiled, read, tile))

    settings = {"tiled": tiling.block_input, "primitives": compiled.primitives}
    centre = [(tiling.input_extent[a] - tiling.output_extent[a]) // 2 for a in range(3)]
    return GraphJob((graph.output_channels, *tiling.output_extent),
                    tuple(block(t) for t in tiling.tiles), settings, False,
                    (centre[0], centre[1], centre[2]))


def _blended(graph: Graph, volume: InputVolume, patch: Vec3 | None, overlap: float,
             blend: str, threads: int, budget: int) -> GraphJob:
    """A padded net's blocks of blended windows: the window (``patch`` or the planner's), then
    blocks of whole window groups as large as the rest of the budget holds."""
    extent = (volume.shape[1], volume.shape[2], volume.shape[3])
    channels = graph.input_channels + graph.output_channels + 1
    if patch is not None:  # the network gets what the smallest block of windows leaves
        check_windows(graph, patch, overlap, blend)
        smallest = _block_bytes(graph, _padded_size(extent, patch), patch, overlap, [1, 1, 1])
        if smallest >= budget - PROCESS_BYTES:
            raise _no_room(patch, smallest)
        plan = plan_graph(graph, _room(budget, smallest), threads, block=patch)
    else:
        try:  # the whole volume in one block, if it fits beside the planner's window
            plan = plan_graph(graph, _room(budget, FLOAT_BYTES * channels * math.prod(extent)),
                              threads, extent, overlap)
        except PlanError:  # blocks get half of what is left
            plan = plan_graph(graph, _room(budget, 0) // 2, threads, extent, overlap)
    roi = plan.block_input
    check_windows(graph, roi, overlap, blend)
    pad, image = image_padding(extent, roi), _padded_size(extent, roi)
    groups = _window_groups(graph, image, roi, overlap,
                            budget - PROCESS_BYTES - plan.peak_bytes)
    compiled = CompiledGraph(graph, roi, threads, dict(plan.primitives))
    read = _padded_reader(_reader(volume), extent, pad)
    bounds = [_group_bounds(image[a], roi[a], overlap, groups[a]) for a in range(3)]
    blocks, runs = [], 0
    for box in itertools.product(*bounds):
        lo = (box[0][0], box[1][0], box[2][0])
        hi = (box[0][1], box[1][1], box[2][1])
        runs += math.prod(len(s) for s in region_windows(image, roi, overlap, lo, hi))
        start = tuple(max(lo[a] - pad[a][0], 0) for a in range(3))
        blocks.append(GraphBlock(_name((start[0], start[1], start[2])),
                                 (start[0], start[1], start[2]),
                                 _blend_block(graph, compiled, read, image, roi, overlap, blend,
                                              lo, hi, pad, extent)))
    windows = math.prod(len(window_starts(image[a], roi[a], overlap)) for a in range(3))
    if runs > windows:
        log.info("%d blocks of blended windows: %d window runs for %d windows (a larger "
                 "--memory makes larger blocks and fewer repeats)", len(blocks), runs, windows)
    settings = {"windows": roi, "overlap": overlap, "blend": blend, "groups": groups,
                "primitives": compiled.primitives}
    return GraphJob((graph.output_channels, *extent), tuple(blocks), settings, True)


def _window_groups(graph: Graph, image: Vec3, roi: Vec3, overlap: float,
                   room: int) -> tuple[int, int, int]:
    """Windows per block and axis: all of them if one block fits ``room`` bytes (its input
    span, its weighted sums and weights, a window's weighted output), else grown evenly from
    one per axis while the block fits."""
    counts = [len(window_starts(image[a], roi[a], overlap)) for a in range(3)]
    stride = [max(1, int(roi[a] * (1 - overlap))) for a in range(3)]

    def size(groups: list[int]) -> int:
        return _block_bytes(graph, image, roi, overlap, groups)

    if size(counts) <= room:
        return counts[0], counts[1], counts[2]
    if size([1, 1, 1]) > room:
        raise _no_room(roi, size([1, 1, 1]))
    return grow_evenly((counts[0], counts[1], counts[2]), (stride[0], stride[1], stride[2]),
                       lambda groups: size(groups) <= room)


def _no_room(roi: Vec3, needed: int) -> PlanError:
    return PlanError(f"one block of {list(roi)}-voxel windows needs {needed / 2**30:.2f} GiB "
                     "besides the network, more than the budget leaves",
                     "raise --memory, or give a smaller --patch")


def _block_bytes(graph: Graph, image: Vec3, roi: Vec3, overlap: float,
                 groups: list[int]) -> int:
    """The buffers of the largest block of ``groups`` windows per axis (the last block is the
    longest): its input span, its weighted sums and weights, a window's weighted output."""
    stride = [max(1, int(roi[a] * (1 - overlap))) for a in range(3)]
    own = [min(image[a], (groups[a] - 1) * stride[a] + roi[a]) for a in range(3)]
    span = [min(image[a], own[a] + roi[a]) for a in range(3)]
    return FLOAT_BYTES * (graph.input_channels * math.prod(span)
                          + (graph.output_channels + 1) * (math.prod(own) + math.prod(roi)))


def _padded_size(extent: Vec3, roi: Vec3) -> Vec3:
    """The image the windows cover: the volume, zero-padded where it is smaller than one."""
    pad = image_padding(extent, roi)
    return (extent[0] + sum(pad[0]), extent[1] + sum(pad[1]), extent[2] + sum(pad[2]))


def _group_bounds(image: int, roi: int, overlap: float, group: int) -> list[tuple[int, int]]:
    """The blocks along one axis: from the start of every ``group``-th window to the next
    (the first from 0, the last to the image's end)."""
    starts = window_starts(image, roi, overlap)
    cuts = [0, *starts[group::group], image]
    return list(itertools.pairwise(cuts))


def _padded_reader(read: Callable[[Vec3, Vec3], np.ndarray], extent: Vec3,
                   pad: list[tuple[int, int]]) -> Callable[[Vec3, Vec3], np.ndarray]:
    """``read`` in the coordinates of the image zero-padded by ``pad`` (MONAI's padding of a
    volume smaller than the window)."""
    if not any(p for pair in pad for p in pair):
        return read

    def padded_read(start: Vec3, stop: Vec3) -> np.ndarray:
        lo = [min(max(start[a] - pad[a][0], 0), extent[a]) for a in range(3)]
        hi = [min(max(stop[a] - pad[a][0], 0), extent[a]) for a in range(3)]
        inner = read((lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2]))
        out = np.zeros((inner.shape[0], *(stop[a] - start[a] for a in range(3))), np.float32)
        at = [lo[a] + pad[a][0] - start[a] for a in range(3)]
        out[:, at[0]:at[0] + inner.shape[1], at[1]:at[1] + inner.shape[2],
            at[2]:at[2] + inner.shape[3]] = inner
        return out

    return padded_read


def _blend_block(graph: Graph, compiled: CompiledGraph, read: Callable[[Vec3, Vec3], np.ndarray],
                 image: Vec3, roi: Vec3, overlap: float, blend: str, lo: Vec3, hi: Vec3,
                 pad: list[tuple[int, int]], extent: Vec3) -> Callable[[], np.ndarray]:
    """One block's run: read the span of its windows once, blend its voxels ``[lo, hi)`` of the
    padded image, and return those inside the volume."""
    def run() -> np.ndarray:
        starts = region_windows(image, roi, overlap, lo, hi)
        first = (starts[0][0], starts[1][0], starts[2][0])
        span = read(first, (starts[0][-1] + roi[0], starts[1][-1] + roi[1],
                            starts[2][-1] + roi[2]))

        def local(start: Vec3, stop: Vec3) -> np.ndarray:
            return span[:, start[0] - first[0]:stop[0] - first[0],
                        start[1] - first[1]:stop[1] - first[1],
                        start[2] - first[2]:stop[2] - first[2]]

        out = blend_region(local, image, roi, overlap, blend, compiled.run,
                           graph.output_channels, lo, hi)
        keep = tuple(slice(max(pad[a][0] - lo[a], 0),
                           min(pad[a][0] + extent[a], hi[a]) - lo[a]) for a in range(3))
        return out[(slice(None), *keep)]

    return run


def _room(budget: int, held: int) -> int:
    """What the blocks may use of ``budget``: less ``held`` and the process itself."""
    room = budget - held - PROCESS_BYTES
    if room <= 0:
        raise PlanError(f"the memory budget of {budget / 2**30:.2f} GiB does not hold "
                        f"{held / 2**30:.2f} GiB of volume buffers and znni itself",
                        "raise --memory, or process the volume in pieces")
    return room
