"""Reading and writing znni's cache directory, which holds compiled code that znni loads and runs.

Whoever can write the cache can run code in every znni process, so the cache must be private:
every directory znni writes there is created 0700, and an existing one is refused unless it is
a real directory (not a symlink) owned by this user and writable by no one else. The check runs
once per directory per process. Inside a private directory only its owner can plant files, but
links or directories left there (from before it was private, or by mistake) are never followed
or trusted: writes go to a fresh temporary file moved into place with ``os.replace`` (which
replaces a symlink instead of following it, and gives readers the old or the new file, never
half of one), lock files are opened with ``O_NOFOLLOW``, and a file is read only if it is a
regular file of this user that no one else can write.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path

from ..errors import ZnniError

_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def _untrusted(path: Path, info: os.stat_result) -> tuple[str, str] | None:
    """Why a file or directory with this ``lstat`` may hold someone else's code, and what to
    do about it; None if it is this user's and no one else can write it."""
    elsewhere = "set ZNNI_CACHE_DIR to a private directory of your own"
    if stat.S_ISLNK(info.st_mode):
        return "is a symlink", f"replace {path} by a real directory, or {elsewhere}"
    if info.st_uid != os.geteuid():  # the owner of the files this process creates
        return f"is owned by another user (uid {info.st_uid})", elsewhere
    if info.st_mode & _WRITABLE_BY_OTHERS:
        return (f"is writable by others (mode {stat.S_IMODE(info.st_mode):04o})",
                f"chmod 700 {path}, or {elsewhere}")
    return None


@cache
def private_dir(path: Path) -> Path:
    """``path``, created 0700 (with any missing parents) if absent; a ZnniError if it exists
    but is not a directory or others could plant code in it."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ZnniError(f"cannot create the znni cache directory {path}: {exc.strerror}",
                        "set ZNNI_CACHE_DIR to a directory you can write") from None
    info = os.lstat(path)
    untrusted = _untrusted(path, info)
    if untrusted is not None:
        problem, hint = untrusted
        raise ZnniError(f"cache directory {path} {problem}; znni loads compiled code from it",
                        hint)
    if not stat.S_ISDIR(info.st_mode):
        raise ZnniError(f"the znni cache directory {path} is not a directory",
                        f"remove {path}, or set ZNNI_CACHE_DIR to a directory")
    return path


def read_private(path: Path) -> bytes:
    """The contents of ``path``; an OSError (a cache miss to callers) unless it is a regular
    file of this user that no one else can write: anything else was not written by znni.
    ``O_NONBLOCK`` keeps a FIFO planted there from hanging the open."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if _untrusted(path, info) is not None or not stat.S_ISREG(info.st_mode):
            raise PermissionError(errno.EPERM, "not a private regular file", str(path))
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` (disk full, read-only cache) into a ZnniError."""
    try:
        yield
    except OSError as exc:
        raise ZnniError(f"cannot write {path} in the znni cache: {exc.strerror or exc}",
                        "free disk space, or set ZNNI_CACHE_DIR to a writable private "
                        "directory") from None


def _remove(path: Path) -> None:
    """Delete the symlink, file or directory tree at ``path`` (without following links)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def install(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` atomically, replacing whatever is there: a symlink is
    replaced, not followed; a directory (a damaged entry ``os.replace`` cannot overwrite) is
    removed first."""
    with _writing(target):
        try:
            os.replace(source, target)
        except IsADirectoryError:
            _remove(target)
            os.replace(source, target)


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` atomically through a fresh 0600 temporary file in the same directory.
    No fsync: a cache file torn by a crash fails its checksum or parse and is rebuilt."""
    with _writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            install(Path(tmp), path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600). A symlink or directory found
    there is removed, not followed: opening a planted link must not create or touch its target."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    with _writing(path):
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EISDIR):
                raise
            _remove(path)
            fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
