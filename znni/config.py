"""Every knob of znni in one place: its environment variable, type, default and whether it
changes generated binaries (only those enter kernel cache keys)."""

from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .codegen.private_files import private_dir
from .errors import ZnniError
from .limits import MAX_THREADS


@dataclass(frozen=True)
class Knob:
    env: str
    doc: str
    affects_codegen: bool


KNOBS = {
    "cache_dir": Knob("ZNNI_CACHE_DIR", "kernel cache and tuning records", False),
    "cxx": Knob("ZNNI_CXX", "C++ compiler executable (default g++)", True),
    "cxxflags": Knob("ZNNI_CXXFLAGS", "replaces the default optimisation flags", True),
    "threads": Knob("ZNNI_THREADS", "worker threads per kernel (default: usable cores)", False),
    "keep_freed_memory": Knob("ZNNI_KEEP_FREED_MEMORY", "1: keep freed buffers in the process "
                              "for reuse (FFT layers 15-25 % faster, but heap fragmentation "
                              "can lift peak RSS ~20-35 % above the plan); 0 (default): return "
                              "them to the OS", False),
    "device": Knob("ZNNI_DEVICE", "device description (JSON) to plan with instead of measuring "
                   "this machine once", False),
    "nvcc": Knob("ZNNI_NVCC", "CUDA compiler for GPU kernels (default nvcc)", True),
    "nvcc_arch": Knob("ZNNI_CUDA_ARCH", "GPU architecture for nvcc -arch (default sm_90: "
                      "H100/H200)", True),
    "nvccflags": Knob("ZNNI_NVCCFLAGS", "replaces the default nvcc optimisation flags", True),
    "fft": Knob("ZNNI_FFT", "FFT passes: simd (default: generated SIMD kernels, no planning) "
                "or fftw (FFTW plans; also the fallback for lengths with prime factors > 7)",
                False),
    "fftw_effort": Knob("ZNNI_FFTW_EFFORT", "FFTW planner effort: FFTW_ESTIMATE, FFTW_MEASURE "
                        "(default) or FFTW_PATIENT; plans are remembered as wisdom", False),
    "fftw_timelimit": Knob("ZNNI_FFTW_TIMELIMIT", "seconds FFTW may spend planning one pass "
                           "(default 0.05; each pass plans one slab, once per process)", False),
    "fftw_library": Knob("ZNNI_FFTW_LIBRARY", "libfftw3f shared library to use (default: the "
                         "system's, else the one bundled with pyfftw)", False),
}

FFT_BACKENDS = ("simd", "fftw")
FFTW_EFFORTS = ("FFTW_ESTIMATE", "FFTW_MEASURE", "FFTW_PATIENT", "FFTW_EXHAUSTIVE")


def fft_backend() -> str:
    value = os.environ.get(KNOBS["fft"].env, "simd").strip().lower()
    if value not in FFT_BACKENDS:
        raise ZnniError(f"ZNNI_FFT={value!r} is not an FFT backend",
                        f"use one of {', '.join(FFT_BACKENDS)}")
    return value


def fftw_effort() -> str:
    value = os.environ.get(KNOBS["fftw_effort"].env, "FFTW_MEASURE")
    if value not in FFTW_EFFORTS:
        raise ZnniError(f"ZNNI_FFTW_EFFORT={value!r} is not an FFTW planner effort",
                        f"use one of {', '.join(FFTW_EFFORTS)}")
    return value


def fftw_timelimit() -> float:
    text = os.environ.get(KNOBS["fftw_timelimit"].env, "0.05")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ZnniError(f"ZNNI_FFTW_TIMELIMIT={text!r} is not a positive number of seconds",
                        "e.g. ZNNI_FFTW_TIMELIMIT=0.05")
    return value


def fftw_library() -> str | None:
    return os.environ.get(KNOBS["fftw_library"].env) or None


def keep_freed_memory() -> bool:
    return os.environ.get(KNOBS["keep_freed_memory"].env, "0").strip() in ("1", "true", "yes")


def device_file() -> str | None:
    return os.environ.get(KNOBS["device"].env) or None


def cache_dir() -> Path:
    """The private (0700) per-user directory holding compiled kernels, tuning records and
    FFTW wisdom; a ZnniError if others could write it (znni runs the code it finds there)."""
    env = os.environ.get(KNOBS["cache_dir"].env)
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "znni"
    return private_dir(path.absolute())


def cxx() -> str:
    return os.environ.get(KNOBS["cxx"].env, "g++")


def cxxflags() -> list[str]:
    """Optimisation flags; ``ZNNI_CXXFLAGS`` replaces them (e.g. for a portable build)."""
    env = os.environ.get(KNOBS["cxxflags"].env)
    if env is not None:
        return shlex.split(env)
    return ["-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno"]


def nvcc() -> str:
    return os.environ.get(KNOBS["nvcc"].env, "nvcc")


def nvcc_arch() -> str:
    value = os.environ.get(KNOBS["nvcc_arch"].env, "sm_90")
    if not re.fullmatch(r"(sm|compute)_[0-9]{2,3}[af]?", value):
        raise ZnniError(f"ZNNI_CUDA_ARCH={value!r} is not a CUDA architecture",
                        "use e.g. sm_90 (H100/H200) or sm_80 (A100)")
    return value


def nvccflags() -> list[str]:
    """nvcc optimisation flags; ``ZNNI_NVCCFLAGS`` replaces them."""
    env = os.environ.get(KNOBS["nvccflags"].env)
    return shlex.split(env) if env is not None else ["-O3"]


def default_threads() -> int:
    """Threads per kernel: ``ZNNI_THREADS`` or the cores this process may run on.

    Deliberately not OMP_NUM_THREADS: Dask sets it to 1 in workers, and znni passes an explicit
    thread count to every kernel call instead of relying on the OpenMP environment.
    """
    env = os.environ.get(KNOBS["threads"].env)
    if env:
        try:
            value: object = int(env)
        except ValueError:
            value = env
        return check_threads(value, KNOBS["threads"].env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        import psutil  # here, not at the top: `import znni` (via the allocator) imports config

        return max(1, psutil.cpu_count(logical=True) or 1)


def check_threads(value: object, what: str = "threads") -> int:
    """``value`` as a thread count from 1 to :data:`~znni.limits.MAX_THREADS` (why that bound:
    see there), else a ZnniError naming ``what`` (an option or variable)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        got = (repr(value) if isinstance(value, int) and value.bit_length() <= 64
               else repr(value[:40]) if isinstance(value, str) else type(value).__name__)
        raise ZnniError(f"{what} must be a whole number from 1 to {MAX_THREADS}, got {got}",
                        "omit it to use the cores this process may run on")
    return value


def available_memory() -> int:
    """Bytes of RAM this process can use now: psutil's available, capped by a cgroup limit."""
    import psutil  # here, not at the top: `import znni` (via the allocator) imports config

    avail = int(psutil.virtual_memory().available)
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
         "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit_text = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text.isdigit():
            avail = min(avail, int(limit_text) - usage)
        break
    return max(0, avail)


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6,
          "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40,
          "tb": 10**12, "tib": 1 << 40}


def parse_bytes(value: int | str) -> int:
    """Bytes from an int or a string such as ``"4GiB"``, ``"512MiB"``, ``"1.5G"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        amount = value
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _UNITS:
            raise ZnniError(f"cannot read memory size {value!r}",
                            "write e.g. 4GiB, 512MiB or a number of bytes")
        scaled = float(match.group(1)) * _UNITS[unit]
        if not math.isfinite(scaled) or scaled >= 2**63:
            raise ZnniError(f"memory size {str(value)[:40]!r} is too large", "e.g. 4GiB")
        amount = int(scaled)
    if amount <= 0:
        raise ZnniError(f"memory size must be positive, got {value!r}", "e.g. 4GiB")
    return amount
