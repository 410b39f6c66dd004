"""The same network, same weights, run densely by PyTorch: the baseline znni is measured against.

Two dense forms, both exact (they equal :mod:`znni.reference`):

- ``dilated``: every pool becomes a stride-1 max filter and every later conv/pool is dilated
  by the product of the windows before it — one big tensor per layer, no recombination.
- ``mpf``: max-pooling fragments, as znni does — each pool splits every sample into p³
  fragments (strided max pools at each offset), and the dense output is recombined at the end.

Either form can run channels-last (``channels_last=True``: input and weights in
``torch.channels_last_3d``, NDHWC), for which PyTorch's CPU convolutions pick other kernels —
a baseline is only fair at its faster layout.

``torch`` is an optional dependency (the ``bench`` extra); import errors say how to install it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .activations import torch_function
from .errors import ZnniError
from .primitives.mpf import recombine
from .spec import Conv, Network, Pool

FORMS = ("dilated", "mpf")


def require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ZnniError("PyTorch is not installed", "pip install 'znni[bench]' "
                        "(or pip install torch==2.13.0 for the CPU build)") from None
    return torch


class TorchDense:
    """``net`` (with weights) as a dense PyTorch forward in one of :data:`FORMS`."""

    def __init__(self, net: Network, form: str = "dilated", threads: int | None = None,
                 channels_last: bool = False) -> None:
        if form not in FORMS:
            raise ZnniError(f"unknown PyTorch form {form!r}", f"use one of {FORMS}")
        self.torch = require_torch()
        if threads is not None:
            self.torch.set_num_threads(threads)
        self.net = net
        self.form = form
        self.memory_format = (self.torch.channels_last_3d if channels_last
                              else self.torch.contiguous_format)
        weights = net.require_weights()
        self.params = {i: (self.torch.from_numpy(np.ascontiguousarray(w))
                           .to(memory_format=self.memory_format),
                           self.torch.from_numpy(np.ascontiguousarray(b)))
                       for i, (w, b) in weights.items()}

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        """Dense output ``(C_out, Z−FOV+1, …)`` of a ``(C, Z, Y, X)`` float32 volume."""
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]
            x = x.to(memory_format=self.memory_format)
            out = self._dilated(x) if self.form == "dilated" else self._mpf(x)
        result: np.ndarray = out[0].numpy()
        return result

    def _dilated(self, x: Any) -> Any:
        f = self.torch.nn.functional
        dilation = [1, 1, 1]
        for i, layer in enumerate(self.net.layers):
            if isinstance(layer, Conv):
                w, b = self.params[i]
                x = torch_function(self.torch, layer.activation)(
                    f.conv3d(x, w, b, dilation=tuple(dilation)))
            else:
                assert isinstance(layer, Pool)
                x = f.max_pool3d(x, layer.window, stride=1, dilation=tuple(dilation))
                dilation = [d * p for d, p in zip(dilation, layer.window, strict=True)]
        return x

    def _mpf(self, x: Any) -> Any:
        """MPF needs whole fragments: the input is zero-padded at the far end to an output
        extent that is a multiple of the fragmentation, and the output cropped back (each output
        voxel only sees its own FOV window, so the padding changes no kept voxel)."""
        torch = self.torch
        f = torch.nn.functional
        fov, frag = self.net.fov, self.net.fragmentation
        extent = [x.shape[2 + a] - fov[a] + 1 for a in range(3)]
        pad = [-(-extent[a] // frag[a]) * frag[a] - extent[a] for a in range(3)]
        x = f.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        out = self._mpf_whole(x)
        return out[:, :, :extent[0], :extent[1], :extent[2]]

    def _mpf_whole(self, x: Any) -> Any:
        torch = self.torch
        f = torch.nn.functional
        windows = []
        for i, layer in enumerate(self.net.layers):
            if isinstance(layer, Conv):
                w, b = self.params[i]
                x = torch_function(torch, layer.activation)(f.conv3d(x, w, b))
            else:
                assert isinstance(layer, Pool)
                p = layer.window
                frag = [(x.shape[2 + a] + 1) // p[a] - 1 for a in range(3)]
                parts = []
                for oz in range(p[0]):
                    for oy in range(p[1]):
                        for ox in range(p[2]):
                            part = f.max_pool3d(x[:, :, oz:, oy:, ox:], p, stride=p)
                            parts.append(part[:, :, :frag[0], :frag[1], :frag[2]])
                # fragment (oz, oy, ox) of sample s at batch index s·P + offset (as znni's MPF)
                x = torch.stack(parts, 1).reshape(-1, x.shape[1], *frag)
                windows.append(p)
        batch = x.shape[0] // math.prod(math.prod(w) for w in windows) if windows else x.shape[0]
        return torch.from_numpy(recombine(x.numpy(), windows, batch))
