"""Network spec (JSON v1) and weights (.npz): loading, validation and the shape algebra.

A spec and its weights are untrusted input. Everything here is validated into frozen objects
holding only integers, enums and float32 arrays; names and descriptions are kept for display but
never reach generated code (see :mod:`znni.codegen.render`).
"""

from __future__ import annotations

import json
import math
import os
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import limits
from .activations import ACTIVATIONS
from .bundled import NETS_DIR, bundled_nets
from .errors import ShapeError, SpecError, WeightsError, ZnniError

Vec3 = tuple[int, int, int]
Shape5 = tuple[int, int, int, int, int]

_SPEC_KEYS = {"name", "description", "input_channels", "layers"}
_CONV_KEYS = {"type", "kernel", "out_channels", "activation"}
_POOL_KEYS = {"type", "window"}


_UNDILATED: Vec3 = (1, 1, 1)


def _span(size: Vec3, dilation: Vec3) -> Vec3:
    return (size[0] + (size[0] - 1) * (dilation[0] - 1),
            size[1] + (size[1] - 1) * (dilation[1] - 1),
            size[2] + (size[2] - 1) * (dilation[2] - 1))


@dataclass(frozen=True)
class Conv:
    """Valid cross-correlation (PyTorch conv3d, no flip), then bias, then activation.

    ``dilation`` is never in a spec: it is how a conv runs after max-filtered pools
    (docs/design.md §3, §5.4), set by :meth:`Network.layer_shapes`."""

    in_channels: int
    out_channels: int
    kernel: Vec3
    activation: str
    dilation: Vec3 = _UNDILATED

    @property
    def kind(self) -> str:
        return "conv"

    @property
    def span(self) -> Vec3:
        """Input extent one output voxel reads: (k − 1)·d + 1 per axis."""
        return _span(self.kernel, self.dilation)


@dataclass(frozen=True)
class Pool:
    """Max pooling with stride = window. Dense inference turns it into fragments (MPF) or, with
    ``max_filter`` (set by :meth:`Network.layer_shapes`, never in a spec), into a stride-1 max
    filter dilated by ``dilation`` that keeps the image dense."""

    channels: int
    window: Vec3
    max_filter: bool = False
    dilation: Vec3 = _UNDILATED

    @property
    def kind(self) -> str:
        return "pool"

    @property
    def span(self) -> Vec3:
        return _span(self.window, self.dilation)


Layer = Conv | Pool


@dataclass(frozen=True)
class LayerShapes:
    """Tensor shapes ``(S, C, Z, Y, X)`` around one layer for a given output patch."""

    index: int
    layer: Layer
    input: Shape5
    output: Shape5


@dataclass(frozen=True, eq=False)
class Network:
    """A validated network: topology plus (optionally) float32 weights per conv layer."""

    name: str
    input_channels: int
    layers: tuple[Layer, ...]
    weights: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)
    description: str = ""

    # ---- shape algebra -------------------------------------------------------------------
    @property
    def output_channels(self) -> int:
        last = self.layers[-1]
        return last.out_channels if isinstance(last, Conv) else last.channels

    @property
    def fov(self) -> Vec3:
        """Field of view per axis (docs/design.md §3): conv adds (k-1)·d, pool adds (p-1)·d,
        then d *= p."""
        fov, dil = [1, 1, 1], [1, 1, 1]
        for layer in self.layers:
            size = layer.kernel if isinstance(layer, Conv) else layer.window
            for a in range(3):
                fov[a] += (size[a] - 1) * dil[a]
                if isinstance(layer, Pool):
                    dil[a] *= size[a]
        return (fov[0], fov[1], fov[2])

    @property
    def fragmentation(self) -> Vec3:
        """Product of all pool windows per axis: valid output patches are multiples of it."""
        return self.fragmentation_with(0)

    def fragmentation_with(self, max_filtered: int) -> Vec3:
        """Product of the windows of the pools that run as fragments when the last
        ``max_filtered`` pools run as max filters: valid output patches are multiples of it."""
        frag = [1, 1, 1]
        for pool in self.pools[:len(self.pools) - max_filtered]:
            frag = [frag[a] * pool.window[a] for a in range(3)]
        return (frag[0], frag[1], frag[2])

    @property
    def pools(self) -> tuple[Pool, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, Pool))

    def input_size(self, output_patch: Vec3) -> Vec3:
        """Input patch for a dense output patch: output + FOV - 1."""
        fov = self.fov
        return (output_patch[0] + fov[0] - 1, output_patch[1] + fov[1] - 1,
                output_patch[2] + fov[2] - 1)

    def check_patch(self, output_patch: Vec3, max_filtered: int = 0) -> Vec3:
        """Validate a dense output patch (positive multiples of the fragmentation of the pools
        run as fragments)."""
        patch = tuple(int(v) for v in output_patch)
        frag = self.fragmentation_with(max_filtered)
        if len(patch) != 3 or any(p < 1 or p % f for p, f in zip(patch, frag, strict=False)):
            valid = ", ".join(f"{f}·k" for f in frag)
            raise ShapeError(
                f"output patch {list(patch)} is not valid for network {self.name!r}",
                f"each axis must be a positive multiple of the fragmentation {list(frag)} "
                f"(z, y, x = {valid})")
        return (patch[0], patch[1], patch[2])

    def layer_shapes(self, output_patch: Vec3, batch: int = 1,
                     max_filtered: int = 0) -> list[LayerShapes]:
        """Per-layer ``(S, C, Z, Y, X)`` shapes of the dense forward pass for an output patch:
        pools run as fragments (MPF), except the last ``max_filtered``, which run as max filters
        (docs/design.md §5.4). A max filter keeps the image dense, so every later layer runs
        dilated by the product of the max-filtered windows before it; the pools before it have
        already split the image into fragments, each of which the suffix computes densely. Only
        a suffix can be max-filtered: fragments of an image with dilation d > 1 would interleave
        d independent lattices. The layers of the result carry their dilation and mode."""
        if not 0 <= max_filtered <= len(self.pools):
            raise ShapeError(f"network {self.name!r} has {len(self.pools)} pool layers, cannot "
                             f"max-filter the last {max_filtered}",
                             f"use 0..{len(self.pools)}")
        patch = self.check_patch(output_patch, max_filtered)
        size = list(self.input_size(patch))
        s, c = batch, self.input_channels
        dil = [1, 1, 1]
        pools_left = len(self.pools)
        shapes = []
        for i, spec_layer in enumerate(self.layers):
            before: Shape5 = (s, c, size[0], size[1], size[2])
            dilation: Vec3 = (dil[0], dil[1], dil[2])
            layer: Layer
            if isinstance(spec_layer, Conv):
                layer = replace(spec_layer, dilation=dilation)
                size = [size[a] - layer.span[a] + 1 for a in range(3)]
                c = layer.out_channels
            elif pools_left <= max_filtered:
                layer = replace(spec_layer, max_filter=True, dilation=dilation)
                size = [size[a] - layer.span[a] + 1 for a in range(3)]
                dil = [dil[a] * layer.window[a] for a in range(3)]
                pools_left -= 1
            else:
                layer = spec_layer
                for a in range(3):
                    if (size[a] + 1) % layer.window[a]:  # pragma: no cover - implied by patch
                        raise ShapeError(f"layer {i}: pooling does not tile image size {size[a]}")
                size = [(size[a] + 1) // layer.window[a] - 1 for a in range(3)]
                s *= math.prod(layer.window)
                pools_left -= 1
            shapes.append(LayerShapes(i, layer, before, (s, c, size[0], size[1], size[2])))
        return shapes

    # ---- weights -------------------------------------------------------------------------
    def require_weights(self) -> Mapping[int, tuple[np.ndarray, np.ndarray]]:
        if self.weights is None:
            raise WeightsError(
                f"network {self.name!r} has no weights",
                "pass weights=PATH.npz to znni.load, or use Network.random_weights(seed) "
                "(CLI: --weights W.npz or --random-weights SEED)")
        return self.weights

    def with_weights(self, weights: str | os.PathLike[str] | Mapping[str, Any]) -> Network:
        """A copy holding validated weights from an ``.npz`` path or a name→array mapping."""
        return replace(self, weights=_load_weights(self, weights))

    def random_weights(self, seed: int) -> Network:
        """A copy with seeded He-initialised weights (for benchmarks and tests)."""
        rng = np.random.default_rng(seed)
        weights = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Conv):
                fan_in = layer.in_channels * math.prod(layer.kernel)
                w = rng.standard_normal((layer.out_channels, layer.in_channels, *layer.kernel))
                w *= math.sqrt(2.0 / fan_in)
                b = 0.1 * rng.standard_normal(layer.out_channels)
                weights[i] = (w.astype(np.float32), b.astype(np.float32))
        return replace(self, weights=weights)

    def save_weights(self, path: str | os.PathLike[str]) -> None:
        arrays: dict[str, Any] = {}
        for i, (w, b) in self.require_weights().items():
            arrays[f"layers.{i}.weight"] = w
            arrays[f"layers.{i}.bias"] = b
        np.savez(path, **arrays)

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON spec of this network (weights not included)."""
        layers: list[dict[str, Any]] = []
        for layer in self.layers:
            if isinstance(layer, Conv):
                layers.append({"type": "conv", "kernel": list(layer.kernel),
                               "out_channels": layer.out_channels,
                               "activation": layer.activation})
            else:
                layers.append({"type": "pool", "window": list(layer.window)})
        return {"name": self.name, "description": self.description,
                "input_channels": self.input_channels, "layers": layers}


# ---- loading -------------------------------------------------------------------------------
# ---- loading -------------------------------------------------------------------------------
def load(spec: str | os.PathLike[str] | Mapping[str, Any],
         weights: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> Network:
    """Load and validate a network spec (path, bundled name such as ``"n337"``, or dict).

    ``weights`` is an ``.npz`` path or a mapping ``layers.<i>.weight``/``layers.<i>.bias`` →
    array; without it the network has no weights (use :meth:`Network.random_weights`).
    """
    data = _read_spec(spec) if not isinstance(spec, Mapping) else spec
    net = _parse(data)
    return net.with_weights(weights) if weights is not None else net


def shown(value: Any) -> str:
    """A short repr of an untrusted value for an error message: a plain repr of a deeply
    nested value raises RecursionError, of an integer over 4300 digits ValueError, and of a
    long one floods the terminal."""
    try:
        return reprlib.repr(value)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__}>"


def key_names(keys: set[Any]) -> str:
    """The first few of a set of untrusted keys, for a message."""
    return ", ".join(sorted(map(shown, keys))[:5]) + (", …" if len(keys) > 5 else "")


def read_text(path: str | os.PathLike[str], what: str, error: type[ZnniError], hint: str) -> str:
    """The text of a spec or plan file, at most :data:`~znni.limits.MAX_JSON_BYTES` of it (a
    wrong path such as /dev/zero must not fill memory)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limits.MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise error(f"cannot read {what} {str(path)!r}: not found", hint) from None
    except OSError as exc:
        raise error(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}", hint) from None
    if len(raw) > limits.MAX_JSON_BYTES:
        raise error(f"{what} {str(path)!r} is over {limits.MAX_JSON_BYTES >> 20} MiB: not a "
                    f"{what}", hint)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {str(path)!r} is not UTF-8 text", hint) from None


def parse_json(text: str, where: str, error: type[ZnniError], hint: str) -> Any:
    """JSON ``text`` of a spec or plan, where every failure is ``error``: Python's parser raises
    RecursionError for deep nesting and ValueError for integers over 4300 digits, not only
    JSONDecodeError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                    hint) from None
    except (RecursionError, ValueError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise error(f"{where}: invalid JSON: {why}", hint) from None


def _read_spec(spec: str | os.PathLike[str]) -> Any:
    path = Path(spec)
    if not path.exists() and str(spec) in bundled_nets():
        path = NETS_DIR / f"{spec}.json"
    text = read_text(path, "network spec", SpecError, "give a path to a JSON spec or a bundled "
                     f"net: {', '.join(bundled_nets())}")
    return parse_json(text, str(path), SpecError,
                      "fix the JSON syntax (see docs/design.md §2 for the format)")


def positive_int(value: Any, where: str, what: str, bound: int) -> int:
    # bool is an int subclass; a float like 3.0 is not accepted either: sizes are integers.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
        over = isinstance(value, int) and not isinstance(value, bool) and value > bound
        raise SpecError(f"{where}: {what} must be a positive integer (≤ {bound}), got "
                        f"{shown(value)}",
                        f"znni supports up to {bound} (see znni.limits)" if over
                        else "use a whole number ≥ 1")
    return value


def spec_vec3(value: Any, where: str, what: str, bound: int) -> Vec3:
    if not isinstance(value, list) or len(value) != 3:
        raise SpecError(f"{where}: {what} must be a list of 3 integers [z, y, x], got "
                        f"{shown(value)}",
                        f"write e.g. \"{what}\": [3, 3, 3] (anisotropic sizes such as [1, 3, 3] "
                        "are allowed)")
    z, y, x = (positive_int(v, where, f"{what} entry", bound) for v in value)
    return (z, y, x)


def parse_header(data: Mapping[str, Any], allowed: set[str], items: str
                 ) -> tuple[str, str, int, list[Any]]:
    """What every spec version has: only ``allowed`` keys, ``name`` and ``description``
    (strings), ``input_channels``, and a non-empty list of ``items`` (layers, nodes) within
    the depth limit."""
    unknown = set(data) - allowed
    if unknown:
        raise SpecError(f"unknown top-level key(s) {key_names(unknown)}",
                        f"allowed keys: {sorted(allowed)}")
    name = data.get("name", "unnamed")
    description = data.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise SpecError("'name' and 'description' must be strings", "quote them in the JSON")
    if "input_channels" not in data:
        raise SpecError("missing key 'input_channels'", "add e.g. \"input_channels\": 1")
    channels = positive_int(data["input_channels"], "spec", "'input_channels'",
                            limits.MAX_CHANNELS)
    raw = data.get(items)
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"'{items}' must be a non-empty list", "add at least one conv")
    if len(raw) > limits.MAX_LAYERS:
        raise SpecError(f"the network has {len(raw)} {items}, more than the "
                        f"{limits.MAX_LAYERS} znni supports",
                        "planning time grows with depth; see znni.limits")
    return name, description, channels, raw


def _parse(data: Any) -> Network:
    if not isinstance(data, Mapping):
        raise SpecError("network spec must be a JSON object",
                        "see docs/design.md §2 for the format")
    if "nodes" in data:
        raise SpecError("this is a v2 (DAG) network spec, not a chain of layers",
                        "load it with znni.graph.load_graph (docs/design.md §2.1); the CLI "
                        "takes both")
    name, description, channels, raw_layers = parse_header(data, _SPEC_KEYS, "layers")
    layers: list[Layer] = []
    input_channels = channels
    for i, raw in enumerate(raw_layers):
        where = f"layer {i}"
        if not isinstance(raw, Mapping):
            raise SpecError(f"{where}: must be a JSON object, got {type(raw).__name__}",
                            "write {\"type\": \"conv\", ...} or {\"type\": \"pool\", ...}")
        kind = raw.get("type")
        if kind == "conv":
            check_keys(raw, _CONV_KEYS, where)
            act = raw.get("activation", "linear")
            if not isinstance(act, str) or act not in ACTIVATIONS:
                raise SpecError(f"{where}: unknown activation {shown(act)}",
                                f"use one of {', '.join(ACTIVATIONS)}")
            if "out_channels" not in raw or "kernel" not in raw:
                raise SpecError(f"{where}: conv needs 'kernel' and 'out_channels'",
                                "e.g. {\"type\": \"conv\", \"kernel\": [3,3,3], "
                                "\"out_channels\": 8, \"activation\": \"relu\"}")
            conv = Conv(input_channels, positive_int(raw["out_channels"], where,
                                                      "'out_channels'", limits.MAX_CHANNELS),
                        spec_vec3(raw["kernel"], where, "kernel", limits.MAX_KERNEL), act)
            layers.append(conv)
            input_channels = conv.out_channels
        elif kind == "pool":
            check_keys(raw, _POOL_KEYS, where)
            if "window" not in raw:
                raise SpecError(f"{where}: pool needs 'window'", "e.g. \"window\": [2, 2, 2]")
            layers.append(Pool(input_channels, spec_vec3(raw["window"], where, "window",
                                                     limits.MAX_WINDOW)))
        else:
            raise SpecError(f"{where}: unknown layer type {shown(kind)}",
                            "use \"conv\" or \"pool\"")
    if not any(isinstance(layer, Conv) for layer in layers):
        raise SpecError("the network has no conv layer", "add at least one conv layer")
    net = Network(name, channels, tuple(layers), None, description)
    _check_size(net)
    return net


def _check_size(net: Network) -> None:
    """Pools and field of view within :mod:`znni.limits`: each is fine layer by layer, but
    together they decide how much the planner has to search and how large the smallest patch
    is (eight pools of 64 make a field of view of 2^48)."""
    if len(net.pools) > limits.MAX_POOLS:
        raise SpecError(f"the network has {len(net.pools)} pool layers, more than the "
                        f"{limits.MAX_POOLS} znni supports",
                        "each pool adds a pooling mode to the planner's search; see znni.limits")
    if max(net.fov) > limits.MAX_FOV:
        raise SpecError(f"the network's field of view {list(net.fov)} exceeds "
                        f"{limits.MAX_FOV} voxels per axis",
                        "use fewer or smaller kernels and pools; a patch of that field of view "
                        "would need terabytes")


def check_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {key_names(unknown)}",
                        f"a {shown(raw.get('type'))} layer allows {sorted(allowed)}")


def read_npz(source: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file. ``allow_pickle=False``: a weights file must never execute
    code; ``mmap_mode``: a (refused) ``.npy`` is mapped, not read."""
    hint = "it must be an .npz written by numpy.savez (no pickles)"
    try:
        loaded = np.load(source, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise WeightsError(f"weights file {str(source)!r} not found",
                           "check the path, or use --random-weights SEED") from None
    except Exception as exc:  # noqa: BLE001 - numpy, zipfile, zlib: many kinds for a bad file
        raise WeightsError(f"cannot read weights {str(source)!r}: {exc}", hint) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise WeightsError(f"weights {str(source)!r} hold a single array (.npy), not an archive "
                           "of named arrays", hint)
    try:
        with loaded as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - a damaged member: BadZipFile, zlib.error, …
        raise WeightsError(f"cannot read weights {str(source)!r}: {exc}", hint) from None


def checked_array(arrays: Mapping[str, Any], key: str, shape: tuple[int, ...], where: str,
                  missing_hint: str, shape_hint: str) -> np.ndarray:
    """``arrays[key]`` as a C-contiguous float32 array of ``shape`` (PyTorch's layouts: a
    conv's weight is (out, in, kz, ky, kx)); a WeightsError naming ``where`` if it is missing,
    not numbers, mis-shaped, or not finite."""
    if key not in arrays:
        raise WeightsError(f"{where}: missing weight array {key!r} (shape {shape})",
                           missing_hint)
    arr = np.asarray(arrays[key])
    if arr.dtype.kind not in "fiu":
        raise WeightsError(f"{where}: {key!r} has dtype {arr.dtype}, not a number",
                           "store float32 arrays")
    if arr.shape != shape:
        raise WeightsError(f"{where}: {key!r} has shape {arr.shape}, expected {shape}",
                           shape_hint)
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise WeightsError(f"{where}: {key!r} contains NaN or Inf",
                           "the weights are corrupt or training diverged")
    return out


def _load_weights(net: Network, source: str | os.PathLike[str] | Mapping[str, Any]
                  ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    arrays = dict(source) if isinstance(source, Mapping) else read_npz(source)
    weights: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    expected: set[str] = set()
    for i, layer in enumerate(net.layers):
        if not isinstance(layer, Conv):
            continue
        w_key, b_key = f"layers.{i}.weight", f"layers.{i}.bias"
        expected |= {w_key, b_key}
        shapes = {w_key: (layer.out_channels, layer.in_channels, *layer.kernel),
                  b_key: (layer.out_channels,)}
        checked = [checked_array(arrays, key, shape, f"layer {i}",
                                 "export all conv layers' weight and bias, keyed by the layer "
                                 "index in the spec",
                                 "check out_channels, kernel and the previous layer's channels "
                                 "in the spec") for key, shape in shapes.items()]
        weights[i] = (checked[0], checked[1])
    extra = set(arrays) - expected
    if extra:
        raise WeightsError(f"unexpected weight array(s) {key_names(extra)}",
                           "keys must be layers.<i>.weight / layers.<i>.bias of conv layers; "
                           "is this the weights file of another network?")
    return weights
