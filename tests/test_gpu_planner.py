"""The CPU–GPU planner on GPU descriptions (no GPU needed): θ, sub-batch, per-layer GPU
primitives, GPU and host memory within limits, exact JSON, monotone in device memory."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import znni
from znni.cli import main
from znni.errors import PlanError
from znni.planner import Device, Plan, plan
from znni.primitives.gpu import HOST_RAM, RESIDENT

GIB = 2 ** 30
HOST = 48 * GIB  # a host budget that keeps the patch search short


def _with_gpu_memory(name: str, memory: int) -> Device:
    data = Device.load(name).to_dict()
    data["gpu"]["memory_bytes"] = memory
    return Device.from_dict(data)


@pytest.mark.parametrize("name", ["n337", "n537", "n726", "n926"])
def test_h100_plans_have_a_pipeline_and_round_trip(name: str) -> None:
    net = znni.load(name)
    device = Device.load("h100")
    assert device.gpu is not None
    p = plan(net, HOST, device=device)
    gpu = p.gpu
    assert gpu is not None and 0 <= gpu.theta < len(net.layers) and gpu.sub_batch >= 1
    assert [lp.index for lp in gpu.layers] == list(range(gpu.theta, len(net.layers)))
    assert all(lp.primitive in {*RESIDENT, *HOST_RAM} for lp in gpu.layers)
    assert 0 < gpu.device_bytes <= device.gpu.memory_bytes
    assert 0 < p.peak_bytes == gpu.host_bytes <= HOST
    assert p.predicted_throughput and p.predicted_throughput > 0
    text = p.to_json()
    data = json.loads(text)
    assert data["gpu"]["theta"] == gpu.theta and data["peak_bytes"] == gpu.host_bytes
    again = Plan.from_json(text, net)
    assert again == p and again.to_json() == text


def test_smaller_device_memory_never_plans_more_gpu_memory() -> None:
    net = znni.load("n726")
    previous = None
    for memory in (80 * GIB, 16 * GIB, 4 * GIB, GIB // 2):
        p = plan(net, HOST, device=_with_gpu_memory("h100", memory))
        assert p.gpu is not None and p.gpu.device_bytes <= memory
        if previous is not None:
            assert p.gpu.device_bytes <= previous
        previous = p.gpu.device_bytes


def test_tiny_gpu_memory_falls_back_to_gpu_plus_host_ram() -> None:
    p = plan(znni.load("n537"), HOST, device=_with_gpu_memory("h100", 256 << 20))
    assert p.gpu is not None and p.gpu.device_bytes <= 256 << 20
    if p.gpu.mode == "host":
        assert all(lp.primitive.startswith("gpu-host-") for lp in p.gpu.layers)


def test_cpu_descriptions_and_plans_are_unchanged() -> None:
    cpu = Device.load("xeon-2core")
    assert cpu.gpu is None and "gpu" not in cpu.to_dict()
    assert "gpu" not in plan(znni.load("tiny"), GIB, device=cpu).to_dict()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.pop("gpu"), "'gpu' must be an object"),
    (lambda d: d["gpu"].pop("link_bandwidth"), "missing 'link_bandwidth'"),
    (lambda d: d["gpu"].update(bandwidth=-1), "positive number"),
    (lambda d: d["gpu"].update(colour="green"), "unknown gpu field"),
    (lambda d: d.update(kind="tpu"), "not supported"),
])
def test_bad_gpu_descriptions_are_clear_errors(edit, message: str) -> None:
    data = Device.load("h100").to_dict()
    edit(data)
    with pytest.raises(PlanError, match=message) as info:
        Device.from_dict(data)
    assert info.value.hint


def test_hand_edited_gpu_section_is_checked() -> None:
    net = znni.load("tiny")
    data = plan(net, HOST, device="h100").to_dict()
    data["gpu"]["layers"][0]["primitive"] = "gpu-magic"
    with pytest.raises(PlanError, match="inconsistent"):
        Plan.from_dict(data, net)
    data["gpu"]["layers"][0]["primitive"] = "gpu-direct"
    data["gpu"]["layers"][0]["out_maps"] = 0  # the runtime's map chunks would be empty
    with pytest.raises(PlanError, match="inconsistent"):
        Plan.from_dict(data, net)
    data["gpu"]["layers"][0]["out_maps"] = 1
    data["gpu"]["theta"] = "two"
    with pytest.raises(PlanError, match="malformed"):
        Plan.from_dict(data, net)


def test_cli_plans_for_a_gpu_description() -> None:
    result = CliRunner().invoke(main, ["plan", "tiny", "--device", "h200", "--memory", "8GiB"])
    assert result.exit_code == 0, result.output
    assert "GPU memory" in result.output and "gpu-" in result.output
