"""Importing ONNX 3D ConvNets (graphs built with onnx.helper; no exporter, no onnxruntime).
Needs only the onnx extra; with torch installed the dense output is also compared with torch's
run of the original graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import znni
from znni import reference
from znni.cli import main
from znni.importers import UnsupportedModelError
from znni.importers.check import check_input, max_pool, strided_forward

from .conftest import net_from_layers, random_volume, relative_error

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from znni.importers.onnx import load_file  # noqa: E402

# (op, arguments): node i is named f"n{i}"
CHAIN = [("Conv", 3, (3, 3, 1)), ("BatchNormalization",), ("Relu",),
         ("MaxPool", (1, 2, 2)), ("Conv", 3, (1, 2, 2)), ("Tanh",), ("MaxPool", (2, 2, 2)),
         ("Conv", 2, (1, 1, 1)), ("Sigmoid",)]


def build(chain: list[tuple], channels: int, overrides: dict | None = None,
          extra: list | None = None, seed: int = 0) -> tuple[onnx.ModelProto, list]:
    """The ONNX model of ``chain`` with random parameters, and (op, attrs, params) per node."""
    rng = np.random.default_rng(seed)
    nodes, inits, layers = [], [], []
    current, c = "x", channels
    for i, (op, *args) in enumerate(chain):
        attrs: dict = {}
        params: list[np.ndarray] = []
        if op == "Conv":
            out, kernel = args
            attrs = {"kernel_shape": list(kernel)}
            params = [rng.standard_normal((out, c, *kernel)).astype(np.float32) * 0.5,
                      rng.standard_normal(out).astype(np.float32) * 0.1]
            c = out
        elif op == "BatchNormalization":
            attrs = {"epsilon": 1e-3}
            params = [rng.uniform(0.5, 1.5, c), rng.uniform(-.5, .5, c), rng.uniform(-1, 1, c),
                      rng.uniform(0.5, 2, c)]
            params = [p.astype(np.float32) for p in params]
        elif op == "MaxPool":
            attrs = {"kernel_shape": list(args[0]), "strides": list(args[0])}
        attrs.update((overrides or {}).get(i, {}))
        names = [f"p{i}_{k}" for k in range(len(params))]
        inits += [numpy_helper.from_array(p, n) for p, n in zip(params, names, strict=True)]
        nodes.append(helper.make_node(op, [current, *names], [f"t{i}"], name=f"n{i}", **attrs))
        layers.append((op, attrs, params))
        current = f"t{i}"
    for node in extra or []:
        nodes.append(node)
        current = node.output[0]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                   [1, channels, None, None, None])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph), layers


def torch_dense(layers: list, volume: np.ndarray) -> np.ndarray:
    """The original graph (BatchNorm unfolded) run densely by PyTorch (docs/design.md §3)."""
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    x = torch.from_numpy(volume)[None].double()
    d = [1, 1, 1]
    for op, attrs, params in layers:
        p = [torch.from_numpy(a).double() for a in params]
        if op == "Conv":
            x = f.conv3d(x, p[0], p[1], dilation=tuple(d))
        elif op == "BatchNormalization":
            x = f.batch_norm(x, p[2], p[3], p[0], p[1], False, 0.0, attrs["epsilon"])
        elif op == "MaxPool":
            k = tuple(attrs["kernel_shape"])
            x = f.max_pool3d(x, k, stride=1, dilation=tuple(d))
            d = [a * b for a, b in zip(d, k, strict=True)]
        else:
            x = {"Relu": torch.relu, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid}[op](x)
    return x[0].float().numpy()


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_round_trip(tmp_path: Path) -> None:
    model, layers = build(CHAIN, 2)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    code, out = _cli("import", str(path), "--out", str(tmp_path / "n.json"),
                     "--weights-out", str(tmp_path / "n.npz"))
    assert code == 0, out
    net = znni.load(tmp_path / "n.json", tmp_path / "n.npz")
    assert [layer.kind for layer in net.layers] == ["conv", "pool", "conv", "pool", "conv"]
    frag = net.fragmentation
    patch = (2 * frag[0], 2 * frag[1], 2 * frag[2])
    volume = random_volume((2, *net.input_size(patch)), seed=5)
    ours = znni.infer(net, volume, patch, primitives="direct", threads=1)
    assert relative_error(ours, reference.forward(net, volume)) < 1e-4
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    assert relative_error(ours, torch_dense(layers, volume)) < 1e-4


@pytest.mark.parametrize("overrides, why", [
    ({0: {"strides": [2, 2, 2]}}, "strides"),
    ({0: {"pads": [1, 1, 1, 1, 1, 1]}}, "pads"),
    ({0: {"auto_pad": "SAME_UPPER"}}, "auto_pad"),
    ({0: {"dilations": [1, 2, 1]}}, "dilations"),
    ({0: {"group": 2}}, "group"),
    ({0: {"kernel_shape": [3, 3, 3]}}, "kernel_shape"),
    ({3: {"strides": [1, 1, 1]}}, "strides"),
    ({3: {"ceil_mode": 1}}, "ceil_mode"),
    ({1: {"training_mode": 1}}, "training_mode"),
])
def test_unsupported_attributes_name_the_node(tmp_path: Path, overrides: dict, why: str) -> None:
    path = tmp_path / "bad.onnx"
    onnx.save(build(CHAIN, 2, overrides)[0], str(path))
    with pytest.raises(UnsupportedModelError, match=f"'n{next(iter(overrides))}'.*{why}"):
        load_file(path)


def test_unsupported_op_non_chain_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    last = f"t{len(CHAIN) - 1}"
    onnx.save(build(CHAIN, 2, extra=[helper.make_node("LeakyRelu", [last], ["y"],
                                                      name="leaky")])[0], str(path))
    with pytest.raises(UnsupportedModelError, match=r"'leaky' \(LeakyRelu\): not a supported"):
        load_file(path)
    onnx.save(build(CHAIN, 2, extra=[helper.make_node("Relu", ["t2"], ["y"], name="skip")])[0],
              str(path))
    with pytest.raises(UnsupportedModelError, match=r"'skip'.*not the output"):
        load_file(path)
    path.write_bytes(b"not a protobuf")
    code, out = _cli("import", str(path), "--out", str(tmp_path / "n.json"),
                     "--weights-out", str(tmp_path / "n.npz"))
    assert code == 2 and "Traceback" not in out and not (tmp_path / "n.json").exists()


@pytest.mark.parametrize("damage", ["dims", "data_type"])
def test_an_initializer_whose_dims_or_type_do_not_fit_its_data(tmp_path: Path,
                                                                damage: str) -> None:
    model = build(CHAIN, 2)[0]
    weight = model.graph.initializer[0]
    if damage == "dims":
        weight.dims[0] += 1  # numpy_helper.to_array: ValueError (cannot reshape)
    else:
        weight.data_type = TensorProto.UNDEFINED  # numpy_helper.to_array: TypeError
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedModelError, match=f"initializer '{weight.name}'"):
        load_file(path)
    code, out = _cli("import", str(path), "--out", str(tmp_path / "n.json"),
                     "--weights-out", str(tmp_path / "n.npz"))
    assert code == 2 and "Traceback" not in out and not (tmp_path / "n.json").exists()


def test_batchnorm_after_an_activation_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    onnx.save(build([("Conv", 2, (1, 1, 1)), ("Relu",), ("BatchNormalization",)], 1)[0],
              str(path))
    with pytest.raises(UnsupportedModelError, match=r"'n2'.*does not directly follow"):
        load_file(path)


def test_strided_forward_is_the_dense_oracle_every_f_voxels() -> None:
    """The check's premise (docs/design.md §3), with anisotropic pools."""
    net = net_from_layers([
        {"type": "conv", "kernel": [2, 3, 1], "out_channels": 3, "activation": "relu"},
        {"type": "pool", "window": [1, 2, 3]},
        {"type": "conv", "kernel": [2, 1, 2], "out_channels": 2, "activation": "tanh"},
        {"type": "pool", "window": [2, 2, 1]}], input_channels=2, seed=3)
    x = check_input(net, outputs=3)
    frag = net.fragmentation
    dense = reference.forward(net, x[0])[:, ::frag[0], ::frag[1], ::frag[2]]
    assert relative_error(strided_forward(net, x[0]).astype(np.float32), dense) < 1e-6
    assert max_pool(np.arange(8.0).reshape(1, 2, 2, 2), (2, 2, 2)).item() == 7.0


def test_a_graph_from_torch_onnx_export(tmp_path: Path) -> None:
    """What PyTorch's own exporter writes (BatchNorm already folded by it, node names like
    '/0/Conv') imports, and equals the model's dense output."""
    torch = pytest.importorskip("torch")
    from .test_import import _randomise_bn
    from .test_import import torch_dense as module_dense

    nn = torch.nn
    torch.manual_seed(3)
    model = _randomise_bn(nn.Sequential(
        nn.Conv3d(3, 4, (1, 3, 3)), nn.BatchNorm3d(4), nn.ReLU(), nn.MaxPool3d((1, 2, 2)),
        nn.Conv3d(4, 2, (3, 1, 3)), nn.Sigmoid()))
    path = tmp_path / "exported.onnx"
    try:
        torch.onnx.export(model, (torch.randn(1, 3, 8, 16, 16),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {2: "z", 3: "y", 4: "x"}})
    except Exception as exc:  # noqa: BLE001 - the TorchScript-based exporter is deprecated
        # upstream: whatever it raises means it is unavailable here
        pytest.skip(f"torch.onnx.export unavailable: {exc}")
    net = load_file(path)
    assert "/0/Conv" in net.description
    frag = net.fragmentation
    patch = (frag[0], 2 * frag[1], 2 * frag[2])
    volume = random_volume((3, *net.input_size(patch)), seed=9)
    ours = znni.infer(net, volume, patch, primitives="direct", threads=1)
    assert relative_error(ours, module_dense(model, volume)) < 1e-4
