"""Volumes with world coordinates: Neuroglancer precomputed (CloudVolume) and OME-Zarr. An
output lands where its input was (offset and resolution), its data equals znni.infer on the
same array bit for bit, killed runs resume to the same bits, --bbox takes nanometres, and bad
layers are refused before anything is written."""

from __future__ import annotations

import numpy as np
import pytest

import znni
from znni.errors import ZnniError
from znni.runtime import job
from znni.runtime.job import infer_volume

from .conftest import random_volume
from .test_volume_job import _net

cloudvolume = pytest.importorskip("cloudvolume")
zarr = pytest.importorskip("zarr")

RESOLUTION = (40.0, 4.0, 4.0)  # z, y, x nanometres: anisotropic, as EM is
OFFSET = (5, 20, 10)           # voxels, z, y, x


@pytest.fixture
def small_blocks(monkeypatch) -> None:
    monkeypatch.setattr(job, "BLOCK_BYTES", 30_000)  # several blocks on small volumes


def _precomputed(folder, volume: np.ndarray, url: str | None = None) -> str:
    z, y, x = volume.shape
    info = cloudvolume.CloudVolume.create_new_info(
        num_channels=1, layer_type="image", data_type="uint8", encoding="raw",
        resolution=list(reversed(RESOLUTION)), voxel_offset=list(reversed(OFFSET)),
        chunk_size=[16, 16, 8], volume_size=[x, y, z])
    url = url or f"precomputed://file://{folder}/em"
    layer = cloudvolume.CloudVolume(url, info=info, progress=False)
    layer.commit_info()
    layer[:, :, :] = volume.transpose(2, 1, 0)[..., None]
    return url


def _ome(folder, volume: np.ndarray) -> str:
    path = str(folder / "em.ome.zarr")
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.create_array("0", shape=volume.shape, chunks=(8, 16, 16), dtype=volume.dtype)[...] = (
        volume)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": list(RESOLUTION)},
            {"type": "translation", "translation": [o * r for o, r in zip(OFFSET, RESOLUTION,
                                                                           strict=True)]}]}]}]}
    return path


def _n5(folder, volume: np.ndarray) -> str:
    """An N5 dataset as funlib/daisy write them: x, y, z dimensions, resolution and a world
    offset in x, y, z order."""
    import json

    tensorstore = pytest.importorskip("tensorstore")
    path = folder / "em.n5" / "raw"
    store = tensorstore.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)},
                              "metadata": {"dimensions": list(reversed(volume.shape)),
                                           "blockSize": [16, 16, 8], "dataType": "uint8",
                                           "compression": {"type": "raw"}},
                              "create": True}).result()
    store.write(volume.transpose(2, 1, 0)).result()
    attrs = json.loads((path / "attributes.json").read_text())
    attrs |= {"resolution": list(reversed(RESOLUTION)),
              "offset": [o * r for o, r in zip(reversed(OFFSET), reversed(RESOLUTION),
                                                strict=True)]}
    (path / "attributes.json").write_text(json.dumps(attrs))
    return str(path)


def _read_n5(path: str) -> tuple[np.ndarray, tuple, tuple]:
    import json
    from pathlib import Path

    tensorstore = pytest.importorskip("tensorstore")
    store = tensorstore.open({"driver": "n5", "kvstore": {"driver": "file",
                                                          "path": path}}).result()
    attrs = json.loads((Path(path) / "attributes.json").read_text())
    resolution = tuple(float(r) for r in reversed(attrs["resolution"][:3]))
    offset = tuple(round(o / r) for o, r in zip(reversed(attrs["offset"]), resolution,
                                                strict=True))
    return store.read().result().transpose(3, 2, 1, 0), offset, resolution


def _read_precomputed(url: str) -> tuple[np.ndarray, tuple, tuple]:
    layer = cloudvolume.CloudVolume(url, progress=False)
    data = np.asarray(layer[:, :, :]).transpose(3, 2, 1, 0)
    return (data, tuple(int(v) for v in reversed(layer.voxel_offset)),
            tuple(float(r) for r in reversed(layer.resolution)))


def _read_ome(path: str) -> tuple[np.ndarray, tuple, tuple]:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(path))()))
    scale, translation = (t[key] for t, key in zip(node.metadata["coordinateTransformations"][0],
                                                    ("scale", "translation"), strict=True))
    resolution = tuple(float(s) for s in scale[-3:])
    offset = tuple(round(t / r) for t, r in zip(translation[-3:], resolution, strict=True))
    return np.asarray(node.data[0]), offset, resolution


BACKENDS = {"precomputed": (_precomputed, _read_precomputed, "precomputed://file://{}/pred"),
            "ome": (_ome, _read_ome, "{}/pred.ome.zarr"),
            "n5": (_n5, _read_n5, "{}/pred.n5/prediction")}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_outputs_land_where_their_inputs_were(tmp_path, small_blocks, backend) -> None:
    net = _net()
    volume = (random_volume((26, 33, 30), seed=2) * 255).astype(np.uint8)
    make, read, output = BACKENDS[backend]
    _killed_resumed_and_in_place(net, volume, make(tmp_path, volume), output.format(tmp_path),
                                 read, killed_after=2)


def _killed_resumed_and_in_place(net: znni.Network, volume: np.ndarray, src: str, dst: str,
                                 read, killed_after: int) -> None:
    """Run ``src`` → ``dst``, stopped after ``killed_after`` blocks, then resumed: the resumed
    run skips them, ``read(dst)`` gives znni.infer's bits, at the input's resolution and at the
    input voxel in the centre of the first output voxel's field of view."""
    plan = znni.make_plan(net, (2, 4, 6), 2, "fft-pruned")

    class Stop(Exception):
        pass

    def kill(done, total, stats):
        if stats.blocks_run == killed_after:
            raise Stop

    with pytest.raises(Stop):
        infer_volume(net, src, dst, plan=plan, threads=2, progress=kill)
    stats = infer_volume(net, src, dst, plan=plan, threads=2)
    assert stats.blocks_skipped == killed_after and stats.blocks_run > 0
    data, offset, resolution = read(dst)
    np.testing.assert_array_equal(data, znni.infer(net, volume, plan=plan, threads=2))
    centre = [(f - 1) // 2 for f in net.fov]
    assert offset == tuple(OFFSET[a] + centre[a] for a in range(3))
    assert resolution == RESOLUTION


def test_bbox_takes_world_coordinates(tmp_path) -> None:
    net = _net()
    volume = (random_volume((26, 33, 30), seed=2) * 255).astype(np.uint8)
    src = _ome(tmp_path, volume)
    world = ",".join(":".join(f"{(OFFSET[a] + v) * RESOLUTION[a]:g}nm" for v in bounds)
                     for a, bounds in enumerate([(2, 20), (3, 30), (0, 25)]))
    infer_volume(net, src, str(tmp_path / "world.npy"), bbox=world, threads=2, patch=(2, 4, 6))
    infer_volume(net, src, str(tmp_path / "voxels.npy"), bbox="2:20,3:30,0:25", threads=2,
                 patch=(2, 4, 6))
    np.testing.assert_array_equal(np.load(tmp_path / "world.npy"),
                                  np.load(tmp_path / "voxels.npy"))
    with pytest.raises(ZnniError, match="on the voxel grid"):
        infer_volume(net, src, str(tmp_path / "off.npy"), bbox="202nm:800nm,:,:", threads=2)


@pytest.mark.parametrize("case,words", [
    ("missing_layer", "No info file"),
    ("missing_mip", "MIP 2 not found"),
    ("ome_level", "no level 3"),
    ("n5_dataset", "not found"),
])
def test_bad_layers_say_what_is_wrong_and_write_nothing(tmp_path, case, words) -> None:
    volume = (random_volume((26, 33, 30), seed=2) * 255).astype(np.uint8)
    src = {"missing_layer": lambda: f"precomputed://file://{tmp_path}",  # a folder, no info
           "missing_mip": lambda: _precomputed(tmp_path, volume) + "#mip=2",
           "ome_level": lambda: _ome(tmp_path, volume) + "#mip=3",
           "n5_dataset": lambda: _n5(tmp_path, volume).replace("raw", "labels")}[case]()
    with pytest.raises(ZnniError, match=words):
        infer_volume(_net(), src, str(tmp_path / "out.zarr"))
    assert not (tmp_path / "out.zarr").exists()


def test_view_serves_input_and_output_in_world_coordinates(tmp_path, monkeypatch) -> None:
    """znni view's server (on 127.0.0.1) answers, with both volumes as layers, each placed at
    its world coordinates (the output where its input was)."""
    neuroglancer = pytest.importorskip("neuroglancer")
    import urllib.request

    from znni.view import serve

    placed = []
    local_volume = neuroglancer.LocalVolume

    def recording(data, dimensions, voxel_offset):
        placed.append((list(dimensions.scales), list(voxel_offset)))
        return local_volume(data, dimensions=dimensions, voxel_offset=voxel_offset)

    monkeypatch.setattr(neuroglancer, "LocalVolume", recording)

    volume = (random_volume((26, 33, 30), seed=2) * 255).astype(np.uint8)
    src = _ome(tmp_path, volume)
    infer_volume(_net(), src, str(tmp_path / "pred.ome.zarr"), threads=2, patch=(2, 4, 6))
    viewer = serve([src, str(tmp_path / "pred.ome.zarr")])
    try:
        url = str(viewer)
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=30) as page:  # noqa: S310 - loopback http
            assert page.status == 200
        layers = viewer.state.layers
        assert [layer.name for layer in layers] == ["em.ome.zarr", "pred.ome.zarr"]
        assert layers[0].layer.source[0].url.startswith("python://")
        centre = [(f - 1) // 2 for f in _net().fov]
        metres = pytest.approx([1, *(r * 1e-9 for r in RESOLUTION)])  # neuroglancer's unit
        assert placed == [(metres, [0, *OFFSET]),
                          (metres, [0, *(OFFSET[a] + centre[a] for a in range(3))])]
    finally:
        neuroglancer.stop()


def test_cli_view_of_a_missing_volume_says_so(tmp_path) -> None:
    from click.testing import CliRunner

    from znni.cli import main

    result = CliRunner().invoke(main, ["view", str(tmp_path / "nothing.ome.zarr")])
    assert result.exit_code == 2 and "not found" in result.output, result.output


def _ome_v04(folder, volume: np.ndarray, name: str, resolution, offset) -> str:
    """An OME-Zarr 0.4 image (zarr v2, multiscales at the top of the attributes)."""
    path = str(folder / f"{name}.ome.zarr")
    group = zarr.open_group(path, mode="w", zarr_format=2)
    group.create_array("s0", shape=volume.shape, chunks=(8, 16, 16), dtype=volume.dtype)[...] = (
        volume)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": list(resolution)},
            {"type": "translation", "translation": [o * r for o, r in zip(offset, resolution,
                                                                           strict=True)]}]}]}]
    return path


def test_ome_zarr_04_inputs_and_masks_on_their_own_grid(tmp_path, small_blocks) -> None:
    """An OME-Zarr 0.4 input reads like a 0.5 one; a mask at a coarser resolution must say so
    in its metadata and start where the input does."""
    net = _net()
    volume = (random_volume((26, 33, 30), seed=2) * 255).astype(np.uint8)
    even = (4, 20, 10)  # an offset a 2x coarser mask can start at
    src = _ome_v04(tmp_path, volume, "em", RESOLUTION, even)
    coarse = np.ones((13, 17, 15), np.uint8)  # every axis 2x coarser
    good = _ome_v04(tmp_path, coarse, "mask", [2 * r for r in RESOLUTION],
                    [o // 2 for o in even])
    plan = znni.make_plan(net, (2, 4, 6), 2, "direct")
    infer_volume(net, src, str(tmp_path / "out.npy"), plan=plan, threads=2, mask=good)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"),
                                  znni.infer(net, volume, plan=plan, threads=2))
    wrong = _ome_v04(tmp_path, coarse, "wrong", RESOLUTION, even)
    with pytest.raises(ZnniError, match="resolution matching its shape"):
        infer_volume(net, src, str(tmp_path / "out2.npy"), plan=plan, mask=wrong)
    assert not (tmp_path / "out2.npy").exists()


def test_remote_layers_in_and_out_with_local_records(tmp_path, small_blocks, monkeypatch) -> None:
    """A layer in an object store (CloudVolume's in-memory one stands in for gs:// here): read,
    written, killed and resumed like a local one; its lock and done records live in a stand-in
    folder of the cache; a changed info file counts as a changed input; workers are refused."""
    monkeypatch.setenv("ZNNI_CACHE_DIR", str(tmp_path / "cache"))
    net = _net()
    volume = (random_volume((26, 33, 30), seed=2) * 255).astype(np.uint8)
    src = _precomputed(tmp_path, volume, "precomputed://mem://znni-test/em")
    dst = "precomputed://mem://znni-test/pred"
    _killed_resumed_and_in_place(net, volume, src, dst, _read_precomputed, killed_after=1)
    assert list((tmp_path / "cache" / "remote").glob("*/layer.znni-done"))
    layer = cloudvolume.CloudVolume(src, progress=False)
    layer.info["note"] = "re-aligned"  # the input changed: nothing is reused
    layer.commit_info()
    plan = znni.make_plan(net, (2, 4, 6), 2, "fft-pruned")
    assert infer_volume(net, src, dst, plan=plan, threads=2).blocks_skipped == 0
    with pytest.raises(ZnniError, match="done records live on this machine"):
        infer_volume(net, src, dst, plan=plan, client=object())
