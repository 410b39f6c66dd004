"""On-disk cache of compiled kernels, keyed by content hash, safe under concurrency.

Key = SHA-256 of (source, ABI and other template headers, compiler fingerprint, znni version):
everything that changes the binary and nothing else. An entry is ``<key>.so`` plus ``<key>.json`` (the manifest,
holding the .so's SHA-256), both written to temporary files in the same directory and moved into
place with ``os.replace``, manifest last. An entry whose manifest is missing, unreadable or
disagrees with the .so is a miss and is rebuilt. A per-key ``flock`` only saves duplicate work:
two processes building the same key both succeed either way.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from .. import __version__, config
from .render import ABI_HEADER

log = logging.getLogger("znni")

#: Number of compilations done by this process (tests use it to prove cache hits).
compile_count = 0


class Toolchain(Protocol):
    """What the cache needs of a compiler: g++ (GccToolchain) or nvcc (NvccToolchain)."""

    @property
    def fingerprint(self) -> str: ...

    def compile(self, source: Path, output: Path) -> None: ...


def _headers() -> str:
    """The ABI header and every other header generated code may include (the CUDA
    emulation among them): a header change is a different binary."""
    others = sorted(p for p in ABI_HEADER.parent.glob("*.h") if p != ABI_HEADER)
    return "".join(p.read_text() for p in (ABI_HEADER, *others))


def cache_key(source: str, toolchain: Toolchain) -> str:
    h = hashlib.sha256()
    for part in (source, _headers(), toolchain.fingerprint, __version__):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _kernel_dir() -> Path:
    path = config.cache_dir() / "kernels"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lookup(key: str) -> Path | None:
    """The entry's .so if it is complete and intact, else None."""
    directory = _kernel_dir()
    so, manifest = directory / f"{key}.so", directory / f"{key}.json"
    try:
        record = json.loads(manifest.read_text())
        if record.get("key") == key and record.get("sha256") == _file_digest(so):
            return so
    except (OSError, ValueError, AttributeError):
        pass
    return None


@contextmanager
def _key_lock(key: str) -> Iterator[None]:
    with open(_kernel_dir() / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def build(source: str, toolchain: Toolchain, label: str, force: bool = False) -> Path:
    """Path of a compiled, intact shared object for ``source``; compiles only on a miss."""
    global compile_count
    key = cache_key(source, toolchain)
    if not force and (hit := lookup(key)) is not None:
        return hit
    with _key_lock(key):
        if not force and (hit := lookup(key)) is not None:
            return hit  # another process built it while we waited
        directory = _kernel_dir()
        with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as tmp:
            src = Path(tmp) / "kernel.cpp"
            src.write_text(source)
            obj = Path(tmp) / "kernel.so"
            start = time.perf_counter()
            toolchain.compile(src, obj)
            compile_count += 1
            log.info("compiled %s in %.1f s", label, time.perf_counter() - start)
            so = directory / f"{key}.so"
            os.chmod(obj, 0o700)
            os.replace(obj, so)
            (directory / f"{key}.cpp").write_text(source)  # for inspection only
        manifest = {"key": key, "sha256": _file_digest(so), "label": label,
                    "created": time.time()}
        _atomic_write(directory / f"{key}.json", json.dumps(manifest).encode())
        return so
