"""FFT layers exported as FFTW3 kernels (``--fftw``): built with make and with CMake against the
system libfftw3f, equal to znni.infer (whose FFT layers run through pyfftw)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import znni
from znni.cli import main
from znni.export import export_plan

from .conftest import net_from_layers, random_volume, relative_error
from .test_export import build_and_run


def _has_fftw() -> bool:
    cxx = shutil.which("g++")
    if cxx is None or shutil.which("make") is None:
        return False
    probe = subprocess.run([cxx, "-x", "c++", "-", "-o", "/dev/null", "-lfftw3f"],
                           input="#include <fftw3.h>\nint main() { return 0; }\n", text=True,
                           capture_output=True, check=False)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _has_fftw(), reason="needs make and FFTW3 (libfftw3-dev)")

# Odd image sizes (transforms rounded up), anisotropic kernels, 2 input channels, two pools
# (the second as a max filter, so layer 4 is a dilated FFT layer).
LAYERS = [{"type": "conv", "kernel": [3, 3, 1], "out_channels": 3, "activation": "relu"},
          {"type": "pool", "window": [1, 2, 2]},
          {"type": "conv", "kernel": [2, 3, 3], "out_channels": 4, "activation": "tanh"},
          {"type": "pool", "window": [2, 2, 2]},
          {"type": "conv", "kernel": [2, 1, 2], "out_channels": 2, "activation": "sigmoid"}]


def test_fftw_layers_equal_infer(tmp_path: Path) -> None:
    net = net_from_layers(LAYERS, input_channels=2, seed=3)
    plan = znni.make_plan(net, (2, 4, 8), 2, {0: "fft", 2: "fft-pruned", 3: "maxfilter",
                                              4: "fft"})
    result = export_plan(plan, net, tmp_path / "lib", fftw=True)
    assert result.converted == () and result.notes() == []
    assert "-lfftw3f" in (tmp_path / "lib" / "Makefile").read_text()
    batch = np.stack([random_volume((2, *plan.input_patch), seed=s) for s in (8, 9)])
    ours = build_and_run(tmp_path / "lib", batch, (2, net.output_channels, *plan.output_patch),
                         threads=2)
    for s in range(2):
        error = relative_error(ours[s], znni.infer(net, batch[s], plan=plan, threads=1))
        print(f"fftw export vs infer, sample {s}: {error:.1e}")
        assert error <= 1e-5


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cli_fftw_export_builds_with_cmake(tmp_path: Path) -> None:
    net = net_from_layers(LAYERS[:3], input_channels=1, seed=5)
    (tmp_path / "net.json").write_text(json.dumps(net.to_dict()))
    net.save_weights(tmp_path / "w.npz")
    plan = znni.make_plan(net, (3, 2, 4), 1, "fft")
    (tmp_path / "plan.json").write_text(plan.to_json())
    lib = tmp_path / "lib"
    run = CliRunner().invoke(main, ["export", str(tmp_path / "plan.json"), "--net",
                                    str(tmp_path / "net.json"), "--weights",
                                    str(tmp_path / "w.npz"), "--out", str(lib), "--fftw"])
    assert run.exit_code == 0 and "note" not in run.output, run.output
    volume = random_volume((1, *plan.input_patch), seed=6)
    ours = build_and_run(lib, volume, (net.output_channels, *plan.output_patch), cmake=True)
    assert relative_error(ours, znni.infer(net, volume, plan=plan, threads=1)) <= 1e-5
