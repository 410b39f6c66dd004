"""One block of an out-of-core job as a task: what a local loop or a Dask worker runs.

A :class:`VolumeJob` is everything a block needs, picklable; :func:`run_block` reads a block's
input region (:class:`Source`, reflect-padded in ``same`` mode), runs its patches, checks the
result is finite, writes its chunks, flushes and only then records it done. The driver
(:mod:`.job`) and the cluster runner (:mod:`.cluster`) both import this module and not each
other's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..planner.plan import Plan
from ..spec import Network, Vec3
from .backends import Grid
from .executor import CompiledPlan
from .infer import check_finite, run_tiles
from .ledger import Ledger
from .mask import Mask
from .storage import InputVolume, OutputVolume, ledger_folder, open_input, open_output
from .tiling import Block, blocks, vec3
from .volume import as_float32, same_padding

Region = tuple[Vec3, Vec3]  # [start, stop) per axis


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """numpy's ``reflect`` padding as an index map (mirror without repeating the edge)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    i = np.mod(index, period)
    reflected: np.ndarray = np.where(i < n, i, period - i)
    return reflected


class Source:
    """The (possibly reflect-padded) input region as a virtual ``(C, Z, Y, X)`` volume."""

    def __init__(self, volume: InputVolume, region: Region, pad: list[tuple[int, int]]) -> None:
        self.volume, self.region, self.pad = volume, region, pad
        self.shape = vec3(region[1][a] - region[0][a] + sum(pad[a]) for a in range(3))

    def read(self, start: Vec3, stop: Vec3) -> np.ndarray:
        """float32 voxels [start, stop) of the virtual volume, clipped to its extent."""
        stop = vec3(min(stop[a], self.shape[a]) for a in range(3))
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
        picked = box[np.ix_(np.arange(box.shape[0]), *(index[a] - lo[a] for a in range(3)))]
        return as_float32(picked)


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
    input_identity: str
    mask: Mask | None = None  # skips the blocks it marks empty (runtime/mask.py)
    grid: Grid | None = None  # the output's world coordinates (runtime/backends.py)

    def source(self) -> Source:
        pad = same_padding(self.net) if self.mode == "same" else [(0, 0)] * 3
        return Source(open_input(self.src), self.region, pad)

    def blocks(self) -> list[Block]:
        return blocks(self.extent, self.plan.output_patch, self.block)

    def output(self) -> OutputVolume:
        return open_output(self.dst, (self.net.output_channels, *self.extent),
                           self.output_dtype, (self.net.output_channels, *self.block),
                           self.grid)

    def ledger(self) -> Ledger:
        return Ledger(ledger_folder(self.dst), {"digest": self.digest,
                                                "input": self.input_identity})


@dataclass
class _Opened:
    """What a process keeps of the job it is running: open volumes, compiled plan, blocks."""

    source: Source
    compiled: CompiledPlan
    blocks: dict[Vec3, Block]
    mask: InputVolume | None
    output: OutputVolume | None = None  # opened by the first block: made after every check


#: Per process: the job being run, by digest.
_context: dict[str, _Opened] = {}


def release() -> None:
    """Close the volumes this process holds open for a job."""
    for opened in _context.values():
        if opened.output is not None:
            opened.output.close()
    _context.clear()


def open_job(job: VolumeJob) -> _Opened:
    """This process's open input and compiled plan for ``job`` (made once per process)."""
    if job.digest not in _context:
        release()
        _context[job.digest] = _Opened(job.source(), CompiledPlan(job.plan, job.net, job.threads),
                                       {b.index: b for b in job.blocks()},
                                       None if job.mask is None else open_input(job.mask.path))
    return _context[job.digest]


def run_block(job: VolumeJob, index: Vec3) -> int:
    """Run one block of ``job`` here: read, compute, check that the output is finite, write its
    chunks, flush, then record it done; a block the mask marks empty is filled instead.
    Idempotent (a retried or duplicated task rewrites the same bits). Returns the output voxels
    computed (0: masked)."""
    opened = open_job(job)
    if opened.output is None:
        opened.output = job.output()
    source, out, compiled, b = opened.source, opened.output, opened.compiled, opened.blocks[index]
    if job.mask is not None and opened.mask is not None and job.mask.empty(opened.mask, b.start,
                                                                           b.stop):
        shape = (job.net.output_channels, *(b.stop[a] - b.start[a] for a in range(3)))
        _write(job, out, b, np.full(shape, job.mask.fill, np.float32))
        return 0
    in_patch = compiled.plan.input_patch
    lo = vec3(min(t.start[a] for t in b.tiles) for a in range(3))
    hi = vec3(max(t.start[a] for t in b.tiles) + in_patch[a] for a in range(3))
    vol = source.read(lo, hi)
    dense = np.empty((job.net.output_channels, *(b.stop[a] - b.start[a] for a in range(3))),
                     np.float32)
    run_tiles(compiled, b.tiles, vol, lo, dense, b.start)
    check_finite(compiled, b.tiles, vol, lo, dense, b.start,
                 f"block {b.name} (output voxels {list(b.start)} to {list(b.stop)})")
    _write(job, out, b, dense)
    return math.prod(b.stop[a] - b.start[a] for a in range(3))


def _write(job: VolumeJob, out: OutputVolume, b: Block, dense: np.ndarray) -> None:
    """Write block ``b``'s output (float32; uint8 outputs hold [0, 1] as 0..255), flush, and
    only then record it done."""
    if job.output_dtype == "uint8":
        dense = np.rint(np.clip(dense, 0, 1) * 255).astype(np.uint8)
    out.write(b.start, dense)
    out.flush()
    job.ledger().mark(b.name)
