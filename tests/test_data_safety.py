"""Data safety of out-of-core jobs: an output that is the input is refused, one job at a time
writes an output, a changed input is recomputed, a failed run leaves nothing of its own making,
NaN/Inf outputs are errors naming the layer, and a done-records path that is not a folder is a
clear error."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import znni
from znni.errors import CompileError, NumericError, PlanError, VolumeError
from znni.runtime.job import infer_volume
from znni.runtime.lock import output_lock
from znni.runtime.storage import ledger_folder, lock_path

from .conftest import net_from_layers, random_volume
from .test_volume_job import _read, _write_input, cluster, small_blocks  # noqa: F401 (fixtures)


def _net(channels: int = 1) -> znni.Network:
    """FOV 4×6×6, ``channels`` in and out (so that an output can have the input's shape)."""
    return net_from_layers([
        {"type": "conv", "kernel": [3, 3, 1], "out_channels": 4, "activation": "relu"},
        {"type": "pool", "window": [2, 2, 2]},
        {"type": "conv", "kernel": [1, 2, 3], "out_channels": 8, "activation": "linear"},
        {"type": "conv", "kernel": [1, 1, 1], "out_channels": channels,
         "activation": "sigmoid"},
    ], input_channels=channels, seed=41)


def _replaced(net: znni.Network, layer: int,
              weight: Callable[[np.ndarray], np.ndarray]) -> znni.Network:
    """``net`` with layer ``layer``'s weights ``w`` replaced by ``weight(w)``."""
    arrays = {}
    for index, (w, b) in net.require_weights().items():
        arrays[f"layers.{index}.weight"] = weight(w) if index == layer else w
        arrays[f"layers.{index}.bias"] = b
    return net.with_weights(arrays)


def _overflowing() -> znni.Network:
    """Finite weights (±3e38) in layer 2: float32 overflows there, NaN reaches the output."""
    return _replaced(_net(), 2, lambda w: np.sign(w) * 3e38)


def _made(dst: str) -> list[str]:
    """What a job on ``dst`` may leave beside the output: output, done records, lock."""
    paths = [Path(dst.partition(":")[0]), ledger_folder(dst), lock_path(dst)]
    return [str(p) for p in paths if os.path.lexists(p)]


def _snapshot(path: Path) -> dict[str, bytes]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): p.read_bytes() for p in files}


# ---- 1. the output is the input ----------------------------------------------------------

def _same_file_case(case: str, tmp: Path) -> tuple[str, str, str, Path, int]:
    """(input, output, output dtype, the input's file or folder, channels) of one case."""
    volume = random_volume((2, 12, 12, 12), seed=1)
    np.save(tmp / "in.npy", volume)
    src, dtype, channels = str(tmp / "in.npy"), "float32", 2
    if case == "same_path_float32":
        dst = src
    elif case == "same_path_uint8":
        np.save(tmp / "in.npy", (volume[:1] * 255).astype(np.uint8))
        dst, dtype, channels = src, "uint8", 1
    elif case == "symlink":
        os.symlink(tmp / "in.npy", tmp / "link.npy")
        dst = str(tmp / "link.npy")
    elif case == "hard_link":
        os.link(tmp / "in.npy", tmp / "hard.npy")
        dst = str(tmp / "hard.npy")
    elif case == "other_spelling":
        (tmp / "sub").mkdir()
        dst = f"{tmp}/sub/..//in.npy"
    elif case == "hdf5_other_dataset":
        src = _write_input("h5", tmp, volume[0])
        dst, channels = f"{tmp / 'in.h5'}:/pred", 1
    elif case == "output_inside_zarr_input":
        src, channels = _write_input("zarr", tmp, volume[0]), 1
        dst = str(tmp / "in.zarr" / "pred.zarr")
    elif case == "zarr_output_holds_input":
        zarr.open_group(str(tmp / "data.zarr"), mode="w")
        arr = zarr.create_array(str(tmp / "data.zarr" / "raw.zarr"), shape=(12, 12, 12),
                                chunks=(8, 8, 8), dtype=np.float32)
        arr[...] = volume[0]
        src, dst, channels = str(tmp / "data.zarr" / "raw.zarr"), str(tmp / "data.zarr"), 1
    else:  # input_inside_done_records: a job clears that folder
        folder = ledger_folder(str(tmp / "out.npy"))
        folder.mkdir()
        np.save(folder / "in.npy", volume)
        src, dst = str(folder / "in.npy"), str(tmp / "out.npy")
    return src, dst, dtype, Path(src.partition(":")[0]), channels


@pytest.mark.parametrize("case", [
    "same_path_float32", "same_path_uint8", "symlink", "hard_link", "other_spelling",
    "hdf5_other_dataset", "output_inside_zarr_input", "zarr_output_holds_input",
    "input_inside_done_records"])
def test_an_output_that_is_the_input_is_refused(case, tmp_path) -> None:
    src, dst, dtype, held, channels = _same_file_case(case, tmp_path)
    before = _snapshot(held)
    made_before = _made(dst)
    with pytest.raises(VolumeError, match="would overwrite the input"):
        infer_volume(_net(channels), src, dst, mode="same", output_dtype=dtype,
                     plan=znni.make_plan(_net(channels), (2, 2, 2)))
    assert _snapshot(held) == before
    assert _made(dst) == made_before


# ---- 2. one job per output ---------------------------------------------------------------

@pytest.mark.usefixtures("small_blocks")
def test_a_second_job_on_a_busy_output_fails_at_once_and_leaves_the_first_alone(
        tmp_path) -> None:
    net, other = _net(), _net().random_weights(99)
    np.save(tmp_path / "in.npy", random_volume((24, 24, 24), seed=2))
    src, dst = str(tmp_path / "in.npy"), str(tmp_path / "out.npy")
    plan = znni.make_plan(net, (2, 2, 2))
    spec = tmp_path / "net.json"
    spec.write_text(json.dumps(other.to_dict()))
    folder = ledger_folder(dst)
    refused = []

    def second_jobs(done: int, total: int, stats) -> None:
        if done != 2 or refused:
            return
        records = sorted(os.listdir(folder))
        with pytest.raises(VolumeError) as info:  # in this process: a separate lock
            infer_volume(other, src, dst, plan=plan)
        refused.append(str(info.value))
        cli = subprocess.run(
            [sys.executable, "-m", "znni", "infer", str(spec), "--random-weights", "99",
             "--input", src, "--output", dst, "--patch", "2,2,2", "--quiet"],
            capture_output=True, text=True, timeout=600, check=False)
        refused.append(f"{cli.returncode} {cli.stderr}")
        assert sorted(os.listdir(folder)) == records  # nothing of the first job's cleared

    infer_volume(net, src, dst, plan=plan, progress=second_jobs)
    mine = f"another znni job (pid {os.getpid()}) is writing {dst!r}"
    assert mine in refused[0] and "wait for it or choose another output" in refused[0]
    assert refused[1].startswith("2 ") and mine in refused[1]
    np.testing.assert_array_equal(np.load(dst), znni.infer(net, np.load(src), plan=plan))
    assert not lock_path(dst).exists()
    again = infer_volume(net, src, dst, plan=plan)
    assert again.blocks_run == 0


def test_a_symlink_where_the_lock_file_goes_is_refused(tmp_path) -> None:
    np.save(tmp_path / "in.npy", random_volume((12, 12, 12), seed=3))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dst = str(tmp_path / "out.npy")
    os.symlink(victim, lock_path(dst))
    with pytest.raises(VolumeError, match="lock file"):
        infer_volume(_net(), str(tmp_path / "in.npy"), dst, plan=znni.make_plan(_net(), (2, 2, 2)))
    assert victim.read_text() == "precious"
    assert not Path(dst).exists() and not ledger_folder(dst).exists()


# ---- 3. the input changed in place -------------------------------------------------------

def _change_in_place(kind: str, src: str, volume: np.ndarray) -> None:
    """Overwrite the first 8 z-planes of the input in place (same path, shape and dtype)."""
    if kind == "npy":
        array = np.load(src, mmap_mode="r+")
        array[:8] = volume[:8]
        array.flush()
    elif kind == "zarr":
        zarr.open_array(src, mode="r+")[:8] = volume[:8]  # rewrites chunk files in place
    else:
        file, dataset = src.split(":")
        with h5py.File(file, "r+") as handle:
            handle[dataset][:8] = volume[:8]


@pytest.mark.parametrize("kind", ["npy", "zarr", "h5"])
@pytest.mark.usefixtures("small_blocks")
def test_an_input_changed_in_place_is_recomputed(kind, tmp_path, caplog) -> None:
    net = _net()
    old, new = random_volume((20, 20, 20), seed=4), random_volume((20, 20, 20), seed=5)
    src, dst = _write_input(kind, tmp_path, old), str(tmp_path / "out.zarr")
    plan = znni.make_plan(net, (2, 2, 2))
    first = infer_volume(net, src, dst, plan=plan)
    _change_in_place(kind, src, new)
    changed = np.concatenate([new[:8], old[8:]])
    with caplog.at_level(logging.WARNING, logger="znni"):
        second = infer_volume(net, src, dst, plan=plan)
    assert second.blocks_skipped == 0 and second.blocks_run == first.blocks_run
    assert "changed since the records were written; recomputing all blocks" in caplog.text
    np.testing.assert_array_equal(_read(dst), znni.infer(net, changed, plan=plan))


# ---- 4. a failed run leaves nothing behind -----------------------------------------------

@pytest.mark.parametrize("case,error", [
    ("no_weights", znni.ZnniError), ("plan_of_another_net", PlanError),
    ("small_input", znni.ZnniError), ("compile_error", CompileError),
    ("lock_held", VolumeError), ("non_finite", NumericError)])
@pytest.mark.parametrize("out", ["out.npy", "out.zarr", "out.h5:/pred"])
def test_a_failed_run_leaves_nothing_of_its_own(case, error, out, tmp_path,
                                                 monkeypatch) -> None:
    net = _net()
    volume = random_volume((16, 16, 16), seed=6)
    np.save(tmp_path / "in.npy", volume)
    src, dst = str(tmp_path / "in.npy"), str(tmp_path / out)
    plan = znni.make_plan(net, (2, 2, 2))
    if case == "no_weights":
        net = znni.load(net.to_dict())
    elif case == "plan_of_another_net":
        plan = znni.make_plan(znni.load("tiny").random_weights(0), (2, 2, 2))
    elif case == "small_input":
        np.save(src, volume[:2])
    elif case == "compile_error":  # a topology no other test compiles, and no compiler
        net = net_from_layers([{"type": "conv", "kernel": [2, 1, 3], "out_channels": 7,
                                "activation": "tanh"}], seed=1)
        plan = znni.make_plan(net, (3, 3, 3), 1, "direct")
        monkeypatch.setenv("ZNNI_CXX", "false")
        monkeypatch.setenv("ZNNI_CACHE_DIR", str(tmp_path / "cache"))
    elif case == "non_finite":
        net = _overflowing()
    with pytest.raises(error):
        if case == "lock_held":
            with output_lock(lock_path(dst), dst):
                infer_volume(net, src, dst, plan=plan)
        else:
            infer_volume(net, src, dst, plan=plan)
    assert _made(dst) == []


def test_a_failed_run_keeps_an_output_from_before_it(tmp_path) -> None:
    """Another job's finished output (same shape) is kept as it is, and so is an HDF5 file the
    failed run added its dataset to (only that dataset goes)."""
    np.save(tmp_path / "in.npy", random_volume((16, 16, 16), seed=7))
    src, plan = str(tmp_path / "in.npy"), znni.make_plan(_net(), (2, 2, 2))
    npy = str(tmp_path / "out.npy")
    infer_volume(_net().random_weights(3), src, npy, plan=plan)
    before = Path(npy).read_bytes()
    with h5py.File(tmp_path / "out.h5", "w") as handle:
        handle["raw"] = np.arange(5)
    for dst in (npy, f"{tmp_path / 'out.h5'}:/pred"):
        with pytest.raises(NumericError):
            infer_volume(_overflowing(), src, dst, plan=plan)
        assert not ledger_folder(dst).exists() and not lock_path(dst).exists()
    assert Path(npy).read_bytes() == before
    with h5py.File(tmp_path / "out.h5", "r") as handle:
        assert list(handle) == ["raw"]


@pytest.mark.usefixtures("small_blocks")
def test_records_beside_a_deleted_output_are_not_trusted(tmp_path) -> None:
    net = _net()
    np.save(tmp_path / "in.npy", random_volume((20, 20, 20), seed=8))
    src, dst = str(tmp_path / "in.npy"), str(tmp_path / "out.npy")
    plan = znni.make_plan(net, (2, 2, 2))
    first = infer_volume(net, src, dst, plan=plan)
    os.unlink(dst)  # the records stay
    again = infer_volume(net, src, dst, plan=plan)
    assert again.blocks_run == first.blocks_run
    np.testing.assert_array_equal(np.load(dst), znni.infer(net, np.load(src), plan=plan))


# ---- 5. NaN and Inf ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_an_overflowing_net_is_an_error_naming_the_layer(dtype, tmp_path) -> None:
    net = _overflowing()
    volume = random_volume((16, 16, 16), seed=9)
    np.save(tmp_path / "in.npy", volume)
    plan = znni.make_plan(net, (2, 2, 2))
    layer_2 = r"first appears in the output of layer 2 \(conv"
    with pytest.raises(NumericError, match=r"block 0_0_0 .* " + layer_2):
        infer_volume(net, str(tmp_path / "in.npy"), str(tmp_path / "out.zarr"), plan=plan,
                     output_dtype=dtype)
    with pytest.raises(NumericError, match=r"the output .* " + layer_2):
        znni.infer(net, volume, plan=plan)


@pytest.mark.usefixtures("small_blocks")
def test_a_non_finite_block_is_not_recorded_done(tmp_path) -> None:
    """Huge input values at the far end overflow there only: the blocks before are recorded
    done (and kept, to resume), the failing one is not."""
    net = _replaced(_net(), 0, np.ones_like)  # a sum of 9 × 3e38 overflows
    volume = random_volume((24, 24, 24), seed=10)
    volume[20:] = 3e38
    np.save(tmp_path / "in.npy", volume)
    dst = str(tmp_path / "out.zarr")
    with pytest.raises(NumericError, match=r"in the output of layer 0 \(conv") as info:
        infer_volume(net, str(tmp_path / "in.npy"), dst, plan=znni.make_plan(net, (2, 2, 2)))
    failed = re.search(r"block (\d+_\d+_\d+)", str(info.value)).group(1)
    records = set(os.listdir(ledger_folder(dst))) - {"job.json"}
    assert records and failed not in records
    assert not lock_path(dst).exists()


@pytest.mark.usefixtures("small_blocks")
def test_a_non_finite_block_on_a_cluster_is_its_own_error_and_leaves_nothing(
        request, tmp_path) -> None:
    """The worker's NumericError reaches the client whole (not as "a block failed on the
    cluster"); the client waits for the blocks in flight, then removes the output it made."""
    np.save(tmp_path / "in.npy", random_volume((20, 20, 20), seed=12))
    dst = str(tmp_path / "out.zarr")
    with pytest.raises(NumericError, match=r"in the output of layer 2 \(conv") as info:
        infer_volume(_overflowing(), str(tmp_path / "in.npy"), dst,
                     plan=znni.make_plan(_net(), (2, 2, 2)), threads=1,
                     client=request.getfixturevalue("cluster"))
    assert info.value.hint and _made(dst) == []


# ---- 6. the done-records path is not a folder --------------------------------------------

@pytest.mark.parametrize("case", ["file", "symlink_to_folder", "dangling_symlink"])
def test_a_done_records_path_that_is_not_a_folder_is_refused(case, tmp_path) -> None:
    np.save(tmp_path / "in.npy", random_volume((12, 12, 12), seed=11))
    dst = str(tmp_path / "out.npy")
    folder, target = ledger_folder(dst), tmp_path / "elsewhere"
    if case == "file":
        folder.write_text("mine")
    elif case == "symlink_to_folder":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    if case != "file":
        os.symlink(target, folder)
    with pytest.raises(VolumeError, match="done records"):
        infer_volume(_net(), str(tmp_path / "in.npy"), dst,
                     plan=znni.make_plan(_net(), (2, 2, 2)))
    assert _made(dst) == [str(folder)]
    assert folder.read_text() == "mine" if case == "file" else os.path.islink(folder)
    assert (target / "keep.txt").exists() == (case == "symlink_to_folder")
