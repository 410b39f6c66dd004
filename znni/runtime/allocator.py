"""Keep freed memory in the process, so each layer's big buffers reuse already-mapped pages.

Every layer allocates and frees gigabytes of buffers per patch. glibc serves blocks this large
with fresh ``mmap``s and unmaps them on ``free``, so every run paid the kernel's page faults and
zeroing again: measured on this VM, filling a fresh 2.3 GB array took 1.6 s against 0.4 s for a
mapped one, and an n726 FFT layer (S=8, 80→80, 71³) ran 8.0 s instead of 6.5 s. Telling glibc to
serve large blocks from its heap and not trim it makes freed buffers reusable, and that memory
stays with the process until it exits. The price is heap fragmentation: on that layer the peak
RSS growth was 2.5–3.4 GiB (varying run to run) against 2.5 GiB of planned working memory, which
would break the budget guarantee — so this is opt-in: ``ZNNI_KEEP_FREED_MEMORY=1``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

from .. import config

log = logging.getLogger("znni")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
#: Blocks from this size up are mapped (and unmapped when freed) whatever was freed before.
FIXED_MMAP_THRESHOLD = 4 << 20


def _mallopt() -> Callable[[int, int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return None  # not glibc (musl, macOS): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt


def fixed_mmap_threshold() -> bool:
    """Stop glibc from raising its mmap threshold after large frees (up to 32 MiB): a DAG's
    tensors of 4–32 MiB, freed block after block, otherwise stay in a fragmented heap that the
    planner's budget does not see (BasicUNet at 2 GiB: ~200 MB of RSS above the numpy
    allocations). Off where freed memory is kept on purpose (``ZNNI_KEEP_FREED_MEMORY``)."""
    mallopt = None if config.keep_freed_memory() else _mallopt()
    return mallopt is not None and mallopt(_M_MMAP_THRESHOLD, FIXED_MMAP_THRESHOLD) == 1


def keep_freed_memory() -> bool:
    """Configure glibc's malloc as above; False where that is off or not glibc."""
    mallopt = _mallopt() if config.keep_freed_memory() else None
    if mallopt is None:
        return False
    ok: bool = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if not ok:
        log.debug("mallopt refused; freed buffers go back to the OS")
    return ok
