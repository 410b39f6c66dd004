"""The plan: plain, frozen, JSON-serialisable data between the network and the generated code.

A plan fixes the output patch, the batch, and per layer the primitive and its tensor shapes and
memory. It can be saved, edited and re-run; loading re-validates it against the network (its
digest, every shape recomputed), so a hand-edited plan cannot smuggle anything into codegen.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any

from .. import limits
from ..errors import PlanError
from ..precision import check_precision
from ..primitives import PRIMITIVES, in_place
from ..primitives.base import FLOAT_BYTES
from ..spec import (
    Conv,
    Layer,
    LayerShapes,
    Network,
    Pool,
    Shape5,
    Vec3,
    parse_json,
    read_text,
    shown,
)
from ..tta import check_net_allows, check_tta, variants
from .gpu_plan import GpuPlan

PLAN_VERSION = 1
AUTO = "auto"
COST_SOURCES = ("model", "measured", "none")
#: The ``auto`` rule, until the planner's search (issue 4) replaces it: pruned FFT for kernels of
#: at least AUTO_FFT_MIN_TAPS taps on images of at least AUTO_FFT_MIN_VOXELS voxels with at least
#: AUTO_FFT_MIN_MAPS input and output maps. The last condition is measured (bench/conv_layers.py,
#: n726 at a 64³ patch): its first layer (1 input map) runs 3.6× slower as FFT than direct — 80
#: inverse transforms cost more than 2·6³ FLOPs per output voxel — and its last (3 output
#: maps) 2× slower; the 80→80 layers, down to 28³ images, run 5–6.6× faster. The kernel-size
#: crossover on an n337-like layer (S=64, 80→80, 35³) lies between 4³ (FFT 0.9×) and 5³ (1.8×).
AUTO_FFT_MIN_TAPS = 100
AUTO_FFT_MIN_VOXELS = 16 ** 3
AUTO_FFT_MIN_MAPS = 16
AUTO_WINOGRAD_MIN_MAPS = 16
AUTO_WINOGRAD_F4_MIN_EDGE = 10

PrimitiveChoice = str | Mapping[int, str] | None
#: The pool primitive that keeps the image dense (the later layers run dilated).
MAX_FILTER = "maxfilter"


def auto_primitive(layer: Layer, shape_in: Shape5) -> str:
    """MPF (or the max filter its mode asks for) for pools; pruned task-parallel FFT, Winograd
    (undilated kernels of edges 3 and 1 with at least AUTO_WINOGRAD_MIN_MAPS maps in and out:
    F(2³) 1.7–1.8× direct on n337's layers; F(4) where every 3-tap axis's image edge is at
    least AUTO_WINOGRAD_F4_MIN_EDGE) or direct for convs (see the rule above)."""
    if isinstance(layer, Pool):
        return "maxfilter" if layer.max_filter else "mpf"
    if (PRIMITIVES["winograd"].supports(layer)
            and min(layer.in_channels, layer.out_channels) >= AUTO_WINOGRAD_MIN_MAPS):
        # F(4) needs whole 4-output tiles to pay: at least two along each 3-tap axis
        edges = [n for n, k in zip(shape_in[2:], layer.kernel, strict=True) if k == 3]
        return "winograd-f4" if min(edges) >= AUTO_WINOGRAD_F4_MIN_EDGE else "winograd"
    if (math.prod(layer.kernel) >= AUTO_FFT_MIN_TAPS
            and min(layer.in_channels, layer.out_channels) >= AUTO_FFT_MIN_MAPS
            and math.prod(shape_in[2:]) >= AUTO_FFT_MIN_VOXELS):
        return "fft-pruned"
    return "direct"


def _requested(choice: PrimitiveChoice, index: int, layer: Layer,
               inner: frozenset[int]) -> str:
    """The primitive asked for layer ``index``: a name for every conv layer, a per-layer
    mapping (absent layers: auto), or None (auto). Pool layers take MPF unless mapped. One
    reduced-precision name for every layer (``direct-bf16``) gives the first and last conv
    layers (not in ``inner``) its fp32 form (``direct``)."""
    if isinstance(choice, Mapping):
        return choice.get(index, AUTO)
    if choice is None or isinstance(layer, Pool):
        return AUTO
    primitive = PRIMITIVES.get(choice)
    if primitive is not None and primitive.precision != "fp32" and index not in inner:
        return choice.removesuffix(f"-{primitive.precision}")
    return choice


def inner_convs(net: Network) -> frozenset[int]:
    """The conv layers that may run in a reduced precision: all but the first and the last.
    The first sees the raw image (often 8-bit data whose rounding errors every later layer
    would carry) and the last makes the outputs users threshold (docs/design.md §5.7)."""
    convs = [i for i, layer in enumerate(net.layers) if isinstance(layer, Conv)]
    return frozenset(convs[1:-1])


def layer_precisions(net: Network, precision: str) -> dict[int, str]:
    """Per layer, the format besides fp32 it may run in when ``precision`` is asked for."""
    return dict.fromkeys(inner_convs(net), precision) if precision != "fp32" else {}


def network_digest(net: Network) -> str:
    """SHA-256 of the canonical topology (names and descriptions excluded)."""
    spec = net.to_dict()
    topology = {"input_channels": spec["input_channels"], "layers": spec["layers"]}
    return hashlib.sha256(json.dumps(topology, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class LayerPlan:
    index: int
    kind: str
    primitive: str
    input_shape: Shape5
    output_shape: Shape5
    resident_bytes: int
    working_bytes: int
    flops: int
    seconds: float | None = None   # predicted time of one run (None: not costed)
    cost: str = "none"             # where ``seconds`` came from: model, measured or none
    in_place: int = 0              # units per pass over the input buffer (0: fresh output)


def held_bytes(layers: Sequence[LayerPlan]) -> int:
    """Bytes held through a whole run: the input batch (the caller's buffer) and the
    recombined dense output."""
    return FLOAT_BYTES * (math.prod(layers[0].input_shape) + math.prod(layers[-1].output_shape))


@dataclass(frozen=True)
class Alternative:
    """A configuration the planner considered and did not pick, and why."""

    output_patch: Vec3
    batch: int
    primitives: tuple[str, ...]
    predicted_throughput: float | None
    peak_bytes: int
    why: str


@dataclass(frozen=True)
class Planning:
    """How a plan was made: the budget, threads and device it was searched for."""

    budget_bytes: int
    threads: int
    device: str
    effort: str
    precision: str = "fp32"  # what was asked for: bf16 lets inner conv layers use it


@dataclass(frozen=True)
class Plan:
    network: str
    network_digest: str
    output_patch: Vec3
    input_patch: Vec3
    batch: int
    layers: tuple[LayerPlan, ...]
    planning: Planning | None = None
    alternatives: tuple[Alternative, ...] = ()
    gpu: GpuPlan | None = None  # the CPU–GPU pipeline: layers ≥ gpu.theta run on the GPU
    extent: Vec3 | None = None  # the output volume planned for (None: unbounded)
    tta: str = "none"  # test-time augmentation: every patch runs once per variant (znni/tta.py)

    @property
    def resident_bytes(self) -> int:
        return sum(layer.resident_bytes for layer in self.layers)

    @property
    def precision(self) -> str:
        """``bf16`` if any layer runs in bf16, else ``fp32``."""
        reduced = [PRIMITIVES[lp.primitive].precision for lp in self.layers
                   if lp.primitive in PRIMITIVES]
        return next((p for p in reduced if p != "fp32"), "fp32")

    @property
    def max_filtered(self) -> int:
        """Pools run as max filters (always the last ones; see Network.layer_shapes)."""
        return sum(layer.primitive == MAX_FILTER for layer in self.layers)

    @property
    def peak_bytes(self) -> int:
        """Σ resident + max working (each layer frees its input once it has run), plus
        :func:`held_bytes`. A GPU plan: the host RAM its pipeline needs."""
        if self.gpu is not None:
            return self.gpu.host_bytes
        # test-time augmentation holds the input batch's copy and the running sum too
        held = held_bytes(self.layers) * (1 if self.tta == "none" else 2)
        return self.resident_bytes + max(layer.working_bytes for layer in self.layers) + held

    @property
    def output_voxels(self) -> int:
        """Dense output voxels per run (all samples of the batch)."""
        return self.batch * math.prod(self.output_patch)

    @property
    def runs(self) -> int | None:
        """Batches needed to cover :attr:`extent` (None: unbounded)."""
        if self.extent is None:
            return None
        return -(-patches_needed(self.extent, self.output_patch) // self.batch)

    @property
    def padding_fraction(self) -> float:
        """Share of the computed output voxels that lie outside :attr:`extent` or are computed
        twice (a short last batch, a patch past the volume's end, a last patch shifted back):
        work the volume does not need."""
        runs = self.runs
        if runs is None or self.extent is None:  # runs is None exactly when extent is
            return 0.0
        return 1 - math.prod(self.extent) / (runs * self.output_voxels)

    @property
    def predicted_seconds(self) -> float | None:
        """Seconds of one run: the layers' (or the GPU pipeline's), once per variant of the
        test-time augmentation."""
        runs = len(variants(self.tta))
        if self.gpu is not None:
            return self.gpu.seconds * runs
        seconds = [layer.seconds for layer in self.layers if layer.seconds is not None]
        if len(seconds) < len(self.layers):
            return None
        return sum(seconds) * runs

    @property
    def predicted_throughput(self) -> float | None:
        """Predicted dense output voxels per second of a run (padding included)."""
        seconds = self.predicted_seconds
        return None if not seconds else self.output_voxels / seconds

    @property
    def predicted_volume_throughput(self) -> float | None:
        """Predicted voxels per second of :attr:`extent` (the search's objective): the run's
        throughput less its padding."""
        rate = self.predicted_throughput
        return None if rate is None else rate * (1 - self.padding_fraction)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.gpu is None:
            del data["gpu"]
        data["version"] = PLAN_VERSION
        data["peak_bytes"] = self.peak_bytes
        data["predicted_seconds"] = self.predicted_seconds
        data["predicted_throughput"] = self.predicted_throughput
        data["padding_fraction"] = self.padding_fraction
        data["precision"] = self.precision
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], net: Network) -> Plan:
        """Rebuild and re-validate a (possibly hand-edited) plan for ``net``: shapes, memory
        and FLOPs are recomputed; predictions and planning notes are kept as data."""
        if not isinstance(data, Mapping) or data.get("version") != PLAN_VERSION:
            raise PlanError("not a znni plan (missing or unknown 'version')",
                            "create one with `znni plan` or znni.plan")
        if data.get("network_digest") != network_digest(net):
            raise PlanError(f"plan was made for another network than {net.name!r}",
                            "re-plan for this network")
        try:
            patch = _vec3(data["output_patch"], "output_patch")
            batch = _positive(data["batch"], "batch")
            layers = _layer_entries(data["layers"], len(net.layers))
            primitives = {i: _text(layer["primitive"], "primitive") for i, layer in layers.items()}
            passes = {i: _count(layer.get("in_place", 0)) for i, layer in layers.items()}
            costs = {i: (_optional_seconds(layer.get("seconds")),
                         _cost_source(layer.get("cost", "none")))
                     for i, layer in layers.items()}
            planning = (None if data.get("planning") is None
                        else Planning(**_fields(data["planning"], Planning)))
            if planning is not None:
                check_precision(planning.precision)
            alternatives = tuple(_alternative(a) for a in _list(data.get("alternatives", []),
                                                                "alternatives"))
            gpu = (None if data.get("gpu") is None
                   else GpuPlan.from_dict(data["gpu"], len(net.layers)))
            extent = None if data.get("extent") is None else _vec3(data["extent"], "extent")
            tta = _text(data.get("tta", "none"), "tta")
            check_tta(tta)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # Overflow: float(10**400)
            raise PlanError(f"malformed plan: {exc!r}", "re-create it with `znni plan`") from None
        plan = make_plan(net, patch, batch, primitives, passes)
        layers_out = tuple(replace(lp, seconds=costs[lp.index][0], cost=costs[lp.index][1])
                           for lp in plan.layers)
        check_net_allows(tta, net, patch)
        return replace(plan, layers=layers_out, planning=planning, alternatives=alternatives,
                       gpu=gpu, extent=extent, tta=tta)

    @classmethod
    def from_json(cls, text: str, net: Network) -> Plan:
        return cls.from_dict(parse_json(text, "plan", PlanError, _RECREATE), net)

    @classmethod
    def load(cls, path: str, net: Network) -> Plan:
        """A plan file (bounded read, see :func:`~znni.spec.read_text`), validated for ``net``."""
        return cls.from_json(read_text(path, "plan", PlanError, _RECREATE), net)


_RECREATE = "fix the plan file, or re-create it with `znni plan SPEC -o PLAN.json`"


def _vec3(value: Any, what: str) -> Vec3:
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise ValueError(f"{what} must be 3 positive integers, got {shown(value)}")
    return (value[0], value[1], value[2])


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {shown(value)}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {shown(value)}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    """A JSON list (or the tuple :meth:`Plan.to_dict` holds in its place)."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{what} must be a list, got {shown(value)}")
    return list(value)


def _layer_entries(value: Any, count: int) -> dict[int, Mapping[str, Any]]:
    """The plan's per-layer entries by index: exactly one for each layer of the network."""
    entries = _list(value, "layers")
    if not all(isinstance(entry, Mapping) for entry in entries):
        raise TypeError("every entry of layers must be an object")
    by_index = {_count(entry["index"], "index"): entry for entry in entries}
    if len(by_index) != len(entries) or set(by_index) != set(range(count)):
        raise ValueError(f"layers must hold one entry for each layer 0..{count - 1}, got "
                         f"indices {shown(sorted(by_index))}")
    return by_index


def patches_needed(extent: Vec3, patch: Vec3) -> int:
    """Output patches that cover ``extent`` (runtime/tiling: the last one per axis shifted
    back inside the volume)."""
    count = 1
    for a in range(3):
        full = max(1, extent[a] // patch[a])
        count *= full + (1 if extent[a] > patch[a] and extent[a] % patch[a] else 0)
    return count


def _optional_seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"seconds must be a non-negative number, got {shown(value)}")
    return float(value)


def _count(value: Any, what: str = "in_place") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {shown(value)}")
    return value


def _cost_source(value: Any) -> str:
    if value not in COST_SOURCES:
        raise ValueError(f"cost must be one of {COST_SOURCES}, got {shown(value)}")
    return str(value)


def _fields(data: Any, cls: type) -> dict[str, Any]:
    """The dataclass fields of ``cls`` from a JSON object, each checked against its type."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__} must be an object")
    out = {}
    for f in fields(cls):
        value = data[f.name] if f.default is MISSING else data.get(f.name, f.default)
        kind = {"int": int, "str": str}.get(str(f.type))
        if kind is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise TypeError(f"{cls.__name__}.{f.name} must be {f.type}, got {shown(value)}")
        out[f.name] = value
    return out


def _alternative(data: Any) -> Alternative:
    values = _fields(data, Alternative)
    return Alternative(_vec3(values["output_patch"], "alternative output_patch"),
                       _positive(values["batch"], "alternative batch"),
                       tuple(_text(p, "alternative primitive")
                             for p in _list(values["primitives"], "alternative primitives")),
                       _optional_seconds(values["predicted_throughput"]),
                       _count(values["peak_bytes"], "alternative peak_bytes"),
                       _text(values["why"], "alternative why"))


def make_plan(net: Network, output_patch: Vec3, batch: int = 1,
              primitives: PrimitiveChoice = None,
              in_place_units: Mapping[int, int] | None = None) -> Plan:
    """The plan running ``net`` on ``output_patch``: ``primitives`` is ``"auto"``/None, one
    primitive name for every conv layer (e.g. ``"direct"``), or a per-layer mapping;
    ``in_place_units`` maps layers to run in place to their units per pass."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise PlanError(f"batch must be a positive integer, got {batch!r}", "use batch=1")
    unknown = (set(primitives) if isinstance(primitives, Mapping) else set()) - set(
        range(len(net.layers)))
    if unknown:
        raise PlanError(f"primitive given for layer(s) {sorted(unknown)} that do not exist",
                        f"layers are 0..{len(net.layers) - 1}")
    max_filtered = _max_filtered(net, primitives)
    all_shapes = net.layer_shapes(output_patch, batch, max_filtered)
    problem = limit_problem(all_shapes)
    if problem is not None:
        raise PlanError(f"output patch {list(output_patch)} with batch {batch}: {problem}",
                        "use a smaller patch or batch (the bounds are in znni.limits)")
    layers = []
    for shapes in all_shapes:
        layer = shapes.layer
        name = _requested(primitives, shapes.index, layer, inner_convs(net))
        if name == AUTO:
            name = auto_primitive(layer, shapes.input)
        primitive = PRIMITIVES.get(name)
        if primitive is None or not primitive.supports(layer):
            options = [p for p, prim in PRIMITIVES.items() if prim.supports(layer)]
            raise PlanError(f"layer {shapes.index} ({layer.kind}): primitive {shown(name)} "
                            "cannot run it", f"use one of {options}")
        if primitive.precision != "fp32" and shapes.index not in inner_convs(net):
            raise PlanError(f"layer {shapes.index} is the network's first or last conv layer: "
                            f"it runs in fp32, not {primitive.precision} ({name})",
                            f"use an fp32 primitive for it; {primitive.precision} is for the "
                            f"layers between (here {sorted(inner_convs(net))})")
        group = (in_place_units or {}).get(shapes.index, 0)
        if group:
            _check_in_place(shapes.index, layer, shapes.input, group)
            memory = in_place.memory(primitive, layer, shapes.input, group)
        else:
            memory = primitive.memory(layer, shapes.input)
        layers.append(LayerPlan(shapes.index, layer.kind, name, shapes.input, shapes.output,
                                memory.resident, memory.working,
                                primitive.flops(layer, shapes.input), in_place=group))
    return Plan(net.name, network_digest(net), net.check_patch(output_patch, max_filtered),
                net.input_size(output_patch), batch, tuple(layers))


def limit_problem(shapes: Sequence[LayerShapes]) -> str | None:
    """What in a plan's tensors exceeds the bounds of :mod:`znni.limits` (None: nothing):
    image extents, and the counts the kernels take as C ints. Checked before any memory
    figure is computed or kernel generated, so a hand-edited patch or batch fails here."""
    for s in shapes:
        for shape in (s.input, s.output):
            samples, maps, *image = shape
            for value, bound, what in ((max(image), limits.MAX_IMAGE_EDGE, "image extent"),
                                       (math.prod(image), limits.C_INT_MAX, "voxels per image"),
                                       (samples * maps, limits.C_INT_MAX, "samples × maps")):
                if value > bound:
                    return f"layer {s.index}: {what} {value} is over the limit of {bound}"
    return None


def _max_filtered(net: Network, primitives: PrimitiveChoice) -> int:
    """How many pools ``primitives`` runs as max filters; they must be the last ones."""
    if not isinstance(primitives, Mapping):
        return 0
    pools = [i for i, layer in enumerate(net.layers) if isinstance(layer, Pool)]
    filtered = [i for i in pools if primitives.get(i) == MAX_FILTER]
    if filtered and filtered != pools[len(pools) - len(filtered):]:
        raise PlanError(f"pool layers {filtered} run as max filters but a later pool runs as "
                        "fragments", f"max-filter a suffix of the pools {pools}: once a pool "
                        "keeps the image dense, every later pool must too")
    return len(filtered)


def _check_in_place(index: int, layer: Layer, shape_in: Shape5, group: int) -> None:
    units = in_place.units(layer, shape_in)
    if index == 0 or not in_place.groups(layer, shape_in) or not 1 <= group < units:
        raise PlanError(
            f"layer {index} cannot run in place with {group} units per pass",
            "in place needs a layer after the first whose output is smaller than its input, "
            f"and 1 ≤ units per pass < {units}; use 0 for a fresh output")


def default_patch(net: Network, output_extent: Vec3, budget: int,
                  primitives: PrimitiveChoice = None) -> Vec3:
    """Largest output patch (multiple of the fragmentation) not larger than the volume needs and
    whose plan fits ``budget`` bytes; shrinks the largest axis first.

    A stand-in for the planner's search (issue 4): bigger patches waste less work on the FOV
    border, so within memory, bigger is faster.
    """
    frag = net.fragmentation
    patch = [-(-output_extent[a] // frag[a]) * frag[a] for a in range(3)]
    while True:
        peak = make_plan(net, (patch[0], patch[1], patch[2]), 1, primitives).peak_bytes
        if peak <= budget:
            return (patch[0], patch[1], patch[2])
        shrinkable = [a for a in range(3) if patch[a] > frag[a]]
        if not shrinkable:
            raise PlanError(
                f"the smallest patch {frag} of network {net.name!r} needs {peak / 2**30:.2f} GiB, "
                f"more than the budget of {budget / 2**30:.2f} GiB",
                f"raise the memory budget to at least {peak / 2**30:.2f} GiB")
        axis = max(shrinkable, key=lambda a: patch[a])
        patch[axis] -= frag[axis]
