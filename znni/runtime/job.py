"""Out-of-core dense inference: a volume on disk in, a volume on disk out, block by block.

The output is cut into blocks of whole storage chunks (multiples of the plan's patch,
:func:`~znni.runtime.tiling.blocks`). A block reads its patches' input region (its write region
plus the FOV halo; reflected at the border in ``same`` mode, zero past the far end like the
in-memory path), runs them through the compiled plan, writes its chunks, flushes, and only then
records itself done (:mod:`~znni.runtime.ledger`). Re-running the same job skips done blocks; a
run killed at any moment resumes to output bit-identical to an uninterrupted one — and to
:func:`znni.infer` on the same array with the same plan, since every patch sees the same input
wherever it runs. Memory: the plan's budget plus one block's input and output, never the volume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import config
from ..errors import ShapeError, ZnniError
from ..planner.plan import Plan, PrimitiveChoice, network_digest
from ..spec import Network, Vec3
from .executor import CompiledPlan
from .infer import plan_for_volume, run_tiles
from .ledger import Ledger
from .storage import InputVolume, OutputVolume, ledger_folder, open_input, open_output
from .tiling import Block, blocks
from .volume import as_float32, check_mode, same_padding

log = logging.getLogger("znni")

#: Target bytes of one block's input and output buffers (at least one patch per block).
BLOCK_BYTES = 256 << 20

Region = tuple[Vec3, Vec3]  # [start, stop) per axis


@dataclass(frozen=True)
class VolumeStats:
    seconds: float
    output_voxels: int   # computed by this run (done blocks skipped)
    blocks_run: int
    blocks_skipped: int

    @property
    def voxels_per_second(self) -> float:
        return self.output_voxels / self.seconds if self.seconds > 0 else float("inf")


def parse_bbox(text: str, shape: Sequence[int]) -> Region:
    """``z0:z1,y0:y1,x0:x1`` (empty bounds: the volume's) within ``shape`` (Z, Y, X)."""
    parts = text.split(",")
    if len(parts) != 3 or any(p.count(":") != 1 for p in parts):
        raise ZnniError(f"cannot read --bbox {text!r}", "write z0:z1,y0:y1,x0:x1 (e.g. 0:512,:,:)")
    start, stop = [], []
    for axis, part in enumerate(parts):
        lo, hi = part.split(":")
        try:
            a, b = int(lo or 0), int(hi) if hi else shape[axis]
        except ValueError:
            raise ZnniError(f"cannot read --bbox {text!r}", "bounds are integers") from None
        if not 0 <= a < b <= shape[axis]:
            raise ShapeError(f"--bbox {part!r} on axis {'zyx'[axis]} is outside the volume's "
                             f"0:{shape[axis]}", "give 0 ≤ start < stop ≤ the volume size")
        start.append(a)
        stop.append(b)
    return (start[0], start[1], start[2]), (stop[0], stop[1], stop[2])


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """numpy's ``reflect`` padding as an index map (mirror without repeating the edge)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    i = np.mod(index, period)
    return np.where(i < n, i, period - i)


class Source:
    """The (possibly reflect-padded) input region as a virtual ``(C, Z, Y, X)`` volume."""

    def __init__(self, volume: InputVolume, region: Region, pad: list[tuple[int, int]]) -> None:
        self.volume, self.region, self.pad = volume, region, pad
        self.shape = tuple(region[1][a] - region[0][a] + sum(pad[a]) for a in range(3))

    def read(self, start: Vec3, stop: Vec3) -> np.ndarray:
        """float32 voxels [start, stop) of the virtual volume, clipped to its extent."""
        stop = tuple(min(stop[a], self.shape[a]) for a in range(3))  # type: ignore[assignment]
        if not any(lo for lo, _ in self.pad) and not any(hi for _, hi in self.pad):
            origin = self.region[0]
            raw = self.volume.read(tuple(origin[a] + start[a] for a in range(3)),
                                   tuple(origin[a] + stop[a] for a in range(3)))
            return as_float32(raw)
        index = [self.region[0][a] + _reflect(
            np.arange(start[a], stop[a]) - self.pad[a][0],
            self.region[1][a] - self.region[0][a]) for a in range(3)]
        lo = [int(i.min()) for i in index]
        box = self.volume.read(tuple(lo), tuple(int(i.max()) + 1 for i in index))
        picked = box[np.ix_(range(box.shape[0]), *(index[a] - lo[a] for a in range(3)))]
        return as_float32(picked)


def job_digest(net: Network, plan: Plan, source: Source, mode: str, output_dtype: str) -> str:
    """What the output's bits depend on: done records of any other job are not reused."""
    h = hashlib.sha256()
    h.update(network_digest(net).encode())
    for index, (w, b) in sorted(net.require_weights().items()):
        h.update(str(index).encode() + np.ascontiguousarray(w).tobytes()
                 + np.ascontiguousarray(b).tobytes())
    h.update(json.dumps({
        "plan": [plan.output_patch, plan.batch, [(lp.primitive, lp.in_place) for lp in plan.layers]],
        "input": [source.volume.path, source.volume.shape, str(source.volume.dtype)],
        "region": source.region, "mode": mode, "dtype": output_dtype}).encode())
    return h.hexdigest()


def block_size(net: Network, plan: Plan, extent: Vec3) -> Vec3:
    """Whole patches per axis, grown evenly while one block's input and output buffers stay
    within BLOCK_BYTES (and no larger than the output needs)."""
    patch, fov = plan.output_patch, net.fov
    units = [1, 1, 1]
    cap = [max(1, -(-extent[a] // patch[a])) for a in range(3)]

    def size(u: list[int]) -> int:
        inp = net.input_channels * math.prod(u[a] * patch[a] + fov[a] - 1 for a in range(3))
        return 4 * (inp + net.output_channels * math.prod(u[a] * patch[a] for a in range(3)))

    while True:
        grow = [a for a in range(3) if units[a] < cap[a]]
        if not grow:
            break
        axis = min(grow, key=lambda a: units[a] * patch[a])
        bigger = units.copy()
        bigger[axis] += 1
        if size(bigger) > BLOCK_BYTES:
            break
        units = bigger
    return (units[0] * patch[0], units[1] * patch[1], units[2] * patch[2])


@dataclass(frozen=True)
class VolumeJob:
    """Everything a block task needs, picklable: Dask ships it to workers, which open the
    volumes and compile the plan themselves (once per process, from their own kernel cache)."""

    net: Network
    plan: Plan
    src: str
    dst: str
    region: Region
    mode: str
    output_dtype: str
    threads: int
    extent: Vec3   # of the dense output
    block: Vec3
    digest: str

    def source(self) -> Source:
        pad = same_padding(self.net) if self.mode == "same" else [(0, 0)] * 3
        return Source(open_input(self.src), self.region, pad)

    def blocks(self) -> list[Block]:
        return blocks(self.extent, self.plan.output_patch, self.block)

    def output(self) -> OutputVolume:
        return open_output(self.dst, (self.net.output_channels, *self.extent),
                           self.output_dtype, (self.net.output_channels, *self.block))

    def ledger(self) -> Ledger:
        return Ledger(ledger_folder(self.dst), self.digest)


@dataclass
class _Opened:
    """What a process keeps of the job it is running: open volumes, compiled plan, blocks."""

    source: Source
    output: OutputVolume
    compiled: CompiledPlan
    blocks: dict[Vec3, Block]


#: Per process: the job being run, by digest.
_context: dict[str, _Opened] = {}


def release() -> None:
    """Close the volumes this process holds open for a job."""
    for opened in _context.values():
        opened.output.close()
    _context.clear()


def run_block(job: VolumeJob, index: Vec3) -> int:
    """Run one block of ``job`` here: read, compute, write its chunks, flush, then record it
    done. Idempotent (a retried or duplicated task rewrites the same bits). Returns the output
    voxels written."""
    if job.digest not in _context:
        release()
        _context[job.digest] = _Opened(job.source(), job.output(),
                                       CompiledPlan(job.plan, job.net, job.threads),
                                       {b.index: b for b in job.blocks()})
    opened = _context[job.digest]
    source, out, compiled, b = opened.source, opened.output, opened.compiled, opened.blocks[index]
    in_patch = compiled.plan.input_patch
    lo = tuple(min(t.start[a] for t in b.tiles) for a in range(3))
    hi = tuple(max(t.start[a] for t in b.tiles) + in_patch[a] for a in range(3))
    vol = source.read(lo, hi)  # type: ignore[arg-type]
    dense = np.empty((job.net.output_channels, *(b.stop[a] - b.start[a] for a in range(3))),
                     np.float32)
    run_tiles(compiled, b.tiles, vol, lo, dense, b.start)  # type: ignore[arg-type]
    if job.output_dtype == "uint8":
        dense = np.rint(np.clip(dense, 0, 1) * 255).astype(np.uint8)
    out.write(b.start, dense)
    out.flush()
    job.ledger().mark(b.name)
    return math.prod(b.stop[a] - b.start[a] for a in range(3))


def infer_volume(net: Network, src: str, dst: str, *, plan: Plan | None = None,
                 patch: Vec3 | None = None, primitives: PrimitiveChoice = None,
                 memory: int | str | None = None, threads: int | None = None, mode: str = "valid",
                 bbox: str | None = None, output_dtype: str = "float32",
                 progress: Callable[[int, int, VolumeStats], None] | None = None,
                 client: Any = None) -> VolumeStats:
    """Dense inference of ``net`` from the volume at ``src`` into ``dst`` (see the module
    docstring; formats in :mod:`~znni.runtime.storage`). ``plan``: a saved plan; else one made
    as :func:`znni.infer` makes it (``patch``, ``primitives``), within ``memory`` bytes (int or
    ``"4GiB"``; default: 80 % of the available RAM) less one block — per worker. ``bbox``:
    ``"z0:z1,y0:y1,x0:x1"`` of the input. ``progress(done, total, stats)`` after each block.
    ``client``: a ``distributed.Client`` to farm the blocks out to (:mod:`.cluster`); each
    worker runs ``threads`` kernel threads. Returns what this run did."""
    if client is not None:
        from .cluster import check_output

        check_output(dst)
    job = prepare_job(net, src, dst, plan, patch, primitives, memory, threads, mode, bbox,
                      output_dtype)
    work = job.blocks()
    ledger = job.ledger()
    todo = [b.index for b in work if not ledger.done(b.name)]
    start = time.perf_counter()
    voxels = 0

    def finished(n: int, written: int) -> None:
        nonlocal voxels
        voxels += written
        if progress is not None:
            progress(len(work) - len(todo) + n, len(work), VolumeStats(
                time.perf_counter() - start, voxels, n, len(work) - len(todo)))

    if client is None:
        try:
            for n, index in enumerate(todo, 1):
                finished(n, run_block(job, index))
        finally:
            release()
    else:
        from .cluster import run_on_cluster

        run_on_cluster(client, job, todo, finished)
    return VolumeStats(time.perf_counter() - start, voxels, len(todo), len(work) - len(todo))


def prepare_job(net: Network, src: str, dst: str, plan: Plan | None, patch: Vec3 | None,
                primitives: PrimitiveChoice, memory: int | str | None, threads: int | None,
                mode: str, bbox: str | None, output_dtype: str) -> VolumeJob:
    """Check everything, plan, create (or reopen) the output and its ledger: a job ready to
    run, locally or on a cluster. Nothing is written before every check has passed."""
    check_mode(mode)
    net.require_weights()
    volume = open_input(src)
    if volume.shape[0] != net.input_channels:
        raise ShapeError(f"input volume has {volume.shape[0]} channel(s), network {net.name!r} "
                         f"expects {net.input_channels}", "stack the channels on the first axis")
    region = parse_bbox(bbox, volume.shape[1:]) if bbox else ((0, 0, 0), volume.shape[1:])
    pad = same_padding(net) if mode == "same" else [(0, 0)] * 3
    source = Source(volume, region, pad)  # type: ignore[arg-type]
    fov = net.fov
    if any(source.shape[a] < fov[a] for a in range(3)):
        raise ShapeError(f"input region {list(source.shape)} (z,y,x) is smaller than the field "
                         f"of view {list(fov)} of network {net.name!r}",
                         "give a larger region, or --mode same")
    extent = tuple(source.shape[a] - fov[a] + 1 for a in range(3))
    if plan is None:
        budget = None if memory is None else config.parse_bytes(memory)
        plan = plan_for_volume(net, extent,  # type: ignore[arg-type]
                               None if patch is None else net.check_patch(patch), budget,
                               primitives, threads, held_bytes=BLOCK_BYTES)
    job = VolumeJob(net, plan, src, dst, region, mode, output_dtype,  # type: ignore[arg-type]
                    threads or config.default_threads(), extent,  # type: ignore[arg-type]
                    block_size(net, plan, extent),  # type: ignore[arg-type]
                    job_digest(net, plan, source, mode, output_dtype))
    job.output().close()  # create it (or check the existing one) before any block runs
    job.ledger().open()
    return job
