"""nvcc as a small typed object (the GPU twin of :class:`GccToolchain`), and where cuFFT is.

Generated GPU sources (``*.cu.j2``) build two ways through the same cache: with
:class:`NvccToolchain` into a real CUDA module, and with the C++ toolchain through
``cuda_emulation.h`` for tests on machines without a GPU. The fingerprint holds everything that
changes an nvcc binary: nvcc's version, the flags, ``-arch`` and the cuFFT headers and library
linked (the templates' headers are hashed by the cache key itself).
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .. import config
from ..errors import CompileError
from .render import TEMPLATE_DIR
from .toolchain import run_compiler


@dataclass(frozen=True)
class Cufft:
    """cuFFT's header directory and shared library (``CUDA_HOME`` or the ``nvidia-cufft`` wheel)."""

    include_dir: Path
    library: Path


def find_cufft() -> Cufft | None:
    """cuFFT for compiling and linking FFT modules, or None: the system CUDA toolkit may lack
    it (nvcc without cufft.h), in which case pip's ``nvidia-cufft`` wheel provides both."""
    roots = [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    roots.append(Path("/usr/local/cuda"))
    candidates = [(r / "include", r / "lib64") for r in roots]
    for entry in sys.path:
        for sub in ("cu13", "cu12", "cufft"):
            base = Path(entry) / "nvidia" / sub
            candidates.append((base / "include", base / "lib"))
    for include, lib in candidates:
        if (include / "cufft.h").is_file():
            libraries = sorted(lib.glob("libcufft.so*"))
            if libraries:
                return Cufft(include, libraries[0])
    return None


@dataclass(frozen=True)
class NvccToolchain:
    """nvcc building one shared object per generated ``.cu`` source for one architecture."""

    nvcc: str
    arch: str
    opt_flags: tuple[str, ...]
    cufft: Cufft | None = None

    @classmethod
    def from_config(cls, with_cufft: bool = False) -> NvccToolchain:
        """From ZNNI_NVCC / ZNNI_CUDA_ARCH / ZNNI_NVCCFLAGS; ``with_cufft`` links cuFFT (a
        CompileError with a hint when it is not installed)."""
        cufft = None
        if with_cufft:
            cufft = find_cufft()
            if cufft is None:
                raise CompileError("cuFFT (cufft.h, libcufft.so) not found",
                                   "pip install nvidia-cufft, or set CUDA_HOME to a CUDA "
                                   "toolkit that has cuFFT")
        return cls(config.nvcc(), config.nvcc_arch(), tuple(config.nvccflags()), cufft)

    def compile_flags(self) -> list[str]:
        """Flags of a compile without linking (what the -Werror tests use)."""
        flags = [*self.opt_flags, "-x", "cu", "-std=c++17", f"-arch={self.arch}",
                 "-Xcompiler", "-fPIC,-Wall,-Wextra", "--Werror", "all-warnings",
                 f"-I{TEMPLATE_DIR}"]
        if self.cufft is not None:
            flags.append(f"-I{self.cufft.include_dir}")
        return flags

    def flags(self) -> list[str]:
        flags = [*self.compile_flags(), "-shared"]
        if self.cufft is not None:
            flags += [str(self.cufft.library), f"-Xlinker=-rpath,{self.cufft.library.parent}"]
        return flags

    def _run(self, args: list[str], hint: str) -> str:
        return run_compiler(self.nvcc, "CUDA compiler",
                            "install the CUDA toolkit or set ZNNI_NVCC", args, hint)

    @cached_property
    def fingerprint(self) -> str:
        """nvcc's version, the flags (``-arch`` among them) and the cuFFT header and library
        contents: a toolkit or architecture change is a different binary."""
        parts = [self._run(["--version"], "check ZNNI_NVCC"), " ".join(self.flags())]
        if self.cufft is not None:
            for path in (self.cufft.include_dir / "cufft.h", self.cufft.library):
                parts.append(hashlib.sha256(path.read_bytes()).hexdigest())
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def compile(self, source: Path, output: Path) -> None:
        self._run([*self.flags(), str(source), "-o", str(output)],
                  "this is a bug in znni's generated CUDA code or an unsupported nvcc; "
                  "report it with the output above (ZNNI_NVCCFLAGS can override flags)")

    def check(self, source: Path) -> None:
        """Compile without linking, every warning an error (the acceptance check)."""
        self._run([*self.compile_flags(), "-c", str(source), "-o", os.devnull],
                  "generated CUDA source does not compile warning-free")
