"""End to end: znni.infer (tiling + generated kernels + MPF + recombination) equals the oracle."""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import znni
from znni.errors import ShapeError
from znni.planner.plan import make_plan
from znni.primitives import in_place
from znni.primitives.base import release_tail
from znni.reference import forward

from .conftest import net_from_layers, random_volume, relative_error

TOL = 1e-4


def check(net: znni.Network, volume: np.ndarray, patch=None) -> np.ndarray:
    out = znni.infer(net, volume, patch)
    ref = forward(net, volume)
    assert out.shape == ref.shape
    assert relative_error(out, ref) < TOL
    return out


@pytest.mark.parametrize("name,extra", [("tiny", (5, 9, 12)), ("aniso2d3d", (4, 13, 6))])
def test_bundled_small_nets(name: str, extra: tuple) -> None:
    net = znni.load(name).random_weights(1)
    fov = net.fov
    check(net, random_volume(tuple(f + e for f, e in zip(fov, extra, strict=True))))


def test_n337_full_size() -> None:
    net = znni.load("n337").random_weights(2)
    check(net, random_volume((85 + 2, 85 + 10, 85 + 1), seed=3), patch=(8, 8, 8))


def _thin(name: str, channels: int) -> znni.Network:
    """A bundled topology with fewer maps, so the numpy oracle stays fast."""
    spec = znni.load(name).to_dict()
    for layer in spec["layers"][:-1]:
        if layer["type"] == "conv":
            layer["out_channels"] = channels
    return znni.load(spec).random_weights(4)


@pytest.mark.parametrize("name", ["n537", "n726", "n926"])
def test_benchmark_topologies_with_few_maps(name: str) -> None:
    net = _thin(name, 3)
    fov = net.fov
    check(net, random_volume((fov[0] + 3, fov[1], fov[2] + 1), seed=5))


def test_volume_equal_to_fov_gives_one_voxel() -> None:
    net = znni.load("tiny").random_weights(3)
    out = check(net, random_volume(net.fov))
    assert out.shape == (2, 1, 1, 1)


@pytest.mark.parametrize("patch", [(2, 2, 2), (4, 2, 6), (6, 8, 4), (16, 16, 16)])
def test_seams_are_invisible_for_any_patch(patch: tuple) -> None:
    net = znni.load("tiny").random_weights(5)
    vol = random_volume((20, 17, 23), seed=6)
    check(net, vol, patch)


def test_anisotropic_kernels_pools_many_channels_all_activations() -> None:
    net = net_from_layers([
        {"type": "conv", "kernel": [1, 3, 3], "out_channels": 5, "activation": "tanh"},
        {"type": "pool", "window": [1, 2, 2]},
        {"type": "conv", "kernel": [2, 3, 3], "out_channels": 6, "activation": "relu"},
        {"type": "pool", "window": [2, 1, 2]},
        {"type": "conv", "kernel": [1, 1, 1], "out_channels": 7, "activation": "sigmoid"},
        {"type": "conv", "kernel": [3, 1, 2], "out_channels": 2, "activation": "linear"},
    ], input_channels=3, seed=8)
    fov = net.fov
    check(net, random_volume((3, fov[0] + 4, fov[1] + 5, fov[2] + 3), seed=9), (2, 2, 4))


def test_pool_first_and_pool_last() -> None:
    net = net_from_layers([
        {"type": "pool", "window": [2, 2, 2]},
        {"type": "conv", "kernel": [2, 2, 2], "out_channels": 3, "activation": "relu"},
        {"type": "pool", "window": [1, 1, 2]},
    ], seed=10)
    check(net, random_volume((9, 8, 11), seed=11))


def test_uint8_is_scaled_to_unit_range() -> None:
    net = znni.load("tiny").random_weights(3)
    vol = np.random.default_rng(0).integers(0, 256, (12, 12, 12), dtype=np.uint8)
    np.testing.assert_allclose(znni.infer(net, vol),
                               znni.infer(net, vol.astype(np.float32) / 255), rtol=1e-6)


@pytest.mark.parametrize("volume,match", [
    (np.zeros((7, 12, 12), np.float32), "smaller than the field of view"),
    (np.zeros((2, 12, 12, 12), np.float32), "channel"),
    (np.zeros((12, 12), np.float32), "dimensions"),
    (np.zeros((12, 12, 12), np.complex64), "dtype"),
    (np.full((12, 12, 12), np.nan, np.float32), "NaN"),
])
def test_bad_volumes(volume: np.ndarray, match: str) -> None:
    with pytest.raises(ShapeError, match=match):
        znni.infer(znni.load("tiny").random_weights(0), volume)


def test_bad_patch() -> None:
    with pytest.raises(ShapeError, match="multiple"):
        znni.infer(znni.load("tiny").random_weights(0), random_volume((12, 12, 12)), (3, 2, 2))


conv = st.fixed_dictionaries({
    "type": st.just("conv"),
    "kernel": st.lists(st.integers(1, 3), min_size=3, max_size=3),
    "out_channels": st.integers(1, 5),
    "activation": st.sampled_from(["relu", "sigmoid", "tanh", "linear"]),
})
pool = st.fixed_dictionaries({"type": st.just("pool"),
                              "window": st.lists(st.integers(1, 2), min_size=3, max_size=3)})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.lists(st.one_of(conv, conv, pool), min_size=1, max_size=5),
       channels=st.integers(1, 2), extra=st.lists(st.integers(0, 6), min_size=3, max_size=3),
       seed=st.integers(0, 1000))
def test_random_small_nets(layers: list, channels: int, extra: list, seed: int) -> None:
    if not any(layer["type"] == "conv" for layer in layers):
        layers = [*layers, {"type": "conv", "kernel": [1, 1, 1], "out_channels": 2,
                            "activation": "linear"}]
    net = net_from_layers(layers, input_channels=channels, seed=seed)
    fov = net.fov
    vol = random_volume((channels, *(f + e for f, e in zip(fov, extra, strict=True))), seed=seed)
    frag = net.fragmentation
    check(net, vol, tuple(f * (1 + seed % 2) for f in frag))


def _two_pools() -> znni.Network:
    """Anisotropic kernels and pools, 2 input maps, three activations."""
    return net_from_layers([
        {"type": "conv", "kernel": [1, 3, 3], "out_channels": 4, "activation": "relu"},
        {"type": "pool", "window": [1, 2, 2]},
        {"type": "conv", "kernel": [2, 3, 3], "out_channels": 5, "activation": "tanh"},
        {"type": "pool", "window": [2, 2, 1]},
        {"type": "conv", "kernel": [1, 1, 1], "out_channels": 2, "activation": "sigmoid"},
    ], input_channels=2, seed=12)


@pytest.mark.parametrize("primitive", ["direct", "fft", "fft-pruned", "fft-data",
                                       "fft-pruned-data", "fft-pruned-lean", "auto"])
def test_every_primitive_end_to_end(primitive: str) -> None:
    net = _two_pools()
    fov = net.fov
    vol = random_volume((2, fov[0] + 5, fov[1] + 3, fov[2] + 7), seed=13)
    out = znni.infer(net, vol, (2, 4, 2), primitives=primitive)
    assert relative_error(out, forward(net, vol)) < TOL


def test_fft_on_a_benchmark_topology_with_mixed_primitives() -> None:
    net = _thin("n726", 4)
    fov = net.fov
    vol = random_volume((fov[0] + 2, fov[1] + 1, fov[2] + 3), seed=14)
    mixed = {0: "fft-pruned-data", 2: "fft", 4: "direct", 5: "fft-pruned"}
    out = znni.infer(net, vol, (4, 4, 4), primitives=mixed)
    assert relative_error(out, forward(net, vol)) < TOL


@pytest.mark.parametrize("winograd", ["winograd", "winograd-f4"])
def test_winograd_on_n337s_topology_fresh_and_in_place(winograd: str) -> None:
    """Every 3³ layer of (a thin) n337 as Winograd, one of them in place, several pools."""
    net = _thin("n337", 4)
    fov = net.fov
    vol = random_volume((fov[0] + 9, fov[1] + 3, fov[2] + 8), seed=15)
    choice = {i: winograd for i, layer in enumerate(net.layers)
              if layer.kind == "conv" and layer.kernel == (3, 3, 3)}
    plan = znni.make_plan(net, (8, 8, 16), 2, choice, {4: 1})
    assert [lp.primitive for lp in plan.layers].count(winograd) == 6
    out = znni.infer(net, vol, plan=plan)
    assert relative_error(out, forward(net, vol)) < TOL


def test_unknown_primitive_is_a_clear_error() -> None:
    with pytest.raises(znni.ZnniError, match="cannot run"):
        znni.infer(znni.load("tiny").random_weights(0), random_volume((12, 12, 12)),
                   primitives="warp-drive")


@pytest.mark.parametrize("primitive", ["direct", "fft-pruned", "fft-pruned-lean"])
def test_in_place_layers_equal_the_oracle(primitive: str) -> None:
    """Every layer after the first whose output is smaller written over its input, largest
    and smallest pass size; batch 1 (the first pool's single sample split by maps) and 2."""
    net = _two_pools()
    patch = (2, 4, 2)
    batch = 1 if primitive == "direct" else 2
    base = make_plan(net, patch, batch, primitive)
    for pick in (0, -1):
        units = {lp.index: options[pick] for lp in base.layers[1:]
                 if (options := in_place.groups(net.layers[lp.index], lp.input_shape))}
        assert len(units) >= 3
        plan = make_plan(net, patch, batch, primitive, units)
        for lp, fresh in zip(plan.layers[1:], base.layers[1:], strict=True):
            assert lp.in_place == units.get(lp.index, 0)
            assert lp.working_bytes < fresh.working_bytes or not lp.in_place
        fov = net.fov
        vol = random_volume((2, fov[0] + 9, fov[1] + 13, fov[2] + 6), seed=22)
        out = znni.infer(net, vol, plan=plan)
        assert relative_error(out, forward(net, vol)) < TOL


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS from /proc (Linux)")
def test_an_in_place_chain_gives_back_the_pages_past_its_output() -> None:
    """A chain keeps its first input's buffer: pages past each (smaller) output go back to
    the OS, and the kept floats are untouched."""
    buffer = np.empty(32 << 20, np.float32)  # 128 MiB, every page written
    buffer[:] = np.arange(buffer.size, dtype=np.float32)
    before = _rss()
    keep = 5_000_003  # not on a page boundary: that page, and the buffer's last, stay
    release_tail(buffer, keep)
    assert before - _rss() > 0.9 * (buffer.nbytes - 4 * keep)
    assert np.array_equal(buffer[:keep], np.arange(keep, dtype=np.float32))
    assert not buffer[keep + 1024:-1024].any()  # whole released pages read back as zeros


def test_in_place_is_refused_where_it_cannot_work() -> None:
    net = znni.load("tiny").random_weights(0)
    with pytest.raises(znni.ZnniError, match="cannot run in place"):
        make_plan(net, net.fragmentation, 1, None, {0: 1})
    with pytest.raises(znni.ZnniError, match="cannot run in place"):
        make_plan(net, net.fragmentation, 2, None, {2: 16})  # all 16 samples: no gain


@pytest.mark.parametrize("conv", ["direct", "fft-pruned"])
def test_max_filtered_pools_equal_the_oracle(conv: str) -> None:
    """Every pooling mode: the last 0, 1 or 2 pools as dense max filters (later layers
    dilated), the rest as fragments; patches on each mode's own grid."""
    net = _two_pools()
    pools = [i for i, layer in enumerate(net.layers) if layer.kind == "pool"]
    fov = net.fov
    vol = random_volume((2, fov[0] + 5, fov[1] + 6, fov[2] + 3), seed=15)
    ref = forward(net, vol)
    for filtered in range(len(pools) + 1):
        choice = {i: ("maxfilter" if i in pools[len(pools) - filtered:] else "mpf")
                  if i in pools else conv for i in range(len(net.layers))}
        patch = tuple(3 * f for f in net.fragmentation_with(filtered))
        plan = make_plan(net, patch, 2, choice)
        assert plan.max_filtered == filtered
        assert relative_error(znni.infer(net, vol, plan=plan), ref) < TOL


def test_max_filter_must_be_a_suffix_of_the_pools() -> None:
    net = _two_pools()
    with pytest.raises(znni.ZnniError, match="suffix"):
        make_plan(net, net.fragmentation, 1, {1: "maxfilter", 3: "mpf"})
    with pytest.raises(znni.ZnniError, match="cannot run"):
        make_plan(net, net.fragmentation, 1, {1: "mpf", 3: "direct"})
    with pytest.raises(znni.ZnniError, match="patch"):  # (1, 1, 1) needs both max-filtered
        make_plan(net, (1, 1, 1), 1, {3: "maxfilter"})
