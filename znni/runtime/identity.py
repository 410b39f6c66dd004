"""What a volume on disk is: where it lives (so that a job never writes over its own input) and
what it holds (so that done records never outlive a change of the input).

**Where.** An output overwrites its input if the two are one file under two names — the same
path spelled differently, a symbolic link, a hard link, a bind mount — or if one lies inside the
other (a zarr directory holding the input, an input inside the output's zarr tree, or inside
the done-records folder that a job clears). Paths are compared resolved (symbolic links and
``..`` followed) and, where they exist, by (device, inode) of the path and of all its
ancestors, which catches hard links, bind mounts and case-insensitive spellings alike. HDF5
volumes are compared by file: a dataset written beside the input in the same file shares the
file's metadata and free space with it, and HDF5 cannot take a reader and a writer at once.

**What.** :func:`content_identity` stands in for the input's bytes without reading them: for a
file (npy, HDF5, TIFF) its size, modification time (ns) and inode; for a zarr directory the
same three of every file in it. Any write through the file API moves the modification time
(also through mmap and HDF5's in-place updates), a replacement by rename (rsync, atomic
writers) brings a new inode whatever mtime the copy carries, and a truncation changes the size.
The change time is left out on purpose: ``chmod``, ``chown`` or a new hard link move it without
touching a voxel, and clearing a day of done blocks for a permission fix would be a bug of its
own. What this misses: a same-size write in place that sets the mtime back afterwards
(``touch -d``), and on filesystems with coarse timestamps (ext3: 1 s) a same-size rewrite
within one tick of the records' run. Zarr needs every chunk file:
chunks are rewritten in place, which moves the chunk's mtime but not its directory's. The cost
is one ``stat`` per chunk, once per run, on the driver: 5.5 µs per file measured here (os.walk,
stat and SHA-256 on a loaded 2-core VM, local disk), so 500,000 chunks (a 1 TB uint8 volume in
128³ chunks) take about 3 s; on NFS with a cold attribute cache a stat may cost a round trip
(0.1–1 ms: minutes). Either is small against the job, which opens and reads every chunk of its
region at least once and runs a ConvNet over every voxel (hours for such a volume). The whole
array is listed, not only the chunks under ``--bbox``: simpler, and a change outside the region
merely recomputes (it never reuses a stale block).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import VolumeError


def _stat_line(path: str, name: str) -> bytes:
    st = os.stat(path)
    return f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode()


def content_identity(path: Path) -> str:
    """A digest of size, mtime and inode of the file ``path``, or of every file under the
    directory ``path`` (in sorted order, so that the listing order of the filesystem does not
    matter)."""
    digest = hashlib.sha256()
    if not path.is_dir():
        digest.update(_stat_line(str(path), ""))
        return digest.hexdigest()
    top = len(str(path)) + 1
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            file = os.path.join(root, name)
            digest.update(_stat_line(file, file[top:]))
    return digest.hexdigest()


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _lineage(path: Path) -> set[tuple[int, int]]:
    """(device, inode) of ``path`` and of each of its existing ancestors."""
    found = (_inode(p) for p in (path, *path.parents))
    return {inode for inode in found if inode is not None}


def overlaps(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file or directory, or one lies inside the other."""
    ra, rb = a.resolve(), b.resolve()
    if ra == rb or ra in rb.parents or rb in ra.parents:
        return True
    ia, ib = _inode(ra), _inode(rb)
    return (ia is not None and ia in _lineage(rb)) or (ib is not None and ib in _lineage(ra))


def check_distinct(src: str, src_path: Path, dst: str, written: Mapping[str, Path]) -> None:
    """Refuse a job whose output ``dst`` would overwrite the input ``src`` at ``src_path``:
    ``written`` names each path the job writes (the output itself, its done records, its lock
    file) by what it is."""
    for what, path in written.items():
        if overlaps(src_path, path):
            raise VolumeError(
                f"output {dst!r} would overwrite the input {src!r}: {what} {str(path)!r} and "
                "the input are one file (under one name or two), or one lies inside the other",
                "write the output to another file or directory (later blocks still read the "
                "input)")
