"""GPU primitives as the GPU planner sees them (docs/design.md §6): device memory and modelled
seconds.

Two families. *Resident*: the layer's input and output live in device memory (the GPU tail of a
pipeline passes tensors from layer to layer on the card). *GPU + host RAM* (``gpu-host-*``):
input and output stay in host RAM and the layer runs as sub-layers that fit on the card —
batch splits first (each input up once, each output down once), then chunks of output maps
(each chunk re-reads the sample's input) and of input maps (accumulated on the device) — with
two streams and pinned buffers, so uploads, compute and downloads overlap: a split runs in
max(compute, upload, download) plus one chunk's upload and download to fill and drain the pipe.
Map chunks carry their own weights (uploaded with each chunk, one buffer per stream).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..spec import Conv, Layer, Pool, Shape5
from .base import FLOAT_BYTES, tensor_bytes
from .direct import conv_output_shape, pack_weights
from .gpu_fft import gpu_fft_flops, gpu_fft_scratch_bytes, gpu_fft_source
from .gpu_kernels import direct_block, gpu_direct_source, gpu_pool_source
from .mpf import mpf_output_shape

if TYPE_CHECKING:
    from ..hardware import GpuSpec


def output_shape(layer: Layer, shape_in: Shape5) -> Shape5:
    return (conv_output_shape(layer, shape_in) if isinstance(layer, Conv)
            else mpf_output_shape(layer, shape_in))


def scaled_shape(shape: Shape5, items: int, total: int) -> Shape5:
    """``shape`` (a tail layer's, for the whole batch of ``total`` tail-input items) for
    ``items`` of them: MPF multiplies the batch, so every later batch scales by the same
    factor (and a pass's items stay contiguous: fragment ``s·P + o`` of item ``s``)."""
    return (shape[0] * items // total, *shape[1:])


def intermediate_buffers(outputs: list[Shape5]) -> tuple[int, int]:
    """Bytes of the two device buffers a resident pass's intermediate tensors alternate in
    (layer l writes buffer l % 2; the last layer writes the pass's output buffer instead):
    ``outputs`` are the pass's layer output shapes, the last one excluded."""
    return (max((tensor_bytes(s) for s in outputs[0::2]), default=0),
            max((tensor_bytes(s) for s in outputs[1::2]), default=0))


def weight_bytes(layer: Layer) -> int:
    """Device bytes of a conv's weights and biases as its kernel reads them: output maps
    padded to the direct kernel's register block (the FFT's plain arrays are no larger)."""
    if not isinstance(layer, Conv):
        return 0
    block = direct_block(layer)
    maps = -(-layer.out_channels // block) * block
    return FLOAT_BYTES * maps * (layer.in_channels * math.prod(layer.kernel) + 1)


def _undilated(layer: Layer) -> bool:
    return layer.dilation == (1, 1, 1) and not (isinstance(layer, Pool) and layer.max_filter)


@dataclass(frozen=True)
class ResidentGpu:
    """``gpu-direct``, ``gpu-fft``, ``gpu-mpf``: one kernel module on device-resident tensors.

    Everything the runtime needs of a GPU primitive is here (its source, whether it links
    cuFFT, its weights as the kernel reads them, its memory and time), so runtime/gpu.py only
    binds CUDA and schedules: a new GPU primitive is a template, its source function and this
    class (plus its registry line below)."""

    name: str
    method: str  # direct, fft or mpf

    def supports(self, layer: Layer) -> bool:
        return _undilated(layer) and isinstance(layer, Pool) == (self.method == "mpf")

    @property
    def uses_cufft(self) -> bool:
        return self.method == "fft"

    def source(self, layer: Layer, shape_in: Shape5) -> str:
        """CUDA source of the layer's module on ``shape_in`` (its batch a run-time argument)."""
        if isinstance(layer, Pool):
            return gpu_pool_source(layer, shape_in)
        assert isinstance(layer, Conv)
        return (gpu_fft_source(layer, shape_in) if self.method == "fft"
                else gpu_direct_source(layer, shape_in))

    def kernel_weights(self, layer: Layer, weights: tuple[np.ndarray, np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray]:
        """The weights as the kernel reads them: packed blocks (direct) or the plain arrays."""
        if self.method == "direct":
            assert isinstance(layer, Conv)
            return pack_weights(*weights, direct_block(layer))
        return np.ascontiguousarray(weights[0]), np.ascontiguousarray(weights[1])

    def scratch_bytes(self, layer: Layer, shape_in: Shape5) -> int:
        """Device bytes it allocates itself while it runs: (FFT) its spectra and scratch."""
        if self.method != "fft":
            return 0
        assert isinstance(layer, Conv)
        return gpu_fft_scratch_bytes(layer, shape_in)

    def working_bytes(self, layer: Layer, shape_in: Shape5) -> int:
        """Device bytes while it runs: input, output and its scratch."""
        return (tensor_bytes(shape_in) + tensor_bytes(output_shape(layer, shape_in))
                + self.scratch_bytes(layer, shape_in))

    def seconds(self, layer: Layer, shape_in: Shape5, gpu: GpuSpec) -> float:
        """Compute or device-memory traffic, whichever is slower, plus the launches."""
        traffic = tensor_bytes(shape_in) + tensor_bytes(output_shape(layer, shape_in))
        if self.method == "mpf":
            return traffic / gpu.bandwidth + gpu.launch_seconds
        assert isinstance(layer, Conv)
        if self.method == "direct":
            out = conv_output_shape(layer, shape_in)
            flops = 2 * math.prod(out) * layer.in_channels * math.prod(layer.kernel)
            return max(flops / gpu.direct_flops, traffic / gpu.bandwidth) + gpu.launch_seconds
        scratch = gpu_fft_scratch_bytes(layer, shape_in)
        # every transform pass and transpose reads and writes its buffers: ~3 sweeps of scratch
        return (max(gpu_fft_flops(layer, shape_in) / gpu.fft_flops,
                    (traffic + 3 * scratch) / gpu.bandwidth) + 20 * gpu.launch_seconds)


@dataclass(frozen=True)
class Split:
    """A GPU + host RAM sub-layer: ``samples`` per chunk, ``out_maps`` output and ``in_maps``
    input maps per chunk (all maps: no channel split)."""

    samples: int
    out_maps: int
    in_maps: int

    def maps_split(self, layer: Layer) -> bool:
        """Whether this splits maps (each chunk with its own weights), not only the batch."""
        maps = ((layer.out_channels, layer.in_channels) if isinstance(layer, Conv)
                else (layer.channels, layer.channels))
        return (self.out_maps, self.in_maps) != maps


def _halvings(n: int) -> list[int]:
    """n, ⌈n/2⌉, ⌈n/4⌉, …, 1: the chunk sizes tried."""
    out = [n]
    while out[-1] > 1:
        out.append(-(-out[-1] // 2))
    return out


@dataclass(frozen=True)
class HostRamGpu:
    """``gpu-host-direct``, ``gpu-host-fft``, ``gpu-host-mpf``: a resident primitive run in
    sub-layers streamed from and to host RAM."""

    name: str
    inner: ResidentGpu

    def supports(self, layer: Layer) -> bool:
        return self.inner.supports(layer)

    def splits(self, layer: Layer, shape_in: Shape5) -> list[Split]:
        """Batch splits first, then (one sample per chunk) output-map and input-map chunks."""
        s, f = shape_in[:2]
        fo = layer.out_channels if isinstance(layer, Conv) else f
        out = [Split(n, fo, f) for n in _halvings(s)]
        if isinstance(layer, Conv):
            out += [Split(1, a, b) for a in _halvings(fo) for b in _halvings(f)
                    if (a, b) != (fo, f)]
        return out

    def _chunk(self, layer: Layer, shape_in: Shape5, split: Split) -> tuple[Layer, Shape5]:
        shape = (split.samples, split.in_maps, *shape_in[2:])
        if isinstance(layer, Conv):
            return Conv(split.in_maps, split.out_maps, layer.kernel, layer.activation), shape
        return Pool(split.in_maps, layer.window), shape

    def device_bytes(self, layer: Layer, shape_in: Shape5, split: Split) -> int:
        """Two chunks in flight (double buffering) and the weights: the layer's once for a
        batch split, a chunk's per buffer set for a map split."""
        chunk_layer, chunk_shape = self._chunk(layer, shape_in, split)
        weight_sets = 2 if split.maps_split(layer) else 1
        return (2 * self.inner.working_bytes(chunk_layer, chunk_shape)
                + weight_sets * weight_bytes(chunk_layer))

    def seconds(self, layer: Layer, shape_in: Shape5, split: Split, gpu: GpuSpec) -> float:
        s, f = shape_in[:2]
        chunk_layer, chunk_shape = self._chunk(layer, shape_in, split)
        fo = layer.out_channels if isinstance(layer, Conv) else f
        chunks = (-(-s // split.samples) * -(-fo // split.out_maps) * -(-f // split.in_maps))
        compute = chunks * self.inner.seconds(chunk_layer, chunk_shape, gpu)
        out_chunk = tensor_bytes(output_shape(chunk_layer, chunk_shape))
        up = -(-fo // split.out_maps) * tensor_bytes(shape_in)  # input re-read per output chunk
        if split.maps_split(layer):
            up += chunks * weight_bytes(chunk_layer)
        down = tensor_bytes(output_shape(layer, shape_in))
        fill = (tensor_bytes(chunk_shape) + out_chunk) / gpu.link_bandwidth
        return (max(compute, up / gpu.link_bandwidth, down / gpu.link_bandwidth) + fill
                + 2 * chunks * gpu.launch_seconds)


RESIDENT: dict[str, ResidentGpu] = {p.name: p for p in (
    ResidentGpu("gpu-direct", "direct"), ResidentGpu("gpu-fft", "fft"),
    ResidentGpu("gpu-mpf", "mpf"))}
HOST_RAM: dict[str, HostRamGpu] = {f"gpu-host-{p.method}": HostRamGpu(f"gpu-host-{p.method}", p)
                                   for p in RESIDENT.values()}


def gpu_primitive(name: str) -> ResidentGpu:
    """The resident primitive that runs ``name`` (a ``gpu-host-*`` name runs its inner one)."""
    return HOST_RAM[name].inner if name in HOST_RAM else RESIDENT[name]
