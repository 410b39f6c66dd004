"""Masks skip empty output blocks: skipped blocks hold the fill value and are recorded done,
computed ones equal an unmasked run bit for bit; masks on a coarser grid; bad masks refused
before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import znni
from znni.cli import main
from znni.errors import ShapeError
from znni.runtime import job
from znni.runtime.job import infer_volume

from .conftest import random_volume
from .test_volume_job import _net


@pytest.fixture
def small_blocks(monkeypatch) -> None:
    monkeypatch.setattr(job, "BLOCK_BYTES", 30_000)  # dozens of blocks on small volumes


def _tissue(shape: tuple[int, int, int], factor: int) -> np.ndarray:
    """A mask (on a grid ``factor`` times coarser) that is nonzero in one corner only."""
    mask = np.zeros([-(-n // factor) for n in shape], np.uint8)
    mask[: mask.shape[0] // 2, : mask.shape[1] // 3, :] = 1
    return mask


@pytest.mark.parametrize("factor", [1, 3])
def test_masked_blocks_are_filled_and_the_rest_is_bit_identical(tmp_path, small_blocks,
                                                                factor) -> None:
    net = _net()
    shape = (29, 34, 31)
    np.save(tmp_path / "in.npy", random_volume(shape, seed=3))
    np.save(tmp_path / "mask.npy", _tissue(shape, factor))
    plan = znni.make_plan(net, (2, 4, 6), 2, "direct")
    src = str(tmp_path / "in.npy")
    full = infer_volume(net, src, str(tmp_path / "full.npy"), plan=plan, threads=2)
    masked = infer_volume(net, src, str(tmp_path / "masked.npy"), plan=plan, threads=2,
                          mask=str(tmp_path / "mask.npy"), mask_fill=-1.0)
    assert masked.blocks_masked >= masked.blocks_run // 2 and full.blocks_masked == 0
    assert masked.output_voxels < full.output_voxels
    ours, reference = np.load(tmp_path / "masked.npy"), np.load(tmp_path / "full.npy")
    filled = ours == -1.0
    np.testing.assert_array_equal(ours[~filled], reference[~filled])
    # every output voxel whose field of view is centred on tissue was computed
    centre = [(f - 1) // 2 for f in net.fov]
    mask = _tissue(shape, factor)
    z, y, x = np.meshgrid(*[(np.arange(ours.shape[1 + a]) + centre[a]) // factor
                            for a in range(3)], indexing="ij")
    tissue = mask[z, y, x] > 0
    assert not filled[:, tissue].any()
    again = infer_volume(net, src, str(tmp_path / "masked.npy"), plan=plan, threads=2,
                         mask=str(tmp_path / "mask.npy"), mask_fill=-1.0)
    assert again.blocks_run == 0  # skipped blocks were recorded done


@pytest.mark.parametrize("mask,words", [
    (np.ones((2, 10, 10, 10), np.uint8), "2 channels"),
    (np.ones((11, 17, 31), np.uint8), "whole-factor downsampling"),
])
def test_bad_masks_are_refused_and_nothing_is_written(tmp_path, mask, words) -> None:
    np.save(tmp_path / "in.npy", random_volume((29, 34, 31), seed=3))
    np.save(tmp_path / "mask.npy", mask)
    with pytest.raises(ShapeError, match=words):
        infer_volume(_net(), str(tmp_path / "in.npy"), str(tmp_path / "out.npy"),
                     mask=str(tmp_path / "mask.npy"))
    assert not (tmp_path / "out.npy").exists()


def test_cli_reports_the_skipped_fraction(tmp_path, small_blocks) -> None:
    shape = (29, 34, 31)
    np.save(tmp_path / "in.npy", random_volume(shape, seed=3))
    np.save(tmp_path / "mask.npy", _tissue(shape, 2))
    result = CliRunner().invoke(main, [
        "infer", "tiny", "--random-weights", "0", "--input", str(tmp_path / "in.npy"),
        "--output", str(tmp_path / "out.npy"), "--mask", str(tmp_path / "mask.npy"),
        "--threads", "2", "--quiet", "--patch", "8"])
    assert result.exit_code == 0, result.output
    assert "the mask skipped" in result.output
    missing = CliRunner().invoke(main, [
        "infer", "tiny", "--random-weights", "0", "--input", str(tmp_path / "in.npy"),
        "--output", str(tmp_path / "out2.npy"), "--mask", str(tmp_path / "nothing.npy")])
    assert missing.exit_code == 2 and "not found" in missing.output, missing.output
    assert not (tmp_path / "out2.npy").exists()
