"""Block tasks on Dask distributed: the same :func:`~znni.runtime.job.run_block` as a task farm.

The client submits block tasks (retried if a worker dies: a block is idempotent, and only its
done record — written last — counts), keeps a bounded number in flight so the scheduler never
holds the whole volume's task graph, and reports each finished block. Workers open the volumes
themselves (paths on a shared filesystem), compile or load kernels from their own machine's
cache, and run the kernels with the job's explicit thread count (Dask sets OMP_NUM_THREADS=1;
znni never relies on it). HDF5 outputs are refused: HDF5 files cannot take concurrent writers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ZnniError
from ..spec import Vec3
from .job import VolumeJob, run_block

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
    if workers is None or workers < 1:
        raise ZnniError(f"--workers must be ≥ 1, got {workers}", "e.g. --workers 2")
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    return distributed.Client(cluster)


def check_output(dst: str) -> None:
    """Refuse outputs that several processes cannot write at once (before anything is made)."""
    if dst.partition(":")[0].lower().endswith((".h5", ".hdf5")):
        raise ZnniError("an HDF5 output cannot be written by several workers at once",
                        "write a .zarr (or .npy) output on a cluster")


def run_on_cluster(client: Any, job: VolumeJob, todo: Sequence[Vec3],
                   finished: Callable[[int, int], None]) -> None:
    """Run the blocks ``todo`` of ``job`` on ``client``'s workers; ``finished(n, voxels)`` as
    each completes."""
    distributed = _require_distributed()
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    window = IN_FLIGHT_PER_WORKER * workers
    pending = list(todo)
    job_future = client.scatter(job, broadcast=True)
    running = distributed.as_completed()
    for _ in range(min(window, len(pending))):
        running.add(client.submit(run_block, job_future, pending.pop(0), retries=RETRIES,
                                  pure=False))
    for n, future in enumerate(running, 1):
        try:
            voxels = future.result()
        except Exception as exc:
            raise ZnniError(f"a block failed on the cluster after {RETRIES} retries: {exc!r}",
                            "see the worker logs; re-run the same command to resume") from None
        finished(n, voxels)
        if pending:
            running.add(client.submit(run_block, job_future, pending.pop(0), retries=RETRIES,
                                      pure=False))
