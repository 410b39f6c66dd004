"""The peers znni is measured against: every other engine's fastest dense forms, one table.

A peer runs the same network and weights densely on a ``(C, Z, Y, X)`` float32 volume. Which
engine is fastest differs net by net and machine by machine (PyTorch's channels-last oneDNN
kernels, ONNX Runtime's NCHWc kernels, PyTorch's default layout), so a fair baseline is the
fastest of all of them, measured in the same run: ``znni bench`` and ``bench/first_run.py`` both
take their peers from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import ZnniError
from .onnx_dense import OnnxDense, require_onnxruntime
from .spec import Network
from .torch_dense import TorchDense, require_torch

Forward = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Peer:
    """- ``label``: how reports name it.
    - ``library``: the optional package it needs (a key of :data:`LIBRARIES`).
    - ``make``: ``(net, threads)`` → its dense forward."""

    label: str
    library: str
    make: Callable[[Network, int], Forward]


PEERS: tuple[Peer, ...] = (
    Peer("torch dilated", "torch", lambda net, threads: TorchDense(net, "dilated", threads)),
    Peer("torch mpf", "torch", lambda net, threads: TorchDense(net, "mpf", threads)),
    Peer("torch dilated channels_last", "torch",
         lambda net, threads: TorchDense(net, "dilated", threads, channels_last=True)),
    Peer("onnxruntime dilated", "onnxruntime", OnnxDense),
)

#: library → the function that imports it or raises a ZnniError saying how to install it.
LIBRARIES: dict[str, Callable[[], object]] = {"torch": require_torch,
                                              "onnxruntime": require_onnxruntime}


def installed(library: str) -> bool:
    try:
        LIBRARIES[library]()
    except ZnniError:
        return False
    return True


def select(which: str) -> tuple[list[Peer], list[str]]:
    """The peers for ``--vs which`` (``all``, ``none`` or a library) and the libraries skipped
    because they are not installed. A library asked for by name must be installed."""
    if which == "none":
        return [], []
    if which != "all":
        if which not in LIBRARIES:
            raise ZnniError(f"unknown peer {which!r}",
                            f"use one of all, none, {', '.join(LIBRARIES)}")
        LIBRARIES[which]()  # raises with the install command
        return [p for p in PEERS if p.library == which], []
    missing = [library for library in LIBRARIES if not installed(library)]
    return [p for p in PEERS if p.library not in missing], missing
