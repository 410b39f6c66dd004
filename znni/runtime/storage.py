"""Volumes on disk behind one small interface: open an input, create or reopen an output.

Paths pick the format: ``*.npy`` (memory-mapped), ``*.zarr`` (zarr v3 directory; the default
for outputs: chunked, compressed), ``*.h5``/``*.hdf5`` with ``:/dataset`` (HDF5), ``*.tif``/
``*.tiff`` (TIFF stacks, input only; read lazily through tifffile's zarr view). zarr, h5py and
tifffile are optional (``pip install "znni[io]"``); a missing one is named in the error.

Inputs are ``(Z, Y, X)`` or ``(C, Z, Y, X)`` of uint8, uint16 or float32 and are presented as
4-D. Outputs are ``(C, Z, Y, X)`` float32 or uint8 (values in [0, 1] scaled to 0..255), chunked
by the block planner's blocks so that every block writes whole chunks.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ShapeError, ZnniError

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
    path = spec.partition(":")[0] if ".h5:" in spec or ".hdf5:" in spec else spec
    suffix = Path(path).suffix.lower()
    kinds = {".npy": "npy", ".zarr": "zarr", ".h5": "h5", ".hdf5": "h5", ".tif": "tiff",
             ".tiff": "tiff"}
    if suffix not in kinds:
        raise ZnniError(f"cannot tell the format of {spec!r}",
                        "use .npy, .zarr, FILE.h5:/dataset or .tif/.tiff")
    return kinds[suffix]


def ledger_folder(spec: str) -> Path:
    """Where the done records of an output live: beside it (per dataset for HDF5)."""
    if _kind(spec) == "h5":
        path, dataset = _split_h5(spec)
        return path.with_name(f"{path.name}.{dataset.strip('/').replace('/', '.')}.znni-done")
    path = Path(spec)
    return path.with_name(f"{path.name}.znni-done")


@dataclass
class InputVolume:
    """A 4-D ``(C, Z, Y, X)`` view of an array on disk (read by slicing)."""

    array: Any
    path: str

    @property
    def shape(self) -> tuple[int, int, int, int]:
        s = tuple(self.array.shape)
        return (1, *s) if len(s) == 3 else s  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def read(self, start: tuple[int, ...], stop: tuple[int, ...]) -> np.ndarray:
        """Voxels [start, stop) of every channel, as ``(C, z, y, x)`` in the stored dtype."""
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        if len(self.array.shape) == 3:
            return np.asarray(self.array[box])[None]
        return np.asarray(self.array[(slice(None), *box)])


def open_input(spec: str) -> InputVolume:
    """Open ``spec`` for reading; checks existence, rank and dtype."""
    kind = _kind(spec)
    path = _split_h5(spec)[0] if kind == "h5" else Path(spec)
    if not path.exists():
        raise ZnniError(f"input volume {spec!r} not found", "check the --input path")
    try:
        if kind == "npy":
            array: Any = np.load(path, mmap_mode="r", allow_pickle=False)
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
    except Exception as exc:  # every reader has its own errors: name the file, keep the cause
        raise ZnniError(f"cannot read input volume {spec!r}: {exc}",
                        "give a .npy, .zarr, FILE.h5:/dataset or TIFF volume") from None
    volume = InputVolume(array, spec)
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

    def write(self, start: tuple[int, ...], data: np.ndarray) -> None:
        box = tuple(slice(a, a + n) for a, n in zip(start, data.shape[1:]))
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


def open_output(spec: str, shape: tuple[int, int, int, int], dtype: str,
                chunks: tuple[int, int, int, int]) -> OutputVolume:
    """Create ``spec``, or reopen it if it already holds an array of exactly this shape and
    dtype (a resumed run). Anything else there is an error, and is left untouched."""
    if dtype not in OUTPUT_DTYPES:
        raise ZnniError(f"output dtype {dtype!r} is not supported",
                        f"use one of {', '.join(OUTPUT_DTYPES)}")
    kind = _kind(spec)
    if kind == "tiff":
        raise ZnniError("TIFF is an input format only", "write the output as .zarr")
    path = _split_h5(spec)[0] if kind == "h5" else Path(spec)
    if not path.parent.is_dir():
        raise ZnniError(f"output directory {str(path.parent)!r} does not exist",
                        "create it first")
    existing = _open_existing(spec, kind, path)
    if existing is not None:
        found = (tuple(existing.array.shape), str(np.dtype(existing.array.dtype)))
        if found != (shape, dtype):
            raise ZnniError(f"output {spec!r} exists with shape {list(found[0])} and dtype "
                            f"{found[1]}; this run writes {list(shape)} {dtype}",
                            "choose another --output, or delete the old one")
        return existing
    if kind == "npy":
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        return OutputVolume(array, spec)
    if kind == "zarr":
        zarr = _require("zarr")
        array = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=dtype,
                                  fill_value=0, overwrite=False)
        return OutputVolume(array, spec)
    h5py = _require("h5py")
    handle = h5py.File(path, "a")
    dataset = _split_h5(spec)[1]
    array = handle.create_dataset(dataset, shape=shape, dtype=dtype, chunks=chunks,
                                  compression="gzip", compression_opts=1)
    return OutputVolume(array, spec, handle)


def _open_existing(spec: str, kind: str, path: Path) -> OutputVolume | None:
    if not path.exists():
        return None
    try:
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
    except Exception as exc:
        raise ZnniError(f"output {spec!r} exists and is not a readable volume ({exc})",
                        "choose another --output, or delete the old one") from None
