"""FFT convolution (docs/design.md §5.2–5.3): transforms by SIMD FFTs/pruned DFTs, spectral MAC by
generated C++.

One algorithm, three schedules, two transform kinds — five primitives:

- ``fft-pruned`` / ``fft`` (task-parallel, ZNNi's algorithm 2): all S·f′ output spectra are
  accumulated at once; input spectra are freed before the inverse transforms.
- ``fft-pruned-data`` / ``fft-data`` (data-parallel, algorithm 1): output maps are accumulated a
  few at a time and inverse-transformed at once, so only S·(few) output spectra ever exist — the
  lean choice for the first layer's huge images.
- ``fft-pruned-lean``: the data-parallel schedule a few samples at a time (as many as keep a
  pass's spectra within LEAN_PASS_FRACTION of the layer's input + output tensors, at least
  one); kernel data is remade per pass. For layers whose S·f spectra do not fit (n537's S=8,
  95³ layer or its S=512, 20³ layer at a 4 GiB budget), where the alternative is direct
  convolution.

Every schedule transforms each kernel once per patch and reuses it for all S samples (kernels
are transformed in blocks of ``out_chunk × in_block`` maps, sized to a fixed scratch budget).
Correlation is convolution with the flipped kernel; the valid part starts at k−1 per axis, where
circular wrap-around (transform size ≥ image) cannot reach. Inputs and outputs are real
``(S, C, Z, Y, X)``; spectra are planar (re, im) float32 for the MAC kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from ..activations import apply
from ..codegen.loader import KernelModule, default_toolchain, load_kernel
from ..codegen.render import render
from ..config import default_threads
from ..fft import simd
from ..fft.pruned import (
    SpectralShape,
    dft_table,
    forward,
    inverse_cropped,
    prunable,
    xy_pass_bytes,
    xy_passes,
)
from ..fft.sizes import fft_size
from ..scratch import Scratch, scratch_or_fresh
from ..spec import Conv, Layer, Shape5
from .base import FLOAT_BYTES, Memory, output_buffer, tensor_bytes
from .direct import conv_output_shape

if TYPE_CHECKING:
    from ..hardware import Device

#: Scratch bytes for one block of kernel spectra. Bigger blocks mean more input maps per MAC
#: pass, so output spectra cross main memory fewer times (measured: the MAC is bandwidth-bound
#: at one input map per pass).
KERNEL_BLOCK_BYTES = 256 << 20
#: Output maps accumulated at once by the data-parallel schedule (at most).
DATA_PARALLEL_CHUNK = 4
#: The lean schedule's spectra per pass, as a fraction of the layer's input + output bytes:
#: small enough to fit where the tensors barely do, large enough that kernel data remade per
#: pass is amortised over several samples.
LEAN_PASS_FRACTION = 0.25
#: L2 bytes for one MAC task's output tile plus one L1 block of its input tile.
MAC_TILE_BYTES = 1 << 20
#: The data-parallel MAC streams spectra at 1/MAC_STREAM_PENALTY of the copy bandwidth.
MAC_STREAM_PENALTY = 3

def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in _divisors(n) if d <= at_most)


@dataclass(frozen=True)
class FftGeometry:
    """Everything sizes-related about one FFT conv layer shape, derived once."""

    spectral: SpectralShape
    out_chunk: int      # output maps accumulated at once
    in_block: int       # input maps per MAC call (one block of kernel data)
    vector_width: int
    tile: int           # frequencies per tile of the tiled planar layout
    fused: bool         # kernel spectra made inside the MAC from their x/y-transformed planes
    kz: int             # non-zero kernel planes (the fused MAC's z-DFT length)
    samples: int        # samples transformed and accumulated per pass (lean: a few)

    @classmethod
    def of(cls, layer: Conv, shape_in: Shape5, task_parallel: bool, pruned: bool,
           vector_width: int, lean: bool = False) -> FftGeometry:
        """Pick the (output chunk, input block) that moves the fewest bytes through the MAC.

        Per frequency, input spectra are read once per output chunk (8·S·f·f′/chunk bytes) and
        output spectra read and written once per input block (16·S·f·f′/block); the block's
        kernel data (full spectra, or for the fused MAC just the x/y-transformed planes) must
        fit KERNEL_BLOCK_BYTES. The data-parallel schedule caps the chunk at
        DATA_PARALLEL_CHUNK maps to keep its output spectra small; the lean one also takes a
        few samples per pass. The tile keeps one MAC task's output tile and one L1 block of its
        input tile in L2.
        """
        spectral = SpectralShape(tuple(fft_size(n) for n in shape_in[2:]))  # type: ignore[arg-type]
        fused = pruned and prunable(layer.kernel, spectral)
        v = vector_width
        plane = spectral.size[1] * spectral.half
        per_pair = (_fused_pair_bytes(layer.kernel, spectral, v) if fused
                    else 16 * spectral.complex_elements)  # complex buffer + planar copy
        max_chunk = layer.out_channels if task_parallel and not lean else DATA_PARALLEL_CHUNK
        samples = _lean_samples(layer, shape_in, spectral, v) if lean else shape_in[0]
        candidates = [(j, i) for j in _divisors(layer.out_channels) if j <= max_chunk
                      for i in _divisors(layer.in_channels)
                      if j * i * per_pair <= KERNEL_BLOCK_BYTES or j * i == 1]
        chunk, block = min(candidates, key=lambda ji: (1 / ji[0] + 2 / ji[1], -ji[0]))
        if fused:
            tile = v  # output tiles of every plane of a task stay in L2; P blocks in L1
        else:
            per_frequency = 8 * samples * (chunk + _l1_block(block, fused))
            tile = max(v, MAC_TILE_BYTES // per_frequency // v * v)
        tile = min(tile, 1024, -(-plane // v) * v)
        return cls(spectral, chunk, block, vector_width, tile, fused, layer.kernel[0], samples)

    @property
    def plane(self) -> int:
        """Complex values per z plane of a spectrum."""
        return self.spectral.size[1] * self.spectral.half

    @property
    def tiles_per_plane(self) -> int:
        return -(-self.plane // self.tile)

    @property
    def nfp(self) -> int:
        """Complex elements per map in the tiled planar layout (whole tiles per plane)."""
        return self.spectral.size[0] * self.tiles_per_plane * self.tile

    @property
    def register_block(self) -> tuple[int, int]:
        """(samples, output maps) of accumulators: 2·SB·JR of 32 vector registers (16, AVX2)."""
        return (2 if self.vector_width == 16 else 1), _largest_divisor(self.out_chunk, 4)

    def planar(self, maps: int, scratch: Scratch | None = None,
               name: str = "") -> np.ndarray:
        """An uninitialised tiled planar spectra array ``(planes·tiles, maps, 2, T)`` (in
        ``scratch``'s buffer ``name`` where given)."""
        return scratch_or_fresh(scratch, name, (self.nfp // self.tile, maps, 2, self.tile))

    def kernel_planes(self, pairs: int, scratch: Scratch | None) -> np.ndarray:
        """The fused MAC's tiled planar kernel planes ``(tiles per plane, pairs·kz, 2, T)``."""
        return scratch_or_fresh(scratch, "kernel planes",
                                (self.tiles_per_plane, pairs * self.kz, 2, self.tile))


#: The planner asks for the same geometries many times (every cost and memory query).
_geometry = cache(FftGeometry.of)


def _lean_samples(layer: Conv, shape_in: Shape5, spectral: SpectralShape, v: int) -> int:
    """Samples per pass of the lean schedule: complex + tiled planar input spectra of a pass
    within LEAN_PASS_FRACTION of the layer's input + output tensors."""
    plane = spectral.size[1] * spectral.half
    per_sample = 8 * shape_in[1] * (spectral.complex_elements
                                    + spectral.size[0] * -(-plane // v) * v)
    tensors = tensor_bytes(shape_in) + tensor_bytes(conv_output_shape(layer, shape_in))
    return max(1, min(shape_in[0], int(LEAN_PASS_FRACTION * tensors) // per_sample))


def _fused_pair_bytes(kernel: tuple[int, int, int], spectral: SpectralShape, v: int) -> int:
    """Bytes per kernel pair of the fused MAC's kernel data: the x/y passes' buffers and
    planes, plus the tiled planar copy of the planes."""
    plane = spectral.size[1] * spectral.half
    tiled = -(-plane // v) * v
    return xy_pass_bytes(1, kernel, spectral) + 8 * kernel[0] * tiled


def _r2c(lines: int, n: int) -> float:
    return lines * 2.5 * n * math.log2(max(n, 2))


def _c2c(lines: int, n: int) -> float:
    return lines * 5.0 * n * math.log2(max(n, 2))


def _l1_block(in_block: int, fused: bool) -> int:
    """Input maps per MAC L1 block. Plain MAC: ≤ 24 (4 output maps × 24 × re/im kernel lines
    ≈ 12 KiB; measured best among 10–40 on a 48 KiB L1). Fused: ≤ 8, so that the P block
    (4 × 8 pairs × kz planes × re/im vectors) stays in L1 across all planes."""
    return _largest_divisor(in_block, 8 if fused else 24)


def direct_transforms(g: FftGeometry) -> bool:
    """Whether images go straight between pixels and the MAC's tiled planar layout through
    the SIMD FFTs (no complex spectra, no conversion passes): their sizes are supported and
    the tile is whole vectors of the FFT module's width."""
    return simd.supports_size(g.spectral.size) and g.tile % g.vector_width == 0


def image_scratch_bytes(g: FftGeometry) -> int:
    """The direct transforms' complex scratch: one image per thread."""
    return 8 * g.spectral.complex_elements * default_threads()


def mac_source(layer: Conv, geometry: FftGeometry) -> str:
    g = geometry
    sb, jr = g.register_block
    common = {"in_maps": layer.in_channels, "jb": g.out_chunk, "ib": g.in_block,
              "vector_width": g.vector_width, "sb": sb, "jr": jr, "tile": g.tile,
              "ic": _l1_block(g.in_block, g.fused)}
    if g.fused:
        return render("fused_mac.cpp.j2", {**common, "planes": g.spectral.size[0],
                                           "plane": g.plane, "kz": g.kz})
    return render("spectral_mac.cpp.j2", {**common, "nfp": g.nfp})


class SpectralLayout:
    """Generated converters between complex (interleaved) spectra ``(maps, planes, plane)`` and the
    MAC's tiled planar layout ``(planes·tiles, maps, 2, T)``."""

    def __init__(self, planes: int, plane: int, tile: int, threads: int) -> None:
        self.planes, self.plane, self.tile = planes, plane, tile
        self.threads = threads
        self._modules: dict[tuple[bool, int], KernelModule] = {}

    def _module(self, to_planar: bool, scale_denominator: int) -> KernelModule:
        key = (to_planar, scale_denominator)
        if key not in self._modules:
            source = render("spectral_layout.cpp.j2", {
                "planes": self.planes, "plane": self.plane, "tile": self.tile,
                "to_planar": int(to_planar), "scale_denominator": scale_denominator})
            self._modules[key] = load_kernel(
                source, f"spectral layout {self.planes}x{self.plane} / {self.tile}")
        return self._modules[key]

    def prepare(self, *scale_denominators: int, back: bool = True) -> None:
        """Compile the converters that will be needed (to planar with these scalings; back)."""
        for d in scale_denominators:
            self._module(True, d)
        if back:
            self._module(False, 1)

    def to_planar(self, spec: np.ndarray, planar: np.ndarray, scale_denominator: int = 1) -> None:
        """Complex ``(maps, …)`` into tiled planar ``(…, maps, 2, T)``, divided by the given
        integer (kernel spectra fold the inverse transform's 1/N in here)."""
        self._module(True, scale_denominator).forward(spec.view(np.float32), planar,
                                                      self.threads, batch=planar.shape[1])

    def from_planar(self, planar: np.ndarray, spec: np.ndarray) -> None:
        """Tiled planar ``(…, maps, 2, T)`` back into complex ``(maps, …)`` spectra."""
        self._module(False, 1).forward(planar, spec.view(np.float32), self.threads,
                                       batch=planar.shape[1])


class FftStep:
    """A prepared FFT conv for one input shape (any batch size)."""

    input_slack = 0

    def __init__(self, module: KernelModule, layer: Conv, shape_in: Shape5,
                 weights: tuple[np.ndarray, np.ndarray], geometry: FftGeometry, pruned: bool,
                 threads: int) -> None:
        self.module = module
        self.layer = layer
        self.shape_in = shape_in
        self.geometry = g = geometry
        self.pruned = pruned
        self.threads = threads
        self.scratch = Scratch()  # held by an in-place layer across its passes
        w, b = weights
        # Correlation = convolution with the flipped kernel; 1/N folds the inverse's scaling.
        self.flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1, ::-1])
        self.bias = b.reshape(1, -1, 1, 1, 1)
        self.volume = math.prod(g.spectral.size)
        # Images straight to and from the MAC's layout by the SIMD FFTs (no complex spectra).
        self.direct = direct_transforms(g)
        self.layout = SpectralLayout(g.spectral.size[0], g.plane, g.tile, threads)
        if g.fused:
            if not self.direct:
                self.layout.prepare(1)
            self.kernel_layout = SpectralLayout(1, g.plane, g.tile, threads)
            self.kernel_layout.prepare(1)
            table = dft_table(g.spectral.size[0], g.kz)
            self.dft = np.ascontiguousarray(table / np.float32(self.volume))
        else:
            self.layout.prepare(*(() if self.direct else (1,)), self.volume,
                                back=not self.direct)

    def _kernels(self, j0: int, i0: int, buffers: dict[str, np.ndarray]) -> np.ndarray:
        """The MAC's kernel data for the block at (j0, i0): x/y-transformed planes (fused) or
        full spectra, tiled planar, scaled by 1/N."""
        g, k = self.geometry, self.layer.kernel
        block = self.flipped[j0:j0 + g.out_chunk, i0:i0 + g.in_block].reshape(-1, *k)
        if g.fused:
            planes = xy_passes(block, g.spectral, self.threads,
                               self.scratch if self.direct else None)
            self.kernel_layout.to_planar(planes, buffers["planar"])
            return buffers["planar"]
        forward(block, g.spectral, self.threads, self.pruned, out=buffers["spectra"])
        self.layout.to_planar(buffers["spectra"], buffers["planar"], self.volume)
        return buffers["planar"]

    def run(self, x: np.ndarray, out_slack: int,
            out: np.ndarray | None = None) -> np.ndarray:
        if x.shape[1:] != self.shape_in[1:]:
            raise ValueError(f"FFT conv prepared for {self.shape_in[1:]}, got {x.shape[1:]}")
        out = output_buffer(conv_output_shape(self.layer, x.shape), out_slack, out)
        step = self.geometry.samples
        for s0 in range(0, x.shape[0], step):
            self._run_samples(x[s0:s0 + step], out[s0:s0 + step])
        self.scratch.release()
        return out

    def _run_samples(self, x: np.ndarray, out: np.ndarray) -> None:
        """The three stages for the samples of ``x`` (all of them in one pass but for lean)."""
        layer, g, threads = self.layer, self.geometry, self.threads
        s, f, *n = x.shape
        fo, k = layer.out_channels, layer.kernel
        start = (k[0] - 1, k[1] - 1, k[2] - 1)
        stop = (n[0], n[1], n[2])

        # Stage 1: input spectra, tiled planar.
        # Direct transforms keep the spectra in scratch (reused by the next pass of samples);
        # FFTW passes free them as soon as they can, for their larger complex spectra.
        scratch = self.scratch if self.direct else None
        planar_in = g.planar(s * f, scratch, "planar in")
        if self.direct:
            simd.forward3d(x.reshape(s * f, *n), planar_in, g.spectral.size, threads,
                           self.pruned, tile=g.tile)
        else:
            spec = forward(x.reshape(s * f, *n), g.spectral, threads, self.pruned)
            self.layout.to_planar(spec, planar_in)
            del spec

        pairs = g.out_chunk * g.in_block
        buffers = ({"planar": g.kernel_planes(pairs, scratch)} if g.fused else
                   {"planar": g.planar(pairs), "spectra": g.spectral.buffer(pairs)})
        extra = self.dft if g.fused else None
        chunks = range(0, fo, g.out_chunk)
        for j0 in chunks:
            # Stage 2: accumulate this chunk's output spectra over all input maps.
            planar_out = g.planar(s * g.out_chunk, scratch, "planar out")
            planar_out.fill(0)
            for i0 in range(0, f, g.in_block):
                kernels = self._kernels(j0, i0, buffers)
                # The kernel indexes maps with the full per-tile stride: pass the block's first
                # map (a temporary view, so that `del planar_in` below really frees it).
                self.module.forward(planar_in.reshape(-1)[i0 * 2 * g.tile:], planar_out,
                                    threads, kernels, extra, batch=s)
                del kernels
            if j0 == chunks[-1]:  # stage 3 of the last chunk is leaner (but for scratch)
                del planar_in, buffers
            # Stage 3: inverse transforms of the chunk, crop, bias, activation.
            dst = out[:, j0:j0 + g.out_chunk]
            if self.direct:
                simd.inverse3d(planar_out, dst, g.spectral.size, start, stop, threads,
                               tile=g.tile)
            else:
                spec_out = g.spectral.buffer(s * g.out_chunk)
                self.layout.from_planar(planar_out, spec_out)
                del planar_out
                inverse_cropped(spec_out, g.spectral, start, stop, threads, out=dst)
                del spec_out
            np.add(dst, self.bias[:, j0:j0 + g.out_chunk], out=dst)
            apply(layer.activation, dst)


def undilated(layer: Conv) -> Conv:
    """The same correlation with a dilation's zero taps made explicit (kernel = span): an FFT
    conv costs by its transform size, not its taps, so a dilated conv runs as this one."""
    if layer.dilation == (1, 1, 1):
        return layer
    return replace(layer, kernel=layer.span, dilation=(1, 1, 1))


def dilate_weights(w: np.ndarray, dilation: tuple[int, int, int]) -> np.ndarray:
    """``(out, in, kz, ky, kx)`` weights spread over their dilated span, zeros between."""
    dz, dy, dx = dilation
    kz, ky, kx = w.shape[2:]
    out = np.zeros((*w.shape[:2], (kz - 1) * dz + 1, (ky - 1) * dy + 1, (kx - 1) * dx + 1),
                   np.float32)
    out[:, :, ::dz, ::dy, ::dx] = w
    return out


class FftConv:
    """FFT convolution primitive; see the module docstring for the four variants. Dilated
    convs (after max-filtered pools) run as their :func:`undilated` equivalents."""

    layer_kind = "conv"
    precision = "fp32"

    def __init__(self, pruned: bool, task_parallel: bool, lean: bool = False) -> None:
        self.pruned = pruned
        self.task_parallel = task_parallel
        self.lean = lean
        schedule = "-lean" if lean else "" if task_parallel else "-data"
        self.name = ("fft-pruned" if pruned else "fft") + schedule

    def supports(self, layer: Layer) -> bool:
        return isinstance(layer, Conv)

    def _geometry(self, layer: Conv, shape_in: Shape5) -> FftGeometry:
        return _geometry(layer, shape_in, self.task_parallel, self.pruned,
                         default_toolchain().vector_width, self.lean)

    def flops(self, layer: Layer, shape_in: Shape5) -> int:
        """Spectral MAC (8 per complex multiply-add) plus transforms (5·n·log2 n per line)."""
        assert isinstance(layer, Conv)
        layer = undilated(layer)
        s, f = shape_in[:2]
        spectral = SpectralShape(tuple(fft_size(n) for n in shape_in[2:]))  # type: ignore[arg-type]
        size = spectral.size
        volume = math.prod(size)
        transforms = (s * f + s * layer.out_channels + f * layer.out_channels)
        per_transform = 2.5 * volume * math.log2(volume)
        mac = 8 * s * f * layer.out_channels * spectral.complex_elements
        return int(mac + transforms * per_transform)

    def estimate(self, layer: Layer, shape_in: Shape5, device: Device) -> float:
        """Modelled seconds: the 1D passes each transform really runs (image forwards, cropped
        inverses, kernel forwards — pruned DFT passes at the MAC rate, FFT passes at the FFT
        rate), the MAC (compute- or bandwidth-bound, with the traffic of the chosen chunk and
        block), and the streaming layout conversions, zero fills and bias/activation pass."""
        assert isinstance(layer, Conv)
        layer = undilated(layer)
        g = self._geometry(layer, shape_in)
        s, f = shape_in[:2]
        fo, k = layer.out_channels, layer.kernel
        n0, n1, n2 = g.spectral.size
        half = g.spectral.half
        out = conv_output_shape(layer, shape_in)
        a, b = (shape_in[2], shape_in[3]) if self.pruned else (n0, n1)
        image = _r2c(a * b, n2) + _c2c(a * half, n1) + _c2c(n1 * half, n0)
        inverse = _c2c(n1 * half, n0) + _c2c(out[2] * half, n1) + _r2c(out[2] * out[3], n2)
        pairs = s * f * fo
        kernel_fft, kernel_dft, kernel_bytes = _r2c(k[0] * k[1], n2), 0.0, 16.0 * g.nfp
        if g.fused:  # y pass as a pruned DFT; z pass fused into the MAC, read as kz planes
            kernel_dft = 8.0 * (k[1] * k[0] * n1 * half + k[0] * g.nfp)
            kernel_bytes = 8.0 * k[0] * g.tiles_per_plane * g.tile
        else:
            kz, ky = (k[0], k[1]) if self.pruned else (n0, n1)
            kernel_fft = _r2c(kz * ky, n2) + _c2c(kz * half, n1) + _c2c(n1 * half, n0)
        passes = -(-s // g.samples)  # kernel work is redone per pass of samples
        transforms = ((s * f * image + s * fo * inverse + passes * f * fo * kernel_fft)
                      / device.fft_flops + passes * f * fo * kernel_dft / device.mac_flops)
        traffic = (8 * g.nfp * (pairs / g.out_chunk + 2 * pairs / g.in_block)
                   + passes * f * fo * kernel_bytes)
        compute = 8 * pairs * g.nfp / device.mac_flops
        if self.task_parallel and not self.lean:  # traffic overlaps the arithmetic (measured)
            mac = max(compute, traffic / device.bandwidth)
        else:
            # The data-parallel schedules' every output chunk re-reads all input spectra, and
            # that stream does not overlap: measured (S = 16, 80 maps, 50³) compute + traffic
            # at a third of the copy bandwidth; S = 2 (little traffic) matched compute alone.
            mac = compute + MAC_STREAM_PENALTY * traffic / device.bandwidth
        if direct_transforms(g):  # images straight to/from planar, crop in the inverse
            streaming = 16 * g.nfp * s * fo + 2 * tensor_bytes(out)  # zero fill, bias, act.
        else:
            streaming = (16 * g.nfp * (s * f + 2 * s * fo)  # to/from planar, zero fills
                         + 3 * tensor_bytes(out))           # crop copy, bias, activation
        return (transforms + mac + streaming / device.bandwidth
                + self._fresh_bytes(layer, shape_in, g) / device.fresh_rate)

    def _fresh_bytes(self, layer: Conv, shape_in: Shape5, g: FftGeometry) -> int:
        """Bytes :meth:`FftStep.run` allocates and first touches: the output tensor, and
        - with direct transforms, its scratch (:meth:`scratch_bytes`) once: passes of
          samples, output chunks and kernel blocks reuse it;
        - else per pass of samples the input spectra (complex + tiled planar), the kernel
          buffers (for the fused MAC the x/y passes' buffers once per block), and per output
          chunk its planar and complex spectra."""
        out = tensor_bytes(conv_output_shape(layer, shape_in))
        if direct_transforms(g):
            return out + self.scratch_bytes(layer, shape_in)
        s, f, fo, k = g.samples, shape_in[1], layer.out_channels, layer.kernel
        c8 = 8
        ntilde = g.spectral.complex_elements
        pairs = g.out_chunk * g.in_block
        blocks = -(-fo // g.out_chunk) * -(-f // g.in_block)
        if g.fused:
            kernels = (c8 * pairs * k[0] * g.tiles_per_plane * g.tile
                       + blocks * xy_pass_bytes(pairs, k, g.spectral))
        else:
            kernels = c8 * pairs * (ntilde + g.nfp)
        per_pass = (c8 * s * f * (ntilde + g.nfp) + kernels
                    + -(-fo // g.out_chunk) * c8 * s * g.out_chunk * (g.nfp + ntilde))
        return out + -(-shape_in[0] // s) * per_pass

    def scratch_bytes(self, layer: Layer, shape_in: Shape5) -> int:
        """Bytes of :class:`Scratch` a step keeps while held (direct transforms: planar input
        spectra, one chunk of planar output spectra and the kernel blocks' buffers; FFTW
        passes keep none), which an in-place layer's later passes reuse."""
        assert isinstance(layer, Conv)
        layer = undilated(layer)
        g = self._geometry(layer, shape_in)
        if not direct_transforms(g):
            return 0
        return 8 * g.samples * (shape_in[1] + g.out_chunk) * g.nfp + self._kernel_bytes(layer, g)

    def _kernel_bytes(self, layer: Conv, g: FftGeometry) -> int:
        """One block's kernel data: fused, the x/y passes' buffers and planes and their tiled
        planar copy; else complex spectra and their tiled planar copy."""
        blocks = g.out_chunk * g.in_block
        if g.fused:
            return blocks * _fused_pair_bytes(layer.kernel, g.spectral, g.vector_width)
        return 8 * blocks * (g.spectral.complex_elements + g.nfp)

    def memory(self, layer: Layer, shape_in: Shape5) -> Memory:
        """Exact buffer accounting of :meth:`FftStep.run` (the input is held by the caller).

        Stage 1: input spectra (complex) + their planar copy. Stage 2: planar input spectra +
        one chunk of planar output spectra + the block's kernel data (fused: x/y-transformed
        planes, their buffers and planar copy; else complex spectra + planar copy).
        Stage 3: the chunk's planar and complex output spectra (+ planar inputs while more
        chunks follow). Direct transforms (:func:`direct_transforms`) make no complex image
        spectra, only one image of scratch per thread, and keep stage 2's buffers (in
        :class:`Scratch`) through stage 3. The output tensor is allocated first and held
        throughout.
        """
        assert isinstance(layer, Conv)
        layer = undilated(layer)
        g = self._geometry(layer, shape_in)
        s, f = g.samples, shape_in[1]  # the stages hold the spectra of one pass of samples
        c8 = 8  # bytes per complex64 / per planar (re, im) pair
        ntilde = g.spectral.complex_elements
        planar_in = c8 * s * f * g.nfp
        planar_chunk = c8 * s * g.out_chunk * g.nfp
        kernels = self._kernel_bytes(layer, g)
        direct = direct_transforms(g)
        images = image_scratch_bytes(g) if direct else c8 * s * f * ntilde
        outputs = image_scratch_bytes(g) if direct else c8 * s * g.out_chunk * ntilde
        stage1 = images + planar_in
        stage2 = planar_in + planar_chunk + kernels
        more_chunks = layer.out_channels > g.out_chunk
        if direct:  # all in scratch, kept until the step returns
            stage3 = stage2 + outputs
        else:
            stage3 = planar_chunk + outputs + (planar_in if more_chunks else 0)
        held = tensor_bytes(shape_in) + tensor_bytes(conv_output_shape(layer, shape_in))
        weights = FLOAT_BYTES * (layer.out_channels * layer.in_channels * math.prod(layer.kernel)
                                 + layer.out_channels)
        return Memory(resident=weights, working=held + max(stage1, stage2, stage3))

    def prepare(self, index: int, layer: Layer, shape_in: Shape5,
                weights: tuple[np.ndarray, np.ndarray] | None, threads: int) -> FftStep:
        assert isinstance(layer, Conv) and weights is not None
        if layer.dilation != (1, 1, 1):
            weights = (dilate_weights(weights[0], layer.dilation), weights[1])
            layer = undilated(layer)
        g = self._geometry(layer, shape_in)
        label = (f"layer {index} ({self.name} MAC {layer.in_channels}->{layer.out_channels}, "
                 f"transform {'x'.join(map(str, g.spectral.size))})")
        module = load_kernel(mac_source(layer, g), label)
        return FftStep(module, layer, shape_in, weights, g, self.pruned, threads)
