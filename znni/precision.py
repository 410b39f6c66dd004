"""The number formats a plan can run its layers in, and bf16 rounding exactly as the kernels
do it (docs/design.md §5.7).

bf16 keeps float32's exponent and 8 bits of its mantissa: products of two bf16 values are exact
in float32, so a bf16 layer differs from float32 only by the rounding of its input and weights
(relative error ≤ 2⁻⁹ each), accumulated in float32.
"""

from __future__ import annotations

import numpy as np

from .errors import PlanError

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: object) -> str:
    """``precision`` if it names one of :data:`PRECISIONS`, else a PlanError saying which."""
    if precision not in PRECISIONS:
        raise PlanError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    return str(precision)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """The bf16 bit patterns (as uint32, the high 16 bits of float32) of ``x``, rounded to
    nearest even: the rule the generated kernels use."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to bf16 and widened back to float32 (the reference for bf16 kernels)."""
    return (bf16_bits(x) << 16).view(np.float32)


def pair_channels(w: np.ndarray) -> np.ndarray:
    """Conv weights ``(FO, FI, kz, ky, kx)`` as bf16 channel pairs ``(FO, ⌈FI/2⌉, kz, ky, kx)``
    of uint32, channel 2i in the low half and 2i+1 (zero past FI) in the high half: the word a
    dot-product instruction (vdpbf16ps) multiplies with a pair of input maps."""
    fo, fi = w.shape[:2]
    padded = np.zeros((fo, fi + fi % 2, *w.shape[2:]), np.float32)
    padded[:, :fi] = w
    bits = bf16_bits(padded)
    pairs: np.ndarray = bits[:, 0::2] | (bits[:, 1::2] << 16)
    return pairs
