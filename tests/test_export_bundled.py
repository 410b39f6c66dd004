"""The bundled nets exported: a plain plan of ``tiny``, and ``aniso2d3d`` with its last pool as a
max filter and the dilated conv after it planned as pruned FFT (exported as direct, dilated)."""

from __future__ import annotations

from pathlib import Path

import pytest

import znni
from znni.export import export_plan

from .conftest import random_volume, relative_error
from .test_export import build_and_run, pytestmark  # noqa: F401  (same skip: needs make)


@pytest.mark.parametrize("name, patch, primitives, converted", [
    ("tiny", (4, 6, 2), None, ()),
    ("aniso2d3d", (1, 8, 4), {4: "maxfilter", 5: "fft-pruned"}, ((5, "fft-pruned"),)),
])
def test_bundled_net_export_equals_infer(tmp_path: Path, name: str, patch, primitives,
                                         converted) -> None:
    net = znni.load(name).random_weights(11)
    plan = znni.make_plan(net, patch, 1, primitives)
    result = export_plan(plan, net, tmp_path / "lib")
    assert result.converted == converted
    volume = random_volume((net.input_channels, *plan.input_patch), seed=12)
    ours = build_and_run(tmp_path / "lib", volume, (net.output_channels, *plan.output_patch))
    error = relative_error(ours, znni.infer(net, volume, plan=plan, threads=1))
    print(f"{name}: export vs infer {error:.1e}")
    assert error <= 1e-5
