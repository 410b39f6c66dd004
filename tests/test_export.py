"""The exported library: built with make in a clean directory, its example program's output for
one batch equals znni.infer / the compiled plan."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import znni
from znni.cli import main
from znni.export import export_plan
from znni.runtime.executor import CompiledPlan

from .conftest import net_from_layers, random_volume, relative_error

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

TWO_POOLS = [{"type": "conv", "kernel": [3, 3, 1], "out_channels": 3, "activation": "relu"},
             {"type": "pool", "window": [1, 2, 2]},
             {"type": "conv", "kernel": [1, 2, 2], "out_channels": 4, "activation": "tanh"},
             {"type": "pool", "window": [2, 2, 2]},
             {"type": "conv", "kernel": [2, 2, 2], "out_channels": 2,
              "activation": "sigmoid"}]


def build_and_run(directory: Path, batch_input: np.ndarray, out_shape: tuple[int, ...],
                  threads: int = 1, cmake: bool = False) -> np.ndarray:
    """Build the exported library with make (or CMake into ``build/``), run its example."""
    if cmake:
        for args in (["-S", ".", "-B", "build"], ["--build", "build", "-j2"]):
            subprocess.run(["cmake", *args], cwd=directory, check=True, capture_output=True)
    else:
        subprocess.run(["make", "-j2"], cwd=directory, check=True, capture_output=True)
    batch_input.astype(np.float32).tofile(directory / "in.f32")
    example = "build/example" if cmake else "./example"
    run = subprocess.run([example, "weights.bin", "in.f32", "out.f32", str(threads)],
                         cwd=directory, check=True, capture_output=True, text=True)
    assert run.stdout.startswith("znni-export 1 (znni ")
    return np.fromfile(directory / "out.f32", np.float32).reshape(out_shape)


def test_cli_export_mpf_and_max_filter_equals_infer(tmp_path: Path) -> None:
    net = net_from_layers(TWO_POOLS, input_channels=2, seed=1)
    (tmp_path / "net.json").write_text(json.dumps(net.to_dict()))
    net.save_weights(tmp_path / "w.npz")
    patch = (2 * net.fragmentation[0], 2 * net.fragmentation[1], 2 * net.fragmentation[2])
    plan = znni.make_plan(net, patch, 1, {3: "maxfilter"})  # pool 1 fragments, pool 3 filter
    (tmp_path / "plan.json").write_text(plan.to_json())
    out_dir = tmp_path / "lib"
    result = CliRunner().invoke(main, ["export", str(tmp_path / "plan.json"), "--net",
                                       str(tmp_path / "net.json"), "--weights",
                                       str(tmp_path / "w.npz"), "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    volume = random_volume((2, *plan.input_patch), seed=2)
    ours = build_and_run(out_dir, volume, (net.output_channels, *patch), threads=2)
    error = relative_error(ours, znni.infer(net, volume, plan=plan))
    print(f"export vs infer (mpf + max filter): {error:.1e}")
    assert error <= 1e-5

    # an existing, non-empty directory is refused without a traceback
    again = CliRunner().invoke(main, ["export", str(tmp_path / "plan.json"), "--net",
                                      str(tmp_path / "net.json"), "--weights",
                                      str(tmp_path / "w.npz"), "--out", str(out_dir)])
    assert again.exit_code == 2 and "not empty" in again.output
    assert "Traceback" not in again.output


def test_export_batch_three_pools_and_fft_layer_as_direct(tmp_path: Path) -> None:
    layers = [{"type": "conv", "kernel": [5, 5, 5], "out_channels": 4, "activation": "relu"},
              {"type": "pool", "window": [2, 2, 1]},
              {"type": "conv", "kernel": [1, 1, 2], "out_channels": 3, "activation": "linear"},
              {"type": "pool", "window": [1, 2, 2]},
              {"type": "pool", "window": [2, 1, 1]},
              {"type": "conv", "kernel": [1, 1, 1], "out_channels": 2,
               "activation": "sigmoid"}]
    net = net_from_layers(layers, input_channels=3, seed=4)
    frag = net.fragmentation
    plan = znni.make_plan(net, (frag[0], 2 * frag[1], frag[2]), 2, {0: "fft"})
    result = export_plan(plan, net, tmp_path / "lib")
    assert result.converted == ((0, "fft"),) and "direct" in result.notes()[0]
    batch = np.stack([random_volume((3, *plan.input_patch), seed=s) for s in (5, 6)])
    ours = build_and_run(tmp_path / "lib", batch, (2, net.output_channels, *plan.output_patch))
    compiled = CompiledPlan(plan, net, 1)
    x = compiled.new_input()
    x[...] = batch
    assert relative_error(ours, compiled.run(x)) <= 1e-5  # the same plan compiled by znni
    # znni.infer with the plan runs layer 0 as FFT: equal up to float32 rounding
    error = relative_error(ours[1], znni.infer(net, batch[1], plan=plan))
    print(f"export (fft layer as direct) vs infer (fft): {error:.1e}")
    assert error <= 1e-5


def test_export_refuses_a_plan_of_another_network(tmp_path: Path) -> None:
    net = net_from_layers(TWO_POOLS, seed=1)
    other = net_from_layers(TWO_POOLS[:1], seed=1)
    plan = znni.make_plan(other, (1, 1, 1))
    with pytest.raises(znni.ZnniError, match="another network"):
        export_plan(plan, net, tmp_path / "lib")
    assert not (tmp_path / "lib").exists()


def test_cli_export_user_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tmp_path / "missing.json"), "--net",
                                       "tiny", "--random-weights", "0", "--out",
                                       str(tmp_path / "lib")])
    assert result.exit_code == 2 and "cannot read plan" in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_build_all_pools_max_filtered_equals_infer(tmp_path: Path) -> None:
    net = net_from_layers(TWO_POOLS, input_channels=1, seed=2)
    plan = znni.make_plan(net, (2, 3, 5), 1, {1: "maxfilter", 3: "maxfilter"})  # no fragments
    export_plan(plan, net, tmp_path / "lib")
    volume = random_volume((1, *plan.input_patch), seed=7)
    ours = build_and_run(tmp_path / "lib", volume, (net.output_channels, *plan.output_patch),
                         cmake=True)
    assert relative_error(ours, znni.infer(net, volume, plan=plan)) <= 1e-5
