"""The CPU–GPU pipeline (docs/design.md §6): batch k's GPU tail runs while batch k+1's CPU head
does.

The planner's time per patch of a CPU–GPU plan is max(head, tail) because of this overlap (a
queue of two). The tail runs in one worker thread (its cffi calls release the GIL; the head's
kernels release it too), the head on the caller's thread; exactly two batches are in flight:
while the head makes batch k+1's tensor at θ, the tail holds batch k's (the planner's
"queued" tensor) and its own host tensors; batch k's dense output is stored before batch
k+1's tail starts. The operations and their order per batch are the sequential ones, so the
results are bit-identical. The head's input buffer is refilled for batch k+1 while the tail
runs on batch k, which is safe because the tail reads the head's own output; a GPU-only plan
(θ = 0) would read the buffer itself, so it runs sequentially, as does every CPU-only plan
(no thread, the plain loop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from .executor import CompiledPlan

B = TypeVar("B")


def run_batches(compiled: CompiledPlan, batches: Sequence[B], load: Callable[[B], np.ndarray],
                store: Callable[[B, np.ndarray], None]) -> None:
    """``store(batch, dense output)`` for each batch, in order; ``load(batch)`` fills and
    returns the plan's input buffer (called again only once the head has consumed it)."""
    if not compiled.pipelined:
        for batch in batches:
            store(batch, compiled.run(load(batch)))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="znni-gpu-tail") as gpu:
        pending: tuple[B, Future[np.ndarray]] | None = None
        for batch in batches:
            at_theta = compiled.run_head(load(batch))
            if pending is not None:
                store(pending[0], pending[1].result())
            pending = (batch, gpu.submit(compiled.run_tail, at_theta))
        if pending is not None:
            store(pending[0], pending[1].result())
