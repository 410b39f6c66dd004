"""Tiles write every output voxel exactly once, blocks group whole tiles, and plans
round-trip through JSON and are re-validated."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import znni
from znni.errors import PlanError
from znni.planner import Plan, default_patch, make_plan
from znni.runtime.tiling import blocks, tiles


def _written(tile) -> tuple[slice, ...]:
    return tuple(slice(tile.write_start[a], tile.start[a] + tile.size[a]) for a in range(3))


@given(extent=st.tuples(*[st.integers(1, 40)] * 3), patch=st.tuples(*[st.integers(1, 16)] * 3))
def test_tiles_write_every_output_voxel_once(extent, patch) -> None:
    covered = np.zeros(extent, int)
    for tile in tiles(extent, patch):
        for a in range(3):
            assert tile.start[a] >= 0 and tile.start[a] + tile.size[a] <= extent[a]
            assert tile.size[a] == min(patch[a], extent[a])
            assert tile.write_start[a] % patch[a] == 0
        covered[_written(tile)] += 1
    assert (covered == 1).all()


@given(extent=st.tuples(*[st.integers(1, 40)] * 3), patch=st.tuples(*[st.integers(1, 8)] * 3),
       multiple=st.tuples(*[st.integers(1, 3)] * 3))
def test_blocks_hold_whole_tiles_and_write_only_inside(extent, patch, multiple) -> None:
    block = tuple(p * m for p, m in zip(patch, multiple, strict=True))
    every = list(tiles(extent, patch))
    grouped = blocks(extent, patch, block)
    assert sorted(t.start for b in grouped for t in b.tiles) == sorted(t.start for t in every)
    covered = np.zeros(extent, int)
    for b in grouped:
        covered[tuple(slice(b.start[a], b.stop[a]) for a in range(3))] += 1
        for tile in b.tiles:
            inside = np.zeros(extent, bool)
            inside[tuple(slice(b.start[a], b.stop[a]) for a in range(3))] = True
            assert inside[_written(tile)].all()
    assert (covered == 1).all()


def test_plan_json_round_trip_and_revalidation() -> None:
    net = znni.load("n337")
    plan = make_plan(net, (16, 8, 24))
    assert Plan.from_json(plan.to_json(), net) == plan
    edited = plan.to_dict()
    edited["output_patch"] = [12, 8, 8]
    with pytest.raises(znni.ZnniError, match="multiple"):
        Plan.from_dict(edited, net)
    edited = plan.to_dict()
    edited["layers"][0]["primitive"] = "mpf"
    with pytest.raises(PlanError, match="cannot run"):
        Plan.from_dict(edited, net)
    with pytest.raises(PlanError, match="another network"):
        Plan.from_dict(plan.to_dict(), znni.load("n537"))


def test_default_patch_respects_budget_and_says_what_is_needed() -> None:
    net = znni.load("n337")
    roomy = default_patch(net, (200, 200, 200), 2 << 30)
    assert make_plan(net, roomy).peak_bytes <= 2 << 30
    tight = default_patch(net, (200, 200, 200), 1 << 30)
    assert make_plan(net, tight).peak_bytes <= make_plan(net, roomy).peak_bytes
    with pytest.raises(PlanError, match="raise the memory budget"):
        default_patch(net, (200, 200, 200), 1 << 20)


def test_the_planner_counts_the_patches_tiling_makes() -> None:
    """planner.plan.patches_needed (the planner may not import the runtime) == len(tiles)."""
    import itertools

    from znni.planner.plan import patches_needed
    from znni.runtime.tiling import tiles

    for extent in itertools.product([1, 5, 8, 9, 16, 17, 23], repeat=3):
        for patch in [(8, 8, 8), (16, 8, 4), (4, 4, 4)]:
            assert patches_needed(extent, patch) == len(list(tiles(extent, patch)))
