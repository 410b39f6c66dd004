"""Rendering Jinja2 templates from flat, validated contexts.

The only gate between untrusted input (spec, weights, plan files) and generated source: a
context may hold integers and a closed set of identifier-like enum strings, nothing else. A
missing variable is an error (StrictUndefined), so a template can never silently emit nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import jinja2

from .. import simd_fft_constants, winograd_tiles
from ..activations import ACTIVATIONS
from ..precision import PRECISIONS

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
ABI_HEADER = TEMPLATE_DIR / "znni_abi.h"

#: The only strings allowed into generated code: activation and Winograd tile names.
ENUM_VALUES = frozenset(ACTIVATIONS) | frozenset(winograd_tiles.TILES) | frozenset(PRECISIONS)
_MAX_INT = 1 << 40

ContextValue = int | str


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # an activation name (a validated enum) → its fixed C++ or CUDA expression in a float v
    env.filters["cpp_activation"] = lambda name: ACTIVATIONS[name].cpp
    env.filters["cuda_activation"] = lambda name: ACTIVATIONS[name].cuda
    # a Winograd tile name (a validated enum) → its output edge m and fixed 1-D transforms
    env.filters["winograd_m"] = lambda name: winograd_tiles.TILES[name].m
    env.filters["winograd_input_rows"] = winograd_tiles.input_rows
    env.filters["winograd_output_rows"] = winograd_tiles.output_rows
    # a vector width → shuffle masks; an odd radix → butterfly coefficients (SIMD FFTs)
    env.filters["shuffle_masks"] = simd_fft_constants.shuffle_masks
    env.filters["radix_coefficients"] = simd_fft_constants.radix_coefficients
    return env


def check_context(context: Mapping[str, ContextValue]) -> None:
    """Refuse anything but bounded integers and known enum strings (defence in depth)."""
    for key, value in context.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise ValueError(f"template variable name {key!r} is not an identifier")
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(f"template variable {key}={value!r}: only int and enum str allowed")
        if isinstance(value, int) and not -_MAX_INT < value < _MAX_INT:
            raise ValueError(f"template variable {key}={value} out of range")
        if isinstance(value, str) and value not in ENUM_VALUES:
            raise ValueError(f"template variable {key}={value!r} is not an allowed enum value")


def render(template: str, context: Mapping[str, ContextValue]) -> str:
    """C++ source of ``template`` (a file in znni/templates) for a validated context."""
    check_context(context)
    return _environment().get_template(template).render(**context)


def abi_cdef() -> str:
    """The cffi declarations: the part of the ABI header between the cdef markers."""
    text = ABI_HEADER.read_text()
    start = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    return text[start:text.index("/* cdef-end */")]
