"""Typed errors that carry what went wrong and what to do about it.

Every error a user can provoke (bad spec, bad weights, bad volume, compiler failure) is a
:class:`ZnniError`; the CLI prints its message and hint and exits non-zero without a traceback.
Anything else escaping is a bug in znni.
"""

from __future__ import annotations

from typing import Any


class ZnniError(Exception):
    """Base class: ``message`` says what is wrong, ``hint`` what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message

    def __reduce__(self) -> tuple[type[ZnniError], tuple[str, str], dict[str, Any]]:
        """Pickle message, hint and extra fields: errors raised in a Dask worker reach the
        client whole (Exception's default pickling keeps only ``args``)."""
        return (self.__class__, (self.message, self.hint), self.__dict__)


class SpecError(ZnniError):
    """The network spec (JSON) is invalid."""


class WeightsError(ZnniError):
    """The weights (.npz) do not match the spec or hold non-finite values."""


class ShapeError(ZnniError):
    """A volume or patch has a shape the network cannot process."""


class VolumeError(ZnniError):
    """A volume on disk cannot be used as asked: the output is the input, another job is
    writing it, or its done records are not a folder."""


class NumericError(ZnniError):
    """The network's output holds NaN or Inf (float32 overflow: weights or input too large)."""


class PlanError(ZnniError):
    """A plan is inconsistent with its network, or impossible under the constraints."""


class CompileError(ZnniError):
    """The C++ compiler failed; carries the command and its output."""

    def __init__(self, message: str, hint: str = "", command: list[str] | None = None,
                 output: str = "") -> None:
        super().__init__(message, hint)
        self.command = command or []
        self.output = output

    def __str__(self) -> str:
        text = super().__str__()
        if self.command:
            text += "\n  command: " + " ".join(self.command)
        if self.output:
            tail = "\n".join(self.output.strip().splitlines()[-20:])
            text += "\n  compiler output (last lines):\n" + tail
        return text
