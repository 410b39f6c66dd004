"""On-disk cache of compiled kernels, keyed by content hash, safe under concurrency.

Key = SHA-256 of (source, ABI and other template headers, compiler fingerprint, znni version):
everything that changes the binary and nothing else. An entry is ``<key>.so`` plus ``<key>.json``
(the manifest, holding the .so's SHA-256), both moved into place with ``os.replace``, manifest last.
An entry whose manifest is missing, unreadable or disagrees with the .so is a miss and is rebuilt. A
per-key ``flock`` only saves duplicate work: two processes building the same key both succeed either
way. The cache holds code znni runs, so it is kept private (see :mod:`.private_files`):
:func:`lookup` is the gate every cached .so passes before it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Protocol

from .. import config
from ..version import __version__
from .private_files import install, locked, private_dir, read_private, write_private
from .render import ABI_HEADER

log = logging.getLogger("znni")

#: Number of compilations done by this process (tests use it to prove cache hits).
compile_count = 0


class Toolchain(Protocol):
    """What the cache needs of a compiler: g++ (GccToolchain) or nvcc (NvccToolchain)."""

    @property
    def fingerprint(self) -> str: ...

    def compile(self, source: Path, output: Path) -> None: ...

    def __hash__(self) -> int: ...  # the loader memoises kernels per (source, toolchain)


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
    return private_dir(config.cache_dir() / "kernels")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lookup(key: str) -> Path | None:
    """The entry's .so if it is complete, intact and private, else None. Both files must be
    regular files of this user that no one else can write (a symlink, directory or foreign
    file is a miss, replaced by the rebuild), in the private kernel directory."""
    directory = _kernel_dir()
    so, manifest = directory / f"{key}.so", directory / f"{key}.json"
    try:
        record = json.loads(read_private(manifest))
        if record.get("key") == key and record.get("sha256") == _digest(read_private(so)):
            return so
    except (OSError, ValueError, AttributeError):
        pass
    return None


def build(source: str, toolchain: Toolchain, label: str, force: bool = False) -> Path:
    """Path of a compiled, intact shared object for ``source``; compiles only on a miss."""
    global compile_count  # noqa: PLW0603 - a per-process counter that tests read
    key = cache_key(source, toolchain)
    if not force and (hit := lookup(key)) is not None:
        return hit
    directory = _kernel_dir()
    with locked(directory / f"{key}.lock"):
        if not force and (hit := lookup(key)) is not None:
            return hit  # another process built it while we waited
        with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as tmp:
            src = Path(tmp) / "kernel.cpp"
            src.write_text(source)
            obj = Path(tmp) / "kernel.so"
            start = time.perf_counter()
            toolchain.compile(src, obj)
            compile_count += 1
            log.info("compiled %s in %.1f s", label, time.perf_counter() - start)
            os.chmod(obj, 0o700)
            digest = _digest(obj.read_bytes())
            so = directory / f"{key}.so"
            install(obj, so)
        write_private(directory / f"{key}.cpp", source.encode())  # for inspection only
        manifest = {"key": key, "sha256": digest, "label": label, "created": time.time()}
        write_private(directory / f"{key}.json", json.dumps(manifest).encode())
        return so
