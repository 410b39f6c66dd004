"""What the CPU and GPU searches share: the batches tried, each layer's ways to run, and the
cost of a way (a tuning record, else the calibrated model). Both searches import this module,
not each other.
"""

from __future__ import annotations

import math
from functools import cache

from ..hardware import Device
from ..primitives import PRIMITIVES, in_place
from ..spec import Layer, LayerShapes, Shape5
from .plan import LayerPlan
from .tuning import TuningRecords, record_key

#: Batches tried for every patch: batching amortises kernel transforms and small-image layers.
BATCHES = (1, 2, 4)


class CostModel:
    """Seconds per (layer, shape, primitive): a tuning record, else the corrected model."""

    def __init__(self, device: Device, records: TuningRecords | None, effort: str) -> None:
        self.device = device
        self.records = records
        self.effort = effort
        self.corrections = records.corrections(device.threads) if records else {}
        self._known: dict[tuple[str, Layer, Shape5, bool], tuple[float, str]] = {}

    def seconds(self, lp: LayerPlan, layer: Layer) -> tuple[float, str]:
        shape = timed_shape(lp, layer)
        # an in-place layer's passes reuse buffers freed a moment before, partly
        pass_seconds, source = self._pass_seconds(lp.primitive, layer, shape, lp.in_place > 0)
        if lp.in_place:
            return in_place.seconds(PRIMITIVES[lp.primitive], pass_seconds, layer,
                                    lp.input_shape, lp.in_place, self.device), source
        return pass_seconds, source

    def _pass_seconds(self, name: str, layer: Layer, shape: Shape5,
                      passes: bool) -> tuple[float, str]:
        key = (name, layer, shape, passes)
        if key not in self._known:
            self._known[key] = self._lookup(name, layer, shape, passes)
        return self._known[key]

    def _lookup(self, name: str, layer: Layer, shape: Shape5,
                passes: bool = False) -> tuple[float, str]:
        device = self.device.passing() if passes else self.device
        primitive = PRIMITIVES[name]
        if self.records is not None:
            record = self.records.get(record_key(layer, shape, name, self.device.threads),
                                      self.effort)
            if record is not None:
                # Timed in repeats, whose tensors refill pages freed a moment before: a run's
                # tensors pay the colder rate on top (the model's difference, §7.6).
                cold = (primitive.estimate(layer, shape, device)
                        - primitive.estimate(layer, shape, device.refilling()))
                return record.seconds + cold, "measured"
        estimate = primitive.estimate(layer, shape, device)
        # Records of real layers on this machine correct the raw model better than the
        # calibration's probe layers do (both are measured ÷ raw model: never multiply them).
        correction = self.corrections.get(name) or self.device.correction(
            name, math.prod(shape[2:]))
        return estimate * correction, "model"


def timed_shape(lp: LayerPlan, layer: Layer) -> Shape5:
    """The shape a layer's primitive runs on: the whole input, or one in-place pass."""
    if lp.in_place:
        return in_place.pass_shape(layer, lp.input_shape, lp.in_place)
    return lp.input_shape


@cache
def layer_options(shapes: LayerShapes, precision: str = "fp32") -> tuple[LayerPlan, ...]:
    """Every way to run one layer: each supporting primitive on a fresh output tensor and,
    after the first layer, over its own input at each pass size (uncosted). Primitives in
    another format than fp32 only where ``precision`` (:func:`~.plan.layer_precisions`) names
    theirs."""
    layer, shape = shapes.layer, shapes.input
    out = []
    for name, primitive in PRIMITIVES.items():
        if not primitive.supports(layer) or primitive.precision not in ("fp32", precision):
            continue
        flops = primitive.flops(layer, shape)
        memory = primitive.memory(layer, shape)
        out.append(LayerPlan(shapes.index, layer.kind, name, shape, shapes.output,
                             memory.resident, memory.working, flops))
        for group in in_place.groups(layer, shape) if shapes.index > 0 else ():
            memory = in_place.memory(primitive, layer, shape, group)
            out.append(LayerPlan(shapes.index, layer.kind, name, shape, shapes.output,
                                 memory.resident, memory.working, flops, in_place=group))
    return tuple(out)
