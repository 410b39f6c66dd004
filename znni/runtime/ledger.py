"""Done records of an out-of-core job: what makes a killed run resumable and never wrong.

Beside the output ``OUT`` lives ``OUT.znni-done/`` (:func:`~znni.runtime.storage.ledger_folder`): ``job.json`` holds the job's digest (network
topology, weights, plan, input, region, mode and output dtype), and one empty file per finished
block. A block's record is created (atomically: a temporary name, then rename) only after the
block's chunks are written and flushed, so a record never stands for a half-written chunk. A
ledger whose digest differs from this job's is cleared before anything runs: done records of
another net or plan are never mixed with this one's results.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


class Ledger:
    def __init__(self, folder: Path, digest: str) -> None:
        self.folder = folder
        self.digest = digest

    def open(self) -> None:
        """Start or resume: keep the records only if they belong to this very job."""
        job = self.folder / "job.json"
        try:
            same = json.loads(job.read_text()).get("digest") == self.digest
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            _write_atomic(job, json.dumps({"digest": self.digest}))

    def done(self, name: str) -> bool:
        return (self.folder / name).exists()

    def mark(self, name: str) -> None:
        _write_atomic(self.folder / name, "")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
