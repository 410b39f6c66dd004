"""Shape algebra of DAG networks (docs/design.md §2.1): which input sizes a net takes, the
output size, the total downsampling and the context.

Every node acts on each axis alone (valid conv: ``n − (k − 1)·d``; same conv: ``n``; pool:
``n / w``, exact; up-sampling: ``n·f``; concat and add: the smallest input, the others
centre-cropped, which needs an even difference), so the algebra is per axis on integers. A node's
*scale* is its voxel pitch relative to the input (pools divide it, up-sampling multiplies it);
the inputs of a concat or add must share one, or their voxels would not line up. The
*downsampling* ``D`` is the least common multiple of the scales' denominators: shifting the input
by ``D`` shifts every node's image by whole voxels, which is what exact tiling needs (§8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from .. import limits
from ..errors import ShapeError, SpecError
from .nodes import INPUT, Add, Concat, Conv, MaxFilter, Node, Pool, Upsample, Vec3


def _node_size(node: Node, axis: int, sizes: dict[str, int]) -> int | str:
    """The node's extent along ``axis`` from its inputs' extents, or why there is none."""
    n = sizes[node.inputs[0]]
    if isinstance(node, (Conv, MaxFilter)):
        if isinstance(node, Conv) and node.padding == "same":
            return n
        window = node.kernel if isinstance(node, Conv) else node.window
        span = (window[axis] - 1) * node.dilation[axis] + 1
        return n - span + 1 if n >= span else f"its input is {n}, less than its kernel's {span}"
    if isinstance(node, Pool):
        w = node.window[axis]
        return n // w if n % w == 0 else f"its input {n} is not a multiple of the window {w}"
    if isinstance(node, Upsample):
        return n * node.factor[axis]
    if isinstance(node, (Concat, Add)):
        extents = [sizes[src] for src in node.inputs]
        smallest = min(extents)
        odd = [e for e in extents if (e - smallest) % 2]
        if odd:
            return f"an input of {odd[0]} cannot be centre-cropped to {smallest} (odd difference)"
        return smallest
    return n


def axis_sizes(nodes: tuple[Node, ...], axis: int, n: int) -> dict[str, int] | str:
    """Every node's extent along ``axis`` for an input of ``n`` voxels, or the first problem."""
    sizes = {INPUT: n}
    for node in nodes:
        size = _node_size(node, axis, sizes)
        if isinstance(size, str):
            return f"node {node.name!r}: {size}"
        if size < 1:
            return f"node {node.name!r}: nothing left of the image"
        sizes[node.name] = size
    return sizes


def node_sizes(nodes: tuple[Node, ...], input_size: Vec3) -> dict[str, Vec3]:
    """Every node's image ``(z, y, x)`` for an input image of ``input_size``; a ShapeError
    naming the node and the axis where that input does not fit the net."""
    per_axis = []
    for axis, n in enumerate(input_size):
        sizes = axis_sizes(nodes, axis, n)
        if isinstance(sizes, str):
            valid = valid_sizes(nodes, axis, 3)
            raise ShapeError(f"input size {list(input_size)} does not fit the network along "
                             f"{'zyx'[axis]}: {sizes}",
                             f"valid sizes along {'zyx'[axis]} include {valid}"
                             if valid else "the network takes no input size along this axis")
        per_axis.append(sizes)
    return {name: (per_axis[0][name], per_axis[1][name], per_axis[2][name])
            for name in per_axis[0]}


def valid_sizes(nodes: tuple[Node, ...], axis: int, count: int,
                start: int = 1) -> list[int]:
    """The first ``count`` input extents from ``start`` up that the net takes along ``axis``."""
    found = []
    for n in range(start, limits.MAX_IMAGE_EDGE + 1):
        if not isinstance(axis_sizes(nodes, axis, n), str):
            found.append(n)
            if len(found) == count:
                break
    return found


Scale = tuple[Fraction, Fraction, Fraction]


def scales(nodes: tuple[Node, ...]) -> dict[str, Scale]:
    """Every node's voxel pitch per axis relative to the input's voxels (a pool of 2 doubles it,
    up-sampling by 2 halves it); a SpecError where a concat or add joins different scales."""
    out: dict[str, Scale] = {INPUT: (Fraction(1), Fraction(1), Fraction(1))}
    for node in nodes:
        s = out[node.inputs[0]]
        if isinstance(node, Pool):
            s = (s[0] * node.window[0], s[1] * node.window[1], s[2] * node.window[2])
        elif isinstance(node, Upsample):
            s = (s[0] / node.factor[0], s[1] / node.factor[1], s[2] / node.factor[2])
        elif isinstance(node, (Concat, Add)):
            joined = {out[src] for src in node.inputs}
            if len(joined) > 1:
                shown = ", ".join(f"{src} at pitch {'x'.join(map(str, out[src]))}"
                                  for src in node.inputs)
                raise SpecError(f"node {node.name!r} joins images of different resolutions: "
                                f"{shown}", "up- or down-sample the inputs to one resolution "
                                "before joining them")
        out[node.name] = s
    return out


@dataclass(frozen=True)
class ShapeReport:
    """The sizes a network takes, per axis ``(z, y, x)``:

    - ``smallest_input`` and the ``output`` it gives;
    - ``step``: valid inputs are ``smallest_input + k·step`` (the downsampling, where that holds;
      checked over the next sizes);
    - ``output_step``: how much the output grows per ``step`` of input;
    - ``downsampling``: the least common multiple of the nodes' pitches;
    - ``context``: input voxels beyond the output's footprint (``input − output·pitch``; the FOV
      minus one for valid nets, 0 for same-padded ones).
    """

    smallest_input: Vec3
    output: Vec3
    step: Vec3
    output_step: Vec3
    downsampling: Vec3
    context: Vec3


def downsampling(nodes: tuple[Node, ...]) -> Vec3:
    """Per axis, the lcm of the denominators of every node's resolution (``1/pitch``)."""
    ds = [1, 1, 1]
    for s in scales(nodes).values():
        for a in range(3):
            ds[a] = math.lcm(ds[a], s[a].numerator)
    return (ds[0], ds[1], ds[2])


def shape_report(nodes: tuple[Node, ...], output: str) -> ShapeReport:
    """:class:`ShapeReport` of the net ending in node ``output``; a ShapeError if some axis
    takes no input size at all."""
    ds = downsampling(nodes)
    pitch = scales(nodes)[output]
    smallest, out, step, out_step, context = [], [], [], [], []
    for axis in range(3):
        first = valid_sizes(nodes, axis, 1)
        if not first:
            raise ShapeError(f"the network takes no input size along {'zyx'[axis]} up to "
                             f"{limits.MAX_IMAGE_EDGE}",
                             "check its kernels, pools and crops along that axis")
        n0 = first[0]
        following = valid_sizes(nodes, axis, 4, n0 + 1)
        periodic = following[:3] == [n0 + k * ds[axis] for k in range(1, 4)]
        step_a = ds[axis] if periodic else (following[0] - n0 if following else 0)
        sizes0 = axis_sizes(nodes, axis, n0)
        assert not isinstance(sizes0, str)
        m0 = sizes0[output]
        grown = axis_sizes(nodes, axis, n0 + step_a) if step_a else sizes0
        assert not isinstance(grown, str)
        smallest.append(n0)
        out.append(m0)
        step.append(step_a)
        out_step.append(grown[output] - m0)
        context.append(n0 - int(m0 * pitch[axis]))
    return ShapeReport(_vec(smallest), _vec(out), _vec(step), _vec(out_step), ds,
                       _vec(context))


def _vec(values: list[int]) -> Vec3:
    return (values[0], values[1], values[2])

