"""Running the GPU tail of a plan: only where a CUDA device is present (or emulated).

A plan with a ``gpu`` section runs its layers ≥ θ through the generated CUDA modules. Without a
CUDA device that is a clear :class:`GpuUnavailableError`, never a silent CPU fallback;
``ZNNI_GPU_EMULATE=1`` runs the same kernels as C++ (cuda_emulation.h), which is how the tests
check GPU plans end to end. The tail runs as the plan's mode says:

- *resident*: one :class:`DeviceChain` of every tail layer: per pass of ``sub_batch``
  tail-input items one upload, every tail layer on device buffers (intermediate tensors stay
  on the card), one download; two streams and two input/output buffer sets, so pass k+1's
  upload overlaps pass k's compute and pass k's download; the host arrays are pinned in place.
- *host* (GPU + host RAM, one step per layer): batch splits as a one-layer
  :class:`DeviceChain` in passes of the planned chunk's items, map splits as real
  channel-chunk sub-layers (:class:`MapChunkStep`).

Weights go up once per compiled plan (map chunks: a chunk's with each chunk, as planned).

Python chains the layers by passing device pointers to small C entries (znni_gpu_abi.h: the
memory, copy, stream and event wrappers of gpu_runtime.cu.j2, and every conv module's chunk
entry) rather than through a generated per-tail driver: each layer stays the separately cached
module the planner and the kernel tests know, a tail is no new compile, and the scheduling
(passes, buffer sets, events) is plain, testable Python; a cffi call costs microseconds next to
a kernel launch and releases the GIL (the CPU–GPU pipeline runs tails in a thread).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import cffi
import numpy as np

from ..codegen.loader import KernelModule, cuda_error
from ..codegen.render import TEMPLATE_DIR, render
from ..errors import ZnniError
from ..planner.gpu_plan import GpuLayerPlan
from ..planner.plan import Plan
from ..primitives.base import Step, output_buffer, tensor_bytes
from ..primitives.gpu import (
    Split,
    gpu_primitive,
    intermediate_buffers,
    output_shape,
    scaled_shape,
)
from ..primitives.gpu_kernels import (
    emulating,
    load_gpu_kernel,
)
from ..spec import Conv, Layer, Shape5

GPU_ABI_HEADER = TEMPLATE_DIR / "znni_gpu_abi.h"
Weights = tuple[np.ndarray, np.ndarray]


class GpuUnavailableError(ZnniError):
    """A GPU plan was asked to run where no CUDA device is usable."""


def _cudart_candidates() -> list[str]:
    names = [ctypes.util.find_library("cudart") or "libcudart.so"]
    for entry in sys.path:
        for sub in ("cu13", "cu12", "cuda_runtime"):
            names += [str(p) for p in sorted((Path(entry) / "nvidia" / sub / "lib")
                                             .glob("libcudart.so*"))]
    return names


@cache
def cuda_device_count() -> int:
    """CUDA devices the runtime library reports (0 without a driver, library or device)."""
    for name in _cudart_candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cudaGetDeviceCount(ctypes.byref(count)) == 0:
            return count.value
        return 0
    return 0


def require_gpu() -> None:
    """Return if GPU kernels can run here (a CUDA device, or emulation), else explain."""
    if not emulating() and cuda_device_count() == 0:
        raise GpuUnavailableError(
            "this plan runs layers on a GPU, but no CUDA device is available here",
            "run it on a machine with an NVIDIA GPU and driver, or re-plan for this machine "
            "without --device (ZNNI_GPU_EMULATE=1 runs the GPU kernels as slow C++, for tests)")


@cache
def _gpu_ffi() -> cffi.FFI:
    """cffi declarations of znni_gpu_abi.h (between its cdef markers, as for znni_abi.h)."""
    text = GPU_ABI_HEADER.read_text()
    start = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    ffi = cffi.FFI()
    ffi.cdef(text[start:text.index("/* cdef-end */")])
    return ffi


@cache
def _gpu_lib(path: Path) -> Any:
    """A loaded module's znni_gpu_abi.h entries (the same shared object, opened again)."""
    return _gpu_ffi().dlopen(str(path))


def _void(address: int) -> Any:
    return _gpu_ffi().cast("void *", address)


class CudaRuntime:
    """The runtime module's entries as typed calls; device pointers and handles are ints."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib

    @staticmethod
    def check(rc: int, what: str) -> None:
        if rc != 0:
            raise cuda_error(what, rc)

    def _handle(self, entry: Any, what: str, *args: Any) -> int:
        out = _gpu_ffi().new("void **")
        self.check(entry(out, *args), what)
        return int(_gpu_ffi().cast("uintptr_t", out[0]))

    def alloc(self, nbytes: int) -> int:
        return self._handle(self.lib.znni_gpu_alloc, f"allocating {nbytes} bytes on the GPU",
                            nbytes)

    def stream(self) -> int:
        return self._handle(self.lib.znni_gpu_stream_create, "creating a CUDA stream")

    def event(self) -> int:
        return self._handle(self.lib.znni_gpu_event_create, "creating a CUDA event")

    def upload(self, device: int, host: np.ndarray, stream: int) -> None:
        """``host`` (C-contiguous) into device memory at ``device``, asynchronously."""
        self.check(self.lib.znni_gpu_copy(_void(device), _void(host.ctypes.data), host.nbytes,
                                          1, _void(stream)), "uploading to the GPU")

    def download(self, host: np.ndarray, device: int, stream: int) -> None:
        """Device memory at ``device`` into ``host`` (C-contiguous), asynchronously."""
        self.check(self.lib.znni_gpu_copy(_void(host.ctypes.data), _void(device), host.nbytes,
                                          0, _void(stream)), "downloading from the GPU")

    def record(self, event: int, stream: int) -> None:
        self.check(self.lib.znni_gpu_event_record(_void(event), _void(stream)),
                   "recording a CUDA event")

    def wait(self, stream: int, event: int) -> None:
        self.check(self.lib.znni_gpu_stream_wait(_void(stream), _void(event)),
                   "waiting for a CUDA event")

    @contextmanager
    def pinned(self, *arrays: np.ndarray) -> Iterator[None]:
        """Page-lock ``arrays`` while the block enqueues copies of them (a refusal leaves them
        pageable); on the way out the device is drained first, since nothing may be in
        flight once they are unpinned (also after an error), and its error code checked."""
        locked = [a for a in arrays if self.lib.znni_gpu_pin(_void(a.ctypes.data), a.nbytes) == 0]
        try:
            yield
        finally:
            rc = self.lib.znni_gpu_synchronize()
            for a in locked:
                self.lib.znni_gpu_unpin(_void(a.ctypes.data))
        self.check(rc, "the GPU tail")


def gpu_runtime() -> CudaRuntime:
    """The process's runtime module (built like any kernel: nvcc, or C++ when emulating)."""
    module = load_gpu_kernel(render("gpu_runtime.cu.j2", {}), "runtime")
    return CudaRuntime(_gpu_lib(module.path))


def _release(rt: CudaRuntime, buffers: list[int], streams: list[int], events: list[int]) -> None:
    rt.lib.znni_gpu_synchronize()
    for e in events:
        rt.lib.znni_gpu_event_destroy(_void(e))
    for s in streams:
        rt.lib.znni_gpu_stream_destroy(_void(s))
    for b in buffers:
        rt.lib.znni_gpu_free(_void(b))


class DeviceResources:
    """Device buffers, streams and events of one step, freed when the step is."""

    def __init__(self, rt: CudaRuntime) -> None:
        self.rt = rt
        self._buffers: list[int] = []
        self._streams: list[int] = []
        self._events: list[int] = []
        weakref.finalize(self, _release, rt, self._buffers, self._streams, self._events)

    def alloc(self, nbytes: int) -> int:
        self._buffers.append(self.rt.alloc(nbytes))
        return self._buffers[-1]

    def streams(self, count: int) -> list[int]:
        self._streams += [self.rt.stream() for _ in range(count)]
        return self._streams[-count:]

    def event(self) -> int:
        self._events.append(self.rt.event())
        return self._events[-1]

    def resident(self, host: np.ndarray) -> int:
        """A device copy of ``host`` kept as long as the step (weights: up once)."""
        device = self.alloc(host.nbytes)
        self.rt.upload(device, host, 0)
        self.rt.check(self.rt.lib.znni_gpu_synchronize(), "uploading weights")
        return device


@dataclass(frozen=True)
class Kernel:
    """A GPU layer module called on device pointers, enqueued on a stream."""

    module: KernelModule
    label: str

    def forward(self, rt: CudaRuntime, d_in: int, d_out: int, d_w: int, d_b: int, items: int,
                stream: int) -> None:
        ffi = self.module.ffi
        rt.check(self.module.lib.znni_gpu_layer_forward(
            ffi.cast("const float *", d_in), ffi.cast("float *", d_out),
            ffi.cast("const float *", d_w), ffi.cast("const float *", d_b), items,
            ffi.cast("void *", stream)), self.label)

    def chunk_forward(self, rt: CudaRuntime, d_in: int, d_out: int, d_w: int, d_b: int,
                      items: int, stream: int, accumulate: bool, finish: bool) -> None:
        """A conv over an input-map chunk (see znni_gpu_conv_chunk_forward)."""
        ffi = _gpu_ffi()
        rt.check(_gpu_lib(self.module.path).znni_gpu_conv_chunk_forward(
            ffi.cast("const float *", d_in), ffi.cast("float *", d_out),
            ffi.cast("const float *", d_w), ffi.cast("const float *", d_b), items,
            ffi.cast("void *", stream), int(accumulate), int(finish)), self.label)


def _kernel(primitive: str, layer: Layer, shape: Shape5, label: str) -> Kernel:
    """The module of ``layer`` on ``shape`` (its batch is a run-time argument)."""
    p = gpu_primitive(primitive)
    module = load_gpu_kernel(p.source(layer, shape), f"{label} ({primitive})",
                             with_cufft=p.uses_cufft)
    return Kernel(module, f"GPU kernel {module.path.name} ({label})")


def _host_weights(primitive: str, layer: Layer,
                  weights: Weights | None) -> Weights | tuple[None, None]:
    """The weights as the kernel reads them: packed blocks (direct) or the plain arrays."""
    if weights is None:
        return None, None
    return gpu_primitive(primitive).kernel_weights(layer, weights)


@dataclass(frozen=True)
class _ChainLayer:
    kernel: Kernel
    per_item: int          # its input items per item of the chain's input (MPF multiplies)
    weights: int           # device pointers (0: none)
    bias: int


class DeviceChain:
    """GPU layers as one step, in passes of ``sub_batch`` items of the first one's input
    with the tensors between them on the card: a resident tail, or (one layer) the batch
    splits of a GPU + host RAM layer.

    Device memory (what the GPU planner counts for a resident tail; less than it counts for a
    batch split, whose two buffer sets it plans with a scratch each): all the layers' weights,
    two pass-input and two pass-output buffers (one set per stream), and two buffers the
    intermediate tensors alternate in (layer l writes buffer l % 2). Those two are shared by
    both streams, so a pass's compute waits for the previous pass's (an event) — the card
    computes one pass at a time anyway — while uploads and downloads of the neighbouring
    passes run beside it.
    """

    input_slack = 0

    def __init__(self, rt: CudaRuntime, primitives: list[str], layers: list[Layer],
                 shapes: list[Shape5], weights: list[Weights | None], sub_batch: int,
                 first_index: int) -> None:
        self.rt, self.dev = rt, DeviceResources(rt)
        self.total = shapes[0][0]
        self.sub = min(sub_batch, self.total)
        self.out_shape = output_shape(layers[-1], shapes[-1])
        self.layers = [self._layer(p, layer, shape, w, first_index + i)
                       for i, (p, layer, shape, w) in enumerate(zip(primitives, layers, shapes,
                                                                    weights, strict=True))]
        outputs = [output_shape(layer, scaled_shape(shape, self.sub, self.total))
                   for layer, shape in zip(layers, shapes, strict=True)]
        self.d_in = [self.dev.alloc(tensor_bytes(scaled_shape(shapes[0], self.sub, self.total)))
                     for _ in range(2)]
        self.d_out = [self.dev.alloc(tensor_bytes(outputs[-1])) for _ in range(2)]
        self.d_mid = [self.dev.alloc(n) if n else 0 for n in intermediate_buffers(outputs[:-1])]
        self.streams = self.dev.streams(2)
        self.computed = self.dev.event()

    def _layer(self, primitive: str, layer: Layer, shape: Shape5, weights: Weights | None,
               index: int) -> _ChainLayer:
        w, b = _host_weights(primitive, layer, weights)
        return _ChainLayer(_kernel(primitive, layer, shape, f"layer {index}"),
                          shape[0] // self.total,
                          0 if w is None else self.dev.resident(w),
                          0 if b is None else self.dev.resident(b))

    def run(self, x: np.ndarray, out_slack: int,
            out: np.ndarray | None = None) -> np.ndarray:
        out = output_buffer(self.out_shape, out_slack, out)
        per_out = self.out_shape[0] // self.total
        passes = [(first, min(self.sub, self.total - first))
                  for first in range(0, self.total, self.sub)]
        with self.rt.pinned(x, out):
            self._upload(x, *passes[0], 0)
            for p, (first, n) in enumerate(passes):
                if p + 1 < len(passes):  # before this pass's compute, which may block the host
                    self._upload(x, *passes[p + 1], (p + 1) % 2)
                self._compute(n, p)
                self.rt.download(out[first * per_out:(first + n) * per_out],
                                 self.d_out[p % 2], self.streams[p % 2])
        return out

    def _upload(self, x: np.ndarray, first: int, n: int, buffer_set: int) -> None:
        self.rt.upload(self.d_in[buffer_set], x[first:first + n], self.streams[buffer_set])

    def _compute(self, n: int, p: int) -> None:
        stream, src = self.streams[p % 2], self.d_in[p % 2]
        if p:
            self.rt.wait(stream, self.computed)  # the shared intermediate buffers
        for i, tl in enumerate(self.layers):
            dst = self.d_out[p % 2] if i == len(self.layers) - 1 else self.d_mid[i % 2]
            tl.kernel.forward(self.rt, src, dst, tl.weights, tl.bias, n * tl.per_item, stream)
            src = dst
        self.rt.record(self.computed, stream)


def _ranges(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


@dataclass(frozen=True)
class _Group:
    """Output maps ``out`` of a chunk of samples, from the input-map chunks ``ins``."""

    out: tuple[int, int]
    ins: list[tuple[int, int]]


class MapChunkStep:
    """A host-mode layer split into channel chunks (docs/design.md §6), ``samples`` at a time.

    Conv: each output-map chunk accumulates over the input-map chunks on the device (the
    chunk entry starts from the partial sums and the last chunk adds the bias and activates),
    then goes down once; the input is re-read per output chunk, as the planner costs it. Pool:
    maps are independent, so each map chunk is its own sub-layer. Groups alternate between two
    streams with their own buffers (input, output, a chunk's weights), so one group's uploads
    overlap the other's compute. Chunk sizes that do not divide the maps leave a smaller last
    chunk: its own module.
    """

    input_slack = 0

    def __init__(self, rt: CudaRuntime, primitive: str, layer: Layer, shape: Shape5,
                 lp: GpuLayerPlan, weights: Weights | None) -> None:
        self.rt, self.dev, self.layer = rt, DeviceResources(rt), layer
        self.samples, in_chunk = lp.chunk_shape[:2]
        ins = _ranges(shape[1], in_chunk)
        self.groups = ([_Group(o, ins) for o in _ranges(layer.out_channels, lp.out_maps)]
                       if isinstance(layer, Conv) else [_Group(r, [r]) for r in ins])
        self.kernels: dict[tuple[int, int], Kernel] = {}
        self.weights: dict[tuple[tuple[int, int], tuple[int, int]], Weights] = {}
        for g in self.groups:
            for r in g.ins:
                self._prepare(primitive, r, g.out, (self.samples, r[1] - r[0], *shape[2:]),
                              lp.index, weights)
        first_in = (self.samples, in_chunk, *shape[2:])  # the first chunks are the largest
        first_out = output_shape(self._sub_layer(ins[0], self.groups[0].out), first_in)
        self.d_in = [self.dev.alloc(tensor_bytes(first_in)) for _ in range(2)]
        self.d_out = [self.dev.alloc(tensor_bytes(first_out)) for _ in range(2)]
        biggest = [max((a.nbytes for a in pair), default=0)
                   for pair in zip(*self.weights.values(), strict=True)] or [0, 0]
        self.d_w = [[self.dev.alloc(n) if n else 0 for n in biggest] for _ in range(2)]
        self.streams = self.dev.streams(2)

    def _prepare(self, primitive: str, ins: tuple[int, int], out: tuple[int, int],
                 chunk_in: Shape5, index: int, weights: Weights | None) -> None:
        """The module of a chunk's size (shared by equal chunks) and the chunk's weights."""
        sub = self._sub_layer(ins, out)
        key = (ins[1] - ins[0], out[1] - out[0])
        if key not in self.kernels:
            self.kernels[key] = _kernel(primitive, sub, chunk_in,
                                        f"layer {index} maps {key[0]}->{key[1]}")
        if weights is not None:
            w, b = weights
            self.weights[ins, out] = gpu_primitive(primitive).kernel_weights(
                sub, (w[out[0]:out[1], ins[0]:ins[1]], b[out[0]:out[1]]))

    def _sub_layer(self, ins: tuple[int, int], out: tuple[int, int]) -> Layer:
        if isinstance(self.layer, Conv):
            return replace(self.layer, in_channels=ins[1] - ins[0], out_channels=out[1] - out[0])
        return replace(self.layer, channels=ins[1] - ins[0])

    def run(self, x: np.ndarray, out_slack: int,
            out: np.ndarray | None = None) -> np.ndarray:
        out = output_buffer(output_shape(self.layer, x.shape), out_slack, out)
        per_item = out.shape[0] // x.shape[0]  # MPF fragments per sample
        g = 0
        with self.rt.pinned(x, out):
            for s0 in range(0, x.shape[0], self.samples):
                n = min(self.samples, x.shape[0] - s0)
                for group in self.groups:
                    self._group(x[s0:s0 + n], group, g % 2)
                    for r in range(s0 * per_item, (s0 + n) * per_item):  # output items
                        piece = out[r, group.out[0]:group.out[1]]
                        self.rt.download(piece, self.d_out[g % 2] + (r - s0 * per_item)
                                         * piece.nbytes, self.streams[g % 2])
                    g += 1
        return out

    def _group(self, x: np.ndarray, group: _Group, s: int) -> None:
        """Enqueue one group's uploads and sub-layers on stream ``s`` (its output stays in
        ``d_out[s]``)."""
        stream = self.streams[s]
        for j, r in enumerate(group.ins):
            for t in range(x.shape[0]):
                piece = x[t, r[0]:r[1]]
                self.rt.upload(self.d_in[s] + t * piece.nbytes, piece, stream)
            kernel = self.kernels[r[1] - r[0], group.out[1] - group.out[0]]
            if isinstance(self.layer, Conv):
                d_w, d_b = self.d_w[s]
                w, b = self.weights[r, group.out]
                self.rt.upload(d_w, w, stream)
                self.rt.upload(d_b, b, stream)
                kernel.chunk_forward(self.rt, self.d_in[s], self.d_out[s], d_w, d_b, x.shape[0],
                                     stream, accumulate=j > 0, finish=j == len(group.ins) - 1)
            else:
                kernel.forward(self.rt, self.d_in[s], self.d_out[s], 0, 0, x.shape[0], stream)


def gpu_steps(plan: Plan, layers: list[Layer], weights: dict[int, Weights]) -> list[Step]:
    """Steps for the plan's GPU layers: one resident tail, or one step per host-mode layer
    (raises :class:`GpuUnavailableError` without a CUDA device)."""
    assert plan.gpu is not None
    require_gpu()
    tail = plan.gpu.layers
    rt = gpu_runtime()

    def chain(lps: tuple[GpuLayerPlan, ...], sub_batch: int) -> DeviceChain:
        return DeviceChain(rt, [lp.primitive for lp in lps], [layers[lp.index] for lp in lps],
                           [plan.layers[lp.index].input_shape for lp in lps],
                           [weights.get(lp.index) for lp in lps], sub_batch, lps[0].index)

    if plan.gpu.mode == "resident":
        return [chain(tail, plan.gpu.sub_batch)]
    steps: list[Step] = []
    for lp in tail:
        layer = layers[lp.index]
        if Split(lp.chunk_shape[0], lp.out_maps, lp.chunk_shape[1]).maps_split(layer):
            steps.append(MapChunkStep(rt, lp.primitive, layer, plan.layers[lp.index].input_shape,
                                      lp, weights.get(lp.index)))
        else:
            steps.append(chain((lp,), lp.chunk_shape[0]))
    return steps
