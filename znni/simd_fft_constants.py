"""Constants the SIMD FFT template (templates/simd_fft.cpp.j2) is rendered with, computed from
validated integers only: shuffle masks for a vector width, butterfly coefficients for a radix."""

from __future__ import annotations

import math
from typing import Any

#: Radices with a butterfly in the template; a length with another prime factor is not
#: supported (the planner's transform sizes are 2^a·3^b·5^c·7^d).
RADICES = (8, 4, 2, 3, 5, 7)
ODD_RADICES = (3, 5, 7)


def shuffle_masks(width: int) -> dict[str, Any]:
    """``__builtin_shuffle`` index vectors (into two concatenated vectors) for ``width`` lanes.

    ``transpose``: per index bit b, the masks that exchange bit b of the row and lane index of
    a pair of rows (log2(width) such stages transpose width×width). ``even``/``odd``: the real and
    imaginary parts of interleaved complex values; ``interleave_*``: back again.
    """
    if width < 2 or width & (width - 1):
        raise ValueError(f"vector width must be a power of two ≥ 2, got {width}")
    stages = []
    bit = 1
    while bit < width:
        lo = [(width if j & bit else 0) + (j & ~bit) for j in range(width)]
        hi = [(width if j & bit else 0) + (j | bit) for j in range(width)]
        stages.append((lo, hi))
        bit <<= 1
    half = width // 2
    return {
        "transpose": stages,
        "even": list(range(0, 2 * width, 2)),
        "odd": list(range(1, 2 * width, 2)),
        "interleave_lo": [v for j in range(half) for v in (j, width + j)],
        "interleave_hi": [v for j in range(half, width) for v in (j, width + j)],
    }


def radix_coefficients(radix: int) -> tuple[list[list[str]], list[list[str]]]:
    """cos and sin of 2π·u·t/radix for u, t = 1..(radix−1)/2, as C++ float literals: the odd
    radix butterfly's coefficients."""
    if radix not in ODD_RADICES:
        raise ValueError(f"no odd-radix butterfly for {radix}")
    h = (radix - 1) // 2

    def table(f: object) -> list[list[str]]:
        return [[f"{f(2 * math.pi * u * t / radix):.9e}f" for t in range(1, h + 1)]  # type: ignore[operator]
                for u in range(1, h + 1)]

    return table(math.cos), table(math.sin)


def factors(n: int) -> list[int] | None:
    """Radices whose product is ``n`` (radices 8 and 4 first: fewer passes), or None if ``n`` has a
    prime factor above 7."""
    if n < 1:
        raise ValueError(f"transform length must be positive, got {n}")
    found = []
    rest = n
    for r in RADICES:
        while rest % r == 0:
            found.append(r)
            rest //= r
    return found if rest == 1 else None
