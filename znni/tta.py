"""Test-time augmentation (docs/design.md §8.2): the net's output averaged over flipped (and
y/x-transposed) copies of each input patch, each mapped back before the mean.

A sliding-window net's dense output at voxel ``j`` depends on the input window starting at
``j``. Flipping a patch's input along an axis, running the net and flipping its output back
puts every output voxel where it was (the window of ``j`` maps to itself), so each variant is a
run of the same compiled plan on a transformed patch: ``flips`` are the 8 subsets of axes to
flip, ``flips+transpose`` adds the y/x transpose of each (16). A transpose needs a net whose
kernels, dilations and windows are the same along y and x, and a patch square in y/x: the
planner only offers such patches then. The mean is taken patch by patch in a fixed order, so
in-memory and out-of-core runs agree bit for bit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .errors import PlanError
from .spec import Conv, Network, Pool

TTA_MODES = ("none", "flips", "flips+transpose")


@dataclass(frozen=True)
class Variant:
    flips: tuple[int, ...]  # spatial axes (0 = z) to flip
    transpose: bool         # swap y and x (after flipping)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``x`` ``(S, C, z, y, x)`` transformed (a view)."""
        if self.flips:
            x = np.flip(x, axis=tuple(2 + a for a in self.flips))
        return x.swapaxes(3, 4) if self.transpose else x

    def undo(self, y: np.ndarray) -> np.ndarray:
        """The output ``y`` of a transformed input mapped back (a view)."""
        if self.transpose:
            y = y.swapaxes(3, 4)
        return np.flip(y, axis=tuple(2 + a for a in self.flips)) if self.flips else y


def check_tta(mode: str) -> None:
    if mode not in TTA_MODES:
        raise PlanError(f"unknown test-time augmentation {mode!r}",
                        f"use one of {', '.join(TTA_MODES)}")


def variants(mode: str) -> tuple[Variant, ...]:
    """The transforms of ``mode``, identity first."""
    check_tta(mode)
    if mode == "none":
        return (Variant((), False),)
    flips = [tuple(a for a in range(3) if bits[a]) for bits in itertools.product((0, 1),
                                                                                  repeat=3)]
    transposes = (False, True) if mode == "flips+transpose" else (False,)
    return tuple(Variant(tuple(f), t) for t in transposes for f in flips)


def check_net_allows(mode: str, net: Network, patch: tuple[int, int, int] | None = None
                     ) -> None:
    """Refuse a transpose the net's anisotropy does not allow (its y and x differ), or an
    output ``patch`` that is not square in y/x (the transposed patch must be the same)."""
    check_tta(mode)
    if mode != "flips+transpose":
        return
    if patch is not None and patch[1] != patch[2]:
        raise PlanError(f"--tta flips+transpose needs a patch square in y and x, not "
                        f"{list(patch)}", "re-plan with --tta flips+transpose, or give a "
                        "patch with y = x")
    for index, layer in enumerate(net.layers):
        shape = layer.kernel if isinstance(layer, Conv) else layer.window
        assert isinstance(layer, (Conv, Pool))
        if shape[1] != shape[2] or layer.dilation[1] != layer.dilation[2]:
            raise PlanError(f"--tta flips+transpose swaps y and x, but layer {index} of "
                            f"{net.name!r} is {list(shape)} (z, y, x): the net is not the same "
                            "along y and x", "use --tta flips")
