"""One job per output at a time: an exclusive ``flock`` on ``OUT.znni-lock`` for the whole job.

Two jobs writing one output would mix their blocks, and the second would clear the first's
done records; the lock makes the second fail at once instead. The driver (the process that
called :func:`~znni.runtime.job.infer_volume`) holds it from before the output is created
until the last block is in; Dask workers write blocks under the driver's lock and never take
it. ``flock`` is released by the kernel when its holder dies, so a killed run leaves no stale
lock; on NFS, Linux emulates it with POSIX byte-range locks, which the server arbitrates
between machines.

The lock file lies beside the output, not in its ledger folder: a job clears that folder. It is
opened with ``O_NOFOLLOW`` (a symbolic link planted there cannot redirect the pid written into
it onto another file) and removed by its holder while still locked; a process that opened it
just before and locks it just after finds the path gone or another file there and starts over,
so two processes never hold locks on two different files of one path.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import VolumeError


def _holder(fd: int) -> str:
    """The pid written into a lock file by its holder ("?" while it has not written it yet)."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "?"


def _acquire(path: Path, output: str) -> int:
    """Open and lock ``path`` (without waiting); the locked descriptor."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise VolumeError(f"cannot open the lock file {str(path)!r} of output {output!r}: "
                              f"{exc.strerror}", "it must be a regular file (znni makes it); "
                              "move away whatever is there") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise VolumeError(f"another znni job (pid {pid}) is writing {output!r}",
                              "wait for it or choose another output (an HDF5 file takes one "
                              "job at a time, whatever its dataset)") from None
        if _same_file(path, fd):
            return fd
        os.close(fd)  # its previous holder removed it between our open and our lock


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        current = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino)


@contextmanager
def output_lock(path: Path, output: str) -> Iterator[None]:
    """Hold the exclusive lock ``path`` of ``output`` (its spec, for messages) for the
    ``with`` block; a held lock is a :class:`~znni.errors.VolumeError` naming its holder."""
    fd = _acquire(path, output)
    try:
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)
        os.ftruncate(fd, len(pid))  # a dead holder's longer pid, if any
        yield
    finally:
        if _same_file(path, fd):  # (someone may have deleted it by hand, and another job
            path.unlink()         # made and locked a new one: that one is not ours)
        os.close(fd)  # unlocks, after the unlink: see the module docstring
