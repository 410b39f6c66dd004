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
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .codegen.loader import default_toolchain
from .codegen.render import ABI_HEADER, render
from .errors import PlanError, ZnniError
from .export_fftw import fftw_conv_source, fftw_weights
from .planner.plan import MAX_FILTER, Plan
from .primitives import CONV_PRIMITIVES, PRIMITIVES, FftConv
from .primitives.direct import choose_block, direct_source, pack_weights
from .primitives.max_filter import max_filter_source
from .primitives.mpf import mpf_source
from .spec import Conv, Network, Pool
from .version import __version__

EXPORT_VERSION = 1
#: The weights file starts with these 8 bytes, then the float count (int64), then the floats.
WEIGHTS_MAGIC = b"ZNNIWTS1"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_plan` wrote, and the layers it ran as another primitive."""

    directory: Path
    files: tuple[str, ...]
    converted: tuple[tuple[int, str], ...]  # (layer index, planned primitive) run as direct

    def notes(self) -> list[str]:
        return [f"layer {i}: planned as {p!r}, exported as direct convolution (same result, "
                "more FLOPs; --fftw exports FFTW kernels)" for i, p in self.converted]


def _version_ints() -> tuple[int, int, int]:
    parts = [int(m.group()) if (m := re.match(r"\d+", p)) else 0
             for p in __version__.split(".")[:3]]
    major, minor, patch = [*parts, 0, 0, 0][:3]
    return major, minor, patch


def export_plan(plan: Plan, net: Network, directory: str | os.PathLike[str],
                vector_width: int | None = None, fftw: bool = False) -> ExportResult:
    """Write the library for ``plan`` of ``net`` (with weights) into ``directory`` (created;
    must be empty if it exists). ``vector_width``: floats per SIMD register the direct kernels
    are blocked for (default: this machine's, from ZNNI_CXXFLAGS). ``fftw``: FFT layers as
    FFTW3 kernels (:mod:`znni.export_fftw`; the build then links libfftw3f) instead of direct
    convolution."""
    weights = net.require_weights()
    plan = Plan.from_dict(plan.to_dict(), net)  # re-validated: nothing unchecked reaches codegen
    out = Path(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZnniError(f"export directory {str(out)!r} exists and is not empty",
                        "give a new or empty directory")
    vw = vector_width or default_toolchain().vector_width
    layers = [s.layer for s in net.layer_shapes(plan.output_patch, 1, plan.max_filtered)]
    sources: dict[str, str] = {}
    rows, floats, converted = [], [], []
    fftw_layers = 0
    offset = 0
    for lp in plan.layers:
        layer = layers[lp.index]
        prefix = render("export_layer_prefix.cpp.j2", {"index": lp.index})
        w_off = w_count = b_off = b_count = 0
        if isinstance(layer, Conv):
            if lp.primitive not in CONV_PRIMITIVES:  # every CPU conv exports as direct
                raise PlanError(f"layer {lp.index}: primitive {lp.primitive!r} cannot be "
                                "exported",
                                f"plan with CPU primitives ({', '.join(CONV_PRIMITIVES)})")
            if fftw and isinstance(PRIMITIVES[lp.primitive], FftConv):
                source = fftw_conv_source(layer, lp.input_shape)
                w, b = fftw_weights(*weights[lp.index])
                fftw_layers += 1
            else:
                if lp.primitive != "direct":
                    converted.append((lp.index, lp.primitive))
                source = direct_source(layer, lp.input_shape, vw)
                w, b = pack_weights(*weights[lp.index],
                                    choose_block(layer, lp.input_shape, vw).ob)
            w_off, w_count = offset, w.size
            b_off, b_count = offset + w.size, b.size
            offset += w.size + b.size
            floats += [w.ravel(), b]
        else:
            assert isinstance(layer, Pool)
            source = (max_filter_source if lp.primitive == MAX_FILTER else mpf_source)(
                layer, lp.input_shape)
        sources[f"layer_{lp.index}.cpp"] = prefix + source
        rows.append(render("export_layer_row.inc.j2", {
            "index": lp.index, "batch": lp.input_shape[0],
            "in_elems": math.prod(lp.input_shape), "out_elems": math.prod(lp.output_shape),
            "weight_offset": w_off, "weight_count": w_count,
            "bias_offset": b_off, "bias_count": b_count}))
    pools = [layer for layer in layers if isinstance(layer, Pool) and not layer.max_filter]
    sources["layers.inc"] = "".join(rows)
    sources["pools.inc"] = "".join(render("export_pool_row.inc.j2", dict(
        zip(("pz", "py", "px"), p.window, strict=True))) for p in pools)
    last = plan.layers[-1].output_shape
    major, minor, patch = _version_ints()
    shape_context = {
        "export_version": EXPORT_VERSION, "batch": plan.batch, "c_in": net.input_channels,
        "iz": plan.input_patch[0], "iy": plan.input_patch[1], "ix": plan.input_patch[2],
        "c_out": net.output_channels, "oz": plan.output_patch[0], "oy": plan.output_patch[1],
        "ox": plan.output_patch[2]}
    sources["znni_net.h"] = render("export_net.h.j2", shape_context)
    sources["znni_net.cpp"] = render("export_net.cpp.j2", {
        **shape_context, "items": last[0], "mz": last[2], "my": last[3], "mx": last[4],
        "weight_floats": offset, "n_pools": len(pools),
        "major": major, "minor": minor, "patch": patch})
    sources["example.c"] = render("export_example.c.j2", {})
    sources["Makefile"] = render("export_Makefile.j2", {"fftw": int(fftw_layers > 0)})
    sources["CMakeLists.txt"] = render("export_CMakeLists.txt.j2",
                                       {"fftw": int(fftw_layers > 0)})
    sources["plan.json"] = plan.to_json() + "\n"
    sources["net.json"] = json.dumps(net.to_dict(), indent=1) + "\n"

    out.mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        (out / name).write_text(text)
    shutil.copyfile(ABI_HEADER, out / "znni_abi.h")
    with open(out / "weights.bin", "wb") as handle:
        handle.write(WEIGHTS_MAGIC)
        handle.write(np.int64(offset).tobytes())
        for array in floats:
            handle.write(np.ascontiguousarray(array, dtype="<f4").tobytes())
    files = tuple(sorted([*sources, "znni_abi.h", "weights.bin"]))
    return ExportResult(out, files, tuple(converted))
