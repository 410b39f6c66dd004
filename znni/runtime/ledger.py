"""Done records of an out-of-core job: what makes a killed run resumable and never wrong.

Beside the output ``OUT`` lives ``OUT.znni-done/`` (:func:`~znni.runtime.storage.ledger_folder`):
``job.json`` holds the job's identity (the digest of network topology, weights, plan, input,
region, mode and output dtype, and the input's content identity on its own, so that a change of
the input can be told apart), and one empty file per finished block. A block's record is
created (atomically: a temporary name, then rename) only after the block's chunks are written
and flushed, so a record never stands for a half-written chunk. A ledger whose identity differs
from this job's is cleared before anything runs: done records of another net, plan or input are
never mixed with this one's results. Only the holder of the output's lock
(:mod:`~znni.runtime.lock`) opens or clears a ledger; workers only add records.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from ..errors import VolumeError

JOB_FILE = "job.json"


class Ledger:
    def __init__(self, folder: Path, identity: Mapping[str, str]) -> None:
        self.folder = folder
        self.identity = dict(identity)

    def check(self) -> None:
        """Refuse a ledger path that is not a folder of ours: a file or a symbolic link there
        is someone else's (clearing it would delete it, or what it points to)."""
        if self.folder.is_symlink() or (self.folder.exists() and not self.folder.is_dir()):
            kind = "a symbolic link" if self.folder.is_symlink() else "not a folder"
            raise VolumeError(f"{str(self.folder)!r}, where znni keeps the output's done "
                              f"records, is {kind}",
                              "move it away or delete it, or choose another output")

    def open(self, reset: bool = False) -> dict[str, str] | None:
        """Start or resume: keep the records only if they belong to this very job (and
        ``reset`` is false: a freshly created output has no done block, whatever records lie
        beside it). Returns the identity of the records it cleared, if any were readable."""
        self.check()
        try:
            found: dict[str, str] | None = json.loads((self.folder / JOB_FILE).read_text())
        except (OSError, ValueError):
            found = None
        if not isinstance(found, dict):
            found = None
        if found == self.identity and not reset:
            return None
        self.remove()
        self.folder.mkdir()
        _write_atomic(self.folder / JOB_FILE, json.dumps(self.identity))
        return found

    def done(self, name: str) -> bool:
        return (self.folder / name).exists()

    def any_done(self) -> bool:
        """Whether any block is recorded done."""
        return self.folder.is_dir() and any(
            entry.name != JOB_FILE and not entry.name.startswith(".")
            for entry in os.scandir(self.folder))

    def mark(self, name: str) -> None:
        _write_atomic(self.folder / name, "")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
