"""Out-of-core dense inference: a volume on disk in, a volume on disk out, block by block.

The output is cut into blocks of whole storage chunks (multiples of the plan's patch,
:func:`~znni.runtime.tiling.blocks`). A block reads its patches' input region (its write region
plus the FOV halo; reflected at the border in ``same`` mode, zero past the far end like the
in-memory path), runs them through the compiled plan, writes its chunks, flushes, and only then
records itself done (:mod:`~znni.runtime.ledger`). Re-running the same job skips done blocks; a
run killed at any moment resumes to output bit-identical to an uninterrupted one — and to
:func:`znni.infer` on the same array with the same plan, since every patch sees the same input
wherever it runs. Memory: the plan's budget plus one block's input and output, never the volume.

Data safety: an output that is the input, under any name, is refused (:mod:`.identity`); one
job at a time writes an output (:mod:`.lock`); the done records belong to the input's content,
not only its name, so a changed input is recomputed; nothing is made on disk before every check
has passed and the kernels are compiled, and a run failing before its first block is done
removes what it made; a block whose output holds NaN or Inf is an error naming the layer where
it appeared, and is never recorded done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import config
from ..errors import ShapeError, ZnniError
from ..planner.plan import Plan, PrimitiveChoice, network_digest
from ..planner.search import check_saved_plan
from ..spec import Network, Vec3
from .backends import UNIT_GRID, Grid
from .block_task import Region, Source, VolumeJob, open_job, release, run_block
from .cluster import check_output, run_on_cluster
from .executor import check_plan
from .identity import check_distinct
from .infer import check_plan_tta, plan_for_volume
from .ledger import Ledger
from .lock import output_lock
from .mask import open_mask
from .storage import (
    OutputVolume,
    check_output_spec,
    input_identity,
    ledger_folder,
    lock_path,
    open_input,
    remove_output,
    volume_path,
)
from .tiling import grow_evenly, vec3
from .volume import check_mode, same_padding

log = logging.getLogger("znni")

#: Target bytes of one block's input and output buffers (at least one patch per block).
BLOCK_BYTES = 256 << 20

@dataclass(frozen=True)
class VolumeStats:
    seconds: float
    output_voxels: int   # computed by this run (done blocks skipped)
    blocks_run: int      # by this run, masked ones included
    blocks_skipped: int  # done before this run
    blocks_masked: int = 0  # filled, not computed: the mask marks them empty

    @property
    def voxels_per_second(self) -> float:
        return self.output_voxels / self.seconds if self.seconds > 0 else float("inf")


def parse_bbox(text: str, shape: Sequence[int], grid: Grid | None = None) -> Region:
    """``z0:z1,y0:y1,x0:x1`` (empty bounds: the volume's) within ``shape`` (Z, Y, X): voxels,
    or world coordinates in nanometres (``4000nm``) of a volume with a ``grid``."""
    parts = text.split(",")
    if len(parts) != 3 or any(p.count(":") != 1 for p in parts):
        raise ZnniError(f"cannot read --bbox {text!r}", "write z0:z1,y0:y1,x0:x1 (e.g. 0:512,:,:)")
    start, stop = [], []
    for axis, part in enumerate(parts):
        lo, hi = part.split(":")
        try:
            a = _bound(lo, 0, axis, grid)
            b = _bound(hi, shape[axis], axis, grid)
        except ValueError:
            raise ZnniError(f"cannot read --bbox {text!r}", "bounds are integers (voxels) or "
                            "world coordinates in nm on the voxel grid (e.g. 4000nm)") from None
        if not 0 <= a < b <= shape[axis]:
            raise ShapeError(f"--bbox {part!r} on axis {'zyx'[axis]} is outside the volume's "
                             f"0:{shape[axis]}", "give 0 ≤ start < stop ≤ the volume size")
        start.append(a)
        stop.append(b)
    return (start[0], start[1], start[2]), (stop[0], stop[1], stop[2])


def _bound(text: str, default: int, axis: int, grid: Grid | None) -> int:
    """One bound of --bbox in voxels of the volume: an integer, or ``<number>nm`` in world
    coordinates (a ValueError if it is neither, or lies between voxels)."""
    if not text:
        return default
    if not text.endswith("nm"):
        return int(text)
    if grid is None:
        raise ZnniError("--bbox in nm needs an input with world coordinates",
                        "give voxels, or an OME-Zarr or precomputed input")
    voxels = float(text[:-2]) / grid.resolution[axis] - grid.offset[axis]
    if abs(voxels - round(voxels)) > 1e-6:
        raise ValueError(text)
    return round(voxels)


def job_digest(net: Network, plan: Plan, source: Source, mode: str, output_dtype: str,
               input_identity: str, mask: list[Any] | None = None) -> str:
    """What the output's bits depend on, the input's content identity
    (:func:`~znni.runtime.identity.content_identity`) included: done records of any other job
    are not reused; ``mask``: the mask's path, identity, factor and fill, if any."""
    h = hashlib.sha256()
    h.update(network_digest(net).encode())
    for index, (w, b) in sorted(net.require_weights().items()):
        h.update(str(index).encode() + np.ascontiguousarray(w).tobytes()
                 + np.ascontiguousarray(b).tobytes())
    h.update(json.dumps({
        "plan": [plan.output_patch, plan.batch,
                 [(lp.primitive, lp.in_place) for lp in plan.layers], plan.tta],
        "input": [source.volume.path, source.volume.shape, str(source.volume.dtype),
                  input_identity],
        "region": source.region, "mode": mode, "dtype": output_dtype, "mask": mask}).encode())
    return h.hexdigest()


def block_size(net: Network, plan: Plan, extent: Vec3) -> Vec3:
    """Whole patches per axis, grown evenly while one block's input and output buffers stay
    within BLOCK_BYTES (and no larger than the output needs)."""
    patch, fov = plan.output_patch, net.fov
    cap = vec3(max(1, -(-extent[a] // patch[a])) for a in range(3))

    def fits(u: list[int]) -> bool:
        inp = net.input_channels * math.prod(u[a] * patch[a] + fov[a] - 1 for a in range(3))
        size = 4 * (inp + net.output_channels * math.prod(u[a] * patch[a] for a in range(3)))
        return size <= BLOCK_BYTES

    units = grow_evenly(cap, patch, fits)
    return (units[0] * patch[0], units[1] * patch[1], units[2] * patch[2])


def infer_volume(net: Network, src: str, dst: str, *, plan: Plan | None = None,
                 patch: Vec3 | None = None, primitives: PrimitiveChoice = None,
                 memory: int | str | None = None, threads: int | None = None, mode: str = "valid",
                 bbox: str | None = None, output_dtype: str = "float32",
                 progress: Callable[[int, int, VolumeStats], None] | None = None,
                 client: Any = None, precision: str = "fp32", mask: str | None = None,
                 mask_fill: float = 0.0, tta: str = "none") -> VolumeStats:
    """Dense inference of ``net`` from the volume at ``src`` into ``dst`` (see the module
    docstring; formats in :mod:`~znni.runtime.storage`). ``plan``: a saved plan; else one made
    as :func:`znni.infer` makes it (``patch``, ``primitives``), within ``memory`` bytes (int or
    ``"4GiB"``; default: 80 % of the available RAM) less one block — per worker. ``bbox``:
    ``"z0:z1,y0:y1,x0:x1"`` of the input. ``progress(done, total, stats)`` after each block.
    ``client``: a ``distributed.Client`` to farm the blocks out to (:mod:`.cluster`); each
    worker runs ``threads`` kernel threads. ``precision``: as :func:`znni.infer`. ``mask``: a
    volume (the input's grid or a coarser one) zero where output blocks are filled with
    ``mask_fill`` instead of computed (:mod:`.mask`). ``tta``: as :func:`znni.infer`.
    Returns what this run did.

    In order: every check and the plan (:func:`prepare_job`; nothing on disk is touched), the
    output's lock (:mod:`.lock`; held to the end), the kernels (compiled here for a local run),
    and only then the output and its ledger are made — so a failed check leaves nothing behind,
    and a failure before the first block is done removes what this run made."""
    if client is not None:
        check_output(dst)
    job = prepare_job(net, src, dst, plan, patch, primitives, memory, threads, mode, bbox,
                      output_dtype, precision, mask, mask_fill, tta)
    with output_lock(lock_path(dst), dst):
        job.ledger().check()
        try:
            if client is None:
                open_job(job)  # compile now: a compile error must not leave an empty output
            with _initialised(job):
                return _run(job, progress, client)
        finally:
            release()


@contextmanager
def _initialised(job: VolumeJob) -> Iterator[None]:
    """:func:`initialised` for a chain job (whose outputs this process holds through
    :mod:`.block_task`)."""
    def report(cleared: dict[str, str] | None, created: bool) -> None:
        report_cleared(job.dst, job.src, job.input_identity, cleared, created)

    with initialised(job.dst, job.output, job.ledger(), report, release):
        yield


@contextmanager
def initialised(dst: str, make_output: Callable[[], OutputVolume], ledger: Ledger,
                report: Callable[[dict[str, str] | None, bool], None],
                close: Callable[[], None]) -> Iterator[None]:
    """Create (or reopen) the output ``dst`` with ``make_output`` (closed again at once: blocks
    reopen it) and open its ``ledger`` for the ``with`` block; ``report(cleared, created)``
    says why records were cleared. If the block fails before any block of the job is recorded
    done, ``close`` what the run holds open and remove what this run made: the output if it
    was not there before (only the dataset, in an HDF5 file that was), and the ledger. An
    output from before this run, or one holding done blocks, is kept."""
    had_file = volume_path(dst).exists()
    created = not had_file  # until open_output says what it did
    opened = False
    try:
        output = make_output()
        created = output.created
        output.close()
        report(ledger.open(reset=created), created)
        opened = True
        yield
    except BaseException:
        if not (opened and ledger.any_done()):
            close()  # close the output before removing it
            if created:
                remove_output(dst, whole_file=not had_file)
            if opened:
                ledger.remove()
        raise


def report_cleared(dst: str, src: str, input_identity: str, cleared: dict[str, str] | None,
                   created: bool) -> None:
    """Say why done records were cleared (the ledger says which it cleared)."""
    if cleared is None:
        return
    if created:
        log.warning("output %s was not there: the done records beside it are cleared", dst)
    elif "input" in cleared and cleared["input"] != input_identity:
        log.warning("input %s changed since the records were written; recomputing all blocks",
                    src)
    else:
        log.info("done records of another job (network, weights, plan, input, region, mode or "
                 "output dtype) cleared")


def _run(job: VolumeJob, progress: Callable[[int, int, VolumeStats], None] | None,
         client: Any) -> VolumeStats:
    """Run the blocks of ``job`` not yet done, here or on ``client``'s workers."""
    work = job.blocks()
    ledger = job.ledger()
    todo = [b.index for b in work if not ledger.done(b.name)]
    start = time.perf_counter()
    voxels = masked = 0

    def stats(n: int) -> VolumeStats:
        return VolumeStats(time.perf_counter() - start, voxels, n, len(work) - len(todo),
                           masked)

    def finished(n: int, computed: int) -> None:
        nonlocal voxels, masked
        voxels += computed
        masked += computed == 0
        if progress is not None:
            progress(len(work) - len(todo) + n, len(work), stats(n))

    if client is None:
        for n, index in enumerate(todo, 1):
            finished(n, run_block(job, index))
    else:
        run_on_cluster(client, job, todo, finished)
    return stats(len(todo))


def prepare_job(net: Network, src: str, dst: str, plan: Plan | None, patch: Vec3 | None,
                primitives: PrimitiveChoice, memory: int | str | None, threads: int | None,
                mode: str, bbox: str | None, output_dtype: str,
                precision: str = "fp32", mask: str | None = None,
                mask_fill: float = 0.0, tta: str = "none") -> VolumeJob:
    """Check everything and plan: a job ready to run, locally or on a cluster. Touches nothing
    on disk: the output and its ledger are made by :func:`infer_volume`, under the lock."""
    check_mode(mode)
    net.require_weights()
    volume = open_input(src)
    if volume.shape[0] != net.input_channels:
        raise ShapeError(f"input volume has {volume.shape[0]} channel(s), network {net.name!r} "
                         f"expects {net.input_channels}", "stack the channels on the first axis")
    check_output_spec(dst, output_dtype)
    check_distinct(src, volume_path(src), dst, {"the output": volume_path(dst),
                                                "its done records": ledger_folder(dst),
                                                "its lock file": lock_path(dst)})
    region = (parse_bbox(bbox, volume.shape[1:], volume.grid) if bbox
              else ((0, 0, 0), volume.shape[1:]))
    pad = same_padding(net) if mode == "same" else [(0, 0)] * 3
    source = Source(volume, region, pad)
    fov = net.fov
    if any(source.shape[a] < fov[a] for a in range(3)):
        raise ShapeError(f"input region {list(source.shape)} (z,y,x) is smaller than the field "
                         f"of view {list(fov)} of network {net.name!r}",
                         "give a larger region, or --mode same")
    extent = vec3(source.shape[a] - fov[a] + 1 for a in range(3))
    saved = plan is not None
    if plan is None:
        budget = None if memory is None else config.parse_bytes(memory)
        plan = plan_for_volume(net, extent,
                               None if patch is None else net.check_patch(patch), budget,
                               primitives, threads, held_bytes=BLOCK_BYTES,
                               precision=precision, tta=tta)
    check_plan(plan, net)
    check_plan_tta(plan, tta)
    if saved:  # a saved plan: sized for this volume and --memory (planner/search.py)
        check_saved_plan(plan, net, extent, memory)
    identity = input_identity(src)
    # output voxel 0's field of view is centred on this input voxel ("same": its own): where
    # the output lies in the input's world, and what the mask says of it
    centre = [0, 0, 0] if mode == "same" else [(f - 1) // 2 for f in fov]
    first = vec3(region[0][a] + centre[a] for a in range(3))
    masking, mask_record = None, None
    if mask is not None:
        check_distinct(mask, volume_path(mask), dst, {"the output": volume_path(dst),
                                                      "its done records": ledger_folder(dst),
                                                      "its lock file": lock_path(dst)})
        masking = open_mask(mask, volume.shape[1:], first, mask_fill, volume.grid)
        mask_record = [mask, input_identity(mask), masking.factor, mask_fill]
    return VolumeJob(net, plan, src, dst, region, mode, output_dtype,
                     threads or config.default_threads(), extent,
                     block_size(net, plan, extent),
                     job_digest(net, plan, source, mode, output_dtype, identity, mask_record),
                     identity, masking, (volume.grid or UNIT_GRID).shifted(first))
