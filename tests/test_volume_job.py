"""Volumes on disk: every format, block by block, bit-identical to the in-memory path; killed
runs resume to the same bits; changed jobs never reuse done records; bad inputs are refused
with nothing overwritten."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

import znni
from znni.runtime import job
from znni.runtime.job import infer_volume

from .conftest import net_from_layers, random_volume


@pytest.fixture
def small_blocks(monkeypatch) -> None:
    monkeypatch.setattr(job, "BLOCK_BYTES", 30_000)  # dozens of blocks on small volumes


def _net() -> znni.Network:
    return net_from_layers([
        {"type": "conv", "kernel": [3, 3, 1], "out_channels": 4, "activation": "relu"},
        {"type": "pool", "window": [2, 2, 2]},
        {"type": "conv", "kernel": [2, 3, 3], "out_channels": 8, "activation": "tanh"},
        {"type": "conv", "kernel": [3, 3, 3], "out_channels": 2, "activation": "sigmoid"},
    ], seed=31)


def _read(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path)
    if path.endswith(".zarr"):
        return zarr.open_array(path, mode="r")[...]
    file, dataset = path.split(":")
    with h5py.File(file, "r") as handle:
        return handle[dataset][...]


def _write_input(kind: str, folder: Path, volume: np.ndarray) -> str:
    if kind == "npy":
        np.save(folder / "in.npy", volume)
        return str(folder / "in.npy")
    if kind == "zarr":
        arr = zarr.create_array(str(folder / "in.zarr"), shape=volume.shape, chunks=(8, 8, 8),
                                dtype=volume.dtype)
        arr[...] = volume
        return str(folder / "in.zarr")
    if kind == "h5":
        with h5py.File(folder / "in.h5", "w") as handle:
            handle.create_dataset("em/raw", data=volume, chunks=(8, 8, 8))
        return f"{folder / 'in.h5'}:/em/raw"
    tifffile.imwrite(folder / "in.tif", volume)
    return str(folder / "in.tif")


@pytest.mark.parametrize("kind", ["npy", "zarr", "h5", "tiff"])
@pytest.mark.parametrize("mode", ["valid", "same"])
def test_every_format_equals_in_memory_inference_bit_for_bit(kind, mode, tmp_path,
                                                               small_blocks) -> None:
    net = _net()
    volume = (random_volume((29, 34, 31), seed=3) * 255).astype(np.uint8)
    src = _write_input(kind, tmp_path, volume)
    plan = znni.make_plan(net, (2, 4, 6), 2, "fft-pruned")  # FFT: any regrouping would show
    expected = znni.infer(net, volume, plan=plan, mode=mode)
    for dst in (str(tmp_path / "out.zarr"), str(tmp_path / "out.npy"),
                f"{tmp_path / 'out.h5'}:/pred"):
        stats = infer_volume(net, src, dst, plan=plan, mode=mode)
        assert stats.blocks_run >= 8 and stats.blocks_skipped == 0
        np.testing.assert_array_equal(_read(dst), expected)
        again = infer_volume(net, src, dst, plan=plan, mode=mode)
        assert again.blocks_run == 0 and again.blocks_skipped == stats.blocks_run


def test_bbox_uint8_output_and_planned_runs(tmp_path, small_blocks) -> None:
    net = _net()
    volume = random_volume((30, 33, 28), seed=4)
    np.save(tmp_path / "in.npy", volume)
    sub = volume[3:27, 5:, :20]
    dst = str(tmp_path / "out.zarr")
    infer_volume(net, str(tmp_path / "in.npy"), dst, bbox="3:27,5:,:20", output_dtype="uint8",
                 memory=1 << 30)
    expected = znni.infer(net, sub)
    got = _read(dst)
    assert got.dtype == np.uint8
    assert np.abs(got.astype(int) - np.rint(expected * 255)).max() <= 1  # plans may differ


def test_changed_weights_invalidate_done_records(tmp_path, small_blocks) -> None:
    net, other = _net(), _net().random_weights(99)
    np.save(tmp_path / "in.npy", random_volume((26, 26, 26), seed=5))
    src, dst = str(tmp_path / "in.npy"), str(tmp_path / "out.npy")
    plan = znni.make_plan(net, (2, 2, 2))
    first = infer_volume(net, src, dst, plan=plan)
    second = infer_volume(other, src, dst, plan=plan)
    assert second.blocks_run == first.blocks_run  # nothing of the other job reused
    np.testing.assert_array_equal(_read(dst), znni.infer(other, np.load(src), plan=plan))


_WORKER = """
import os, signal, sys, numpy as np, znni
from znni.runtime import job, storage
job.BLOCK_BYTES = 30_000
net = znni.load(sys.argv[1]).random_weights(7)
plan = znni.Plan.from_json(open(sys.argv[2]).read(), net)
kill_at, torn = (int(sys.argv[5]), sys.argv[6] == "torn") if len(sys.argv) > 5 else (-1, False)
blocks = [0]
write = storage.OutputVolume.write

def dying_write(self, start, data):
    blocks[0] += 1
    if blocks[0] == kill_at and torn:  # half the block written, and garbage: a torn write
        write(self, start, np.full_like(data, 7.0)[:, : max(1, data.shape[1] // 2)])
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, start, data)
    if blocks[0] == kill_at:  # written, flushed or not, not yet recorded done
        os.kill(os.getpid(), signal.SIGKILL)

storage.OutputVolume.write = dying_write
job.infer_volume(net, sys.argv[3], sys.argv[4], plan=plan)
"""


def test_killed_runs_resume_to_the_same_bits(tmp_path) -> None:
    """SIGKILL five times — mid-write (a torn block), between a block's write and its done
    record — then a full run: output equals a clean run's, bit for bit."""
    net = znni.load("tiny").random_weights(7)
    spec = tmp_path / "net.json"
    spec.write_text(json.dumps(net.to_dict()))
    plan = znni.make_plan(net, (2, 2, 2), 2, "fft-pruned")
    (tmp_path / "plan.json").write_text(plan.to_json())
    np.save(tmp_path / "in.npy", random_volume((30, 30, 30), seed=6))
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    args = [sys.executable, str(script), str(spec), str(tmp_path / "plan.json"),
            str(tmp_path / "in.npy")]
    clean = str(tmp_path / "clean.zarr")
    subprocess.run([*args, clean], check=True, timeout=600)
    killed = str(tmp_path / "killed.zarr")
    done = []
    for kill_at, how in [(3, "torn"), (2, "written"), (5, "torn"), (1, "written"), (4, "torn")]:
        run = subprocess.run([*args, killed, str(kill_at), how], timeout=600, check=False)
        assert run.returncode == -signal.SIGKILL
        done.append(len(list(Path(f"{killed}.znni-done").glob("[0-9]*"))))
    assert done == sorted(done) and done[-1] > 0  # progress survives every kill
    subprocess.run([*args, killed], check=True, timeout=600)
    np.testing.assert_array_equal(_read(killed), _read(clean))


@pytest.mark.parametrize("case,words", [
    ("missing", ["not found"]),
    ("no_dataset", ["no dataset", "/em/raw"]),
    ("dtype", ["dtype int32"]),
    ("rank", ["2 dimensions"]),
    ("small", ["field of view"]),
    ("other_shape", ["exists with shape"]),
    ("garbage_output", ["not a readable volume"]),
    ("bad_bbox", ["--bbox"]),
    ("tiff_output", ["input format only"]),
])
def test_bad_volumes_are_refused_and_nothing_is_overwritten(case, words, tmp_path) -> None:
    net = _net()
    volume = random_volume((24, 24, 24), seed=8)
    src, dst = str(tmp_path / "in.npy"), str(tmp_path / "out.npy")
    np.save(src, volume)
    np.save(dst, np.ones((2, 3, 3, 3), np.float32))  # someone's earlier result
    bbox = None
    if case == "missing":
        src = str(tmp_path / "nope.zarr")
    elif case == "no_dataset":
        src = _write_input("h5", tmp_path, volume).replace("/em/raw", "/em/labels")
    elif case == "dtype":
        np.save(src, volume.astype(np.int32))
    elif case == "rank":
        np.save(src, volume[0])
    elif case == "small":
        np.save(src, volume[:4])
    elif case == "garbage_output":
        Path(dst).write_bytes(b"precious")
    elif case == "bad_bbox":
        bbox = "0:30,:,:"
    elif case == "tiff_output":
        dst = str(tmp_path / "out.tif")
    before = Path(dst).read_bytes() if Path(dst).exists() else None
    with pytest.raises(znni.ZnniError) as info:
        infer_volume(net, src, dst, bbox=bbox, memory=1 << 30)
    message = str(info.value) + " " + (info.value.hint or "")
    assert all(w in message for w in words), message
    after = Path(dst).read_bytes() if Path(dst).exists() else None
    assert after == before


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with (distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   dashboard_address=None) as local,
          distributed.Client(local) as client):
        yield client


def test_two_workers_equal_one_process_and_survive_a_killed_worker(cluster, tmp_path) -> None:
    net = _net()
    np.save(tmp_path / "in.npy", random_volume((40, 40, 40), seed=9))
    src = str(tmp_path / "in.npy")
    plan = znni.make_plan(net, (2, 2, 4), 1, "fft-pruned")
    infer_volume(net, src, str(tmp_path / "one.zarr"), plan=plan, threads=1)
    job.BLOCK_BYTES, saved = 30_000, job.BLOCK_BYTES  # workers unpickle the job, not this knob
    try:
        victim = []

        def kill_one_worker(done: int, total: int, stats) -> None:
            if done == 3 and not victim:  # mid-run: the nanny restarts it, its tasks retry
                pids = cluster.run(os.getpid)
                victim.append(next(iter(pids.values())))
                os.kill(victim[0], signal.SIGKILL)

        stats = infer_volume(net, src, str(tmp_path / "two.zarr"), plan=plan, threads=1,
                             client=cluster, progress=kill_one_worker)
    finally:
        job.BLOCK_BYTES = saved
    assert victim and stats.blocks_run > 3
    np.testing.assert_array_equal(_read(str(tmp_path / "two.zarr")),
                                  _read(str(tmp_path / "one.zarr")))


def test_masks_augmentation_and_world_coordinates_on_workers(cluster, tmp_path) -> None:
    """The same blocks on two workers: a mask, test-time augmentation and an OME-Zarr output
    give the single process's bits."""
    pytest.importorskip("ome_zarr")
    net = _net()
    np.save(tmp_path / "in.npy", random_volume((30, 36, 36), seed=4))
    mask = np.zeros((15, 18, 18), np.uint8)
    mask[:8] = 1
    np.save(tmp_path / "mask.npy", mask)
    plan = znni.Plan.from_dict(znni.make_plan(net, (2, 4, 4), 1, "direct").to_dict()
                               | {"tta": "flips"}, net)
    args = {"plan": plan, "threads": 1, "mask": str(tmp_path / "mask.npy"), "mask_fill": -1.0}
    job.BLOCK_BYTES, saved = 30_000, job.BLOCK_BYTES
    try:
        one = infer_volume(net, str(tmp_path / "in.npy"), str(tmp_path / "one.ome.zarr"), **args)
        two = infer_volume(net, str(tmp_path / "in.npy"), str(tmp_path / "two.ome.zarr"),
                           client=cluster, **args)
    finally:
        job.BLOCK_BYTES = saved
    assert one.blocks_masked == two.blocks_masked > 0
    read = [zarr.open_group(str(tmp_path / f"{n}.ome.zarr"), mode="r")["0"][...]
            for n in ("one", "two")]
    np.testing.assert_array_equal(read[0], read[1])
