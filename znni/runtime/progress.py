"""Progress of a volume job: a bar on a terminal, periodic plain lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .job import VolumeStats

#: Seconds between plain progress lines (logs, pipes, batch systems).
LINE_INTERVAL = 10.0

Report = Callable[[int, int, VolumeStats], None]


def _line(done: int, total: int, stats: VolumeStats) -> str:
    rate = stats.voxels_per_second
    left = (total - done) * stats.seconds / stats.blocks_run if stats.blocks_run else 0.0
    return (f"znni: {done}/{total} blocks, {rate:,.0f} voxels/s, "
            f"ETA {time.strftime('%H:%M:%S', time.gmtime(left))}")


@contextmanager
def progress_report(quiet: bool) -> Iterator[Report | None]:
    """A ``progress(done, total, stats)`` callback for :func:`~znni.runtime.job.infer_volume`:
    a tqdm bar when stderr is a terminal and tqdm is installed, else a line every
    LINE_INTERVAL seconds and one at the end; None when ``quiet``."""
    if quiet:
        yield None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None and sys.stderr.isatty():
        bar = tqdm(unit="block", dynamic_ncols=True)

        def update(done: int, total: int, stats: VolumeStats) -> None:
            bar.total = total
            bar.n = done
            bar.set_postfix_str(f"{stats.voxels_per_second:,.0f} voxels/s")
            bar.refresh()

        try:
            yield update
        finally:
            bar.close()
        return
    last = [time.monotonic()]
    final: list[str] = []

    def log_line(done: int, total: int, stats: VolumeStats) -> None:
        final[:] = [_line(done, total, stats)]
        if time.monotonic() - last[0] >= LINE_INTERVAL:
            last[0] = time.monotonic()
            print(final[0], file=sys.stderr, flush=True)

    yield log_line
    if final:
        print(final[0], file=sys.stderr, flush=True)
