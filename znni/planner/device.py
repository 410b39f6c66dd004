"""This machine's description, and descriptions read from files, checked against the primitives.

:class:`~znni.hardware.Device` is plain data (:mod:`znni.hardware`); here it meets the planner:
:func:`this_machine` measures it once per CPU model, thread count and znni version
(:mod:`.calibrate`) and caches it, and :func:`load_device` refuses corrections for primitives
this version does not have.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .. import config
from ..codegen.private_files import private_dir, read_private, write_private
from ..errors import PlanError
from ..hardware import Device, cpu_model
from ..primitives import PRIMITIVES
from ..version import __version__
from .calibrate import calibrate


def load_device(path: str | os.PathLike[str]) -> Device:
    """:meth:`Device.load`, refusing corrections named for primitives that do not exist."""
    device = Device.load(path)
    for name, _ in device.corrections:
        if name not in PRIMITIVES:
            raise PlanError(f"{path}: correction for unknown primitive {name!r}",
                            f"use one of {', '.join(PRIMITIVES)}")
    return device


#: Bumped whenever what calibration measures changes: older cached descriptions are re-measured.
CALIBRATION_VERSION = 8


def _cache_path(threads: int) -> Path:
    key = hashlib.sha256(f"{cpu_model()}|{threads}|{__version__}|{CALIBRATION_VERSION}|"
                         f"{config.cxxflags()}|{config.fft_backend()}".encode())
    return private_dir(config.cache_dir() / "devices") / f"{key.hexdigest()[:16]}.json"


def this_machine(threads: int | None = None) -> Device:
    """This machine's description: ``ZNNI_DEVICE`` if set, else measured once (a few
    seconds) and then read from the cache."""
    threads = threads or config.default_threads()
    if (device_file := config.device_file()) is not None:
        return load_device(device_file)
    path = _cache_path(threads)
    try:
        return Device.from_dict(json.loads(read_private(path)), str(path))
    except (OSError, ValueError, PlanError):
        pass
    device = calibrate(threads)
    write_private(path, device.to_json().encode())
    return device
