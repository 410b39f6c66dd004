"""Importing DAG models from PyTorch (torch.export): a funlib-style valid U-Net and MONAI's
BasicUNet, each checked against the model; blended sliding windows against MONAI's
``sliding_window_inference``; refusals of what changes meaning under tiling."""

from __future__ import annotations

import numpy as np
import pytest

from znni.graph import load_graph, shape_report
from znni.graph.infer import infer_graph
from znni.graph.sliding import importance_map, sliding_window, window_starts
from znni.importers.chain import UnsupportedModelError

from .conftest import relative_error
from .test_graph import _torch_unet, unet_spec

torch = pytest.importorskip("torch")


def test_a_valid_unet_imports_and_tiles_like_pytorch_on_the_whole_volume() -> None:
    from znni.importers.graph_torch import import_torch_graph

    source = load_graph(unet_spec()).random_weights(7)
    model = _torch_unet(source, torch)
    report = shape_report(source.nodes, source.output)
    traced = tuple(n + s for n, s in zip(report.smallest_input, report.step, strict=True))
    graph = import_torch_graph(model, traced)
    assert sum(n.__class__.__name__ == "Conv" for n in graph.nodes) == 11
    assert "folded" in graph.description
    volume = tuple(n + 3 * s for n, s in zip(report.smallest_input, report.step, strict=True))
    x = np.random.default_rng(1).random(volume, dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)[None, None])[0].numpy()
    out = infer_graph(graph, x, block=traced, threads=2)
    assert relative_error(out, expected.astype(np.float64)) < 1e-4


def test_torchscript_archives_import_without_trusting_pickles(tmp_path) -> None:
    """A traced TorchScript U-Net (the safe file format) imports through torch.export's
    converter, and equals the model; a file of neither kind says what to do."""
    from znni.importers.graph_torch import UnsupportedModelError, load_graph_file

    source = load_graph(unet_spec()).random_weights(3)
    model = _torch_unet(source, torch)
    report = shape_report(source.nodes, source.output)
    traced = tuple(n + s for n, s in zip(report.smallest_input, report.step, strict=True))
    torch.jit.trace(model, torch.zeros(1, 1, *traced)).save(str(tmp_path / "unet.pt"))
    graph = load_graph_file(tmp_path / "unet.pt", traced)
    x = np.random.default_rng(2).random(traced, dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)[None, None])[0].numpy()
    assert relative_error(infer_graph(graph, x, threads=2), expected.astype(np.float64)) < 1e-4
    plain = torch.nn.Sequential(torch.nn.Conv3d(2, 3, (1, 3, 3)), torch.nn.ELU(0.5),
                                torch.nn.MaxPool3d(2), torch.nn.Conv3d(3, 2, 3)).eval()
    torch.jit.script(plain).save(str(tmp_path / "plain.pt"))  # scripted, no size arithmetic
    imported = load_graph_file(tmp_path / "plain.pt", (10, 12, 12))
    assert [type(n).__name__ for n in imported.nodes] == ["Conv", "Pool", "Conv"]
    torch.save(model.state_dict(), tmp_path / "pickled.pt")  # not TorchScript: a pickle
    with pytest.raises(UnsupportedModelError, match="--trust-pickle"):
        load_graph_file(tmp_path / "pickled.pt", traced)


def _basic_unet():
    monai = pytest.importorskip("monai.networks.nets")
    model = monai.BasicUNet(spatial_dims=3, in_channels=1, out_channels=2,
                            features=(4, 4, 8, 8, 16, 4), norm="batch").eval()
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():  # trained-like statistics, so that folding BatchNorm matters
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
    return model


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_monai_basic_unet_matches_sliding_window_inference(blend) -> None:
    inferers = pytest.importorskip("monai.inferers")
    from znni.importers.graph_torch import import_torch_graph

    model = _basic_unet()
    graph = import_torch_graph(model, (16, 16, 16))
    x = np.random.default_rng(2).random((1, 1, 40, 37, 23), dtype=np.float32)
    roi = (32, 32, 16)
    with torch.no_grad():
        expected = inferers.sliding_window_inference(torch.from_numpy(x), roi, 1, model,
                                                     overlap=0.25, mode=blend)[0].numpy()
    out = sliding_window(graph, x[0], roi, overlap=0.25, blend=blend, threads=2)
    assert relative_error(out, expected.astype(np.float64)) < 1e-4


def test_window_placement_and_weights_are_monais() -> None:
    data = pytest.importorskip("monai.data.utils")
    utils = pytest.importorskip("monai.inferers.utils")
    for image, roi, overlap in [(40, 32, 0.25), (37, 16, 0.5), (23, 23, 0.25), (100, 7, 0.9)]:
        interval = utils._get_scan_interval((image,), (roi,), 1, (overlap,))
        slices = data.dense_patch_slices((image,), (roi,), interval)
        assert window_starts(image, roi, overlap) == [s[0].start for s in slices]
    expected = utils.compute_importance_map((9, 12, 5), mode="gaussian", sigma_scale=0.125)
    np.testing.assert_allclose(importance_map((9, 12, 5), "gaussian"), expected.numpy(),
                               rtol=1e-6)
    bump = importance_map((8, 8, 8), "bump")
    assert bump.max() <= 1 and bump.min() >= 1e-3 and bump[4, 4, 4] > 0.9


def test_models_that_change_under_tiling_are_refused_by_name() -> None:
    from znni.importers.graph_torch import import_torch_graph

    nn = torch.nn
    for norm, why in [(nn.InstanceNorm3d(4), "InstanceNorm"),
                      (nn.GroupNorm(2, 4), "GroupNorm")]:
        model = nn.Sequential(nn.Conv3d(1, 4, 3), norm, nn.ReLU(), nn.Conv3d(4, 1, 1))
        with pytest.raises(UnsupportedModelError, match=why):
            import_torch_graph(model, (8, 8, 8))
    strided = nn.Sequential(nn.Conv3d(1, 4, 3, stride=2), nn.Conv3d(4, 1, 1))
    with pytest.raises(UnsupportedModelError, match="stride"):
        import_torch_graph(strided, (9, 9, 9))

    class OffCentre(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv3d(1, 2, 3), nn.Conv3d(2, 2, 3)

        def forward(self, x):
            a = self.a(x)
            b = self.b(a)
            return torch.cat([a[:, :, :4, :4, :4], b], 1)

    with pytest.raises(UnsupportedModelError, match="znni crops the centre"):
        import_torch_graph(OffCentre(), (8, 8, 8))


def test_cli_imports_plans_and_infers_a_dag(tmp_path) -> None:
    """znni import --input-size (a .pt2 program), znni plan (the shape algebra) and znni
    infer (exact blocks) on a valid U-Net; the output equals PyTorch on the whole volume."""
    from click.testing import CliRunner

    from znni.cli import main

    source = load_graph(unet_spec()).random_weights(8)
    model = _torch_unet(source, torch)
    report = shape_report(source.nodes, source.output)
    traced = tuple(n + s for n, s in zip(report.smallest_input, report.step, strict=True))
    program = torch.export.export(model, (torch.zeros(1, 1, *traced),), strict=False)
    torch.export.save(program, tmp_path / "unet.pt2")
    runner = CliRunner()
    result = runner.invoke(main, ["import", str(tmp_path / "unet.pt2"), "--out",
                                  str(tmp_path / "unet.json"), "--weights-out",
                                  str(tmp_path / "unet.npz")])
    assert result.exit_code == 0, result.output
    assert "exact blocks on the downsampling grid" in result.output
    result = runner.invoke(main, ["plan", str(tmp_path / "unet.json")])
    assert result.exit_code == 0 and "downsampling 2x4x4" in result.output, result.output
    volume = tuple(n + 2 * s for n, s in zip(report.smallest_input, report.step, strict=True))
    x = np.random.default_rng(3).random(volume, dtype=np.float32)
    np.save(tmp_path / "in.npy", x)
    args = ["infer", str(tmp_path / "unet.json"), "--weights", str(tmp_path / "unet.npz"),
            "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "out.npy"),
            "--patch", ",".join(map(str, traced)), "--threads", "2"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0 and "exact blocks" in result.output, result.output
    with torch.no_grad():
        expected = model(torch.from_numpy(x)[None, None])[0].numpy()
    assert relative_error(np.load(tmp_path / "out.npy"), expected.astype(np.float64)) < 1e-4
    zarr = pytest.importorskip("zarr")  # block by block into a chunked store
    result = runner.invoke(main, [*args[:7], str(tmp_path / "out.zarr"), *args[8:]])
    assert result.exit_code == 0, result.output
    stored = np.asarray(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...])
    assert relative_error(stored, expected.astype(np.float64)) < 1e-4
    again = runner.invoke(main, args)  # the same job again: every block is done
    assert again.exit_code == 0 and "blocks already done" in again.output, again.output
    same = runner.invoke(main, [*args[:6], "--output", str(tmp_path / "in.npy"), *args[8:]])
    assert same.exit_code == 2 and "overwrite the input" in same.output
    from znni.runtime.lock import output_lock
    from znni.runtime.storage import lock_path

    busy = str(tmp_path / "busy.npy")
    with output_lock(lock_path(busy), busy):  # another job writes it: refused, nothing made
        taken = runner.invoke(main, [*args[:7], busy, *args[8:]])
    assert taken.exit_code == 2 and not (tmp_path / "busy.npy").exists(), taken.output


@pytest.mark.parametrize("which", ["unet", "basic_unet"])
def test_onnx_exports_import_as_the_same_graph(tmp_path, which) -> None:
    """The valid U-Net and MONAI's BasicUNet exported to ONNX import (their shape arithmetic
    folded) and agree with onnxruntime (the import check) and with the PyTorch import."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from znni.importers import import_graph
    from znni.importers.graph_torch import import_torch_graph

    if which == "unet":
        model = _torch_unet(load_graph(unet_spec()).random_weights(9), torch)
        report = shape_report(load_graph(unet_spec()).nodes, "head")
        size = tuple(n + s for n, s in zip(report.smallest_input, report.step, strict=True))
    else:
        model, size = _basic_unet(), (16, 16, 16)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, *size),), str(path), dynamo=False)
    graph = import_graph(path)
    x = np.random.default_rng(5).random((1, *size), dtype=np.float32)
    from znni.graph.reference import forward

    via_torch = import_torch_graph(model, size)
    assert relative_error(forward(graph, x), forward(via_torch, x).astype(np.float64)) < 1e-5


@pytest.mark.parametrize("spec", ["unet", "residual"])
def test_bench_runs_znni_and_pytorch_on_the_same_volume(spec) -> None:
    from znni.graph.benchmark import bench_graph

    from .test_graph import residual_spec

    graph = load_graph(unet_spec() if spec == "unet" else residual_spec()).random_weights(0)
    result = bench_graph(graph, 24 << 20, threads=2, repeats=1)
    assert result.plan.peak_bytes <= 24 << 20
    assert result.difference < 1e-4 and result.ratio > 0
