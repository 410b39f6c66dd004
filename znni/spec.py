"""Network spec (JSON v1) and weights (.npz): loading, validation and the shape algebra.

A spec and its weights are untrusted input. Everything here is validated into frozen objects
holding only integers, enums and float32 arrays; names and descriptions are kept for display but
never reach generated code (see :mod:`znni.codegen.render`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .bundled import NETS_DIR, bundled_nets
from .errors import ShapeError, SpecError, WeightsError

Vec3 = tuple[int, int, int]
Shape5 = tuple[int, int, int, int, int]

ACTIVATIONS = ("relu", "sigmoid", "tanh", "linear")
_SPEC_KEYS = {"name", "description", "input_channels", "layers"}
_CONV_KEYS = {"type", "kernel", "out_channels", "activation"}
_POOL_KEYS = {"type", "window"}
_MAX_EXTENT = 1 << 16  # no kernel, window or channel count is anywhere near this


_UNDILATED: Vec3 = (1, 1, 1)


def _span(size: Vec3, dilation: Vec3) -> Vec3:
    return (size[0] + (size[0] - 1) * (dilation[0] - 1), size[1] + (size[1] - 1) * (dilation[1] - 1),
            size[2] + (size[2] - 1) * (dilation[2] - 1))


@dataclass(frozen=True)
class Conv:
    """Valid cross-correlation (PyTorch conv3d, no flip), then bias, then activation.

    ``dilation`` is never in a spec: it is how a conv runs after max-filtered pools (DESIGN §3,
    §5.4), set by :meth:`Network.layer_shapes`."""

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
        """Field of view per axis (DESIGN §3): conv adds (k-1)·d, pool adds (p-1)·d, d *= p."""
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
        if len(patch) != 3 or any(p < 1 or p % f for p, f in zip(patch, frag)):
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
        (DESIGN §5.4). A max filter keeps the image dense, so every later layer runs dilated by
        the product of the max-filtered windows before it; the pools before it have already
        split the image into fragments, each of which the suffix computes densely. Only a
        suffix can be max-filtered: fragments of an image with dilation d > 1 would interleave
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
        for i, layer in enumerate(self.layers):
            before: Shape5 = (s, c, size[0], size[1], size[2])
            dilation: Vec3 = (dil[0], dil[1], dil[2])
            if isinstance(layer, Conv):
                layer = replace(layer, dilation=dilation)
                size = [size[a] - layer.span[a] + 1 for a in range(3)]
                c = layer.out_channels
            elif pools_left <= max_filtered:
                layer = replace(layer, max_filter=True, dilation=dilation)
                size = [size[a] - layer.span[a] + 1 for a in range(3)]
                dil = [dil[a] * layer.window[a] for a in range(3)]
                pools_left -= 1
            else:
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

    def with_weights(self, weights: str | os.PathLike | Mapping[str, Any]) -> Network:
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

    def save_weights(self, path: str | os.PathLike) -> None:
        arrays = {}
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
def load(spec: str | os.PathLike | Mapping[str, Any],
         weights: str | os.PathLike | Mapping[str, Any] | None = None) -> Network:
    """Load and validate a network spec (path, bundled name such as ``"n337"``, or dict).

    ``weights`` is an ``.npz`` path or a mapping ``layers.<i>.weight``/``layers.<i>.bias`` →
    array; without it the network has no weights (use :meth:`Network.random_weights`).
    """
    data = _read_spec(spec) if not isinstance(spec, Mapping) else spec
    net = _parse(data)
    return net.with_weights(weights) if weights is not None else net


def _read_spec(spec: str | os.PathLike) -> Any:
    path = Path(spec)
    if not path.exists() and str(spec) in bundled_nets():
        path = NETS_DIR / f"{spec}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"network spec {str(spec)!r} not found",
                        f"give a path to a JSON spec or a bundled net: {', '.join(bundled_nets())}")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read network spec {str(spec)!r}: {exc}",
                        "check the path and that it is a UTF-8 JSON file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                        "fix the JSON syntax (see DESIGN §2 for the format)") from None


def _positive_int(value: Any, where: str, what: str) -> int:
    # bool is an int subclass; a float like 3.0 is not accepted either: sizes are integers.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_EXTENT:
        raise SpecError(f"{where}: {what} must be a positive integer (≤ {_MAX_EXTENT}), "
                        f"got {value!r}", "use a whole number ≥ 1")
    return value


def _vec3(value: Any, where: str, what: str) -> Vec3:
    if not isinstance(value, list) or len(value) != 3:
        raise SpecError(f"{where}: {what} must be a list of 3 integers [z, y, x], got {value!r}",
                        f"write e.g. \"{what}\": [3, 3, 3] (anisotropic sizes such as [1, 3, 3] "
                        "are allowed)")
    z, y, x = (_positive_int(v, where, f"{what} entry") for v in value)
    return (z, y, x)


def _parse(data: Any) -> Network:
    if not isinstance(data, Mapping):
        raise SpecError("network spec must be a JSON object", "see DESIGN §2 for the format")
    unknown = set(data) - _SPEC_KEYS
    if unknown:
        raise SpecError(f"unknown top-level key(s) {sorted(map(str, unknown))}",
                        f"allowed keys: {sorted(_SPEC_KEYS)}")
    name = data.get("name", "unnamed")
    description = data.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise SpecError("'name' and 'description' must be strings", "quote them in the JSON")
    if "input_channels" not in data:
        raise SpecError("missing key 'input_channels'", "add e.g. \"input_channels\": 1")
    channels = _positive_int(data["input_channels"], "spec", "'input_channels'")
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise SpecError("'layers' must be a non-empty list", "add at least one conv layer")
    layers: list[Layer] = []
    input_channels = channels
    for i, raw in enumerate(raw_layers):
        where = f"layer {i}"
        if not isinstance(raw, Mapping):
            raise SpecError(f"{where}: must be a JSON object, got {type(raw).__name__}",
                            "write {\"type\": \"conv\", ...} or {\"type\": \"pool\", ...}")
        kind = raw.get("type")
        if kind == "conv":
            _check_keys(raw, _CONV_KEYS, where)
            act = raw.get("activation", "linear")
            if act not in ACTIVATIONS:
                raise SpecError(f"{where}: unknown activation {act!r}",
                                f"use one of {', '.join(ACTIVATIONS)}")
            if "out_channels" not in raw or "kernel" not in raw:
                raise SpecError(f"{where}: conv needs 'kernel' and 'out_channels'",
                                "e.g. {\"type\": \"conv\", \"kernel\": [3,3,3], "
                                "\"out_channels\": 8, \"activation\": \"relu\"}")
            conv = Conv(input_channels, _positive_int(raw["out_channels"], where, "'out_channels'"),
                        _vec3(raw["kernel"], where, "kernel"), act)
            layers.append(conv)
            input_channels = conv.out_channels
        elif kind == "pool":
            _check_keys(raw, _POOL_KEYS, where)
            if "window" not in raw:
                raise SpecError(f"{where}: pool needs 'window'", "e.g. \"window\": [2, 2, 2]")
            layers.append(Pool(input_channels, _vec3(raw["window"], where, "window")))
        else:
            raise SpecError(f"{where}: unknown layer type {kind!r}", "use \"conv\" or \"pool\"")
    if not any(isinstance(layer, Conv) for layer in layers):
        raise SpecError("the network has no conv layer", "add at least one conv layer")
    return Network(name, channels, tuple(layers), None, description)


def _check_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {sorted(map(str, unknown))}",
                        f"a {raw.get('type')} layer allows {sorted(allowed)}")


def _load_weights(net: Network, source: str | os.PathLike | Mapping[str, Any]
                  ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    if isinstance(source, Mapping):
        arrays = dict(source)
    else:
        try:
            # allow_pickle=False: a weights file must never execute code.
            with np.load(source, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            raise WeightsError(f"weights file {str(source)!r} not found",
                               "check the path, or use --random-weights SEED") from None
        except (OSError, ValueError, EOFError) as exc:
            raise WeightsError(f"cannot read weights {str(source)!r}: {exc}",
                               "it must be an .npz written by numpy.savez (no pickles)") from None
    weights: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    expected: set[str] = set()
    for i, layer in enumerate(net.layers):
        if not isinstance(layer, Conv):
            continue
        w_key, b_key = f"layers.{i}.weight", f"layers.{i}.bias"
        expected |= {w_key, b_key}
        shapes = {w_key: (layer.out_channels, layer.in_channels, *layer.kernel),
                  b_key: (layer.out_channels,)}
        checked = []
        for key, shape in shapes.items():
            if key not in arrays:
                raise WeightsError(f"layer {i}: missing weight array {key!r} (shape {shape})",
                                   "export all conv layers' weight and bias, keyed by the "
                                   "layer index in the spec")
            arr = np.asarray(arrays[key])
            if arr.dtype.kind not in "fiu":
                raise WeightsError(f"layer {i}: {key!r} has dtype {arr.dtype}, not a number",
                                   "store float32 arrays")
            if arr.shape != shape:
                raise WeightsError(f"layer {i}: {key!r} has shape {arr.shape}, expected {shape} "
                                   "(out, in, kz, ky, kx)",
                                   "check out_channels, kernel and the previous layer's "
                                   "channels in the spec")
            arr = arr.astype(np.float32)
            if not np.all(np.isfinite(arr)):
                raise WeightsError(f"layer {i}: {key!r} contains NaN or Inf",
                                   "the weights are corrupt or training diverged")
            checked.append(np.ascontiguousarray(arr))
        weights[i] = (checked[0], checked[1])
    extra = set(arrays) - expected
    if extra:
        raise WeightsError(f"unexpected weight array(s) {sorted(extra)[:5]}",
                           "keys must be layers.<i>.weight / layers.<i>.bias of conv layers; "
                           "is this the weights file of another network?")
    return weights
