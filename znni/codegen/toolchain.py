"""The C++ compiler as a small typed object: its flags, its fingerprint and one compile call."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .. import config
from ..errors import CompileError
from .render import TEMPLATE_DIR


def run_compiler(compiler: str, what: str, install_hint: str, args: list[str], hint: str) -> str:
    """Run ``compiler`` (g++ or nvcc) and return its output; a CompileError carrying the
    command and the output when it is missing or fails."""
    exe = shutil.which(compiler)
    if exe is None:
        raise CompileError(f"{what} {compiler!r} not found", install_hint)
    # An argument list, no shell: the compiler (resolved above, e.g. ZNNI_CXX) and its flags
    # are the user's own configuration, and the source and output paths are znni's.
    proc = subprocess.run([exe, *args], capture_output=True, text=True,  # noqa: S603
                          stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise CompileError(f"{compiler} failed (exit {proc.returncode})", hint,
                           [compiler, *args], proc.stdout + proc.stderr)
    return proc.stdout + proc.stderr


@dataclass(frozen=True)
class GccToolchain:
    """g++ (or a compatible ``ZNNI_CXX``) building one shared object per source."""

    cxx: str
    opt_flags: tuple[str, ...]

    @classmethod
    def from_config(cls) -> GccToolchain:
        return cls(config.cxx(), tuple(config.cxxflags()))

    def flags(self) -> list[str]:
        return [*self.opt_flags, "-std=c++17", "-fPIC", "-shared", "-fopenmp",
                "-Wall", "-Wextra", f"-I{TEMPLATE_DIR}"]

    def _run(self, args: list[str], hint: str) -> str:
        return run_compiler(self.cxx, "C++ compiler",
                            "install g++ (e.g. apt-get install g++) or set ZNNI_CXX", args, hint)

    @cached_property
    def fingerprint(self) -> str:
        """Hash of everything about the compiler that changes binaries: its version, the flags
        and, for ``-march=native``, the target the flags resolve to on this CPU (a cache dir
        shared over NFS between different machines must not mix their binaries)."""
        parts = [self._run(["--version"], "check ZNNI_CXX"), " ".join(self.flags())]
        if any(f.startswith(("-march=native", "-mcpu=native")) for f in self.flags()):
            parts.append(self._run([*self.opt_flags, "-Q", "--help=target"],
                                   "check ZNNI_CXXFLAGS"))
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    @cached_property
    def vector_width(self) -> int:
        """float32 lanes per SIMD register with these flags (16 with AVX-512, 8 with AVX)."""
        macros = self._run([*self.opt_flags, "-dM", "-E", "-x", "c++", "/dev/null"],
                           "check ZNNI_CXXFLAGS")
        if "__AVX512F__" in macros:
            return 16
        if "__AVX__" in macros:
            return 8
        return 4

    def compile(self, source: Path, output: Path) -> None:
        self._run([*self.flags(), str(source), "-o", str(output)],
                  "this is a bug in znni's generated code or an unsupported compiler; "
                  "report it with the output above (ZNNI_CXXFLAGS can override flags)")
