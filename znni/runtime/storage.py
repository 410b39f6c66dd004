"""Volumes on disk behind one small interface: open an input, create or reopen an output.

Paths pick the format: ``*.npy`` (memory-mapped), ``*.zarr`` (zarr v3 directory; the default
for outputs: chunked, compressed), ``*.h5``/``*.hdf5`` with ``:/dataset`` (HDF5), ``*.tif``/
``*.tiff`` (TIFF stacks, input only; read lazily through tifffile's zarr view), and with world
coordinates (:mod:`.backends`) ``*.ome.zarr`` (OME-Zarr), ``container.n5/dataset`` (N5,
through tensorstore) and ``precomputed://file:///…`` (Neuroglancer precomputed, through
CloudVolume). zarr, h5py and tifffile are optional (``pip install "znni[io]"``), and so are
cloud-volume and tensorstore (``"znni[layers]"``); a missing one is named in the error.

Inputs are ``(Z, Y, X)`` or ``(C, Z, Y, X)`` of uint8, uint16 or float32 and are presented as
4-D. Outputs are ``(C, Z, Y, X)`` float32 or uint8 (values in [0, 1] scaled to 0..255), chunked
by the block planner's blocks so that every block writes whole chunks.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ShapeError, ZnniError
from ..primitives.base import release_tail
from .backends import (
    PRECOMPUTED,
    UNIT_GRID,
    Grid,
    create_n5,
    create_ome,
    create_precomputed,
    is_n5,
    is_remote,
    local_path,
    n5_container,
    open_n5,
    open_ome,
    open_precomputed,
    precomputed_exists,
    remote_identity,
    remove_layer,
    split_mip,
)
from .identity import content_identity

INPUT_DTYPES = (np.uint8, np.uint16, np.float32)
OUTPUT_DTYPES = ("float32", "uint8")


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ZnniError(f"reading or writing this format needs the Python package {module!r}",
                        'install the I/O extra: pip install "znni[io]"') from None


def _split_h5(spec: str) -> tuple[Path, str]:
    path, _, dataset = spec.partition(":")
    if not dataset:
        raise ZnniError(f"HDF5 volume {spec!r} names no dataset", "write FILE.h5:/dataset")
    return Path(path), dataset


def _kind(spec: str) -> str:
    if spec.startswith(PRECOMPUTED):
        return "precomputed"
    if split_mip(spec)[0].lower().rstrip("/").endswith(".ome.zarr"):
        return "ome"
    if is_n5(spec):
        return "n5"
    path = spec.partition(":")[0] if ".h5:" in spec or ".hdf5:" in spec else spec
    suffix = Path(path).suffix.lower()
    kinds = {".npy": "npy", ".zarr": "zarr", ".h5": "h5", ".hdf5": "h5", ".tif": "tiff",
             ".tiff": "tiff"}
    if suffix not in kinds:
        raise ZnniError(f"cannot tell the format of {spec!r}",
                        "use .npy, .zarr, .ome.zarr, FILE.n5/dataset, FILE.h5:/dataset, "
                        ".tif/.tiff or precomputed://file:///…")
    return kinds[suffix]


def volume_path(spec: str) -> Path:
    """The file (npy, TIFF, HDF5: the whole file, whatever the dataset) or directory (zarr,
    OME-Zarr, a precomputed layer) holding the volume ``spec``."""
    kind = _kind(spec)
    if kind in ("precomputed", "ome", "n5"):
        return local_path(spec)
    return _split_h5(spec)[0] if kind == "h5" else Path(spec)


def ledger_folder(spec: str) -> Path:
    """Where the done records of an output live: beside it (per dataset for HDF5 and N5, beside
    the file or container)."""
    if _kind(spec) in ("h5", "n5"):
        path, dataset = _file_and_dataset(spec)
        return path.with_name(f"{path.name}.{dataset.strip('/').replace('/', '.')}.znni-done")
    path = volume_path(spec)
    return path.with_name(f"{path.name}.znni-done")


def lock_path(spec: str) -> Path:
    """The lock file of an output: beside it, per file (two HDF5 datasets of one file cannot
    be written at once either; N5: per container, which may not exist yet), and outside the
    ledger folder, which is cleared and rebuilt."""
    path = _file_and_dataset(spec)[0] if _kind(spec) == "n5" else volume_path(spec)
    return path.with_name(f"{path.name}.znni-lock")


def _file_and_dataset(spec: str) -> tuple[Path, str]:
    """An HDF5 file or N5 container, and the dataset's path in it."""
    if _kind(spec) == "h5":
        return _split_h5(spec)
    container = n5_container(spec)
    return container, str(local_path(spec).relative_to(container)) or "root"


@dataclass
class InputVolume:
    """A 4-D ``(C, Z, Y, X)`` view of an array on disk (read by slicing)."""

    array: Any
    path: str
    grid: Grid | None = None  # world coordinates, where the format has them

    @property
    def shape(self) -> tuple[int, int, int, int]:
        s = tuple(self.array.shape)
        return (1, *s) if len(s) == 3 else s

    @property
    def dtype(self) -> np.dtype:
        dtype: np.dtype = np.dtype(self.array.dtype)
        return dtype

    def read(self, start: tuple[int, ...], stop: tuple[int, ...]) -> np.ndarray:
        """Voxels [start, stop) of every channel, as ``(C, z, y, x)`` in the stored dtype."""
        box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        if len(self.array.shape) == 3:
            return np.asarray(self.array[box])[None]
        return np.asarray(self.array[(slice(None), *box)])


def open_input(spec: str) -> InputVolume:
    """Open ``spec`` for reading; checks existence, rank and dtype."""
    kind = _kind(spec)
    path = volume_path(spec)
    if not path.exists():
        raise ZnniError(f"input volume {spec!r} not found", "check the --input path")
    grid = None
    try:
        if kind == "precomputed":
            array: Any = open_precomputed(spec)
            grid = array.grid
        elif kind == "ome":
            array, grid = open_ome(spec)
        elif kind == "n5":
            array = open_n5(spec)
            grid = array.grid
        elif kind == "npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        elif kind == "zarr":
            array = _require("zarr").open_array(str(path), mode="r")
        elif kind == "h5":
            h5py = _require("h5py")
            dataset = _split_h5(spec)[1]
            handle = h5py.File(path, "r")
            if dataset not in handle:
                raise ZnniError(f"HDF5 file {str(path)!r} has no dataset {dataset!r}",
                                f"datasets there: {', '.join(_h5_datasets(handle)) or 'none'}")
            array = handle[dataset]
        else:
            tifffile = _require("tifffile")
            zarr = _require("zarr")
            array = zarr.open_array(tifffile.imread(str(path), aszarr=True), mode="r")
    except ZnniError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader has its own errors: name the file
        raise ZnniError(f"cannot read input volume {spec!r}: {exc}",
                        "give a .npy, .zarr, FILE.h5:/dataset or TIFF volume") from None
    volume = InputVolume(array, spec, grid)
    if len(array.shape) not in (3, 4):
        raise ShapeError(f"input volume {spec!r} has {len(array.shape)} dimensions",
                         "give (Z,Y,X) or (C,Z,Y,X)")
    if volume.dtype not in [np.dtype(d) for d in INPUT_DTYPES]:
        raise ShapeError(f"input volume {spec!r} has dtype {volume.dtype}",
                         "give uint8, uint16 or float32 voxels")
    return volume


def _h5_datasets(handle: Any) -> list[str]:
    names: list[str] = []
    handle.visit(lambda name: names.append("/" + name))
    return names


@dataclass
class OutputVolume:
    """A ``(C, Z, Y, X)`` array on disk that blocks write whole chunks of."""

    array: Any
    path: str
    handle: Any = None  # the HDF5 file, flushed after each block
    created: bool = False  # by this open_output call (not there before)

    def write(self, start: tuple[int, ...], data: np.ndarray) -> None:
        box = tuple(slice(a, a + n) for a, n in zip(start, data.shape[1:], strict=True))
        self.array[(slice(None), *box)] = data

    def flush(self) -> None:
        """Make every written block durable before it is recorded as done."""
        if isinstance(self.array, np.memmap):
            self.array.flush()
        if self.handle is not None:
            self.handle.flush()

    def close(self) -> None:
        self.flush()
        if self.handle is not None:
            self.handle.close()


def release_pages(array: Any) -> None:
    """Drop the pages of a memory-mapped ``.npy`` (flushed first if writable) from this
    process: they stay in the page cache, but no longer count in its resident set, which
    otherwise grows by every block read or written until it holds both volumes (other
    formats: nothing to do)."""
    if isinstance(array, np.memmap) and array.size:
        if array.flags.writeable:
            array.flush()
        release_tail(array.reshape(-1), 0)


def check_output_spec(spec: str, dtype: str) -> None:
    """What can be said of an output before touching the disk: format, dtype, directory."""
    if dtype not in OUTPUT_DTYPES:
        raise ZnniError(f"output dtype {dtype!r} is not supported",
                        f"use one of {', '.join(OUTPUT_DTYPES)}")
    if _kind(spec) == "tiff":
        raise ZnniError("TIFF is an input format only", "write the output as .zarr")
    parent = (n5_container(spec) if _kind(spec) == "n5" else volume_path(spec)).parent
    if not parent.is_dir():
        raise ZnniError(f"output directory {str(parent)!r} does not exist", "create it first")


def open_output(spec: str, shape: tuple[int, int, int, int], dtype: str,
                chunks: tuple[int, int, int, int], grid: Grid | None = None) -> OutputVolume:
    """Create ``spec``, or reopen it if it already holds an array of exactly this shape and
    dtype (a resumed run). Anything else there is an error, and is left untouched. ``grid``:
    the output's world coordinates, for the formats that keep them (default: 1 nm voxels at
    the origin)."""
    check_output_spec(spec, dtype)
    kind, path = _kind(spec), volume_path(spec)
    existing = _open_existing(spec, kind, path)
    if existing is not None:
        found = (tuple(existing.array.shape), str(np.dtype(existing.array.dtype)))
        if found != (shape, dtype):
            raise ZnniError(f"output {spec!r} exists with shape {list(found[0])} and dtype "
                            f"{found[1]}; this run writes {list(shape)} {dtype}",
                            "choose another --output, or delete the old one")
        return existing
    if kind == "precomputed":
        return OutputVolume(create_precomputed(spec, shape, dtype, chunks, grid or UNIT_GRID),
                            spec, created=True)
    if kind == "ome":
        return OutputVolume(create_ome(spec, shape, dtype, chunks, grid or UNIT_GRID), spec,
                            created=True)
    if kind == "n5":
        return OutputVolume(create_n5(spec, shape, dtype, chunks, grid or UNIT_GRID), spec,
                            created=True)
    if kind == "npy":
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        return OutputVolume(array, spec, created=True)
    if kind == "zarr":
        zarr = _require("zarr")
        array = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=dtype,
                                  fill_value=0, overwrite=False)
        return OutputVolume(array, spec, created=True)
    h5py = _require("h5py")
    handle = h5py.File(path, "a")
    dataset = _split_h5(spec)[1]
    # HDF5 refuses chunks larger than the array (a one-block volume); zarr takes them
    fitted = tuple(min(c, n) for c, n in zip(chunks, shape, strict=True))
    array = handle.create_dataset(dataset, shape=shape, dtype=dtype, chunks=fitted,
                                  compression="gzip", compression_opts=1)
    return OutputVolume(array, spec, handle, created=True)


def input_identity(spec: str) -> str:
    """What stands for the content of the volume ``spec`` in a job's identity
    (:func:`~znni.runtime.identity.content_identity` of its files; a remote layer's info)."""
    if is_remote(spec):
        return remote_identity(spec)
    return content_identity(volume_path(spec))


def remove_output(spec: str, whole_file: bool) -> None:
    """Delete an output this run created and no block has filled: its file or zarr directory
    (``whole_file``; through a symbolic link that was there, the file it made), its layer's
    files (precomputed, remote too), or only its dataset in an HDF5 file that was there before
    the run."""
    if _kind(spec) == "precomputed":
        remove_layer(spec)
        return
    path = volume_path(spec).resolve()
    if _kind(spec) == "h5" and not whole_file:
        with _require("h5py").File(path, "a") as handle:
            handle.pop(_split_h5(spec)[1], None)
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _open_existing(spec: str, kind: str, path: Path) -> OutputVolume | None:
    if not (precomputed_exists(spec) if kind == "precomputed" else path.exists()):
        return None
    try:
        if kind == "precomputed":
            return OutputVolume(open_precomputed(spec, writable=True), spec)
        if kind == "ome":
            return OutputVolume(open_ome(spec, writable=True)[0], spec)
        if kind == "n5":
            return OutputVolume(open_n5(spec, writable=True), spec)
        if kind == "npy":
            return OutputVolume(np.load(path, mmap_mode="r+", allow_pickle=False), spec)
        if kind == "zarr":
            return OutputVolume(_require("zarr").open_array(str(path), mode="r+"), spec)
        handle = _require("h5py").File(path, "a")
        dataset = _split_h5(spec)[1]
        if dataset not in handle:
            handle.close()
            return None  # a new dataset in an existing file
        return OutputVolume(handle[dataset], spec, handle)
    except ZnniError:
        raise
    except Exception as exc:  # noqa: BLE001 - zarr/h5py/numpy each raise their own errors
        raise ZnniError(f"output {spec!r} exists and is not a readable volume ({exc})",
                        "choose another --output, or delete the old one") from None
