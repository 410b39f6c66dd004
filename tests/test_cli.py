"""The CLI as a user meets it: real subprocesses, exit codes, messages, files left intact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import znni
from znni.reference import forward

from .conftest import random_volume, relative_error


def znni_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "znni", *args], capture_output=True,
                          text=True, check=False, timeout=600)


@pytest.fixture
def tiny_files(tmp_path: Path) -> dict[str, Path]:
    net = znni.load("tiny").random_weights(11)
    weights = tmp_path / "w.npz"
    net.save_weights(weights)
    volume = tmp_path / "in.npy"
    np.save(volume, random_volume((14, 15, 19), seed=2))
    return {"weights": weights, "input": volume, "output": tmp_path / "out.npy"}


def test_infer_matches_reference_and_second_run_compiles_nothing(tiny_files) -> None:
    args = ["-v", "infer", "tiny", "--weights", str(tiny_files["weights"]),
            "--input", str(tiny_files["input"]), "--output", str(tiny_files["output"]),
            "--patch", "2,4,6"]
    first = znni_cli(*args)
    assert first.returncode == 0, first.stderr
    net = znni.load("tiny", weights=tiny_files["weights"])
    ref = forward(net, np.load(tiny_files["input"]))
    assert relative_error(np.load(tiny_files["output"]), ref) < 1e-4
    second = znni_cli(*args)
    assert second.returncode == 0
    assert "compiled" not in second.stderr  # every kernel came from the cache


def test_random_weights_and_bundled_spec_path(tiny_files, tmp_path) -> None:
    spec = tmp_path / "net.json"
    spec.write_text(json.dumps(znni.load("tiny").to_dict()))
    result = znni_cli("infer", str(spec), "--random-weights", "3", "--input",
                      str(tiny_files["input"]), "--output", str(tiny_files["output"]))
    assert result.returncode == 0, result.stderr
    expected = znni.infer(znni.load("tiny").random_weights(3), np.load(tiny_files["input"]))
    np.testing.assert_array_equal(np.load(tiny_files["output"]), expected)


@pytest.mark.parametrize("case,words", [
    ("missing_spec", ["not found"]),
    ("bad_activation", ["layer 0", "activation"]),
    ("both_weights", ["exactly one"]),
    ("missing_input", ["not found"]),
    ("small_volume", ["field of view"]),
    ("bad_patch", ["patch"]),
    ("bad_memory", ["memory"]),
    ("wrong_weights", ["shape"]),
    ("bad_output_dir", ["does not exist"]),
    ("bad_workers", ["--workers"]),
    ("h5_on_cluster", ["HDF5", "workers"]),
    ("deep_spec", ["nested too deeply"]),
    ("truncated_weights", ["cannot read weights"]),
    ("npy_weights", ["single array"]),
    ("too_many_threads", ["--threads", "1024"]),
    ("plan_batch_2_64", ["batch 18446744073709551616", "over the limit"]),
    ("plan_missing_layer", ["one entry for each layer"]),
    ("plan_patch_too_large", ["larger than this volume needs", "[8, 8, 12]"]),
    ("plan_over_memory", ["needs", "memory budget of 0.00 GiB (--memory)"]),
])
def test_bad_input_exits_nonzero_with_message_and_loses_nothing(case, words, tiny_files,
                                                                 tmp_path) -> None:
    out = tiny_files["output"]
    out.write_bytes(b"precious")
    base = ["infer", "tiny", "--weights", str(tiny_files["weights"]), "--input",
            str(tiny_files["input"]), "--output", str(out)]
    if case == "missing_spec":
        base[1] = str(tmp_path / "nope.json")
    elif case == "bad_activation":
        spec = tmp_path / "bad.json"
        spec.write_text(json.dumps({"input_channels": 1, "layers": [
            {"type": "conv", "kernel": [3, 3, 3], "out_channels": 2, "activation": "swish"}]}))
        base[1] = str(spec)
    elif case == "both_weights":
        base += ["--random-weights", "1"]
    elif case == "missing_input":
        base[5] = str(tmp_path / "nope.npy")
    elif case == "small_volume":
        np.save(tiny_files["input"], random_volume((5, 15, 19)))
    elif case == "bad_patch":
        base += ["--patch", "3,3,3"]
    elif case == "bad_memory":
        base += ["--memory", "lots"]
    elif case == "wrong_weights":
        other = znni.load("n337").random_weights(0)
        other.save_weights(tiny_files["weights"])
    elif case == "bad_output_dir":
        base[7] = str(tmp_path / "no" / "such" / "out.npy")
    elif case == "bad_workers":
        base += ["--workers", "0"]
    elif case == "h5_on_cluster":
        out = tmp_path / "out.h5"
        out.write_bytes(b"precious")
        base[7] = f"{out}:/pred"
        base += ["--workers", "1"]
    elif case == "deep_spec":
        spec = tmp_path / "deep.json"
        spec.write_text("[" * 100_000 + "]" * 100_000)
        base[1] = str(spec)
    elif case == "truncated_weights":
        data = tiny_files["weights"].read_bytes()
        tiny_files["weights"].write_bytes(data[:len(data) // 2])
    elif case == "npy_weights":
        np.save(tmp_path / "w.npy", np.zeros(3, np.float32))
        base[3] = str(tmp_path / "w.npy")
    elif case == "too_many_threads":
        base += ["--threads", "100000"]
    elif case.startswith("plan_"):
        patch = (16, 16, 16) if case == "plan_patch_too_large" else (2, 4, 6)
        plan = json.loads(znni.make_plan(znni.load("tiny"), patch).to_json())
        if case == "plan_batch_2_64":
            plan["batch"] = 2 ** 64
        elif case == "plan_missing_layer":
            del plan["layers"][1]
        elif case == "plan_over_memory":
            base += ["--memory", "1KiB"]
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        base += ["--plan", str(tmp_path / "plan.json")]
    result = znni_cli(*base)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert all(w in result.stderr for w in words), result.stderr
    assert out.read_bytes() == b"precious"


def test_volume_options_zarr_output_and_resume(tiny_files, tmp_path) -> None:
    out = tmp_path / "pred.zarr"
    args = ["infer", "tiny", "--random-weights", "3", "--input", str(tiny_files["input"]),
            "--output", str(out), "--mode", "same", "--output-dtype", "uint8",
            "--bbox", "1:,:,2:18", "--patch", "2,2,2"]
    first = znni_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "blocks" in first.stderr  # the progress line (stderr is not a terminal here)
    net = znni.load("tiny").random_weights(3)
    sub = np.load(tiny_files["input"])[1:, :, 2:18]
    expected = znni.infer(net, sub, (2, 2, 2), mode="same")
    got = zarr.open_array(str(out), mode="r")[...]
    assert got.dtype == np.uint8 and got.shape == (2, *sub.shape)
    np.testing.assert_array_equal(got, np.rint(np.clip(expected, 0, 1) * 255).astype(np.uint8))
    again = znni_cli(*args, "--quiet")
    assert again.returncode == 0 and "already done" in again.stdout and not again.stderr


def test_infer_on_a_local_dask_cluster_equals_in_memory(tiny_files, tmp_path) -> None:
    pytest.importorskip("distributed")
    out = tmp_path / "pred.zarr"
    result = znni_cli("infer", "tiny", "--random-weights", "3", "--input",
                      str(tiny_files["input"]), "--output", str(out), "--patch", "2,2,2",
                      "--workers", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    net = znni.load("tiny").random_weights(3)
    expected = znni.infer(net, np.load(tiny_files["input"]), (2, 2, 2))
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[...], expected)


def test_demo_runs_and_reports_throughput() -> None:
    result = znni_cli("demo", "--net", "tiny", "--size", "8")
    assert result.returncode == 0, result.stderr
    assert "voxels/s" in result.stdout


def test_plan_json_runs_through_infer(tiny_files, tmp_path) -> None:
    plan_file = tmp_path / "plan.json"
    result = znni_cli("plan", "tiny", "--memory", "256MiB", "--extent", "8,8,12", "--json",
                      "-o", str(plan_file))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == json.loads(plan_file.read_text())
    assert printed["predicted_throughput"] > 0 and printed["peak_bytes"] <= 256 << 20
    table = znni_cli("plan", "tiny", "--memory", "256MiB", "--device", "xeon-2core")
    assert table.returncode == 0 and "predicted" in table.stdout and "alternatives" in table.stdout
    ran = znni_cli("infer", "tiny", "--weights", str(tiny_files["weights"]), "--input",
                   str(tiny_files["input"]), "--output", str(tiny_files["output"]),
                   "--plan", str(plan_file))
    assert ran.returncode == 0, ran.stderr
    net = znni.load("tiny").with_weights(tiny_files["weights"])
    expected = forward(net, np.load(tiny_files["input"]))
    assert relative_error(np.load(tiny_files["output"]), expected) < 1e-4


@pytest.mark.parametrize("args,words", [
    (["plan", "tiny", "--memory", "1KiB"], ["no plan", "raise the memory budget"]),
    (["plan", "tiny", "--device", "nowhere.json"], ["cannot read device description"]),
    (["plan", "nonet"], ["nonet"]),
    (["bench", "tiny", "--sizes", "0"], ["--sizes"]),
])
def test_plan_and_bench_errors_are_one_paragraph(args, words) -> None:
    result = znni_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert all(w in result.stderr for w in words), result.stderr


def test_bench_against_its_peers_reports_a_ratio() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    result = znni_cli("bench", "tiny", "--memory", "256MiB", "--sizes", "4,8", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    assert "znni / fastest peer" in result.stdout
    assert "torch dilated channels_last" in result.stdout and "onnxruntime" in result.stdout


def test_primitive_choices_come_from_the_registry() -> None:
    """--primitive accepts exactly auto and the registry's conv primitives (no list to keep in
    step), and a wrong name is a usage error that lists them."""
    from click.testing import CliRunner

    from znni.cli import ConvPrimitive, main
    from znni.primitives import CONV_PRIMITIVES, PRIMITIVES

    assert "winograd" in CONV_PRIMITIVES and "mpf" not in CONV_PRIMITIVES
    assert set(CONV_PRIMITIVES) | {"mpf", "maxfilter"} == set(PRIMITIVES)
    for name in ("auto", *CONV_PRIMITIVES):
        assert ConvPrimitive().convert(name, None, None) == name
    result = CliRunner().invoke(main, ["infer", "tiny", "--random-weights", "0", "--primitive",
                                       "warp", "--input", "x.npy", "--output", "y.npy"])
    assert result.exit_code == 2 and all(n in result.output for n in CONV_PRIMITIVES)
