"""The GPU runtime as the planner models it, emulated (ZNNI_GPU_EMULATE=1): a device-resident
tail in passes of sub_batch items, the CPU–GPU pipeline over several batches, GPU + host RAM
map-chunk splits, and device memory as the planner counts it; all against the reference."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

import znni
from znni.planner import plan
from znni.primitives.gpu_kernels import EMULATE_ENV
from znni.reference import forward
from znni.runtime import gpu as gpu_runtime
from znni.runtime.executor import CompiledPlan

from .conftest import net_from_layers, random_volume, relative_error
from .test_gpu_runtime import GIB, NET, gpu_plan


@pytest.fixture(autouse=True)
def _emulate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EMULATE_ENV, "1")


@pytest.fixture(scope="module")
def net() -> znni.Network:
    return net_from_layers(NET, input_channels=2, seed=11)


def _volume(net: znni.Network, extent: tuple[int, int, int], seed: int = 12) -> np.ndarray:
    return random_volume((2, *(net.fov[a] + extent[a] - 1 for a in range(3))), seed=seed)


def _host_mode(p: znni.Plan) -> znni.Plan:
    """``p``'s GPU section run as GPU + host RAM layers (same kernels, same chunk samples)."""
    assert p.gpu is not None
    layers = tuple(replace(lp, primitive=lp.primitive.replace("gpu-", "gpu-host-"))
                   for lp in p.gpu.layers)
    return replace(p, gpu=replace(p.gpu, mode="host", layers=layers))


@pytest.mark.parametrize("sub_batch", [1, 3, 16, 64])  # 16 tail-input items: 3 leaves 1 over
@pytest.mark.parametrize(("theta", "ways"), [(2, ["gpu-direct", "gpu-fft"]),
                                             (0, ["gpu-fft", "gpu-direct", "gpu-direct"])])
def test_resident_tail_in_passes_equals_reference_and_host_mode(net, theta, ways,
                                                                 sub_batch) -> None:
    """Every pass: one upload, the tail's layers on device buffers, one download; any
    sub-batch (one that does not divide the items, one above them) gives the reference, and
    bit for bit what the same kernels give layer by layer from host RAM."""
    p = gpu_plan(net, theta, ways, sub_batch)
    volume = _volume(net, (5, 9, 7))
    resident = znni.infer(net, volume, plan=p)
    assert relative_error(resident, forward(net, volume)) < 1e-4
    np.testing.assert_array_equal(resident, znni.infer(net, volume, plan=_host_mode(p)))


def _count_allocations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the device buffers allocated from now on."""
    allocated: list[int] = []
    alloc = gpu_runtime.CudaRuntime.alloc

    def counting(self, nbytes: int) -> int:
        allocated.append(nbytes)
        return alloc(self, nbytes)

    monkeypatch.setattr(gpu_runtime.CudaRuntime, "alloc", counting)
    return allocated


def test_resident_tail_device_memory_is_what_the_planner_counts(monkeypatch) -> None:
    """The planner's own resident plan: the runtime allocates exactly its GPU bytes (direct
    layers have no scratch of their own)."""
    net = znni.load("aniso2d3d").random_weights(1)
    p = plan(net, GIB, device="h100", extent=net.fragmentation)
    assert p.gpu is not None and p.gpu.mode == "resident"
    assert {lp.primitive for lp in p.gpu.layers} == {"gpu-direct"}
    allocated = _count_allocations(monkeypatch)
    CompiledPlan(p, net, 1)
    assert sum(allocated) == p.gpu.device_bytes


def _record_stages(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    """(event, batch number, thread) as every head and tail run starts and ends: events
    "head", "tail", "head end", "tail end", in the order they happen."""
    log: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    counts = {"head": 0, "tail": 0}

    def wrap(stage: str, run):
        def recorded(self, x):
            thread = threading.current_thread().name
            with lock:
                k = counts[stage]
                counts[stage] += 1
                log.append((stage, k, thread))
            result = run(self, x)
            with lock:
                log.append((f"{stage} end", k, thread))
            return result
        return recorded

    monkeypatch.setattr(CompiledPlan, "run_head", wrap("head", CompiledPlan.run_head))
    monkeypatch.setattr(CompiledPlan, "run_tail", wrap("tail", CompiledPlan.run_tail))
    return log


@pytest.mark.parametrize("mode", ["resident", "host"])
def test_pipelined_batches_equal_reference_and_sequential_order(net, mode,
                                                                monkeypatch) -> None:
    """Four batches: each tail runs in the worker thread while the next head runs, exactly
    two batches in flight, and the output equals the reference and, bit for bit, the same
    plan run batch after batch."""
    p = gpu_plan(net, 2, ["gpu-direct", "gpu-fft"], 5, batch=2)
    if mode == "host":
        p = _host_mode(p)
    volume = _volume(net, (8, 16, 16))  # 2 x 2 x 2 patches of (4, 8, 8): 4 batches of 2
    log = _record_stages(monkeypatch)
    piped = znni.infer(net, volume, plan=p)
    heads = [t for stage, _, t in log if stage == "head"]
    tails = [t for stage, _, t in log if stage == "tail"]
    assert len(heads) == len(tails) == 4
    assert set(heads) == {threading.main_thread().name} and "MainThread" not in tails
    for i, (stage, k, _) in enumerate(log):
        before = [(s, n) for s, n, _ in log[:i]]
        if stage == "head" and k >= 2:  # batch k-2 is done before batch k starts
            assert ("tail end", k - 2) in before
        if stage == "tail":  # its own head is done, and the tail before it
            assert ("head end", k) in before and (k == 0 or ("tail end", k - 1) in before)
    assert relative_error(piped, forward(net, volume)) < 1e-4
    monkeypatch.setattr(CompiledPlan, "pipelined", property(lambda self: False))
    np.testing.assert_array_equal(piped, znni.infer(net, volume, plan=p))


def test_the_next_head_runs_while_a_tail_runs(net, monkeypatch) -> None:
    """Concurrency, deterministically: each tail but the last waits until the next batch's
    head has started, which only a pipelined run lets happen."""
    p = gpu_plan(net, 2, ["gpu-direct", "gpu-direct"], 8, batch=2)
    started = [threading.Event() for _ in range(4)]
    overlapped: list[bool] = []
    head, tail = CompiledPlan.run_head, CompiledPlan.run_tail

    def run_head(self, x):
        started[sum(e.is_set() for e in started)].set()
        return head(self, x)

    def run_tail(self, x):
        k = len(overlapped)
        overlapped.append(k == 3 or started[k + 1].wait(timeout=30))
        return tail(self, x)

    monkeypatch.setattr(CompiledPlan, "run_head", run_head)
    monkeypatch.setattr(CompiledPlan, "run_tail", run_tail)
    znni.infer(net, _volume(net, (8, 16, 16)), plan=p)
    assert overlapped == [True] * 4


def test_cpu_only_and_gpu_only_plans_run_on_the_callers_thread(net, monkeypatch) -> None:
    log = _record_stages(monkeypatch)
    volume = _volume(net, (8, 8, 8))
    znni.infer(net, volume, plan=znni.make_plan(net, (4, 8, 8), 2, "direct"))
    znni.infer(net, volume, plan=gpu_plan(net, 0, ["gpu-direct"] * 3, 4, batch=2))
    assert {t for _, _, t in log} == {threading.main_thread().name}
    assert len(log) == 2 * 2 * 2  # one batch per plan: its head and tail, started and ended


def _map_chunks(p: znni.Plan, chunks: dict[int, tuple[int, int]]) -> znni.Plan:
    """Host-mode ``p`` with layer index → (input maps, output maps) chunks, one sample each."""
    assert p.gpu is not None
    layers = []
    for lp in p.gpu.layers:
        chunked = lp
        if lp.index in chunks:
            in_maps, out_maps = chunks[lp.index]
            chunked = replace(lp, chunk_shape=(1, in_maps, *lp.chunk_shape[2:]), out_maps=out_maps)
        layers.append(chunked)
    return replace(p, gpu=replace(p.gpu, layers=tuple(layers)))


@pytest.mark.parametrize("ways", [["gpu-host-direct"] * 3, ["gpu-host-fft", "gpu-host-direct",
                                                            "gpu-host-fft"]])
def test_map_chunk_splits_equal_one_pass(net, ways) -> None:
    """Conv layers in input- and output-map chunks (accumulated on the device; chunk sizes that
    do not divide the maps), a pool in channel chunks: the reference, and for direct layers
    the unsplit layers to an ulp or so (the partial sums are the same additions in order, but
    differently shaped modules may contract and vectorise them, and the activation, apart)."""
    whole = gpu_plan(net, 0, ways, 4, mode="host")
    # layer 0: 2 -> 3 maps, layer 1: 3 channels, layer 2: 3 -> 4, layer 4: 4 -> 2
    split = _map_chunks(whole, {0: (1, 2), 1: (2, 2), 2: (2, 3), 3: (3, 3), 4: (3, 1)})
    assert all(isinstance(s, gpu_runtime.MapChunkStep)
               for s in CompiledPlan(split, net, 1).steps)
    volume = _volume(net, (5, 9, 7))
    chunked = znni.infer(net, volume, plan=split)
    assert relative_error(chunked, forward(net, volume)) < 1e-4
    if ways[0] == "gpu-host-direct":
        assert relative_error(chunked, znni.infer(net, volume, plan=whole)) < 1e-6


def test_map_chunk_device_memory_is_what_the_planner_counts(net, monkeypatch) -> None:
    """A map split allocates two buffer sets of one chunk's input, output and weights: the
    GPU + host RAM primitive's device bytes for that split."""
    from znni.primitives.gpu import HOST_RAM, Split

    p = _map_chunks(gpu_plan(net, 2, ["gpu-host-direct"] * 2, 16, mode="host"),
                    {2: (2, 2)})
    assert p.gpu is not None
    layer, shape = net.layers[2], p.layers[2].input_shape
    allocated = _count_allocations(monkeypatch)
    gpu_runtime.MapChunkStep(gpu_runtime.gpu_runtime(), "gpu-host-direct", layer, shape,
                             p.gpu.layers[0], net.require_weights()[2])
    assert sum(allocated) == HOST_RAM["gpu-host-direct"].device_bytes(layer, shape,
                                                                      Split(1, 2, 2))


def test_a_cuda_error_is_typed_with_a_hint(net) -> None:
    p = gpu_plan(net, 2, ["gpu-direct", "gpu-direct"], 4)
    compiled = CompiledPlan(p, net, 1)
    tail = compiled.steps[-1]
    assert isinstance(tail, gpu_runtime.DeviceChain)
    first = tail.layers[0]
    failing = replace(first.kernel, module=replace(first.kernel.module, lib=_Failing()))
    tail.layers[0] = replace(first, kernel=failing)  # this compiled plan only
    with pytest.raises(znni.ZnniError, match="CUDA error 2") as info:
        compiled.run(compiled.new_input())
    assert "device memory" in info.value.hint


class _Failing:
    """A module whose launches fail with cudaErrorMemoryAllocation."""

    @staticmethod
    def znni_gpu_layer_forward(*_args) -> int:
        return 2
