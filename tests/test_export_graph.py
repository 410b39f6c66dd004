"""DAG plans (spec v2) exported: the library built with make (or CMake) runs one block and its
output equals the float64 oracle (znni.graph.reference); plans round-trip through JSON and are
re-validated; ``znni plan -o`` + ``znni export`` work on DAG specs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import znni
from znni.cli import main
from znni.errors import PlanError, ShapeError
from znni.export_graph import export_graph_plan
from znni.graph import Graph, load_graph, node_sizes
from znni.graph.nodes import Conv
from znni.graph.planner import GraphPlan, graph_digest
from znni.graph.reference import forward

from .conftest import random_volume, relative_error
from .test_export import build_and_run, pytestmark  # noqa: F401  (same skip: needs make)
from .test_export_fftw import _has_fftw
from .test_graph import residual_spec, sliding_spec, unet_spec

#: float32 kernels against the float64 oracle (the brief's acceptance bound).
TOLERANCE = 1e-4


def block_plan(graph: Graph, block: tuple[int, int, int],
               primitives: dict[str, str] | None = None) -> GraphPlan:
    """A plan of ``graph`` for one ``block`` (every conv direct unless ``primitives`` says
    otherwise), as a user would write it by hand; the export re-validates it."""
    chosen = {n.name: "direct" for n in graph.nodes if isinstance(n, Conv)} | (primitives or {})
    out = node_sizes(graph.nodes, block)[graph.output]
    return GraphPlan(block, out, out, tuple(sorted(chosen.items())), 1.0, 0, 0,
                     graph_digest(graph))


def run_export(graph: Graph, plan: GraphPlan, directory: Path, seed: int,
               cmake: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(exported library's output, oracle's output) on a random input block."""
    volume = random_volume((graph.input_channels, *plan.block_input), seed=seed)
    ours = build_and_run(directory, volume, (graph.output_channels, *plan.block_output),
                         threads=2, cmake=cmake)
    return ours, forward(graph, volume)


def test_valid_unet_export_equals_the_oracle(tmp_path: Path) -> None:
    """Anisotropic first level, concat skips of centre-cropped features, transposed
    up-sampling; a non-cubic block; a Winograd and an FFT node exported as direct."""
    graph = load_graph(unet_spec()).random_weights(5)
    plan = block_plan(graph, (20, 48, 44), {"b0": "winograd", "e1a": "fft-pruned"})
    result = export_graph_plan(plan, graph, tmp_path / "lib")
    assert result.converted == (("b0", "winograd"), ("e1a", "fft-pruned"))
    assert "node 'e1a'" in result.notes()[1] and "--fftw" in result.notes()[1]
    ours, expected = run_export(graph, plan, tmp_path / "lib", seed=6)
    error = relative_error(ours, expected)
    print(f"DAG export (valid U-Net) vs oracle: {error:.1e}")
    assert error <= TOLERANCE


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_padded_net_export_equals_the_oracle_built_with_cmake(tmp_path: Path) -> None:
    """Same padding, leaky_relu and elu (parameters from the weights file), add, a relu node,
    pooling, nearest up-sampling, concat and a softmax over the channels; one conv dilated."""
    spec = residual_spec()
    spec["nodes"][1]["dilation"] = [2, 2, 1]  # c1: kernel 3x3x1, padding 4x4x0
    graph = load_graph(spec).random_weights(7)
    plan = block_plan(graph, (6, 8, 10))
    result = export_graph_plan(plan, graph, tmp_path / "lib")
    assert result.converted == ()
    # Only integers reach generated source: every table row is a list of integers.
    for table in ("nodes.inc", "inputs.inc", "layers.inc"):
        for line in (tmp_path / "lib" / table).read_text().splitlines():
            assert re.fullmatch(r"ZNNI_[A-Z]+\((-?\d+, )*-?\d+\)", line), line
    ours, expected = run_export(graph, plan, tmp_path / "lib", seed=8, cmake=True)
    error = relative_error(ours, expected)
    print(f"DAG export (same-padded net) vs oracle: {error:.1e}")
    assert error <= TOLERANCE
    assert np.allclose(ours.sum(axis=0), 1, atol=1e-5)  # softmax over the channels


def test_sliding_window_net_exports_dense(tmp_path: Path) -> None:
    """Pools never undone by up-sampling: the library runs the net dense, as znni does (max
    filters, dilated kernels; graph/dense.py), and equals the oracle of the dense net."""
    from znni.graph.dense import dense_graph
    from znni.graph.planner import plan_graph

    graph = load_graph(sliding_spec()).random_weights(3)
    plan = plan_graph(graph, 256 << 20, threads=2, block=(14, 22, 21))
    export_graph_plan(plan, graph, tmp_path / "lib")
    volume = random_volume((graph.input_channels, *plan.block_input), seed=4)
    ours = build_and_run(tmp_path / "lib", volume, (graph.output_channels, *plan.block_output),
                         threads=2)
    assert relative_error(ours, forward(dense_graph(graph), volume)) <= TOLERANCE


def test_fft_nodes_as_fftw_kernels(tmp_path: Path) -> None:
    graph = load_graph(residual_spec()).random_weights(9)
    plan = block_plan(graph, (4, 6, 4), {"c0": "fft", "c2": "fft-pruned", "c1": "winograd"})
    result = export_graph_plan(plan, graph, tmp_path / "lib", fftw=True)
    assert result.converted == (("c1", "winograd"),)
    assert "-lfftw3f" in (tmp_path / "lib" / "Makefile").read_text()
    if not _has_fftw():
        pytest.skip("building needs FFTW3 (libfftw3-dev)")
    ours, expected = run_export(graph, plan, tmp_path / "lib", seed=10)
    assert relative_error(ours, expected) <= TOLERANCE


def test_graph_plans_round_trip_and_are_revalidated() -> None:
    graph = load_graph(unet_spec())
    plan = block_plan(graph, (20, 48, 44), {"b1": "winograd-f4"})
    data = json.loads(plan.to_json())
    assert GraphPlan.from_dict(data, graph) == plan
    other = load_graph(residual_spec())
    for change, error, match in [
        ({"kind": None}, PlanError, "not a znni DAG plan"),
        ({"network_digest": graph_digest(other)}, PlanError, "another network"),
        ({"block_input": [20, 48, 45]}, ShapeError, "along x"),
        ({"block_input": [20, 48]}, PlanError, "block_input must be 3"),
        ({"primitives": {**data["primitives"], "b1": "cuda"}}, PlanError, "unknown primitive"),
        ({"primitives": {"b1": "direct"}}, PlanError, "exactly the conv nodes"),
        ({"seconds": -1}, PlanError, "non-negative"),
    ]:
        with pytest.raises(error, match=match):
            GraphPlan.from_dict({**data, **change}, graph)


def test_cli_plan_and_export_a_dag_spec(tmp_path: Path) -> None:
    graph = load_graph(residual_spec()).random_weights(11)
    spec, weights = tmp_path / "net.json", tmp_path / "w.npz"
    spec.write_text(json.dumps(graph.to_dict()))
    graph.save_weights(weights)
    runner = CliRunner()
    planned = runner.invoke(main, ["plan", str(spec), "--memory", "256MiB", "--extent",
                                   "6,8,6", "-o", str(tmp_path / "plan.json")])
    assert planned.exit_code == 0, planned.output
    plan = GraphPlan.load(str(tmp_path / "plan.json"), graph)
    out_dir = tmp_path / "lib"
    args = ["export", str(tmp_path / "plan.json"), "--net", str(spec), "--weights",
            str(weights), "--out", str(out_dir)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"exported {graph.name!r}" in result.output
    ours, expected = run_export(graph, plan, out_dir, seed=12)
    assert relative_error(ours, expected) <= TOLERANCE

    # a chain plan for a DAG spec, and a DAG plan of another net: one-paragraph errors
    chain = znni.make_plan(znni.load("tiny").random_weights(0), (2, 2, 2))
    (tmp_path / "chain.json").write_text(chain.to_json())
    unet = load_graph(unet_spec())
    (tmp_path / "unet.json").write_text(block_plan(unet, (18, 44, 44)).to_json())
    for plan_file, match in [("chain.json", "not a znni DAG plan"),
                             ("unet.json", "another network")]:
        refused = runner.invoke(main, ["export", str(tmp_path / plan_file), *args[2:-1],
                                       str(tmp_path / f"out-{plan_file}")])
        assert refused.exit_code == 2 and match in refused.output, refused.output
        assert "Traceback" not in refused.output
        assert not (tmp_path / f"out-{plan_file}").exists()
