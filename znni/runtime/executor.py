"""A compiled plan: one prepared step per layer, run on a batch of input patches."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..config import check_threads
from ..errors import PlanError
from ..planner.plan import LayerPlan, Plan, network_digest
from ..primitives import PRIMITIVES, Step, in_place
from ..primitives.base import padded_empty
from ..primitives.mpf import recombine
from ..spec import Network, Pool
from ..tta import variants

log = logging.getLogger("znni")


def check_plan(plan: Plan, net: Network) -> None:
    """Refuse a plan made for another network (before anything is compiled or written)."""
    if plan.network_digest != network_digest(net):
        raise PlanError(f"plan was made for another network than {net.name!r}",
                        "re-plan for this network")


def finite(x: np.ndarray) -> bool:
    """Whether ``x`` holds no NaN or Inf: two vectorised reductions, no temporary array (NaN
    propagates through min and max, ±Inf shows in one of them)."""
    return bool(np.isfinite(x.min()) and np.isfinite(x.max()))


class CompiledPlan:
    """Steps ready to run; ``run`` maps ``(S, C_in, *input_patch)`` to ``(S, C_out, *patch)``."""

    def __init__(self, plan: Plan, net: Network, threads: int) -> None:
        check_plan(plan, net)
        weights = net.require_weights()
        self.plan = plan
        self.threads = check_threads(threads)  # znni.infer with a given plan skips planning
        layers = [s.layer for s in net.layer_shapes(plan.output_patch, 1, plan.max_filtered)]
        self.windows = [layer.window for layer in layers  # fragments to recombine
                        if isinstance(layer, Pool) and not layer.max_filter]
        start = time.perf_counter()

        def prepare(lp: LayerPlan) -> Step:
            primitive, layer = PRIMITIVES[lp.primitive], layers[lp.index]
            if lp.in_place:
                return in_place.prepare(primitive, lp.index, layer, lp.input_shape,
                                        weights.get(lp.index), threads, lp.in_place)
            return primitive.prepare(lp.index, layer, lp.input_shape, weights.get(lp.index),
                                     threads)

        # Kernels compile in parallel (g++ runs outside the GIL); cache hits are milliseconds.
        cpu_layers, gpu_layers = plan.layers, []
        if plan.gpu is not None:  # the GPU tail (raises clearly without a CUDA device)
            from .gpu import gpu_steps

            cpu_layers = plan.layers[:plan.gpu.theta]
            gpu_layers = gpu_steps(plan, layers, dict(weights))
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            self.steps: list[Step] = [*pool.map(prepare, cpu_layers), *gpu_layers]
        self.head_steps = len(cpu_layers)  # the CPU head: all steps of a CPU-only plan
        log.info("prepared %d layers in %.2f s", len(self.steps), time.perf_counter() - start)

    def new_input(self) -> np.ndarray:
        """A zeroed input buffer with the slack the first kernel may read past its end."""
        shape = self.plan.layers[0].input_shape
        buf = padded_empty(shape, self.steps[0].input_slack)
        buf.fill(0)
        return buf

    def run(self, x: np.ndarray) -> np.ndarray:
        """Dense output of a batch of input patches (``x`` from :meth:`new_input`; consumed):
        with test-time augmentation, the mean over the variants (znni/tta.py), each run on
        ``x`` refilled with the transformed patches and its output mapped back, in a fixed
        order."""
        if self.plan.tta == "none":
            return self.run_tail(self.run_head(x))
        source = np.array(x)  # the steps may overwrite their input
        total: np.ndarray | None = None
        for variant in variants(self.plan.tta):
            x[...] = variant.apply(source)
            dense = variant.undo(self.run_tail(self.run_head(x)))
            if total is None:
                total = np.array(dense)
            else:
                total += dense
        assert total is not None
        total /= np.float32(len(variants(self.plan.tta)))
        return total

    @property
    def pipelined(self) -> bool:
        """Whether batches overlap (runtime/pipeline.py): a GPU tail after a CPU head."""
        return self.plan.gpu is not None and self.plan.gpu.theta > 0 and self.plan.tta == "none"

    def run_head(self, x: np.ndarray) -> np.ndarray:
        """The CPU head (layers < θ; every layer of a CPU-only plan): the tensor at θ."""
        return self._run_steps(x, 0, self.head_steps)

    def run_tail(self, x: np.ndarray) -> np.ndarray:
        """The GPU tail (if any) on the head's output, then the dense recombination."""
        return recombine(self._run_steps(x, self.head_steps, len(self.steps)), self.windows,
                         self.plan.batch)

    def first_nonfinite_layer(self, x: np.ndarray) -> str | None:
        """Run ``x`` (from :meth:`new_input`; consumed) step by step and name the first layer
        whose output holds NaN or Inf — a diagnosis, run only after an output was found so."""
        for i in range(len(self.steps)):
            x = self._run_steps(x, i, i + 1)
            if not finite(x):
                # one step per layer, except a resident GPU tail: one step for all its layers
                layers = (self.plan.layers[i:i + 1] if len(self.steps) == len(self.plan.layers)
                          or i < self.head_steps else self.plan.layers[self.head_steps:])
                first, last = layers[0], layers[-1]
                if first is last:
                    return f"layer {first.index} ({first.kind}, {first.primitive})"
                return f"layers {first.index} to {last.index} (the resident GPU tail)"
        return None

    def _run_steps(self, x: np.ndarray, start: int, stop: int) -> np.ndarray:
        for i in range(start, stop):
            slack = self.steps[i + 1].input_slack if i + 1 < len(self.steps) else 0
            x = self.steps[i].run(x, slack)
        return x
