"""The nodes of a DAG network (spec v2, docs/design.md §2.1): frozen, validated data.

Every node has a ``name`` (an identifier, unique in its graph), the names of its ``inputs``
(``"input"`` is the graph's input) and its number of output ``channels``. Sizes are integers
within :mod:`znni.limits`; activations are enum names with at most one float parameter. Nothing
here reaches generated source but integers and enum names (docs/design.md §9).
"""

from __future__ import annotations

from dataclasses import dataclass

Vec3 = tuple[int, int, int]

#: The name of the graph's input tensor in ``inputs`` lists.
INPUT = "input"
#: Activations of DAG nodes. ``leaky_relu`` takes ``slope`` (PyTorch: 0.01), ``elu`` ``alpha``
#: (1.0); ``softmax`` is over channels.
ACTIVATIONS = ("relu", "elu", "leaky_relu", "sigmoid", "tanh", "linear", "softmax")
PADDINGS = ("valid", "same")
UPSAMPLE_MODES = ("transposed", "nearest")


@dataclass(frozen=True)
class Activation:
    """An activation and its parameter (``leaky_relu``: the negative slope; ``elu``: alpha;
    others: 0)."""

    name: str = "linear"
    parameter: float = 0.0


@dataclass(frozen=True)
class Conv:
    """Cross-correlation (PyTorch conv3d, groups = 1), bias, activation. ``same`` pads
    ``(k − 1)·d`` zeros per axis, the smaller half before (PyTorch's ``padding="same"``)."""

    name: str
    inputs: tuple[str]
    in_channels: int
    channels: int
    kernel: Vec3
    padding: str = "valid"
    dilation: Vec3 = (1, 1, 1)
    activation: Activation = Activation()

    @property
    def pad(self) -> tuple[Vec3, Vec3]:
        """Zeros before and after the image per axis."""
        if self.padding == "valid":
            return (0, 0, 0), (0, 0, 0)
        total = [(k - 1) * d for k, d in zip(self.kernel, self.dilation, strict=True)]
        before = (total[0] // 2, total[1] // 2, total[2] // 2)
        return before, (total[0] - before[0], total[1] - before[1], total[2] - before[2])


@dataclass(frozen=True)
class Pool:
    """Max pooling, stride = window; the image must divide evenly (no floor: tiles must align)."""

    name: str
    inputs: tuple[str]
    channels: int
    window: Vec3


@dataclass(frozen=True)
class MaxFilter:
    """The max over a ``window`` of voxels ``dilation`` apart, at every voxel (stride 1): a
    pool made dense. Not a spec node: :func:`~znni.graph.dense.dense_graph` makes it from a pool
    of a net whose output is coarser than its input (docs/design.md §8.1)."""

    name: str
    inputs: tuple[str]
    channels: int
    window: Vec3
    dilation: Vec3


@dataclass(frozen=True)
class Upsample:
    """Up-sampling by ``factor``: ``transposed`` is ConvTranspose3d with kernel = stride =
    factor (weights ``(in, out, fz, fy, fx)`` and bias), ``nearest`` repeats voxels."""

    name: str
    inputs: tuple[str]
    in_channels: int
    channels: int
    factor: Vec3
    mode: str = "transposed"


@dataclass(frozen=True)
class Concat:
    """Channels of the inputs, in order, each centre-cropped to the smallest image."""

    name: str
    inputs: tuple[str, ...]
    channels: int


@dataclass(frozen=True)
class Add:
    """Sum of the inputs (same channels), each centre-cropped to the smallest image."""

    name: str
    inputs: tuple[str, ...]
    channels: int


@dataclass(frozen=True)
class Act:
    """An activation on its own (after an add, or a softmax over the output channels)."""

    name: str
    inputs: tuple[str]
    channels: int
    activation: Activation


Node = Conv | Pool | MaxFilter | Upsample | Concat | Add | Act
#: Nodes with learned weights: conv and transposed up-sampling.
WEIGHTED = (Conv, Upsample)


def weight_shapes(node: Node) -> dict[str, tuple[int, ...]]:
    """The weight arrays ``node`` needs, by key (PyTorch's layouts): none for nearest
    up-sampling and for nodes without weights."""
    if isinstance(node, Conv):
        return {f"{node.name}.weight": (node.channels, node.in_channels, *node.kernel),
                f"{node.name}.bias": (node.channels,)}
    if isinstance(node, Upsample) and node.mode == "transposed":
        return {f"{node.name}.weight": (node.in_channels, node.channels, *node.factor),
                f"{node.name}.bias": (node.channels,)}
    return {}
