"""Export a plan as a standalone C/C++ library: generated sources, header, weights, and a
Makefile and CMakeLists.txt to build it.

The layers' kernels are exactly the ones the runtime compiles (:func:`direct_source`,
:func:`mpf_source`, :func:`max_filter_source`), each in its own translation unit behind a
rendered prefix that renames its ``extern "C"`` ABI symbols to ``znni_l<i>_*`` (every
generated kernel defines the same symbol names, and ``extern "C"`` names cannot be namespaced).
A rendered driver (``znni_net.cpp``) runs them in plan order and recombines the fragments;
``layers.inc`` / ``pools.inc`` are its X-macro tables. Every piece of generated text comes from
:func:`~znni.codegen.render.render` (validated integers only); this module only concatenates.

FFT layers are exported as direct convolution (same result, more FLOPs; :func:`export_plan`
reports which layers it converted), or with ``fftw=True`` as FFTW3 kernels
(:mod:`znni.export_fftw`), which make the build depend on libfftw3f.

DAG plans (:mod:`znni.export_graph`) are exported with the same pieces — conv kernels
(:func:`export_conv`), weights file, C API (``export_api.cpp.j2``), header and build files —
and a driver of their own.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .codegen.loader import default_toolchain
from .codegen.render import ABI_HEADER, render
from .errors import PlanError, ZnniError
from .export_fftw import fftw_conv_source, fftw_weights
from .planner.plan import MAX_FILTER, Plan
from .primitives import CONV_PRIMITIVES, PRIMITIVES, FftConv
from .primitives.direct import choose_block, conv_output_shape, direct_source, pack_weights
from .primitives.max_filter import max_filter_source
from .primitives.mpf import mpf_source
from .spec import Conv, Network, Pool, Shape5, Vec3
from .version import __version__

EXPORT_VERSION = 1
#: The weights file starts with these 8 bytes, then the float count (int64), then the floats.
WEIGHTS_MAGIC = b"ZNNIWTS1"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_plan` (or :func:`~znni.export_graph.export_graph_plan`) wrote, and the
    conv layers (by index; DAG nodes by name) it ran as another primitive."""

    directory: Path
    files: tuple[str, ...]
    converted: tuple[tuple[int | str, str], ...]  # (layer or node, planned primitive) as direct

    def notes(self) -> list[str]:
        return [f"{_label(i)}: planned as {p!r}, exported as direct convolution (same result, "
                "more FLOPs" + ("; --fftw exports FFTW kernels)"
                                if isinstance(PRIMITIVES.get(p), FftConv) else ")")
                for i, p in self.converted]


def _label(which: int | str) -> str:
    return f"layer {which}" if isinstance(which, int) else f"node {which!r}"


@dataclass
class WeightsFile:
    """The floats of ``weights.bin`` in the order the driver's tables address them."""

    arrays: list[np.ndarray] = field(default_factory=list)
    count: int = 0

    def add(self, array: np.ndarray) -> int:
        """Append ``array`` (as float32); its offset in floats."""
        offset = self.count
        self.arrays.append(np.ascontiguousarray(array, dtype="<f4").ravel())
        self.count += array.size
        return offset

    def write(self, path: Path) -> None:
        with open(path, "wb") as handle:
            handle.write(WEIGHTS_MAGIC)
            handle.write(np.int64(self.count).tobytes())
            for array in self.arrays:
                handle.write(array.tobytes())


@dataclass(frozen=True)
class ExportedConv:
    """One conv layer's kernel as exported: its translation unit, its layers.inc row, and
    whether it runs as direct convolution although planned as another primitive."""

    source: str
    row: str
    converted: bool
    fftw: bool


def _version_ints() -> tuple[int, int, int]:
    parts = [int(m.group()) if (m := re.match(r"\d+", p)) else 0
             for p in __version__.split(".")[:3]]
    major, minor, patch = [*parts, 0, 0, 0][:3]
    return major, minor, patch


def new_directory(directory: str | os.PathLike[str]) -> Path:
    """The export directory, refused before anything is made if it holds anything: an export
    never mixes its files with another's."""
    out = Path(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZnniError(f"export directory {str(out)!r} exists and is not empty",
                        "give a new or empty directory")
    return out


def layer_source(index: int, source: str) -> str:
    """A generated kernel behind the prefix that renames its ABI symbols ``znni_l<index>_*``."""
    return render("export_layer_prefix.cpp.j2", {"index": index}) + source


def layer_row(index: int, input_shape: Shape5, output_shape: Shape5,
              weights: tuple[int, int, int, int] = (0, 0, 0, 0)) -> str:
    """The kernel's layers.inc row: its batch, tensor sizes and (weight offset, count, bias
    offset, count) in the weights file."""
    w_off, w_count, b_off, b_count = weights
    return render("export_layer_row.inc.j2", {
        "index": index, "batch": input_shape[0], "in_elems": math.prod(input_shape),
        "out_elems": math.prod(output_shape), "weight_offset": w_off, "weight_count": w_count,
        "bias_offset": b_off, "bias_count": b_count})


def export_conv(index: int, layer: Conv, input_shape: Shape5, primitive: str,
                weights: tuple[np.ndarray, np.ndarray], floats: WeightsFile,
                vector_width: int, fftw: bool) -> ExportedConv:
    """A conv layer of the plan as an exported kernel: FFT layers as FFTW3 kernels with
    ``fftw``, every other CPU primitive as the runtime's direct kernel (same result); its
    weights appended to ``floats`` in the layout that kernel reads."""
    if primitive not in CONV_PRIMITIVES:
        raise PlanError(f"layer {index}: primitive {primitive!r} cannot be exported",
                        f"plan with CPU primitives ({', '.join(CONV_PRIMITIVES)})")
    as_fftw = fftw and isinstance(PRIMITIVES[primitive], FftConv)
    if as_fftw:
        source = fftw_conv_source(layer, input_shape)
        w, b = fftw_weights(*weights)
    else:
        source = direct_source(layer, input_shape, vector_width)
        w, b = pack_weights(*weights, choose_block(layer, input_shape, vector_width).ob)
    offsets = (floats.add(w), w.size, floats.add(b), b.size)
    row = layer_row(index, input_shape, conv_output_shape(layer, input_shape), offsets)
    return ExportedConv(layer_source(index, source), row,
                        not as_fftw and primitive != "direct", as_fftw)


def api_context(batch: int, c_in: int, input_size: Vec3, c_out: int,
                output_size: Vec3) -> dict[str, int]:
    """What the header and the shared C API (export_api.cpp.j2) are rendered from."""
    major, minor, patch = _version_ints()
    return {"export_version": EXPORT_VERSION, "major": major, "minor": minor, "patch": patch,
            "batch": batch, "c_in": c_in, "iz": input_size[0], "iy": input_size[1],
            "ix": input_size[2], "c_out": c_out, "oz": output_size[0], "oy": output_size[1],
            "ox": output_size[2]}


def build_files(api: dict[str, int], graph: bool, fftw: bool) -> dict[str, str]:
    """The header, example program and build files, the same for chain and DAG exports."""
    return {"znni_net.h": render("export_net.h.j2", {**api, "graph": int(graph)}),
            "example.c": render("export_example.c.j2", {}),
            "Makefile": render("export_Makefile.j2", {"fftw": int(fftw)}),
            "CMakeLists.txt": render("export_CMakeLists.txt.j2", {"fftw": int(fftw)})}


def write_library(out: Path, sources: dict[str, str], floats: WeightsFile) -> tuple[str, ...]:
    """Write the sources, the ABI header and ``weights.bin`` into ``out``; the file names."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        (out / name).write_text(text)
    shutil.copyfile(ABI_HEADER, out / "znni_abi.h")
    floats.write(out / "weights.bin")
    return tuple(sorted([*sources, "znni_abi.h", "weights.bin"]))


def export_plan(plan: Plan, net: Network, directory: str | os.PathLike[str],
                vector_width: int | None = None, fftw: bool = False) -> ExportResult:
    """Write the library for ``plan`` of ``net`` (with weights) into ``directory`` (created;
    must be empty if it exists). ``vector_width``: floats per SIMD register the direct kernels
    are blocked for (default: this machine's, from ZNNI_CXXFLAGS). ``fftw``: FFT layers as
    FFTW3 kernels (:mod:`znni.export_fftw`; the build then links libfftw3f) instead of direct
    convolution."""
    weights = net.require_weights()
    plan = Plan.from_dict(plan.to_dict(), net)  # re-validated: nothing unchecked reaches codegen
    out = new_directory(directory)
    vw = vector_width or default_toolchain().vector_width
    layers = [s.layer for s in net.layer_shapes(plan.output_patch, 1, plan.max_filtered)]
    sources: dict[str, str] = {}
    rows: list[str] = []
    floats = WeightsFile()
    converted: list[tuple[int | str, str]] = []
    uses_fftw = False
    for lp in plan.layers:
        layer = layers[lp.index]
        if isinstance(layer, Conv):
            conv = export_conv(lp.index, layer, lp.input_shape, lp.primitive,
                               weights[lp.index], floats, vw, fftw)
            sources[f"layer_{lp.index}.cpp"] = conv.source
            rows.append(conv.row)
            uses_fftw |= conv.fftw
            if conv.converted:
                converted.append((lp.index, lp.primitive))
            continue
        assert isinstance(layer, Pool)
        source = (max_filter_source if lp.primitive == MAX_FILTER else mpf_source)(
            layer, lp.input_shape)
        sources[f"layer_{lp.index}.cpp"] = layer_source(lp.index, source)
        rows.append(layer_row(lp.index, lp.input_shape, lp.output_shape))
    pools = [layer for layer in layers if isinstance(layer, Pool) and not layer.max_filter]
    sources["layers.inc"] = "".join(rows)
    sources["pools.inc"] = "".join(render("export_pool_row.inc.j2", dict(
        zip(("pz", "py", "px"), p.window, strict=True))) for p in pools)
    last = plan.layers[-1].output_shape
    api = api_context(plan.batch, net.input_channels, plan.input_patch, net.output_channels,
                      plan.output_patch)
    sources |= build_files(api, graph=False, fftw=uses_fftw)
    sources["znni_net.cpp"] = render("export_net.cpp.j2", {
        **api, "items": last[0], "mz": last[2], "my": last[3], "mx": last[4],
        "weight_floats": floats.count, "n_pools": len(pools)})
    sources["plan.json"] = plan.to_json() + "\n"
    sources["net.json"] = json.dumps(net.to_dict(), indent=1) + "\n"
    files = write_library(out, sources, floats)
    return ExportResult(out, files, tuple(converted))
