"""Volumes with world coordinates: Neuroglancer precomputed layers (through CloudVolume) and
OME-Zarr images (0.4 read, 0.5 read and written), behind the array interface of
:mod:`.storage` (docs/design.md §8).

Both carry a :class:`Grid` — the voxel size in nanometres and the voxel offset of voxel 0 — so
that an output lands where its input was: the job sets the output's offset to the input voxel at
the centre of output voxel 0's field of view. Specs:

- ``precomputed://file:///path/to/layer`` (``#mip=N``: that scale; outputs are written at
  one scale). CloudVolume indexes ``(x, y, z, c)``; the adapter presents ``(c, z, y, x)``.
- ``/path/to/image.ome.zarr`` (``#mip=N``: that multiscale level): axes ``[c,] z, y, x``, the
  scale and translation of the level's coordinate transformations (translation / scale must be
  whole voxels).
- ``/path/to/container.n5/dataset`` (through tensorstore: zarr-python 3 has no N5 support):
  dimensions ``x, y, z[, c]`` as N5 orders them, the grid in the ``resolution`` and ``offset``
  (world units) attributes as funlib/daisy write them.

Remote layers (``gs://``, ``s3://``, wherever CloudVolume has credentials) are read and written
the same way; their lock and done records live in a stand-in folder of this machine's cache
(:func:`local_path`), and their content identity is their info file's (:func:`remote_identity`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import config
from ..errors import ShapeError, ZnniError
from ..spec import Vec3

PRECOMPUTED = "precomputed://"
_MIP = re.compile(r"#mip=(\d+)$")


@dataclass(frozen=True)
class Grid:
    """Where voxels lie in the world: nanometres per voxel and the offset of voxel 0 (in
    voxels), both (z, y, x)."""

    resolution: tuple[float, float, float]
    offset: Vec3

    def shifted(self, by: Vec3) -> Grid:
        return Grid(self.resolution, (self.offset[0] + by[0], self.offset[1] + by[1],
                                      self.offset[2] + by[2]))


UNIT_GRID = Grid((1.0, 1.0, 1.0), (0, 0, 0))


def split_mip(spec: str) -> tuple[str, int]:
    """``spec`` without its ``#mip=N`` suffix, and N (0 without one)."""
    match = _MIP.search(spec)
    return (spec[:match.start()], int(match.group(1))) if match else (spec, 0)


def is_remote(spec: str) -> bool:
    """Whether ``spec`` is a precomputed layer in an object store (``gs://``, ``s3://``, …)."""
    base = split_mip(spec)[0]
    return base.startswith(PRECOMPUTED) and not base[len(PRECOMPUTED):].startswith("file://")


def local_path(spec: str) -> Path:
    """The directory of a local precomputed layer, an OME-Zarr image or an N5 dataset; for a
    remote layer, its stand-in on this machine: a folder of the cache named by the URL's
    digest, where the output's lock and done records live (made on first use)."""
    base = split_mip(spec)[0]
    if not base.startswith(PRECOMPUTED):
        return Path(base)
    url = base[len(PRECOMPUTED):]
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    home = config.cache_dir() / "remote" / hashlib.sha256(url.encode()).hexdigest()[:24]
    (home / "layer").mkdir(parents=True, exist_ok=True)
    return home / "layer"


def remote_identity(spec: str) -> str:
    """What stands for a remote layer's content: a digest of its URL and info file (chunks
    are not listed: that would read the whole layer's metadata)."""
    cloudfiles = _require("cloudfiles", "layers")
    base = split_mip(spec)[0][len(PRECOMPUTED):]
    info = cloudfiles.CloudFiles(base).get("info") or b""
    return hashlib.sha256(base.encode() + b"\0" + info).hexdigest()


def precomputed_exists(spec: str) -> bool:
    """Whether the layer has an info file (local or remote)."""
    cloudfiles = _require("cloudfiles", "layers")
    return bool(cloudfiles.CloudFiles(split_mip(spec)[0][len(PRECOMPUTED):]).exists("info"))


def remove_layer(spec: str) -> None:
    """Delete every file of a layer this run created (local or remote)."""
    cloudfiles = _require("cloudfiles", "layers")
    files = cloudfiles.CloudFiles(split_mip(spec)[0][len(PRECOMPUTED):])
    files.delete(list(files.list()))


def _require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ZnniError(f"this format needs the Python package {module!r}",
                        f'install it: pip install "znni[{extra}]"') from None


class _Reversed:
    """A store indexed ``(x, y, z, c)`` from ``origin`` (CloudVolume; N5 through tensorstore)
    as a ``(C, Z, Y, X)`` array indexed from 0; ``read(box)``/``write(box, data)`` take the
    store's own (x, y, z) slices."""

    def __init__(self, shape_xyzc: tuple[int, ...], dtype: Any, origin: Vec3, grid: Grid,
                 read: Callable[[tuple[slice, ...]], Any],
                 write: Callable[[tuple[slice, ...], np.ndarray], None]) -> None:
        x, y, z, c = (int(n) for n in shape_xyzc)
        self.shape = (c, z, y, x)
        self.dtype = np.dtype(dtype)
        self.origin, self.grid = origin, grid
        self._read, self._write = read, write

    def _box(self, key: tuple[slice, ...]) -> tuple[slice, ...]:
        """The store's (x, y, z) slices of our (c, z, y, x) ``key``."""
        spatial = [key[1 + a].indices(self.shape[1 + a])[:2] for a in range(3)]
        return tuple(slice(self.origin[a] + lo, self.origin[a] + hi)
                     for a, (lo, hi) in reversed(list(enumerate(spatial))))

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        cut = np.asarray(self._read(self._box(key)))  # (x, y, z, c)
        out: np.ndarray = cut.transpose(3, 2, 1, 0)[key[0]]
        return out

    def __setitem__(self, key: tuple[slice, ...], data: np.ndarray) -> None:
        self._write(self._box(key), np.ascontiguousarray(data.transpose(3, 2, 1, 0)))


def _precomputed(volume: Any) -> _Reversed:
    ox, oy, oz = (int(n) for n in volume.voxel_offset)
    rx, ry, rz = (float(r) for r in volume.resolution)
    return _Reversed(tuple(volume.shape), volume.dtype, (oz, oy, ox),
                     Grid((rz, ry, rx), (oz, oy, ox)), volume.__getitem__, volume.__setitem__)


def open_precomputed(spec: str, writable: bool = False) -> _Reversed:
    cloudvolume = _require("cloudvolume", "layers")
    base, mip = split_mip(spec)
    try:
        volume = cloudvolume.CloudVolume(base, mip=mip, progress=False, fill_missing=False,
                                         bounded=True, non_aligned_writes=writable)
    except Exception as exc:  # noqa: BLE001 - CloudVolume's own errors: name the layer
        raise ZnniError(f"cannot open precomputed layer {spec!r}: {_first_line(exc)}",
                        "check the path and the mip (its info file lists the scales)") from None
    return _precomputed(volume)


def create_precomputed(spec: str, shape: tuple[int, int, int, int], dtype: str,
                       chunks: tuple[int, int, int, int], grid: Grid) -> _Reversed:
    """A new layer of one scale (raw encoding), chunked like the job's blocks."""
    cloudvolume = _require("cloudvolume", "layers")
    base = _one_scale(spec)
    c, z, y, x = shape
    info = cloudvolume.CloudVolume.create_new_info(
        num_channels=c, layer_type="image", data_type=dtype, encoding="raw",
        resolution=list(reversed(grid.resolution)), voxel_offset=list(reversed(grid.offset)),
        chunk_size=[min(chunks[3], x), min(chunks[2], y), min(chunks[1], z)],
        volume_size=[x, y, z])
    volume = cloudvolume.CloudVolume(base, info=info, progress=False, non_aligned_writes=True)
    volume.commit_info()
    return _precomputed(volume)


def is_n5(spec: str) -> bool:
    """Whether ``spec`` names an N5 dataset: ``container.n5`` or ``container.n5/dataset``."""
    return re.search(r"\.n5(/|$)", split_mip(spec)[0].lower()) is not None


def n5_container(spec: str) -> Path:
    """The ``*.n5`` directory holding the dataset ``spec``."""
    path = local_path(spec)
    return next(p for p in (path, *path.parents) if p.suffix.lower() == ".n5")


def _n5_store(path: Path, writable: bool, metadata: dict[str, Any] | None = None) -> Any:
    tensorstore = _require("tensorstore", "layers")
    spec: dict[str, Any] = {"driver": "n5", "kvstore": {"driver": "file", "path": str(path)}}
    if metadata is not None:
        spec |= {"metadata": metadata, "create": True}
    return tensorstore.open(spec, read=True, write=writable).result()


def _n5_adapter(store: Any, path: Path) -> _Reversed:
    """An N5 dataset (dimensions ``x, y, z[, c]`` as N5 orders them) with its grid from the
    ``resolution`` and ``offset`` attributes (x, y, z; the offset in world units), as
    funlib/daisy write them."""
    attrs = json.loads((path / "attributes.json").read_text())
    rx, ry, rz = (float(r) for r in attrs.get("resolution", (1, 1, 1))[:3])
    ox, oy, oz = (float(o) for o in attrs.get("offset", (0, 0, 0)))
    grid = _world_grid(f"N5 dataset {str(path)!r}", (rz, ry, rx), [oz, oy, ox])
    channels = len(store.shape) == 4
    if len(store.shape) not in (3, 4):
        raise ShapeError(f"N5 dataset {str(path)!r} has {len(store.shape)} dimensions",
                         "give x, y, z or x, y, z, c datasets")

    def read(box: tuple[slice, ...]) -> np.ndarray:
        data: np.ndarray = store[box].read().result()
        return data if channels else data[..., None]

    def write(box: tuple[slice, ...], data: np.ndarray) -> None:
        store[box].write(data).result()

    shape = tuple(store.shape) if channels else (*store.shape, 1)
    return _Reversed(shape, store.dtype.numpy_dtype, (0, 0, 0), grid, read, write)


def open_n5(spec: str, writable: bool = False) -> _Reversed:
    path = local_path(spec)
    try:
        store = _n5_store(path, writable)
    except Exception as exc:  # noqa: BLE001 - tensorstore's errors: name the dataset
        raise ZnniError(f"cannot open N5 dataset {spec!r}: {_first_line(exc)}",
                        "give a container.n5/dataset path with an attributes.json") from None
    return _n5_adapter(store, path)


def create_n5(spec: str, shape: tuple[int, int, int, int], dtype: str,
              chunks: tuple[int, int, int, int], grid: Grid) -> _Reversed:
    """A new N5 dataset ``x, y, z, c`` (gzip), chunked like the job's blocks, its grid in the
    ``resolution``/``offset``/``units`` attributes."""
    path = local_path(spec)
    c, z, y, x = shape
    metadata = {"dimensions": [x, y, z, c], "dataType": dtype,
                "blockSize": [min(chunks[3], x), min(chunks[2], y), min(chunks[1], z), c],
                "compression": {"type": "gzip", "level": 1}}
    store = _n5_store(path, True, metadata)
    root = n5_container(spec) / "attributes.json"
    if not root.exists():  # a new container: say which N5 version it is
        root.write_text(json.dumps({"n5": "2.5.1"}))
    attrs = json.loads((path / "attributes.json").read_text())
    resolution = list(reversed(grid.resolution))
    # tensorstore reads resolution and units as one entry per dimension (the channel's: 1, "")
    attrs |= {"resolution": [*resolution, 1.0], "units": ["nm", "nm", "nm", ""],
              "offset": [o * r for o, r in zip(reversed(grid.offset), resolution, strict=True)]}
    tmp = path / ".attributes.json.znni"
    tmp.write_text(json.dumps(attrs))
    tmp.replace(path / "attributes.json")
    return _n5_adapter(store, path)


def open_ome(spec: str, writable: bool = False) -> tuple[Any, Grid]:
    """The level's array (3-D or 4-D with a leading channel axis) and its grid."""
    zarr = _require("zarr", "io")
    base, level = split_mip(spec)
    try:
        group = zarr.open_group(base, mode="r+" if writable else "r")
        attrs = dict(group.attrs)
        meta = attrs.get("ome", attrs)
        scales = meta["multiscales"][0]
        dataset = scales["datasets"][level]
        array = group[dataset["path"]]
    except IndexError:
        raise ZnniError(f"OME-Zarr image {spec!r} has no level {level}",
                        "give a #mip=N that its multiscales list") from None
    except Exception as exc:  # noqa: BLE001 - zarr's errors, missing keys: name the image
        raise ZnniError(f"cannot read OME-Zarr image {spec!r}: {_first_line(exc)}",
                        "give an OME-Zarr image (a group with multiscales metadata)") from None
    names = [axis["name"] if isinstance(axis, dict) else axis for axis in scales["axes"]]
    if names[-3:] != ["z", "y", "x"] or len(names) - 3 not in (0, 1):
        raise ShapeError(f"OME-Zarr image {spec!r} has axes {names}",
                         "znni reads [c,] z, y, x images")
    scale, translation = [1.0] * len(names), [0.0] * len(names)
    for transform in [*scales.get("coordinateTransformations", []),
                      *dataset.get("coordinateTransformations", [])]:
        if transform["type"] == "scale":
            scale = [a * b for a, b in zip(scale, transform["scale"], strict=True)]
        elif transform["type"] == "translation":
            translation = [a + b for a, b in zip(translation, transform["translation"],
                                                  strict=True)]
    resolution = (float(scale[-3]), float(scale[-2]), float(scale[-1]))
    return array, _world_grid(f"OME-Zarr image {spec!r}", resolution, translation[-3:])


def create_ome(spec: str, shape: tuple[int, int, int, int], dtype: str,
               chunks: tuple[int, int, int, int], grid: Grid) -> Any:
    """A new OME-Zarr 0.5 image of one level (``0``), axes c, z, y, x in nanometres."""
    zarr = _require("zarr", "io")
    base = _one_scale(spec)
    group = zarr.open_group(base, mode="w-", zarr_format=3)
    array = group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    space = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "name": Path(base).name, "axes": [{"name": "c", "type": "channel"}, *space],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, *grid.resolution]},
            {"type": "translation", "translation": [
                0.0, *(grid.offset[a] * grid.resolution[a] for a in range(3))]}]}]}]}
    return array


def _world_grid(what: str, resolution: tuple[float, float, float],
                origin: list[float]) -> Grid:
    """The grid of voxels of ``resolution`` whose voxel 0 lies at world ``origin`` (both
    z, y, x); a ShapeError if the origin is not on whole voxels."""
    voxels = [origin[a] / resolution[a] for a in range(3)]
    if any(abs(v - round(v)) > 1e-6 for v in voxels):
        raise ShapeError(f"{what} starts at {origin} nm, not on whole voxels of "
                         f"{list(resolution)} nm", "znni keeps outputs on the input's voxel grid")
    return Grid(resolution, (round(voxels[0]), round(voxels[1]), round(voxels[2])))


def _one_scale(spec: str) -> str:
    """``spec`` of a new output, which has one scale: a ``#mip`` suffix is refused."""
    base, mip = split_mip(spec)
    if mip:
        raise ZnniError(f"{spec!r}: outputs are written at one scale", "drop the #mip suffix")
    return base


def _first_line(exc: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
