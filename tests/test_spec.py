"""Spec and weight validation: every bad input names the layer/key and what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest

import znni
from znni.errors import ShapeError, SpecError, WeightsError

TINY = {"name": "tiny", "input_channels": 1, "layers": [
    {"type": "conv", "kernel": [3, 3, 3], "out_channels": 4, "activation": "relu"},
    {"type": "pool", "window": [2, 2, 2]},
    {"type": "conv", "kernel": [3, 3, 3], "out_channels": 2, "activation": "sigmoid"}]}


def with_layer(i: int, **changes: object) -> dict:
    spec = json.loads(json.dumps(TINY))
    spec["layers"][i].update(changes)
    return spec


@pytest.mark.parametrize("name,fov,frag", [
    ("n337", (85, 85, 85), (8, 8, 8)), ("n537", (163, 163, 163), (8, 8, 8)),
    ("n726", (117, 117, 117), (4, 4, 4)), ("n926", (155, 155, 155), (4, 4, 4)),
    ("tiny", (8, 8, 8), (2, 2, 2)), ("aniso2d3d", (3, 28, 28), (1, 4, 4))])
def test_bundled_nets_fov_and_fragmentation(name: str, fov: tuple, frag: tuple) -> None:
    net = znni.load(name)
    assert net.fov == fov and net.fragmentation == frag


def test_n337_layer_shapes_follow_design_example() -> None:
    shapes = znni.load("n337").layer_shapes((8, 8, 8))
    assert shapes[0].input == (1, 1, 92, 92, 92)
    assert shapes[1].output == (8, 80, 45, 45, 45)
    assert shapes[5].output == (512, 80, 9, 9, 9)
    assert shapes[-1].output == (512, 3, 1, 1, 1)


@pytest.mark.parametrize("spec,words", [
    ({**TINY, "colour": 1}, ["colour"]),
    ({**TINY, "layers": []}, ["layers"]),
    ({"layers": TINY["layers"]}, ["input_channels"]),
    ({**TINY, "input_channels": 0}, ["input_channels"]),
    ({**TINY, "input_channels": True}, ["input_channels"]),
    (with_layer(0, type="deconv"), ["layer 0", "deconv"]),
    (with_layer(0, activation="gelu"), ["layer 0", "gelu", "relu"]),
    (with_layer(0, activation="relu\"); system(\"rm -rf /"), ["layer 0", "activation"]),
    (with_layer(0, kernel=[3, 3]), ["layer 0", "kernel"]),
    (with_layer(0, kernel=[3, 0, 3]), ["layer 0", "positive"]),
    (with_layer(0, kernel=[3, 3.0, 3]), ["layer 0", "integer"]),
    (with_layer(0, kernel=[3, "3", 3]), ["layer 0", "integer"]),
    (with_layer(0, out_channels=-2), ["layer 0", "out_channels"]),
    (with_layer(1, window=[2, 2, 2, 2]), ["layer 1", "window"]),
    (with_layer(1, stride=[1, 1, 1]), ["layer 1", "stride"]),
    ({**TINY, "layers": [{"type": "pool", "window": [2, 2, 2]}]}, ["no conv"]),
    ({**TINY, "layers": ["conv"]}, ["layer 0"]),
])
def test_invalid_specs_name_the_problem(spec: dict, words: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        znni.load(spec)
    text = str(info.value)
    assert all(word in text for word in words), text
    assert info.value.hint


def test_spec_files_not_found_and_not_json(tmp_path) -> None:
    with pytest.raises(SpecError, match="not found"):
        znni.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"layers\": [")
    with pytest.raises(SpecError, match="invalid JSON"):
        znni.load(bad)
    bad.write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in Python's parser
    with pytest.raises(SpecError, match="nested too deeply"):
        znni.load(bad)
    bad.write_text("{\"input_channels\": " + "9" * 5000 + "}")  # ValueError in the parser
    with pytest.raises(SpecError, match="invalid JSON"):
        znni.load(bad)
    bad.write_bytes(b"\xff\xfe{")
    with pytest.raises(SpecError, match="UTF-8"):
        znni.load(bad)


def test_untrusted_values_in_messages_are_shortened() -> None:
    nested: list = []
    for _ in range(100_000):  # the repr of this raised RecursionError
        nested = [nested]
    with pytest.raises(SpecError, match="activation"):
        znni.load(with_layer(0, activation=nested))
    with pytest.raises(SpecError, match=r"out_channels.*<int>"):  # no 5000-digit repr
        znni.load(with_layer(0, out_channels=10 ** 5000))


def test_weights_round_trip_and_random_weights_are_seeded(tmp_path) -> None:
    net = znni.load(TINY).random_weights(7)
    again = znni.load(TINY).random_weights(7)
    for i in net.weights:
        np.testing.assert_array_equal(net.weights[i][0], again.weights[i][0])
    path = tmp_path / "w.npz"
    net.save_weights(path)
    loaded = znni.load(TINY, weights=path)
    for i in net.weights:
        np.testing.assert_array_equal(net.weights[i][0], loaded.weights[i][0])
        assert loaded.weights[i][0].dtype == np.float32


def _arrays() -> dict[str, np.ndarray]:
    net = znni.load(TINY).random_weights(0)
    out = {}
    for i, (w, b) in net.weights.items():
        out[f"layers.{i}.weight"], out[f"layers.{i}.bias"] = w, b
    return out


@pytest.mark.parametrize("mutate,words", [
    (lambda a: a.pop("layers.2.bias"), ["layer 2", "missing", "layers.2.bias"]),
    (lambda a: a.update({"layers.5.weight": np.zeros(3, np.float32)}), ["unexpected"]),
    (lambda a: a.update({"layers.0.weight": np.zeros((4, 2, 3, 3, 3), np.float32)}),
     ["layer 0", "shape"]),
    (lambda a: a.update({"layers.2.weight": np.zeros((2, 5, 3, 3, 3), np.float32)}),
     ["layer 2", "shape"]),
    (lambda a: a["layers.0.weight"].__setitem__((0, 0, 0, 0, 0), np.nan), ["layer 0", "NaN"]),
    (lambda a: a["layers.2.bias"].__setitem__(0, np.inf), ["layer 2", "Inf"]),
    (lambda a: a.update({"layers.2.bias": np.array(["a", "b"])}), ["layer 2", "dtype"]),
])
def test_invalid_weights_name_the_problem(mutate, words: list[str], tmp_path) -> None:
    arrays = _arrays()
    mutate(arrays)
    path = tmp_path / "w.npz"
    np.savez(path, **arrays)
    with pytest.raises(WeightsError) as info:
        znni.load(TINY, weights=path)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_weights_file_problems(tmp_path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        znni.load(TINY, weights=tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(WeightsError, match="cannot read"):
        znni.load(TINY, weights=junk)
    good = tmp_path / "w.npz"
    znni.load(TINY).random_weights(0).save_weights(good)
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):  # truncated: zipfile's BadZipFile
        junk.write_bytes(data[:cut])
        with pytest.raises(WeightsError, match="cannot read"):
            znni.load(TINY, weights=junk)
    np.save(tmp_path / "w.npy", np.zeros(3, np.float32))  # np.load gives an array, not an archive
    with pytest.raises(WeightsError, match="single array"):
        znni.load(TINY, weights=tmp_path / "w.npy")
    with pytest.raises(WeightsError, match="no weights"):
        znni.load(TINY).require_weights()


def test_patch_must_be_multiple_of_fragmentation() -> None:
    net = znni.load("n337")
    with pytest.raises(ShapeError, match="multiple"):
        net.check_patch((8, 12, 8))
    with pytest.raises(ShapeError):
        net.check_patch((0, 8, 8))
