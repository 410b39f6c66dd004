"""The interface every primitive implements, and the slack-padded buffers they exchange."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..spec import Layer, Shape5

if TYPE_CHECKING:
    from ..planner.device import Device

FLOAT_BYTES = 4


@dataclass(frozen=True)
class Memory:
    """Bytes a layer needs: ``resident`` for as long as the plan lives (weights, packed
    kernels), ``working`` while it runs (its input and output included)."""

    resident: int
    working: int


class Step(Protocol):
    """A layer ready to run on one shape: ``run(x, out_slack)`` consumes ``x`` (which has at
    least ``input_slack`` floats of readable memory past its end) and returns the output."""

    input_slack: int

    def run(self, x: np.ndarray, out_slack: int) -> np.ndarray: ...


class Primitive(Protocol):
    name: str

    def supports(self, layer: Layer) -> bool: ...

    def flops(self, layer: Layer, shape_in: Shape5) -> int: ...

    def memory(self, layer: Layer, shape_in: Shape5) -> Memory: ...

    def estimate(self, layer: Layer, shape_in: Shape5, device: Device) -> float:
        """Modelled seconds for one run on ``device`` (the planner's effort=estimate cost)."""
        ...

    def prepare(self, index: int, layer: Layer, shape_in: Shape5,
                weights: tuple[np.ndarray, np.ndarray] | None, threads: int) -> Step: ...


def padded_empty(shape: tuple[int, ...], slack: int) -> np.ndarray:
    """An uninitialised float32 array followed by ``slack`` readable floats (kernels read past
    the end of their input instead of masking tail vectors; those lanes are discarded)."""
    size = int(np.prod(shape))
    flat = np.empty(size + max(0, slack), dtype=np.float32)
    return flat[:size].reshape(shape)


def tensor_bytes(shape: Shape5) -> int:
    return math.prod(shape) * FLOAT_BYTES
