"""The networks shipped with znni, found without importing numpy.

Separate from :mod:`znni.spec` so that ``znni --help`` can name them while importing only click.
"""

from __future__ import annotations

from pathlib import Path

#: Where the bundled network specs (``NAME.json``) live.
NETS_DIR = Path(__file__).parent / "data"


def bundled_nets() -> list[str]:
    """Names of the networks shipped with znni (``znni.load("n337")``)."""
    return sorted(p.stem for p in NETS_DIR.glob("*.json"))
