"""Start-up cost: ``import znni`` and ``znni --help`` import no heavy modules.

Checked by which modules a fresh interpreter has imported, never by timing (the machine is shared
and noisy): importing numpy, the planner or the kernels' toolchain is what made ``znni --help``
take most of a second.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import znni
from znni import cli
from znni.planner.search import EFFORT_LEVELS
from znni.planner.tuning import EFFORTS
from znni.precision import PRECISIONS
from znni.tta import TTA_MODES

#: Packages whose import alone costs a large fraction of a second.
HEAVY_PACKAGES = ("dask", "distributed", "matplotlib", "torch")
#: What the CLI imports only in the command that runs (a command's --help imports none of it).
LAZY_IN_CLI = ("numpy", "znni.planner", "znni.planner.search", "znni.runtime.infer",
               "znni.runtime.job", "znni.spec", "znni.synthetic", "znni.torch_dense")


def imported_after(code: str) -> set[str]:
    """Modules a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=120)
    return set(result.stdout.split())


def test_import_znni_imports_no_heavy_package() -> None:
    loaded = imported_after("import znni")
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY_PACKAGES) == []
    assert sorted(m for m in loaded if m in LAZY_IN_CLI) == []


@pytest.mark.parametrize("args", [["--help"], ["plan", "--help"], ["demo", "--help"],
                                  ["infer", "--help"], ["bench", "--help"]])
def test_cli_help_imports_only_click_and_cli(args: list[str]) -> None:
    loaded = imported_after(f"from znni.cli import main\n"
                            f"assert main({args!r}, standalone_mode=False) == 0")
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY_PACKAGES) == []
    assert sorted(m for m in loaded if m in LAZY_IN_CLI) == []


def test_public_names_resolve_lazily_to_their_definitions() -> None:
    from znni.errors import ZnniError
    from znni.planner import Device, Plan, make_plan, plan
    from znni.runtime.infer import infer
    from znni.runtime.job import infer_volume
    from znni.spec import Network, bundled_nets, load

    expected = {"Device": Device, "Network": Network, "Plan": Plan, "ZnniError": ZnniError,
                "__version__": znni.__version__, "bundled_nets": bundled_nets, "infer": infer,
                "infer_volume": infer_volume, "load": load, "make_plan": make_plan, "plan": plan}
    assert sorted(znni.__all__) == sorted(expected)
    namespace: dict[str, object] = {}
    exec("from znni import *", namespace)  # noqa: S102 - the star import is under test
    for name, value in expected.items():
        assert getattr(znni, name) is value
        assert namespace[name] is value
    assert set(znni.__all__) <= set(dir(znni))


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        znni.nonexistent  # noqa: B018 - the access is the test
    assert not hasattr(znni, "nonexistent")


def test_cli_effort_and_precision_choices_match_the_planner() -> None:
    # Literal copies in the CLI, so that building its options imports no planner.
    assert tuple(EFFORTS) == cli.TUNING_EFFORTS
    assert cli.EFFORT_LEVELS == EFFORT_LEVELS
    assert cli.PRECISIONS == PRECISIONS
    assert cli.TTA_MODES == TTA_MODES
