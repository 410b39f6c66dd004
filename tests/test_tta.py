"""Test-time augmentation: the mean of the net over flipped (and y/x-transposed) inputs, each
output mapped back, equals the same mean of the float64 reference; plans carry it and cost it;
volumes on disk get the in-memory bits; nets that differ along y and x refuse transposes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from click.testing import CliRunner

import znni
from znni.cli import main
from znni.errors import PlanError
from znni.planner.plan import Plan
from znni.reference import forward
from znni.runtime.job import infer_volume
from znni.tta import variants

from .conftest import net_from_layers, random_volume, relative_error

POOLED = [  # anisotropic in z, the same along y and x; two pools (fragments)
    {"type": "conv", "kernel": [1, 3, 3], "out_channels": 4, "activation": "relu"},
    {"type": "pool", "window": [1, 2, 2]},
    {"type": "conv", "kernel": [2, 3, 3], "out_channels": 4, "activation": "tanh"},
    {"type": "pool", "window": [2, 2, 2]},
    {"type": "conv", "kernel": [2, 2, 2], "out_channels": 2, "activation": "sigmoid"},
]


def _flipped_mean(net: znni.Network, volume: np.ndarray, transpose: bool) -> np.ndarray:
    """The reference's mean over the flips (and transposes) of the whole volume, each output
    mapped back: what a sliding-window net's TTA is, voxel by voxel."""
    outs = []
    for flips in itertools.chain.from_iterable(
            itertools.combinations(range(3), k) for k in range(4)):
        for swap in (False, True) if transpose else (False,):
            x = np.flip(volume, axis=tuple(1 + a for a in flips)) if flips else volume
            x = x.swapaxes(2, 3) if swap else x
            y = forward(net, np.ascontiguousarray(x)).astype(np.float64)
            y = y.swapaxes(2, 3) if swap else y
            outs.append(np.flip(y, axis=tuple(1 + a for a in flips)) if flips else y)
    return np.mean(outs, axis=0)


@pytest.mark.parametrize("mode,primitive", [("flips", "direct"), ("flips", "fft-pruned"),
                                            ("flips+transpose", "direct")])
def test_tta_equals_the_mean_of_the_flipped_references(mode, primitive) -> None:
    net = net_from_layers(POOLED, seed=4)
    volume = random_volume((1, 14, 19, 19), seed=5)
    patch = (2, 4, 4)
    out = znni.infer(net, volume, patch, primitives=primitive, threads=2, tta=mode)
    expected = _flipped_mean(net, volume, mode == "flips+transpose")
    assert relative_error(out, expected) < 1e-5
    plain = znni.infer(net, volume, patch, primitives=primitive, threads=2)
    assert relative_error(plain, expected) > 1e-3  # the augmentation changed something


def test_plans_carry_and_cost_the_augmentation(tmp_path) -> None:
    net = znni.load("n337")
    base = znni.plan(net, "1GiB", threads=2)
    flipped = znni.plan(net, "1GiB", threads=2, tta="flips")
    assert flipped.tta == "flips" and len(variants("flips")) == 8
    assert flipped.predicted_seconds == pytest.approx(8 * sum(lp.seconds for lp in
                                                               flipped.layers))
    assert flipped.peak_bytes <= 1 << 30
    assert (flipped.predicted_throughput or 0) < (base.predicted_throughput or 0) / 6
    again = Plan.from_json(flipped.to_json(), net)
    assert again.tta == "flips"
    both = znni.plan(net, "1GiB", threads=2, tta="flips+transpose")
    assert both.output_patch[1] == both.output_patch[2]
    result = CliRunner().invoke(main, ["plan", "n337", "--memory", "1GiB", "--tta", "flips"])
    assert result.exit_code == 0 and "8 runs per patch" in result.output, result.output


def test_transposes_need_a_net_alike_along_y_and_x() -> None:
    net = net_from_layers([{"type": "conv", "kernel": [3, 3, 1], "out_channels": 2,
                            "activation": "relu"}], seed=1)
    with pytest.raises(PlanError, match="not the same along y and x"):
        znni.plan(net, "256MiB", tta="flips+transpose")
    with pytest.raises(PlanError, match="square in y and x"):
        znni.infer(net_from_layers(POOLED, seed=4), random_volume((1, 14, 19, 23)), (2, 4, 8),
                   tta="flips+transpose")


def test_volumes_on_disk_get_the_in_memory_bits(tmp_path) -> None:
    net = net_from_layers(POOLED, seed=4)
    volume = random_volume((1, 16, 27, 25), seed=6)
    np.save(tmp_path / "in.npy", volume)
    plan = Plan.from_dict(znni.make_plan(net, (2, 4, 4), 2, "fft-pruned").to_dict()
                          | {"tta": "flips"}, net)
    infer_volume(net, str(tmp_path / "in.npy"), str(tmp_path / "out.npy"), plan=plan,
                 threads=2)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"),
                                  znni.infer(net, volume, plan=plan, threads=2))
    with pytest.raises(PlanError, match="runs --tta flips, not flips\\+transpose"):
        znni.infer(net, volume, plan=plan, tta="flips+transpose")
