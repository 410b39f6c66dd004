"""DAG networks (spec v2): validation with clear errors, the shape algebra, and the numpy oracle
against PyTorch on a funlib-style valid U-Net and a same-padded residual net."""

from __future__ import annotations

import json

import numpy as np
import pytest

from znni.errors import ShapeError, SpecError, WeightsError
from znni.graph import load_graph, node_sizes, shape_report
from znni.graph.reference import forward

from .conftest import relative_error


def conv(name: str, src: str, out: int, kernel: list[int], **extra) -> dict:
    return {"name": name, "type": "conv", "inputs": [src], "out_channels": out,
            "kernel": kernel, "activation": "relu", **extra}


def unet_spec() -> dict:
    """A valid 3D U-Net of depth 3 (two pools): anisotropic first level (1×3×3 convs, 1×2×2
    pool), concat skips of centre-cropped features, transposed-conv up-sampling, a sigmoid
    head: the funlib/LSD style."""
    return {"version": 2, "name": "unet", "input_channels": 1, "nodes": [
        conv("d0a", "input", 4, [1, 3, 3]), conv("d0b", "d0a", 4, [1, 3, 3]),
        {"name": "p0", "type": "pool", "inputs": ["d0b"], "window": [1, 2, 2]},
        conv("d1a", "p0", 6, [3, 3, 3]), conv("d1b", "d1a", 6, [3, 3, 3]),
        {"name": "p1", "type": "pool", "inputs": ["d1b"], "window": [2, 2, 2]},
        conv("b0", "p1", 8, [3, 3, 3]), conv("b1", "b0", 8, [3, 3, 3]),
        {"name": "u1", "type": "upsample", "inputs": ["b1"], "factor": [2, 2, 2],
         "out_channels": 6},
        {"name": "c1", "type": "concat", "inputs": ["d1b", "u1"]},
        conv("e1a", "c1", 6, [3, 3, 3]), conv("e1b", "e1a", 6, [3, 3, 3]),
        {"name": "u0", "type": "upsample", "inputs": ["e1b"], "factor": [1, 2, 2],
         "out_channels": 4},
        {"name": "c0", "type": "concat", "inputs": ["d0b", "u0"]},
        conv("e0a", "c0", 4, [1, 3, 3]), conv("e0b", "e0a", 4, [1, 3, 3]),
        conv("head", "e0b", 2, [1, 1, 1], activation="sigmoid"),
    ]}


def residual_spec() -> dict:
    """Same-padded convs with a residual add, LeakyReLU and ELU, nearest up-sampling after a
    pool, and a softmax over the output channels."""
    return {"version": 2, "name": "res", "input_channels": 2, "nodes": [
        conv("c0", "input", 5, [3, 3, 3], padding="same", activation="leaky_relu", slope=0.1),
        conv("c1", "c0", 5, [3, 3, 1], padding="same", activation="elu", alpha=0.7),
        conv("c2", "c1", 5, [2, 3, 3], padding="same", activation="linear"),
        {"name": "sum", "type": "add", "inputs": ["c0", "c2"]},
        {"name": "act", "type": "activation", "inputs": ["sum"], "activation": "relu"},
        {"name": "pool", "type": "pool", "inputs": ["act"], "window": [2, 2, 2]},
        {"name": "up", "type": "upsample", "inputs": ["pool"], "factor": [2, 2, 2],
         "mode": "nearest"},
        {"name": "cat", "type": "concat", "inputs": ["act", "up"]},
        conv("out", "cat", 3, [1, 1, 1], activation="softmax"),
    ]}


def test_the_shape_algebra_of_a_valid_unet() -> None:
    graph = load_graph(unet_spec())
    report = shape_report(graph.nodes, graph.output)
    assert report.downsampling == (2, 4, 4)
    assert report.step == (2, 4, 4)
    # z: d0 keeps z, d1 and b shrink by 4 each at pitch 1 and 2; y/x: 4 more per level
    sizes = node_sizes(graph.nodes, report.smallest_input)
    assert sizes["head"] == report.output
    grown = tuple(n + s for n, s in zip(report.smallest_input, report.step, strict=True))
    assert node_sizes(graph.nodes, grown)["head"] == tuple(
        o + s for o, s in zip(report.output, report.output_step, strict=True))
    assert report.output_step == report.step  # output pitch 1: one voxel out per voxel in
    assert all(c > 0 for c in report.context)
    assert [n - o for n, o in zip(report.smallest_input, report.output, strict=True)] == list(
        report.context)
    bad = (report.smallest_input[0] + 1, *report.smallest_input[1:])
    with pytest.raises(ShapeError, match="along z") as info:
        node_sizes(graph.nodes, bad)
    assert "valid sizes along z include" in info.value.hint


def test_the_shape_algebra_of_a_same_padded_net() -> None:
    graph = load_graph(residual_spec())
    report = shape_report(graph.nodes, graph.output)
    assert report.context == (0, 0, 0) and report.downsampling == (2, 2, 2)
    assert report.smallest_input == (2, 2, 2) and report.output == (2, 2, 2)


def test_specs_round_trip_and_weights_are_checked(tmp_path) -> None:
    graph = load_graph(unet_spec()).random_weights(0)
    again = load_graph(graph.to_dict())
    assert again.to_dict() == graph.to_dict()
    path = tmp_path / "w.npz"
    graph.save_weights(path)
    spec_path = tmp_path / "net.json"
    spec_path.write_text(json.dumps(graph.to_dict()))
    loaded = load_graph(spec_path, path)
    assert all(np.array_equal(loaded.weights[k], graph.weights[k]) for k in graph.weights)
    arrays = dict(graph.weights)
    for change, match in [
        (lambda a: a.pop("u1.bias"), "missing weight array 'u1.bias'"),
        (lambda a: a.update({"u1.weight": np.zeros((6, 8, 2, 2, 2))}), "expected \\(8, 6"),
        (lambda a: a.update({"d0a.weight": a["d0a.weight"] * np.nan}), "NaN or Inf"),
        (lambda a: a.update({"stray.weight": np.zeros(1)}), "unexpected weight"),
        (lambda a: a.update({"head.bias": np.array(["x", "y"])}), "not a number"),
    ]:
        bad = dict(arrays)
        change(bad)
        with pytest.raises(WeightsError, match=match):
            graph.with_weights(bad)


def _edit(spec: dict, node_name: str, **changes) -> dict:
    spec = json.loads(json.dumps(spec))
    node = next(n for n in spec["nodes"] if n["name"] == node_name)
    node.update(changes)
    return spec


@pytest.mark.parametrize("edit,match", [
    (lambda s: _edit(s, "d0a", inputs=["e0b"]), "cycle: .*d0a"),
    (lambda s: _edit(s, "c1", inputs=["d1b", "nowhere"]), "input 'nowhere' is not a node"),
    (lambda s: s | {"output": "e0b"}, "do not lead to the output"),
    (lambda s: _edit(s, "c1", inputs=["d1b", "u1", "p1"]), "different resolutions"),
    (lambda s: _edit(s, "c1", type="add", inputs=["d1b", "u1", "b1"]),
     "adds inputs of \\[6, 6, 8\\] channels"),
    (lambda s: _edit(s, "d0b", name="d0a"), "name 'd0a' is used twice"),
    (lambda s: _edit(s, "d0a", name="in put"), "must be an identifier"),
    (lambda s: _edit(s, "d0a", name="input"), "must be an identifier"),
    (lambda s: _edit(s, "d0a", activation="swish"), "unknown activation 'swish'"),
    (lambda s: _edit(s, "d0a", activation="leaky_relu", slope=float("inf")), "finite"),
    (lambda s: _edit(s, "d0a", slope=0.1), "'slope' does not apply to activation 'relu'"),
    (lambda s: _edit(s, "d0a", padding="reflect"), "padding must be one of"),
    (lambda s: _edit(s, "u1", mode="nearest"), "nearest up-sampling keeps the channels"),
    (lambda s: _edit(s, "u1", mode="bilinear"), "mode must be one of"),
    (lambda s: _edit(s, "p0", inputs=["d0a", "d0b"]), "reads one input, got 2"),
    (lambda s: _edit(s, "c0", inputs=["u0"]), "joins at least two inputs"),
    (lambda s: _edit(s, "d0a", kernel=[3, 3]), "kernel must be a list of 3"),
    (lambda s: _edit(s, "d0a", groups=2), "unknown key"),
    (lambda s: _edit(s, "p0", type="avgpool"), "unknown node type 'avgpool'"),
    (lambda s: s | {"version": 3}, "'version' must be 2"),
    (lambda s: s | {"output": 7}, "'output' 7 is not a node"),
    (lambda s: s | {"nodes": []}, "'nodes' must be a non-empty list"),
])
def test_bad_specs_say_what_is_wrong(edit, match) -> None:
    with pytest.raises(SpecError, match=match):
        load_graph(edit(unet_spec()))


def test_a_crop_that_cannot_be_centred_is_a_shape_error() -> None:
    spec = {"version": 2, "input_channels": 1, "nodes": [
        conv("a", "input", 2, [3, 3, 3]), conv("b", "a", 2, [2, 2, 2]),
        {"name": "j", "type": "concat", "inputs": ["a", "b"]}]}
    graph = load_graph(spec)
    with pytest.raises(ShapeError, match="cannot be centre-cropped"):
        node_sizes(graph.nodes, (9, 9, 9))
    with pytest.raises(ShapeError, match="takes no input size along z"):
        shape_report(graph.nodes, graph.output)


def _torch_unet(graph, torch):
    """The U-Net of :func:`unet_spec` as a PyTorch module with the graph's weights."""
    nn = torch.nn

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            names = [n.name for n in graph.nodes if f"{n.name}.weight" in graph.weights]
            self.layers = nn.ModuleDict()
            for name in names:
                w = torch.from_numpy(graph.weights[f"{name}.weight"])
                if name.startswith("u"):
                    m = nn.ConvTranspose3d(w.shape[0], w.shape[1], w.shape[2:], w.shape[2:])
                else:
                    m = nn.Conv3d(w.shape[1], w.shape[0], w.shape[2:])
                m.weight.data = w
                m.bias.data = torch.from_numpy(graph.weights[f"{name}.bias"])
                self.layers[name] = m

        def forward(self, x):
            def block(t, a, b):
                return torch.relu(self.layers[b](torch.relu(self.layers[a](t))))

            def crop(t, like):
                s = [(t.shape[i] - like.shape[i]) // 2 for i in (2, 3, 4)]
                return t[:, :, s[0]:s[0] + like.shape[2], s[1]:s[1] + like.shape[3],
                         s[2]:s[2] + like.shape[4]]

            d0 = block(x, "d0a", "d0b")
            d1 = block(nn.functional.max_pool3d(d0, (1, 2, 2)), "d1a", "d1b")
            b = block(nn.functional.max_pool3d(d1, 2), "b0", "b1")
            u1 = self.layers["u1"](b)
            e1 = block(torch.cat([crop(d1, u1), u1], 1), "e1a", "e1b")
            u0 = self.layers["u0"](e1)
            e0 = block(torch.cat([crop(d0, u0), u0], 1), "e0a", "e0b")
            return torch.sigmoid(self.layers["head"](e0))

    return UNet().eval()


def test_the_oracle_matches_pytorch_on_a_valid_unet() -> None:
    torch = pytest.importorskip("torch")
    graph = load_graph(unet_spec()).random_weights(3)
    report = shape_report(graph.nodes, graph.output)
    size = tuple(n + s for n, s in zip(report.smallest_input, report.step, strict=True))
    x = np.random.default_rng(0).random(size, dtype=np.float32)
    with torch.no_grad():
        expected = _torch_unet(graph, torch)(torch.from_numpy(x)[None, None])
    out = forward(graph, x)
    assert out.shape == expected.shape[1:]
    assert relative_error(out, expected[0].numpy().astype(np.float64)) < 1e-5


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_the_oracle_matches_pytorch_on_a_same_padded_residual_net() -> None:
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    graph = load_graph(residual_spec()).random_weights(1)
    w = {k: torch.from_numpy(v) for k, v in graph.weights.items()}
    x = np.random.default_rng(2).standard_normal((2, 6, 8, 10)).astype(np.float32)
    t = torch.from_numpy(x)[None]
    with torch.no_grad():
        c0 = f.leaky_relu(f.conv3d(t, w["c0.weight"], w["c0.bias"], padding="same"), 0.1)
        c1 = f.elu(f.conv3d(c0, w["c1.weight"], w["c1.bias"], padding="same"), 0.7)
        c2 = f.conv3d(c1, w["c2.weight"], w["c2.bias"], padding="same")
        act = torch.relu(c0 + c2)
        up = f.interpolate(f.max_pool3d(act, 2), scale_factor=2, mode="nearest")
        expected = torch.softmax(f.conv3d(torch.cat([act, up], 1), w["out.weight"],
                                          w["out.bias"]), 1)
    out = forward(graph, x)
    assert relative_error(out, expected[0].numpy().astype(np.float64)) < 1e-5


@pytest.mark.parametrize("block", [None, (6, 28, 32), (8, 24, 24)])
def test_tiled_inference_equals_the_whole_volume_at_once(block) -> None:
    """The funlib/daisy property: blocks on the downsampling grid give the same output as the
    net on the whole volume, whatever the block size (rounded down to valid sizes)."""
    from znni.graph.infer import infer_graph
    from znni.graph.tiling import exact_tiling

    graph = load_graph(unet_spec()).random_weights(5)
    report = shape_report(graph.nodes, graph.output)
    volume = tuple(n + 3 * s for n, s in zip(report.smallest_input, report.step, strict=True))
    x = np.random.default_rng(4).random(volume, dtype=np.float32)
    expected = forward(graph, x)
    tiling = exact_tiling(graph, volume, block)
    assert tiling.output_extent == expected.shape[1:]
    if block is not None:
        assert len(tiling.tiles) > 1
    out = infer_graph(graph, x, block, threads=2)
    assert relative_error(out, expected) < 1e-4
    # a volume past the largest valid size: the tail is not used
    wider = np.pad(x, [(0, 1), (0, 2), (0, 3)])
    assert relative_error(infer_graph(graph, wider, block, threads=2), expected) < 1e-4


def test_tiling_refuses_padded_nets_and_small_volumes() -> None:
    from znni.graph.tiling import exact_tiling

    with pytest.raises(ShapeError, match="padding same"):
        exact_tiling(load_graph(residual_spec()), (16, 16, 16))
    graph = load_graph(unet_spec())
    with pytest.raises(ShapeError, match="less than the smallest input"):
        exact_tiling(graph, (4, 200, 200))


def test_the_dag_planner_fits_its_budget_and_grows_with_it() -> None:
    import math

    from znni.errors import PlanError
    from znni.graph.planner import plan_graph

    graph = load_graph(unet_spec())
    small, large = plan_graph(graph, 64 << 20), plan_graph(graph, 1 << 30)
    assert small.peak_bytes <= 64 << 20 and large.peak_bytes <= 1 << 30
    assert math.prod(large.block_input) > math.prod(small.block_input)
    assert large.throughput >= small.throughput
    for plan in (small, large):
        assert node_sizes(graph.nodes, plan.block_input)[graph.output] == plan.block_output
        assert {name for name, _ in plan.primitives} == {
            n.name for n in graph.nodes if type(n).__name__ == "Conv"}
    capped = plan_graph(graph, 1 << 30, extent=(30, 60, 60))  # no block beyond the volume
    assert all(b <= max(e, s) for b, e, s in zip(capped.block_input, (30, 60, 60),
                                                 (18, 44, 44), strict=True))
    with pytest.raises(PlanError, match="no block of network"):
        plan_graph(graph, 1 << 20)
    padded = load_graph(residual_spec())
    window = plan_graph(padded, 64 << 20).block_input
    assert all(n % 2 == 0 for n in window)  # windows on the downsampling grid


def sliding_spec() -> dict:
    """A ZNN-style sliding-window net with joins: a concat before the first pool, a residual
    add after it, two pools and no up-sampling (one output voxel per 2x4x4 input voxels)."""
    return {"version": 2, "name": "slide", "input_channels": 1, "nodes": [
        conv("c0", "input", 3, [1, 3, 3]), conv("c1", "c0", 3, [3, 3, 3]),
        {"name": "j0", "type": "concat", "inputs": ["c0", "c1"]},
        {"name": "p0", "type": "pool", "inputs": ["j0"], "window": [1, 2, 2]},
        conv("a", "p0", 5, [3, 3, 3]), conv("b", "p0", 5, [3, 1, 3]),
        conv("b2", "b", 5, [3, 3, 1], activation="linear"),
        {"name": "r", "type": "add", "inputs": ["a", "b2"]},
        {"name": "act", "type": "activation", "inputs": ["r"], "activation": "elu",
         "alpha": 0.5},
        {"name": "p1", "type": "pool", "inputs": ["act"], "window": [2, 2, 2]},
        conv("head", "p1", 2, [1, 3, 3], activation="sigmoid"),
    ]}


@pytest.mark.parametrize("block", [None, (20, 30, 27)])
def test_sliding_window_nets_run_dense(block) -> None:
    """A net whose pools no up-sampling undoes runs dense, pools as max filters: its output at
    voxel j is the pooled net on the input shifted by j mod D, at j div D (the oracle)."""
    import itertools

    from znni.graph.dense import dense_graph
    from znni.graph.infer import infer_graph
    from znni.graph.report import describe

    graph = load_graph(sliding_spec()).random_weights(6)
    assert "pools as max filters" in describe(graph)
    assert node_sizes(dense_graph(graph).nodes, (20, 30, 27))  # pitch 1: any size that fits
    x = np.random.default_rng(7).random((23, 41, 38), dtype=np.float32)
    dense = infer_graph(graph, x, block, threads=2)
    report = shape_report(graph.nodes, graph.output)
    d, n0, m0 = report.downsampling, report.smallest_input, report.output
    fov = [n0[a] - (m0[a] - 1) * d[a] for a in range(3)]  # one output voxel's input window
    assert dense.shape[1:] == tuple(x.shape[a] - fov[a] + 1 for a in range(3))
    for r in itertools.product(*(range(k) for k in d)):
        size = [n0[a] + (x.shape[a] - r[a] - n0[a]) // d[a] * d[a] for a in range(3)]
        coarse = forward(graph, x[r[0]:r[0] + size[0], r[1]:r[1] + size[1],
                                  r[2]:r[2] + size[2]])
        m = coarse.shape[1:]
        assert relative_error(dense[:, r[0]::d[0], r[1]::d[1], r[2]::d[2]][
            :, :m[0], :m[1], :m[2]], coarse) < 1e-4
