"""DAG networks on volumes on disk: valid nets in exact blocks and padded nets in blocks of
blended windows, both bit-identical to the in-memory paths; interrupted runs resume to the same
bits; a changed job recomputes."""

from __future__ import annotations

import numpy as np
import pytest

from znni.errors import PlanError, ShapeError, ZnniError
from znni.graph import load_graph, shape_report
from znni.graph.infer import infer_graph
from znni.graph.job import infer_graph_volume
from znni.graph.sliding import sliding_window
from znni.runtime.infer import PROCESS_BYTES

from .test_graph import residual_spec, unet_spec


class Stop(Exception):
    """Stands for a kill between blocks."""


def _stop_after(blocks: int):
    def progress(done, total, stats):
        if stats.blocks_run == blocks:
            raise Stop

    return progress


def test_a_valid_net_resumes_to_the_bits_of_one_run(tmp_path) -> None:
    graph = load_graph(unet_spec()).random_weights(5)
    report = shape_report(graph.nodes, graph.output)
    block = tuple(n + s for n, s in zip(report.smallest_input, report.step, strict=True))
    volume = tuple(n + 3 * s for n, s in zip(report.smallest_input, report.step, strict=True))
    x = np.random.default_rng(1).random(volume, dtype=np.float32)
    np.save(tmp_path / "in.npy", x)
    src, dst = str(tmp_path / "in.npy"), str(tmp_path / "out.zarr")
    with pytest.raises(Stop):
        infer_graph_volume(graph, src, dst, block, 0.25, "gaussian", 2,
                           progress=_stop_after(2))
    again = infer_graph_volume(graph, src, dst, block, 0.25, "gaussian", 2)
    assert again.stats.blocks_skipped == 2 and again.stats.blocks_run > 0
    zarr = pytest.importorskip("zarr")
    stored = np.asarray(zarr.open_array(dst, mode="r")[...])
    np.testing.assert_array_equal(stored, infer_graph(graph, x, block, threads=2))
    done = infer_graph_volume(graph, src, dst, block, 0.25, "gaussian", 2)
    assert done.stats.blocks_run == 0  # all done: nothing runs
    np.save(tmp_path / "in.npy", x[::-1].copy())  # a changed input: everything again
    changed = infer_graph_volume(graph, src, dst, block, 0.25, "gaussian", 2)
    assert changed.stats.blocks_skipped == 0
    np.testing.assert_array_equal(np.asarray(zarr.open_array(dst, mode="r")[...]),
                                  infer_graph(graph, x[::-1].copy(), block, threads=2))


@pytest.fixture
def small_room() -> int:
    """A budget that leaves the blocks a few hundred kB: several blocks on a small volume."""
    return PROCESS_BYTES + 400_000


@pytest.mark.parametrize("blend,shape", [("gaussian", (20, 27, 30)), ("none", (20, 27, 30)),
                                         ("bump", (6, 60, 64))])
def test_padded_nets_blend_block_by_block_as_in_memory(tmp_path, small_room, blend,
                                                       shape) -> None:
    """Blocks of windows (several here: a small budget) give the whole volume's blend bit for
    bit, a volume thinner than the window (zero-padded as MONAI pads) included, and resume."""
    graph = load_graph(residual_spec()).random_weights(2)
    x = np.random.default_rng(4).random((2, *shape), dtype=np.float32)
    np.save(tmp_path / "in.npy", x)
    src, dst = str(tmp_path / "in.npy"), str(tmp_path / "out.npy")
    roi = (8, 8, 8)
    with pytest.raises(Stop):
        infer_graph_volume(graph, src, dst, roi, 0.25, blend, 2, small_room,
                           progress=_stop_after(1))
    run = infer_graph_volume(graph, src, dst, roi, 0.25, blend, 2, small_room)
    assert run.blended and run.stats.blocks_skipped == 1 and run.stats.blocks_run > 1
    expected = sliding_window(graph, x, roi, 0.25, blend, threads=2)
    np.testing.assert_array_equal(np.load(dst), expected)


def test_blocks_of_windows_that_cannot_fit_say_so(tmp_path, small_room) -> None:
    graph = load_graph(residual_spec()).random_weights(2)
    np.save(tmp_path / "in.npy", np.zeros((2, 40, 40, 40), np.float32))
    with pytest.raises(PlanError, match=r"windows needs .* more than the budget leaves"):
        infer_graph_volume(graph, str(tmp_path / "in.npy"), str(tmp_path / "out.npy"),
                           (24, 24, 24), 0.25, "gaussian", 2, small_room)
    with pytest.raises(ShapeError, match="does not fit the network"):
        infer_graph_volume(graph, str(tmp_path / "in.npy"), str(tmp_path / "out.npy"),
                           (7, 8, 8), 0.25, "gaussian", 2, small_room)
    assert not (tmp_path / "out.npy").exists()


def test_dag_specs_refuse_masks_and_augmentation_clearly(tmp_path) -> None:
    import json

    from click.testing import CliRunner

    from znni.cli import main

    (tmp_path / "net.json").write_text(json.dumps(residual_spec()))
    np.save(tmp_path / "in.npy", np.zeros((2, 8, 8, 8), np.float32))
    from znni.graph.job import infer_graph_volume

    with pytest.raises(ZnniError, match="do not align with a precomputed layer"):
        infer_graph_volume(load_graph(residual_spec()).random_weights(0),
                           str(tmp_path / "in.npy"), f"precomputed://file://{tmp_path}/out",
                           None, 0.25, "gaussian", 2)
    for extra in (["--mask", str(tmp_path / "in.npy")], ["--tta", "flips"]):
        result = CliRunner().invoke(main, [
            "infer", str(tmp_path / "net.json"), "--random-weights", "0", "--input",
            str(tmp_path / "in.npy"), "--output", str(tmp_path / "out.npy"), *extra])
        assert result.exit_code == 2 and "for chain networks" in result.output, result.output
        assert not (tmp_path / "out.npy").exists()
