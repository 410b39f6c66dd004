"""Winograd F(m, 3) transform matrices (and F(m, 1) identities): one table, read by the
Winograd primitive (kernel transform, costs) and by the renderer (the generated 1-D transforms,
term by term).

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
    """F(m, r) along one axis for correlation: y = Aᵀ[(G g) ⊙ (Bᵀ d)], d of m + r − 1
    inputs, r = 3 taps (or 1: the identity tiles of a kernel's 1-tap axes)."""

    name: str
    m: int
    at: Matrix  # m × α
    g: Matrix   # α × r
    bt: Matrix  # α × α

    @property
    def taps(self) -> int:
        return len(self.g[0])

    @property
    def alpha(self) -> int:
        return self.m + self.taps - 1


def _identity(m: int) -> WinogradTile:
    """F(m, 1): no transform (a 1-tap kernel multiplies each input by its one weight)."""
    eye = _matrix([[int(i == j) for j in range(m)] for i in range(m)])
    return WinogradTile(f"i{m}", m, eye, _matrix([[1]] * m), eye)


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

#: Name → tile (the names are the renderer's enum values). A 1-tap axis of an F(2) or F(4)
#: layer takes the identity tile as long as the others' patch (α = 4 or 6), so that every
#: kernel shape keeps the transformed patch, and the scratch it fills, of a 3³ one.
TILES: dict[str, WinogradTile] = {t.name: t for t in (F2, F4, _identity(4), _identity(6))}


def axis_tiles(tile: WinogradTile, kernel: tuple[int, int, int]) -> tuple[WinogradTile, ...]:
    """The tile per axis (z, y, x) of a kernel whose edges are 3 or 1: ``tile`` on 3-tap
    axes, the identity of ``tile``'s patch edge on 1-tap ones."""
    identity = TILES[f"i{tile.alpha}"]
    return tuple(tile if k == 3 else identity for k in kernel)


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
