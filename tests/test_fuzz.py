"""Hostile inputs, generated: specs, plans and weights files, edited at random from valid ones
and from scratch. Whatever the input, znni either succeeds or raises a ZnniError (the CLI: exit
status 2 and one paragraph) — never another exception, a crash or a file left behind. No
example compiles a kernel: specs go through `znni plan` (bounded by a small --extent), plans and
weights through their validation entry points and through `znni infer` with a budget no plan
fits. Bounded in time: a few seconds for all (100 examples each).
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

import znni
from znni.cli import main
from znni.errors import ZnniError
from znni.planner.search import check_saved_plan

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Any JSON value, small: the junk a hand-edited file can hold anywhere.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8)


def mostly(valid: st.SearchStrategy, *others: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` about four times in five, else one of ``others``: a fuzzed spec must be valid
    often enough to reach the planner, and invalid in every way too."""
    return st.integers(0, 4).flatmap(lambda i: st.one_of(*others) if i == 4 else valid)


#: Sizes: mostly valid and small, sometimes at or past a bound, sometimes not a size at all.
SIZE = mostly(st.integers(1, 3), st.integers(-1, 5),
              st.sampled_from([64, 65, 1024, 4096, 4097, 65536, 2**31, 2**64, 10**400]), JSON)
VEC3 = mostly(st.lists(st.integers(1, 3), min_size=3, max_size=3),
              st.lists(SIZE, min_size=3, max_size=3), st.lists(SIZE, max_size=4), JSON)
CONV = st.fixed_dictionaries(
    {"type": st.just("conv"), "kernel": VEC3, "out_channels": SIZE},
    optional={"activation": mostly(st.sampled_from(["relu", "sigmoid", "linear"]),
                                   st.just("gelu"), JSON),
              "stride": JSON})
POOL = st.fixed_dictionaries({"type": st.just("pool"), "window": mostly(
    st.lists(st.integers(1, 2), min_size=3, max_size=3), VEC3)})
LAYERS = mostly(
    st.lists(mostly(CONV, POOL, JSON), min_size=1, max_size=5),
    st.tuples(st.one_of(CONV, POOL), st.sampled_from([257, 20_000])).map(lambda t: [t[0]] * t[1]),
    JSON)
SPEC = st.fixed_dictionaries({"layers": LAYERS, "input_channels": SIZE}).flatmap(
    lambda spec: mostly(st.just(spec), st.builds(
        lambda key, value: {**spec, key: value},
        st.sampled_from(["name", "description", "colour"]), JSON)))


def _outcome(run: Callable[[], object]) -> str:
    """Run; "accepted" or the ZnniError's class (for the statistics: both must occur). Any
    other exception fails the test."""
    try:
        run()
    except ZnniError as exc:
        return type(exc).__name__
    return "accepted"


def _in_process(*args: str) -> int:
    """Run the CLI in this process; fail the test on anything but a clean exit 0 or 2."""
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args, result.output, result.exception)
    assert result.exit_code in (0, 2) and "Traceback" not in result.output, result.output
    return result.exit_code


@FUZZ
@given(spec=SPEC,
       memory=mostly(st.sampled_from(["16MiB", "64MiB", "1TiB"]), st.just("1KiB"),
                     st.text(max_size=6)),
       extent=mostly(st.sampled_from(["4,4,4", "1,8,8", "2"]), st.just("0,4,4"),
                     st.text(max_size=6)))
def test_plan_of_any_spec_succeeds_or_says_why(spec: dict, memory: str, extent: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "net.json", Path(tmp) / "plan.json"
        path.write_text(json.dumps(spec))
        code = _in_process("plan", str(path), "--memory", memory, "--extent", extent,
                           "-o", str(out))
        event(f"exit {code}")
        assert sorted(p.name for p in Path(tmp).iterdir()) == (
            ["net.json", "plan.json"] if code == 0 else ["net.json"])


@FUZZ
@given(value=st.one_of(SIZE, VEC3, st.sampled_from([10**5000, float("nan"), (3, 3, 3), b"relu",
                                                     "relu", "pool"])),
       key=st.sampled_from(["input_channels", "layers", "out_channels", "kernel", "activation",
                            "window", "type"]))
def test_specs_given_as_objects_load_or_say_why(value: Any, key: str) -> None:
    spec = {"input_channels": 1, "layers": [
        {"type": "conv", "kernel": [3, 3, 3], "out_channels": 2},
        {"type": "pool", "window": [2, 2, 2]}]}
    target = spec if key in ("input_channels", "layers") else spec["layers"][
        1 if key == "window" else 0]
    target[key] = value
    event(_outcome(lambda: znni.load(spec)))


def _edit(data: Any, draw: st.DrawFn) -> Any:
    """``data`` with one value somewhere replaced, removed or added (JSON-like trees)."""
    if isinstance(data, dict) and data and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(data)))
        action = draw(st.sampled_from(["descend", "replace", "delete"]))
        if action == "delete":
            return {k: v for k, v in data.items() if k != key}
        new = _edit(data[key], draw) if action == "descend" else draw(JSON)
        return {**data, key: new}
    if isinstance(data, list) and data and draw(st.integers(0, 3)):
        i = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["descend", "delete", "duplicate"]))
        if action == "delete":
            return data[:i] + data[i + 1:]
        if action == "duplicate":
            return data[:i + 1] + data[i:]
        return [*data[:i], _edit(data[i], draw), *data[i + 1:]]
    return draw(st.one_of(JSON, SIZE, st.sampled_from([[2 ** 20, 16, 16], 2 ** 64, "fft"])))


TINY = znni.load("tiny")
#: A searched plan (planning notes, alternatives) and a hand-made one with a batch of 2.
PLANS = [json.loads(znni.plan(TINY, "64MiB", extent=(6, 8, 12)).to_json()),
         json.loads(znni.make_plan(TINY, (2, 4, 6), 2, {0: "fft-pruned"}).to_json())]


def _npz_bytes(arrays_by_key: dict[str, np.ndarray], compressed: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays_by_key)
    return buffer.getvalue()


VALID_ARRAYS = {f"layers.{i}.{kind}": a for i, (w, b) in
                TINY.random_weights(0).weights.items()  # type: ignore[union-attr]
                for kind, a in (("weight", w), ("bias", b))}
VALID_WEIGHTS = _npz_bytes(VALID_ARRAYS, compressed=False)


def _infer_refused(tmp: str, weights: bytes, plan: str) -> None:
    """`znni infer tiny` in this process with these weights and this plan, and a budget no plan
    fits: every check runs, nothing compiles, and it must end in exit 2 with no output."""
    folder = Path(tmp)
    (folder / "w.npz").write_bytes(weights)
    (folder / "plan.json").write_text(plan)
    np.save(folder / "in.npy", np.zeros((14, 15, 19), np.float32))  # output extent (7, 8, 12)
    code = _in_process("infer", "tiny", "--weights", str(folder / "w.npz"), "--input",
                       str(folder / "in.npy"), "--output", str(folder / "out.npy"), "--plan",
                       str(folder / "plan.json"), "--memory", "1KiB")
    assert code == 2 and not (folder / "out.npy").exists()


@FUZZ
@given(base=st.sampled_from(PLANS), data=st.data(),
       memory=st.sampled_from([None, "1KiB", "64MiB"]))
def test_edited_plans_are_accepted_or_refused_with_a_reason(base: dict, data: st.DataObject,
                                                            memory: str | None) -> None:
    text = json.dumps(_edit(base, data.draw))

    def check() -> None:
        check_saved_plan(znni.Plan.from_json(text, TINY), TINY, (7, 8, 12), memory)

    event(_outcome(check))
    with tempfile.TemporaryDirectory() as tmp:
        _infer_refused(tmp, VALID_WEIGHTS, text)


ARRAYS = st.dictionaries(
    st.sampled_from(["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias",
                     "layers.1.weight", "x"]),
    arrays(st.sampled_from([np.float32, np.float64, np.int8, np.bool_, np.complex64, "U2"]),
           array_shapes(min_dims=0, max_dims=5, max_side=4)),
    max_size=5)


@st.composite
def weights_files(draw: st.DrawFn) -> bytes:
    """A valid weights file damaged (truncated, bytes overwritten or inserted), an archive of
    arbitrary arrays, an .npy, or noise."""
    kind = draw(st.sampled_from(["valid", "damaged", "damaged", "arrays", "npy", "noise"]))
    if kind == "valid":  # right keys and shapes, any float32 values (NaN and Inf too)
        return _npz_bytes({key: draw(arrays(np.float32, value.shape))
                           for key, value in VALID_ARRAYS.items()}, draw(st.booleans()))
    if kind == "arrays":
        return _npz_bytes(draw(ARRAYS), draw(st.booleans()))
    if kind == "npy":
        buffer = io.BytesIO()
        np.save(buffer, draw(arrays(np.float32, array_shapes(max_dims=2, max_side=3))))
        return buffer.getvalue()
    if kind == "noise":
        return draw(st.binary(max_size=64))
    data = bytearray(VALID_WEIGHTS)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["cut", "overwrite", "insert"]))
        if edit == "cut":
            del data[at:]
        elif edit == "overwrite":
            data[at:at + 4] = draw(st.binary(min_size=1, max_size=4))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@FUZZ
@given(content=weights_files())
def test_any_weights_file_loads_or_says_why(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.npz"
        path.write_bytes(content)
        event(_outcome(lambda: znni.load("tiny", weights=path)))
        _infer_refused(tmp, content, json.dumps(PLANS[1]))
