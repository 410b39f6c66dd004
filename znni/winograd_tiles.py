"""Winograd F(m, 3) transform matrices: one table, read by the Winograd primitive (kernel
transform, costs) and by the renderer (the generated 1-D transforms, term by term).

Like the activations, a tile reaches a template only as a validated name ("f2", "f4") that the
renderer's filters turn into fixed C++ from these exact rational matrices: nothing computed at
run time, and nothing from a spec, is ever pasted into source.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

Matrix = tuple[tuple[Fraction, ...], ...]


def _matrix(rows: list[list[int | str]]) -> Matrix:
    return tuple(tuple(Fraction(v) for v in row) for row in rows)


@dataclass(frozen=True)
class WinogradTile:
    """F(m, 3) along one axis for correlation: y = Aᵀ[(G g) ⊙ (Bᵀ d)], d of m + 2 inputs."""

    name: str
    m: int
    at: Matrix  # m × (m+2)
    g: Matrix   # (m+2) × 3
    bt: Matrix  # (m+2) × (m+2)

    @property
    def alpha(self) -> int:
        return self.m + 2

    @property
    def positions(self) -> int:
        """Transformed values per tile: (m+2)³."""
        return self.alpha ** 3


#: Points 0, ±1 and ∞.
F2 = WinogradTile("f2", 2, _matrix([[1, 1, 1, 0], [0, 1, -1, -1]]),
                  _matrix([[1, 0, 0], ["1/2", "1/2", "1/2"], ["1/2", "-1/2", "1/2"], [0, 0, 1]]),
                  _matrix([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]))
#: Points 0, 1, −1, ½, −2 and ∞ (Aᵀ[i][j] = p_j^i, G rows p_j^k / Π(p_j − p_l), Bᵀ solved).
F4 = WinogradTile(
    "f4", 4, _matrix([[1, 1, 1, 1, 1, 0], [0, 1, -1, "1/2", -2, 0], [0, 1, 1, "1/4", 4, 0],
                [0, 1, -1, "1/8", -8, 1]]),
    _matrix([[1, 0, 0], ["1/3", "1/3", "1/3"], ["-1/3", "1/3", "-1/3"],
             ["-16/15", "-8/15", "-4/15"], ["1/15", "-2/15", "4/15"], [0, 0, 1]]),
    _matrix([[1, "-3/2", -2, "3/2", 1, 0], [0, -1, "1/2", "5/2", 1, 0],
             [0, 1, "-5/2", "1/2", 1, 0], [0, -2, -1, 2, 1, 0], [0, "1/2", -1, "-1/2", 1, 0],
             [0, 1, "-3/2", -2, "3/2", 1]]))

#: Name → tile (the names are the renderer's enum values).
TILES: dict[str, WinogradTile] = {t.name: t for t in (F2, F4)}


def combination(coefficients: tuple[Fraction, ...], operand: str) -> str:
    """C++ for Σ c·operand(k) over the non-zero coefficients, e.g. ``d[0 * S] - 1.5f *
    d[2 * S]`` (operand is a format string of k). Only our fixed matrices reach this."""
    terms = []
    for k, c in enumerate(coefficients):
        if c == 0:
            continue
        sign = "-" if c < 0 else "+"
        size = abs(c)
        if Fraction(float(size)) != size:
            raise ValueError(f"{size} is not exact in float: transform matrices must be")
        factor = "" if size == 1 else f"{float(size)!r}f * "
        terms.append(f"{sign} {factor}{operand.format(k)}")
    first = terms[0]
    return " ".join([first[2:] if first[0] == "+" else f"-{first[2:]}", *terms[1:]])


def input_rows(name: str) -> list[str]:
    """Bᵀ's rows as C++ over ``d[k * S]``."""
    return [combination(row, "d[{} * S]") for row in TILES[name].bt]


def output_rows(name: str) -> list[str]:
    """Aᵀ's rows as C++ over ``s[k * SI]``."""
    return [combination(row, "s[{} * SI]") for row in TILES[name].at]
