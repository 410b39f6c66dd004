"""Bounds (znni.limits): sizes past them fail at once with a clear error, before the planner or
generated code sees them; sizes at them work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

import znni
from znni import config, limits
from znni.bundled import bundled_nets
from znni.cli import main
from znni.errors import PlanError, SpecError, ZnniError
from znni.planner.plan import limit_problem
from znni.planner.search import check_saved_plan

CONV = {"type": "conv", "kernel": [1, 1, 1], "out_channels": 1}


def spec(layers: list[dict], input_channels: int = 1) -> dict:
    return {"name": "b", "input_channels": input_channels, "layers": layers}


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_the_limits_leave_room_above_the_bundled_nets() -> None:
    nets = [znni.load(name) for name in bundled_nets()]
    convs = [layer for net in nets for layer in net.layers if layer.kind == "conv"]
    assert 10 * max(len(net.layers) for net in nets) <= limits.MAX_LAYERS
    assert 2 * max(len(net.pools) for net in nets) <= limits.MAX_POOLS
    assert 10 * max(c.out_channels for c in convs) <= limits.MAX_CHANNELS
    assert 5 * max(max(c.kernel) for c in convs) <= limits.MAX_KERNEL
    assert 10 * max(max(p.window) for net in nets for p in net.pools) <= limits.MAX_WINDOW
    assert 5 * max(max(net.fov) for net in nets) <= limits.MAX_FOV


@pytest.mark.parametrize("layers,input_channels,words", [
    # 32768 output maps passed validation and overflowed the direct kernel's stack (exit 139)
    ([{**CONV, "out_channels": 32768}], 1, ["out_channels", "4096"]),
    ([CONV], limits.MAX_CHANNELS + 1, ["input_channels", "4096"]),
    ([{**CONV, "kernel": [65, 1, 1]}], 1, ["kernel", "64"]),
    # eight pools of 65536 (a field of view of 2^128): `znni plan` never finished
    ([CONV, *[{"type": "pool", "window": [65536] * 3}] * 8], 1, ["window", "64"]),
    ([CONV, *[{"type": "pool", "window": [2, 1, 1]}] * 9], 1, ["9 pool layers", "8"]),
    ([CONV, *[{"type": "pool", "window": [1, 33, 1]}] * 2], 1, ["field of view", "1024"]),
    # 20000 layers: `znni plan` never finished
    ([CONV] * 20_000, 1, ["20000 layers", "256"]),
])
def test_specs_past_the_limits_are_refused_before_planning(layers, input_channels, words,
                                                           tmp_path) -> None:
    with pytest.raises(SpecError) as info:
        znni.load(spec(layers, input_channels))
    assert all(w in str(info.value) for w in words), str(info.value)
    path = tmp_path / "net.json"
    path.write_text(json.dumps(spec(layers, input_channels)))
    code, out = cli("plan", str(path), "--memory", "1GiB")
    assert code == 2 and all(w in out for w in words), out


def test_a_spec_at_the_limits_loads() -> None:
    window = {"type": "pool", "window": [4, 1, 1]}  # FOV 1 + 3·(1 + 4 + 16 + 64) = 256
    net = znni.load(spec([{**CONV, "out_channels": limits.MAX_CHANNELS,
                           "kernel": [1, limits.MAX_KERNEL, 1]}, *[window] * 4,
                          *[CONV] * (limits.MAX_LAYERS - 5)], limits.MAX_CHANNELS))
    assert len(net.layers) == limits.MAX_LAYERS and net.fov == (256, 64, 1)


def test_a_direct_layer_with_the_most_output_maps_runs_on_small_thread_stacks(tmp_path) -> None:
    """The direct kernel's accumulators for all output maps were a stack array: 4096 maps × 16
    positions = 256 KiB overflowed a 128 KiB OpenMP thread stack (at 32768 maps, the default
    8 MiB one). On the heap, they run anywhere."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        import znni
        from znni.reference import forward
        net = znni.load({{"input_channels": 1, "layers": [{{"type": "conv", "kernel": [1, 1, 2],
                         "out_channels": {limits.MAX_CHANNELS}, "activation": "relu"}}]}})
        net = net.random_weights(0)
        volume = np.random.default_rng(0).random((2, 8, 9), dtype=np.float32)
        out = znni.infer(net, volume, (2, 8, 8), primitives="direct", threads=2)
        ref = forward(net, volume)
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max(), "wrong output"
        print("ok")
    """))
    env = {**os.environ, "OMP_STACKSIZE": "128K"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env=env, timeout=600, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def _tiny_plan(patch: tuple[int, int, int] = (2, 4, 6), batch: int = 1) -> dict:
    return json.loads(znni.make_plan(znni.load("tiny"), patch, batch).to_json())


@pytest.mark.parametrize("edit,words", [
    # an edited patch reached 9.3 GB of RSS in 20 s on a 24³ volume
    (lambda p: p.update(output_patch=[2 ** 20, 16, 16]), ["image extent", "65536"]),
    (lambda p: p.update(output_patch=[2048, 2048, 2048]), ["voxels per image"]),
    # batch 2^64 reached the kernels' C int and raised OverflowError
    (lambda p: p.update(batch=2 ** 64), ["samples × maps", "over the limit"]),
    (lambda p: p.update(batch=2.0), ["batch"]),
    (lambda p: p.update(output_patch="246"), ["output_patch"]),
    # a missing layer entry raised KeyError
    (lambda p: p["layers"].pop(1), ["one entry for each layer", "[0, 2]"]),
    (lambda p: p["layers"].append(p["layers"][0]), ["one entry for each layer"]),
    (lambda p: p["layers"][0].update(primitive=["direct"]), ["primitive must be a string"]),
    (lambda p: p.update(alternatives=[{"output_patch": [1e309, 2, 2]}]), ["malformed"]),
])
def test_edited_plans_past_the_limits_or_malformed_are_refused(edit, words) -> None:
    data = _tiny_plan()
    edit(data)
    with pytest.raises(PlanError) as info:
        znni.Plan.from_dict(data, znni.load("tiny"))
    assert all(w in str(info.value) for w in words), str(info.value)


def test_saved_plans_are_checked_against_the_volume_and_the_budget() -> None:
    net = znni.load("tiny")  # fragmentation 2
    plan = znni.make_plan(net, (2, 4, 6), 2)
    check_saved_plan(plan, net, (3, 8, 11), "1GiB")  # needs up to (4, 8, 12), 2·2·2 patches
    with pytest.raises(PlanError, match=r"larger than this volume needs.*at most \[2, 4, 4\]"):
        check_saved_plan(plan, net, (1, 3, 3), "1GiB")
    with pytest.raises(PlanError, match="batch of 2 patches is more than the 1"):
        check_saved_plan(plan, net, (2, 4, 6), "1GiB")
    with pytest.raises(PlanError, match=r"needs .* GiB at its peak, more than .* 0.00 GiB"):
        check_saved_plan(plan, net, (3, 8, 11), 1024)


def test_the_planner_stays_within_the_limits_whatever_the_budget() -> None:
    """With a terabyte the search grew patches until its memory ran out: past the 32-bit image
    offsets of the kernels. Now it stops at the limits."""
    pool = {"type": "pool", "window": [4, 4, 4]}
    net = znni.load(spec([CONV, pool, pool, pool, CONV]))  # fragmentation 64: few candidates
    best = znni.plan(net, "1TiB")
    assert limit_problem(net.layer_shapes(best.output_patch, best.batch, best.max_filtered)) is None
    assert best.output_patch[0] >= 1024  # up to the limits: the budget did not stop it


def test_threads_are_bounded(monkeypatch) -> None:
    for bad in (0, limits.MAX_THREADS + 1, True, "4"):
        with pytest.raises(ZnniError, match=f"from 1 to {limits.MAX_THREADS}"):
            config.check_threads(bad)
    assert config.check_threads(limits.MAX_THREADS) == limits.MAX_THREADS
    monkeypatch.setenv("ZNNI_THREADS", "100000")
    with pytest.raises(ZnniError, match="ZNNI_THREADS"):
        config.default_threads()
    monkeypatch.setenv("ZNNI_THREADS", "3")
    assert config.default_threads() == 3
    code, out = cli("plan", "tiny", "--threads", "100000")
    assert code == 2 and "--threads" in out, out
    net = znni.load("tiny").random_weights(0)  # a given patch skips planning: still bounded
    with pytest.raises(ZnniError, match=f"from 1 to {limits.MAX_THREADS}"):
        znni.infer(net, np.zeros((12, 12, 12), np.float32), patch=(4, 4, 4), threads=100000)


def test_local_cluster_workers_are_bounded() -> None:
    from znni.runtime.cluster import connect

    for bad in (0, limits.MAX_THREADS + 1):
        with pytest.raises(ZnniError, match="--workers must be from 1"):
            connect(None, bad, 1)


def test_spec_and_plan_files_are_read_bounded(tmp_path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (limits.MAX_JSON_BYTES + 1))
    with pytest.raises(SpecError, match="over 16 MiB"):
        znni.load(big)
    with pytest.raises(PlanError, match="over 16 MiB"):
        znni.Plan.load(str(big), znni.load("tiny"))
    with pytest.raises(PlanError, match="nested too deeply"):
        znni.Plan.from_json("[" * 100_000, znni.load("tiny"))


def test_an_image_past_the_edge_limit_is_refused_by_make_plan() -> None:
    net = znni.load(spec([CONV]))
    with pytest.raises(PlanError, match="image extent"):
        znni.make_plan(net, (1, 1, limits.MAX_IMAGE_EDGE + 1))
    assert znni.make_plan(net, (1, 1, limits.MAX_IMAGE_EDGE)).input_patch[2] == 65536
