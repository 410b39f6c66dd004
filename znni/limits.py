"""Bounds on every size a user controls, in one place, each with the reason for its value.

Specs, plans and options can ask for sizes that are valid in form but that the generated
kernels or the planner cannot handle: 32768 output maps overflowed a kernel's stack buffer,
eight pools of 65536 made a field of view of 2^128 that the planner never finished planning,
``--threads 100000`` asked OpenMP for 100000 threads. Every such size is checked against these
bounds before it reaches the planner or generated source (:mod:`znni.spec` for specs,
:mod:`znni.planner.plan` for plans, :mod:`znni.config` for threads), so it fails at once with
a message naming the bound instead of crashing or hanging later.

Each bound is far above what real networks use — the bundled nets have at most 10 layers,
3 pools of 2, 80 maps, kernels of 9 and a field of view of 163 — and low enough that the
planner finishes and the kernels' fixed-size and per-thread buffers stay small.
"""

from __future__ import annotations

#: Layers in a spec. Planning time grows linearly with depth (every candidate patch costs
#: every layer); 25 times the deepest bundled net.
MAX_LAYERS = 256
#: Pool layers in a spec. Each pool adds a pooling mode (the last k pools as max filters) that
#: the planner searches over its own grid of patches; eight pools of 2 already shrink an image
#: 256 times per axis.
MAX_POOLS = 8
#: Maps (channels) into or out of a layer. Kernels keep per-thread scratch proportional to the
#: maps (the direct kernel: one accumulator row of 64 positions per output map, 1 MiB here;
#: Winograd: 64 transformed patches per input map, 64 MiB here), which the memory model
#: counts only roughly; 50 times the widest bundled net.
MAX_CHANNELS = 4096
#: Kernel extent per axis. The direct kernel unrolls the taps of a row and counts a kernel's
#: taps in a C ``int``; 7 times the largest bundled kernel.
MAX_KERNEL = 64
#: Pool window per axis: windows multiply into the fragmentation (and the samples per patch).
MAX_WINDOW = 64
#: Field of view per axis: 6 times the largest bundled one. It bounds the fragmentation (the
#: smallest all-fragments patch), and keeps a plan within the bounds below possible for every
#: valid spec: with every pool run as a max filter, a one-voxel patch reads an input of the
#: field of view, at most 1024³ = 2^30 voxels per map.
MAX_FOV = 1024
#: Extent per axis of any image in a plan. FFT sizes are found by a linear search for the next
#: 7-smooth number (fast up to here, seconds near 2^31), and the fragment kernel (mpf) keeps
#: one image row on its stack (256 KiB here).
MAX_IMAGE_EDGE = 1 << 16
#: The kernels' C ABI takes the samples of a batch (and maps × samples for spectra) as ``int``,
#: and Winograd gathers with 32-bit offsets inside one map's image: every sample count, every
#: samples × maps count and every image's voxel count in a plan stays within it.
C_INT_MAX = (1 << 31) - 1
#: Threads per kernel. More hardware threads than any shared-memory machine has today (two
#: 192-core SMT processors: 768); beyond it a typo asks OpenMP for thousands of threads, each
#: with an 8 MiB stack and per-thread kernel scratch, and a failed thread creation aborts.
MAX_THREADS = 1024
#: Bytes of a spec or plan file (JSON). A 256-layer spec is ~30 KiB; a larger file is not a
#: spec, and reading e.g. /dev/zero must not take all memory.
MAX_JSON_BYTES = 16 << 20
