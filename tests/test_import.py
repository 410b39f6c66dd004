"""Importing PyTorch (and ONNX) 3D ConvNets: round trips against the source framework, the
formats accepted, and the errors for what znni cannot run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import znni
from znni.cli import main
from znni.importers import UnsupportedModelError

from .conftest import random_volume, relative_error

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
from znni.importers.pytorch import from_module  # noqa: E402  (needs torch)


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, eval mode."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


def held_out_nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "aniso-bn-2pools-2ch": nn.Sequential(
            nn.Conv3d(2, 4, (1, 3, 3)), nn.BatchNorm3d(4), nn.ReLU(), nn.MaxPool3d((1, 2, 2)),
            nn.Conv3d(4, 4, (3, 3, 1)), nn.Tanh(), nn.MaxPool3d(2),
            nn.Conv3d(4, 2, (2, 2, 2)), nn.Sigmoid()),
        "nested-3ch-3pools": nn.Sequential(
            nn.Sequential(nn.Conv3d(3, 3, 2), nn.BatchNorm3d(3), nn.ReLU()),
            nn.MaxPool3d((2, 1, 2)), nn.Conv3d(3, 4, (1, 2, 2)), nn.ReLU(), nn.MaxPool3d(2),
            nn.Dropout3d(0.5), nn.Conv3d(4, 4, 1), nn.MaxPool3d((2, 2, 1)), nn.Identity(),
            nn.Conv3d(4, 1, (2, 1, 2))),
        "1ch-pool-then-relu": nn.Sequential(
            nn.Conv3d(1, 3, (3, 1, 3)), nn.MaxPool3d(2), nn.ReLU(), nn.Conv3d(3, 2, 3)),
    }


def torch_dense(model: nn.Module, volume: np.ndarray) -> np.ndarray:
    """The *original* model (BatchNorm unfolded) run densely by PyTorch: each pool a stride-1
    max filter, every later layer dilated by the windows before it (docs/design.md §3)."""
    x = torch.from_numpy(volume)[None].double()
    d = [1, 1, 1]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                x = F.conv3d(x, m.weight.double(), m.bias.double(), dilation=tuple(d))
            elif isinstance(m, nn.MaxPool3d):
                k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 3
                x = F.max_pool3d(x, k, stride=1, dilation=tuple(d))
                d = [a * b for a, b in zip(d, k, strict=True)]
            elif not list(m.children()):
                x = m.double()(x)
                m.float()
    return x[0].float().numpy()


@pytest.mark.parametrize("name", sorted(held_out_nets()))
def test_round_trip_equals_torch_dense(name: str) -> None:
    model = _randomise_bn(held_out_nets()[name])
    net = from_module(model, name)
    frag = net.fragmentation
    patch = (2 * frag[0], 2 * frag[1], 2 * frag[2])
    volume = random_volume((net.input_channels, *net.input_size(patch)), seed=3)
    ours = znni.infer(net, volume, patch, primitives="direct", threads=1)
    expected = torch_dense(model, volume)
    assert relative_error(ours, expected) < 1e-4
    # and the strided output of the model itself is every F-th dense voxel
    with torch.no_grad():
        strided = model(torch.from_numpy(volume)[None])[0].numpy()
    assert relative_error(ours[:, ::frag[0], ::frag[1], ::frag[2]], strided) < 1e-4


def test_torchscript_is_accepted_like_the_module() -> None:
    model = _randomise_bn(held_out_nets()["aniso-bn-2pools-2ch"])
    eager = from_module(model)
    scripted = from_module(torch.jit.script(model))
    assert scripted.to_dict()["layers"] == eager.to_dict()["layers"]
    assert "0: 0 + 1 + 2, 1: 3" in eager.description  # conv + BatchNorm + ReLU, then the pool
    for i, (w, _b) in eager.require_weights().items():
        np.testing.assert_array_equal(scripted.require_weights()[i][0], w)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_cli_import_torchscript_and_state_dict(tmp_path) -> None:
    model = _randomise_bn(held_out_nets()["aniso-bn-2pools-2ch"])
    reference = from_module(model)
    ts = tmp_path / "model.pt"
    torch.jit.script(model).save(str(ts))
    code, out = _cli("import", str(ts), "--out", str(tmp_path / "a.json"),
                     "--weights-out", str(tmp_path / "a.npz"))
    assert code == 0, out
    assert "checked" in out
    imported = znni.load(tmp_path / "a.json", tmp_path / "a.npz")
    assert imported.to_dict()["layers"] == reference.to_dict()["layers"]

    # state_dict + the spec just written (BatchNorm still unfolded in the state_dict)
    sd = tmp_path / "state.pt"
    torch.save(model.state_dict(), sd)
    code, out = _cli("import", str(sd), "--spec", str(tmp_path / "a.json"),
                     "--out", str(tmp_path / "b.json"), "--weights-out", str(tmp_path / "b.npz"))
    assert code == 0, out
    again = znni.load(tmp_path / "b.json", tmp_path / "b.npz")
    for i, (w, b) in reference.require_weights().items():
        np.testing.assert_allclose(again.require_weights()[i][0], w, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(again.require_weights()[i][1], b, rtol=1e-6, atol=1e-7)

    # without --spec a state_dict has no structure: a clear error, no traceback
    code, out = _cli("import", str(sd), "--out", str(tmp_path / "c.json"),
                     "--weights-out", str(tmp_path / "c.npz"))
    assert code == 2 and "--spec" in out and "Traceback" not in out


def test_pickled_module_needs_explicit_opt_in(tmp_path) -> None:
    model = held_out_nets()["1ch-pool-then-relu"].eval()
    path = tmp_path / "pickled.pt"
    torch.save(model, path)
    args = ["import", str(path), "--out", str(tmp_path / "n.json"),
            "--weights-out", str(tmp_path / "n.npz")]
    code, out = _cli(*args)
    assert code == 2 and "--trust-pickle" in out and "Traceback" not in out
    assert not (tmp_path / "n.json").exists()
    code, out = _cli(*args, "--trust-pickle")
    assert code == 0, out


@pytest.mark.parametrize("layer, why", [
    (lambda: nn.Conv3d(1, 2, 3, stride=2), "stride"),
    (lambda: nn.Conv3d(1, 2, 3, padding=1), "padding"),
    (lambda: nn.Conv3d(1, 2, 3, padding="same"), "padding"),
    (lambda: nn.Conv3d(1, 2, 3, dilation=2), "dilation"),
    (lambda: nn.Conv3d(2, 2, 3, groups=2), "groups"),
    (lambda: nn.MaxPool3d(2, stride=1), "stride"),
    (lambda: nn.MaxPool3d(2, ceil_mode=True), "ceil_mode"),
    (lambda: nn.MaxPool3d(2, padding=1), "padding"),
    (lambda: nn.AvgPool3d(2), "not a supported layer"),
    (nn.LeakyReLU, "not a supported layer"),
])
def test_unsupported_layers_name_the_module_and_why(layer, why: str) -> None:
    bad = layer()
    channels = 2 if isinstance(bad, nn.Conv3d) and bad.groups == 2 else 1
    model = nn.Sequential(nn.Conv3d(channels, channels, 1), bad, nn.Conv3d(2 if isinstance(
        bad, nn.Conv3d) else channels, 1, 1))
    with pytest.raises(UnsupportedModelError) as err:
        from_module(model)
    assert "'1'" in err.value.message and why in err.value.message
    assert err.value.hint


def test_batchnorm_must_follow_a_conv() -> None:
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.BatchNorm3d(2)).eval()
    with pytest.raises(UnsupportedModelError, match=r"'2'.*batch norm"):
        from_module(model)


def test_the_check_catches_a_forward_that_is_not_the_chain() -> None:
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv3d(1, 1, 1)
            self.b = nn.Conv3d(1, 1, 1)

        def forward(self, x):  # a residual: not the chain a → b
            return self.b(self.a(x)) + x

    with pytest.raises(UnsupportedModelError, match="differs"):
        from_module(Skip())
    assert from_module(Skip(), check=False).layers  # the translation alone cannot tell


def test_import_znni_does_not_import_frameworks() -> None:
    code = ("import sys, znni, znni.importers, znni.cli; "
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)



def test_state_dict_that_does_not_fit_the_spec(tmp_path) -> None:
    from znni.importers.pytorch import from_state_dict

    model = _randomise_bn(held_out_nets()["aniso-bn-2pools-2ch"])
    spec = from_module(model).to_dict()
    short = {**spec, "layers": spec["layers"][:2]}
    with pytest.raises(UnsupportedModelError, match="left over"):
        from_state_dict(model.state_dict(), short)
    longer = {**spec, "layers": spec["layers"] + [{"type": "conv", "kernel": [1, 1, 1],
                                                    "out_channels": 1}]}
    with pytest.raises(UnsupportedModelError, match="spec layer 5 is a conv"):
        from_state_dict(model.state_dict(), longer)
    wrong = json.loads(json.dumps(spec))
    wrong["layers"][0]["kernel"] = [3, 3, 3]
    with pytest.raises(UnsupportedModelError, match="do not match"):
        from_state_dict(model.state_dict(), wrong)


def test_import_uses_eval_mode_and_restores_training() -> None:
    model = _randomise_bn(held_out_nets()["aniso-bn-2pools-2ch"]).train()
    net = from_module(model)  # the check passes only with running statistics (eval mode)
    assert model.training and net.layers


def test_without_torch_the_cli_says_what_to_install(tmp_path) -> None:
    (tmp_path / "m.pt").write_bytes(b"x")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from znni.cli import main\n"
            f"main(['import', {str(tmp_path / 'm.pt')!r}, '--out', 'n.json', "
            "'--weights-out', 'n.npz'])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=False)
    assert run.returncode == 2 and "znni[torch]" in run.stderr
    assert "Traceback" not in run.stderr
