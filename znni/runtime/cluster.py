"""Block tasks on Dask distributed: the same :func:`~znni.runtime.block_task.run_block` as a
task farm.

The client submits block tasks (retried if a worker dies: a block is idempotent, and only its
done record — written last — counts), keeps a bounded number in flight so the scheduler never
holds the whole volume's task graph, and reports each finished block. Workers open the volumes
themselves (paths on a shared filesystem), compile or load kernels from their own machine's
cache, and run the kernels with the job's explicit thread count (Dask sets OMP_NUM_THREADS=1;
znni never relies on it). HDF5 outputs are refused: HDF5 files cannot take concurrent writers.
The client's process holds the output's lock (:mod:`.lock`) for the whole job and makes the
output and its ledger; workers only write blocks and add done records, and never take the lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ZnniError
from ..limits import MAX_THREADS
from ..spec import Vec3
from .backends import is_remote
from .block_task import VolumeJob, run_block

#: Retries of a block whose worker died or failed.
RETRIES = 3
#: Block tasks in flight per worker.
IN_FLIGHT_PER_WORKER = 2


def _require_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ZnniError("running on a cluster needs dask distributed",
                        'install the extra: pip install "znni[dist]"') from None
    return distributed


def connect(scheduler: str | None, workers: int | None, threads: int | None) -> Any:
    """A client: to ``scheduler`` (``tcp://host:port``), or to a new LocalCluster of
    ``workers`` single-threaded worker processes (kernels run ``threads`` threads each)."""
    distributed = _require_distributed()
    if scheduler is not None:
        try:
            return distributed.Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ZnniError(f"cannot reach the Dask scheduler {scheduler!r}: {exc}",
                            "start it (dask scheduler) or check the address") from None
    if workers is None or not 1 <= workers <= MAX_THREADS:  # each worker is a process
        raise ZnniError(f"--workers must be from 1 to {MAX_THREADS}, got {workers}",
                        "e.g. --workers 2, or give --scheduler for a real cluster")
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    return distributed.Client(cluster)


def check_output(dst: str) -> None:
    """Refuse outputs that several processes cannot write at once (before anything is made)."""
    if dst.partition(":")[0].lower().endswith((".h5", ".hdf5")):
        raise ZnniError("an HDF5 output cannot be written by several workers at once",
                        "write a .zarr (or .npy) output on a cluster")
    if is_remote(dst):
        raise ZnniError("a remote layer's done records live on this machine, where workers "
                        "elsewhere cannot record their blocks",
                        "write a layer on a filesystem the workers share, or run here alone")


def run_on_cluster(client: Any, job: VolumeJob, todo: Sequence[Vec3],
                   finished: Callable[[int, int], None]) -> None:
    """Run the blocks ``todo`` of ``job`` on ``client``'s workers; ``finished(n, voxels)`` as
    each completes. When a block fails for good (or ``finished`` raises), the blocks still in flight
    are waited for before the error is raised: no worker writes into the output after this returns,
    so the caller may clean up and release the output's lock. (An interrupt of the client cannot
    stop tasks already running on workers: Dask does not kill them.)"""
    distributed = _require_distributed()
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    window = IN_FLIGHT_PER_WORKER * workers
    pending = list(todo)
    job_future = client.scatter(job, broadcast=True)
    running = distributed.as_completed()
    in_flight: set[Any] = set()

    def submit() -> None:
        future = client.submit(run_block, job_future, pending.pop(0), retries=RETRIES,
                               pure=False)
        in_flight.add(future)
        running.add(future)

    for _ in range(min(window, len(pending))):
        submit()
    try:
        for n, future in enumerate(running, 1):
            in_flight.discard(future)
            finished(n, _result(future))
            if pending:
                submit()
    except Exception:
        distributed.wait(list(in_flight))
        raise


def _result(future: Any) -> int:
    """A block task's voxels, or its error: a :class:`ZnniError` (e.g. a NaN output) is the
    user's to fix and keeps its own message; anything else is named as a cluster failure."""
    try:
        return int(future.result())
    except ZnniError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure of a task, named as one
        raise ZnniError(f"a block failed on the cluster after {RETRIES} retries: {exc!r}",
                        "see the worker logs; re-run the same command to resume") from None
