"""GPU plans at run time: a clear error without a CUDA device; emulated, the whole CPU–GPU plan
(CPU head, GPU tail with direct, FFT and MPF kernels) equals the reference."""

from __future__ import annotations

from dataclasses import replace

import pytest

import znni
from znni.planner import plan
from znni.planner.gpu_plan import GpuLayerPlan, GpuPlan
from znni.primitives.gpu_kernels import EMULATE_ENV
from znni.reference import forward
from znni.runtime.gpu import GpuUnavailableError, cuda_device_count

from .conftest import net_from_layers, random_volume, relative_error

GIB = 2 ** 30
NET = [{"type": "conv", "kernel": [3, 3, 1], "out_channels": 3, "activation": "relu"},
       {"type": "pool", "window": [2, 2, 1]},
       {"type": "conv", "kernel": [2, 3, 3], "out_channels": 4, "activation": "tanh"},
       {"type": "pool", "window": [1, 2, 2]},
       {"type": "conv", "kernel": [2, 1, 2], "out_channels": 2, "activation": "sigmoid"}]


def gpu_plan(net: znni.Network, theta: int, ways: list[str], sub_batch: int,
             mode: str = "resident", batch: int | None = None) -> znni.Plan:
    """The planner's plan of ``net`` (its patch; its batch unless given) with its GPU section
    replaced: layers ≥ theta on the GPU by ``ways`` (conv layers; pools take MPF, as GPU + host
    RAM in host mode), ``sub_batch`` items of each layer per pass (host mode: per chunk)."""
    p = plan(net, GIB, device="h100", extent=(4, 8, 8))
    cpu = znni.make_plan(net, p.output_patch, batch or p.batch, "direct")
    convs = iter(ways)
    pool = "gpu-mpf" if mode == "resident" else "gpu-host-mpf"
    layers = tuple(GpuLayerPlan(lp.index, pool if lp.kind == "pool" else next(convs),
                                (min(sub_batch, lp.input_shape[0]), *lp.input_shape[1:]),
                                lp.output_shape[1], 1, 0.1)
                   for lp in cpu.layers[theta:])
    return replace(cpu, gpu=GpuPlan(theta, sub_batch, mode, "test", 1, 1, 0.1, 0.1, layers))


@pytest.mark.parametrize(("theta", "ways", "sub_batch"), [
    (0, ["gpu-direct", "gpu-fft", "gpu-direct"], 1),
    (2, ["gpu-fft", "gpu-fft"], 3),
    (1, ["gpu-direct", "gpu-direct"], 64),
])
def test_emulated_gpu_plan_equals_reference(theta, ways, sub_batch,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EMULATE_ENV, "1")
    net = net_from_layers(NET, input_channels=2, seed=11)
    p = gpu_plan(net, theta, ways, sub_batch)
    fov = net.fov
    volume = random_volume((2, fov[0] + 6, fov[1] + 13, fov[2] + 9), seed=12)
    assert relative_error(znni.infer(net, volume, plan=p), forward(net, volume)) < 1e-4


@pytest.mark.skipif(cuda_device_count() > 0, reason="a CUDA device is present")
def test_gpu_plan_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EMULATE_ENV, raising=False)
    net = net_from_layers(NET, input_channels=2, seed=11)
    p = gpu_plan(net, 1, ["gpu-direct", "gpu-direct"], 4)
    with pytest.raises(GpuUnavailableError, match="no CUDA device") as info:
        znni.infer(net, random_volume((2, *(n + 8 for n in net.fov))), plan=p)
    assert "re-plan" in info.value.hint


@pytest.mark.skipif(cuda_device_count() == 0, reason="needs a CUDA device")
def test_gpu_plan_on_a_real_gpu_equals_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EMULATE_ENV, raising=False)
    net = net_from_layers(NET, input_channels=2, seed=11)
    p = gpu_plan(net, 1, ["gpu-fft", "gpu-direct"], 8)
    volume = random_volume((2, *(n + 12 for n in net.fov)), seed=13)
    assert relative_error(znni.infer(net, volume, plan=p), forward(net, volume)) < 1e-4


@pytest.mark.parametrize("name", ["tiny", "aniso2d3d"])
def test_emulated_planner_made_h100_plans_equal_reference(name: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner's own CPU–GPU plan (θ, chunks and GPU ways as planned, not edited) runs
    through the emulated GPU tail and equals the reference over several patches."""
    monkeypatch.setenv(EMULATE_ENV, "1")
    net = znni.load(name).random_weights(1)
    frag = net.fragmentation
    p = plan(net, GIB, device="h100", extent=frag)
    assert p.gpu is not None and p.gpu.layers
    volume = random_volume((net.input_channels, *(net.fov[a] + frag[a] + 1 for a in range(3))),
                           seed=3)
    assert relative_error(znni.infer(net, volume, plan=p), forward(net, volume)) < 1e-4
