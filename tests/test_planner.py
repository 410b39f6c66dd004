"""The planner: search within a budget, plans as exact JSON, device descriptions, tuning records,
batched plans at run time."""

from __future__ import annotations

import itertools
import json
import math
import types
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import znni
from znni.errors import PlanError
from znni.planner import Device, Plan, make_plan, plan, tuning
from znni.planner import search as search_module
from znni.planner.device import load_device
from znni.planner.plan import patches_needed
from znni.planner.tuning import TuningRecords
from znni.reference import forward

from .conftest import random_volume, relative_error

DEVICE = "xeon-2core"  # the bundled example description (also ZNNI_DEVICE in conftest)
GIB = 2 ** 30


@pytest.mark.parametrize("name", ["n337", "n537", "n726", "n926"])
def test_plans_fit_their_budget_and_round_trip_exactly(name: str) -> None:
    net = znni.load(name)
    previous_peak = None
    for budget in (8 * GIB, 4 * GIB):
        p = plan(net, budget, device=DEVICE)
        assert p.peak_bytes <= budget
        if previous_peak is not None:
            assert p.peak_bytes <= previous_peak  # a smaller budget never plans more memory
        previous_peak = p.peak_bytes
        text = p.to_json()
        data = json.loads(text)
        assert data["predicted_throughput"] > 0 and data["peak_bytes"] == p.peak_bytes
        assert all(layer["seconds"] > 0 and layer["cost"] == "model" for layer in data["layers"])
        assert data["planning"]["budget_bytes"] == budget
        assert data["alternatives"], "the plan explains what it did not pick"
        again = Plan.from_json(text, net)
        assert again == p and again.to_json() == text


def test_budget_strings_and_impossible_budgets() -> None:
    net = znni.load("n337")
    assert plan(net, "512MiB", device=DEVICE).peak_bytes <= 512 << 20
    with pytest.raises(PlanError, match=r"no plan .* fits") as info:
        plan(net, "1MiB", device=DEVICE)
    assert "raise the memory budget" in info.value.hint
    with pytest.raises(znni.ZnniError, match="cannot read memory size"):
        plan(net, "lots", device=DEVICE)
    with pytest.raises(znni.ZnniError, match="too large"):  # was an OverflowError traceback
        plan(net, "1" + "0" * 400, device=DEVICE)
    with pytest.raises(PlanError, match="unknown effort"):
        plan(net, "1GiB", device=DEVICE, effort="guess")


def test_extent_caps_the_patch() -> None:
    net = znni.load("n337")
    p = plan(net, 4 * GIB, device=DEVICE, extent=(10, 30, 17))
    # each axis at most rounded up to the fragmentation (8), or finer with max-filtered pools
    assert all(p.output_patch[a] <= (16, 32, 24)[a] for a in range(3))
    assert p.padding_fraction <= 1 - 10 * 30 * 17 / (16 * 32 * 24)


@settings(max_examples=15)
@given(net_name=st.sampled_from(["n337", "tiny", "aniso2d3d"]),
       extent=st.tuples(*[st.integers(1, 120)] * 3),
       budget=st.sampled_from([GIB // 2, 2 * GIB]))
def test_no_plan_computes_patches_the_volume_does_not_need(net_name, extent, budget) -> None:
    """A batch never holds more patches than the volume has, no patch axis is more than one
    fragmentation step past the volume, and the plan reports its padding."""
    net = znni.load(net_name)
    try:
        p = plan(net, budget, device=DEVICE, extent=extent)
    except PlanError:
        return  # the budget holds no patch at all (said elsewhere)
    needed = patches_needed(extent, p.output_patch)
    assert p.batch <= needed and p.extent == extent
    frag = net.fragmentation
    assert all(p.output_patch[a] < extent[a] + frag[a] for a in range(3))
    computed = p.runs * p.batch * math.prod(p.output_patch)
    assert p.padding_fraction == pytest.approx(1 - math.prod(extent) / computed)
    assert 0 <= p.padding_fraction < 1
    assert Plan.from_json(p.to_json(), net) == p


def test_one_patch_volume_plans_one_patch_of_that_size() -> None:
    """The demo's case: a 64³ volume of n337 is one 64³ patch, batch 1, no padding."""
    p = plan(znni.load("n337"), 16 * GIB, device=DEVICE, extent=(64, 64, 64))
    assert (p.output_patch, p.batch, p.runs, p.padding_fraction) == ((64, 64, 64), 1, 1, 0.0)


def test_infer_plans_for_the_volume_it_is_given() -> None:
    net = znni.load("tiny").random_weights(3)
    volume = random_volume(tuple(n + 3 for n in net.fov), seed=2)  # a 4³ output
    from znni.runtime.infer import output_extent, plan_for_volume

    p = plan_for_volume(net, output_extent(net, volume.shape), None, 4 * GIB)
    assert p.extent == (4, 4, 4) and p.batch <= patches_needed(p.extent, p.output_patch)


def test_planned_run_equals_reference_and_batches_tiles() -> None:
    net = znni.load("tiny").random_weights(7)
    fov = net.fov
    volume = random_volume((fov[0] + 9, fov[1] + 5, fov[2] + 11), seed=8)
    ref = forward(net, volume)
    for batch in (1, 2, 3):  # 3 patches of 4³ per axis... the last group is short
        p = make_plan(net, (4, 4, 4), batch)
        assert relative_error(znni.infer(net, volume, plan=p), ref) < 1e-4
    planned = znni.infer(net, volume, memory=512 << 20)  # the search, within 512 MiB
    assert relative_error(planned, ref) < 1e-4


def test_hand_edited_plan_is_revalidated() -> None:
    net = znni.load("n337")
    data = plan(net, GIB, device=DEVICE).to_dict()
    data["layers"][2]["primitive"] = "direct"
    data["layers"][2]["working_bytes"] = 1  # recomputed, not trusted
    edited = Plan.from_dict(data, net)
    assert edited.layers[2].primitive == "direct" and edited.layers[2].working_bytes > 1
    data["layers"][2]["seconds"] = "fast"
    with pytest.raises(PlanError, match="malformed plan"):
        Plan.from_dict(data, net)
    data["layers"][2]["seconds"] = 1.0
    data["alternatives"] = [{"output_patch": [8, 8], "batch": 1}]
    with pytest.raises(PlanError, match="malformed plan"):
        Plan.from_dict(data, net)


def _device_dict() -> dict:
    return Device.load(DEVICE).to_dict()


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("bandwidth"), "missing 'bandwidth'"),
    (lambda d: d.update(mac_flops=-1), "'mac_flops' must be a positive number"),
    (lambda d: d.update(threads="two"), "'threads' must be a positive number"),
    (lambda d: d.update(version=7), "not a znni device description"),
    (lambda d: d.update(kind="tpu"), "kind 'tpu' is not supported"),
    (lambda d: d.update(corrections={"warp-drive": [[8, 1.0]]}), "unknown primitive 'warp-drive'"),
    (lambda d: d.update(corrections={"direct": [[8, 0]]}), "'direct' must be a list of"),
    (lambda d: d.update(corrections={"direct": 1.5}), "'direct' must be a list of"),
    (lambda d: d.update(corrections={"direct": [[8, 1], [8, 2]]}), "repeats an image size"),
    (lambda d: d.update(corrections=[1.0]), "'corrections' must be an object"),
    (lambda d: d.update(fresh_bandwidth="fast"), "'fresh_bandwidth' must be a positive"),
])
def test_bad_device_descriptions(tmp_path, edit, match) -> None:
    data = _device_dict()
    edit(data)
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=match):
        load_device(path)
    path.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        load_device(path)
    with pytest.raises(PlanError, match="cannot read device description"):
        Device.load(tmp_path / "missing.json")


def test_a_slower_device_predicts_less_and_plans_alike() -> None:
    net = znni.load("n726")
    fast = Device.load(DEVICE)
    slow_data = fast.to_dict() | {k: fast.to_dict()[k] / 4 for k in (
        "direct_flops", "mac_flops", "fft_flops", "bandwidth", "peak_flops")}
    slow = Device.from_dict(slow_data)
    a, b = plan(net, 4 * GIB, device=fast), plan(net, 4 * GIB, device=slow)
    # Rates scale every cost but the Python per block of in-place transpositions.
    assert math.isclose(a.predicted_throughput, 4 * b.predicted_throughput, rel_tol=1e-3)


@pytest.fixture
def records(tmp_path, monkeypatch) -> TuningRecords:
    store = TuningRecords(tmp_path / "tuning.json")
    monkeypatch.setattr(search_module, "TuningRecords", lambda: TuningRecords(store.path))
    return store


def test_measure_effort_records_every_candidate_and_reuses_them(records, monkeypatch) -> None:
    net = znni.load("tiny")
    first = plan(net, 64 << 20, effort="measure")
    stored = json.loads(records.path.read_text())
    assert stored and all(r["effort"] == "measure" and len(r["times"]) == 3
                          for r in stored.values())
    assert {json.loads(k)[2] for k in stored} >= {"direct", "mpf"}
    assert any(lp.cost == "measured" for lp in first.layers)

    def no_more(*args, **kwargs):
        raise AssertionError("a recorded timing was measured again")

    monkeypatch.setattr(search_module, "measure", no_more)
    again = plan(net, 64 << 20, effort="measure")
    assert again.layers == first.layers
    with pytest.raises(AssertionError, match="measured again"):
        plan(net, 64 << 20, effort="exhaustive")  # needs more rigour than was recorded


def test_a_plan_stopped_by_the_timing_cap_is_repeated_without_timing(records,
                                                                    monkeypatch) -> None:
    """The safety net on how much tuning a network gets counts records, not rounds: a repeat
    of a plan that the net stopped stops at once too."""
    monkeypatch.setattr(search_module, "TIMINGS_PER_LAYER", 1)
    net = znni.load("tiny")
    first = plan(net, 64 << 20, effort="measure")
    assert len(json.loads(records.path.read_text())) >= len(net.layers)

    def no_more(*args, **kwargs):
        raise AssertionError("a recorded timing was measured again")

    monkeypatch.setattr(search_module, "measure", no_more)
    assert plan(net, 64 << 20, effort="measure").layers == first.layers


def test_long_runs_are_timed_once_after_one_warmup(monkeypatch) -> None:
    """A multi-second layer is not run five times: a long warm-up run ends the warm-up (even
    of an effort asking for two), and the time cap stops the repetitions after one."""
    net = znni.load("tiny").random_weights(0)
    layer, shape = net.layers[0], net.layer_shapes(net.fragmentation)[0].input
    assert len(tuning.measure(layer, shape, "direct", 1, "measure")) == 3
    runs = itertools.count(1)
    ticks = itertools.chain.from_iterable((0.0, 3.0 * next(runs)) for _ in itertools.count())
    monkeypatch.setattr(tuning, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    monkeypatch.setitem(tuning.EFFORTS, "measure", (2, 3, 0.0))
    assert tuning.measure(layer, shape, "direct", 1, "measure") == (6.0,)


@pytest.mark.parametrize("cold", [5.0, 9.0])
def test_a_cold_first_run_is_never_the_timing(monkeypatch, cold) -> None:
    """A long first run touches fresh pages: on n337's first layer it took 9× a warm run, and
    a median of [cold, warm] was 5× too slow. When it alone exceeded the 6 s cap, it was once
    the only timing (n337's first layer recorded 7.2 s, 12× its warm time)."""
    net = znni.load("tiny").random_weights(0)
    layer, shape = net.layers[0], net.layer_shapes(net.fragmentation)[0].input
    ticks = itertools.chain([0.0, cold], itertools.count(cold + 1, 0.5))  # cold, then 0.5 s
    monkeypatch.setattr(tuning, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    assert tuning.measure(layer, shape, "direct", 1, "measure") == (0.5, 0.5, 0.5)


def test_tight_budgets_run_layers_in_place() -> None:
    """n537 at 4 GiB: its 80-map tensors only leave room for FFT when written in place."""
    net = znni.load("n537")
    p = plan(net, 4 * GIB, device=DEVICE)
    assert any(lp.in_place for lp in p.layers) and p.peak_bytes <= 4 * GIB
    fresh = min(search_module.layer_options(net.layer_shapes(p.output_patch)[1]),
                key=lambda lp: lp.working_bytes)
    assert fresh.in_place  # the first pool's leanest form is in place


def test_damaged_records_are_set_aside(records) -> None:
    records.path.write_text("{half a file")
    net = znni.load("tiny")
    p = plan(net, 64 << 20, effort="measure")
    assert p.predicted_throughput > 0
    assert records.path.with_name("tuning.json.damaged").exists()
    assert json.loads(records.path.read_text())


def test_measuring_needs_this_machine() -> None:
    with pytest.raises(PlanError, match="times kernels on this machine"):
        plan(znni.load("tiny"), GIB, device=DEVICE, effort="measure")


def test_calibration_measures_rates_and_fits_every_primitive() -> None:
    from znni.planner.calibrate import PROBES, calibrate
    from znni.primitives import PRIMITIVES

    device = calibrate(1)
    assert device.threads == 1 and device.memory_bytes > 0
    for rate in (device.peak_flops, device.direct_flops, device.mac_flops, device.fft_flops,
                 device.bandwidth, device.fresh_bandwidth):
        assert rate > 0 and np.isfinite(rate)
    assert device.direct_flops < 1.5 * device.peak_flops
    fitted = dict(device.corrections)
    assert set(fitted) == set(PRIMITIVES)  # every CPU primitive the planner can pick
    assert all(0 < c < 100 for points in fitted.values() for _, c in points)
    assert len(fitted["fft-pruned"]) == len(PROBES["fft-pruned"])  # they follow the image size
    assert fitted["fft-pruned-lean"] == fitted["fft-pruned-data"]  # a fallback shares them
    again = Device.from_dict(json.loads(device.to_json()))
    assert again == device and again.correction("direct", 10**6) == fitted["direct"][0][1]


def test_calibration_keeps_each_probes_fastest_run_over_rounds(monkeypatch) -> None:
    """A slow spell spoils one round, not the probe: each keeps its fastest timed run over
    all rounds, and every round begins with an untimed run (freed buffers may be cold).
    A fake clock: each call of a probe advances it by the probe's next scripted duration."""
    from znni.planner import calibrate as calibration

    clock = [0.0]
    monkeypatch.setattr(calibration.time, "perf_counter", lambda: clock[0])

    def probe(durations: list[float]) -> calibration.Timed:
        script = iter(durations)
        return calibration.Timed(lambda: clock.__setitem__(0, clock[0] + next(script)))

    # per round: one untimed run (9.0, cold) and one timed (span 0: a single run each)
    spoiled = probe([9.0, 5.0, 9.0, 1.0, 9.0, 6.0])   # a fast round between slow ones
    steady = probe([9.0, 2.0, 9.0, 2.5, 9.0, 2.2])
    assert calibration.fastest_in_rounds([spoiled, steady], rounds=3, span=0.0) == [1.0, 2.0]


def test_in_place_passes_pay_a_page_rate_between_fresh_and_refilled() -> None:
    device = replace(Device.load(DEVICE), fresh_bandwidth=1e9, refill_bandwidth=4e9)
    assert device.passing().fresh_rate == pytest.approx(2e9)
    assert device.refilling().fresh_rate == 4e9


def test_corrections_interpolate_in_log_image_size() -> None:
    device = replace(Device.load(DEVICE), corrections=(("fft-pruned", ((1000, 2.0),
                                                                        (8000, 1.0))),))
    assert device.correction("fft-pruned", 10) == 2.0       # below: the nearest point
    assert device.correction("fft-pruned", 10**6) == 1.0    # above: the nearest point
    assert device.correction("fft-pruned", 2828) == pytest.approx(2 ** 0.5, rel=1e-3)
    assert device.correction("direct", 5000) == 1.0         # absent: no correction


def test_device_corrections_scale_the_model() -> None:
    """A calibrated correction multiplies the model's estimate of that primitive only."""
    net = znni.load("n337")
    base = Device.load(DEVICE)
    slow_fft = replace(base, corrections=(("fft-pruned", ((1, 3.0),)),))
    lp_base = plan(net, 2 * GIB, device=base, extent=(64, 64, 64))
    lp_slow = plan(net, 2 * GIB, device=slow_fft, extent=(64, 64, 64))
    assert all(lp.primitive != "fft-pruned" or lp.cost == "model" for lp in lp_slow.layers)
    fft_base = sum(lp.primitive == "fft-pruned" for lp in lp_base.layers)
    fft_slow = sum(lp.primitive == "fft-pruned" for lp in lp_slow.layers)
    assert fft_slow <= fft_base
    assert (lp_slow.predicted_throughput or 0) <= (lp_base.predicted_throughput or 0)
