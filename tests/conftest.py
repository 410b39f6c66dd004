"""Shared fixtures: a private kernel cache for the whole session, seeded nets and volumes."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import settings

# No timing assertions in tests: the machine is shared and noisy, so no hypothesis deadline.
settings.register_profile("znni", deadline=None)
settings.load_profile("znni")

# Set before znni is imported anywhere: tests never touch the user's kernel cache.
os.environ.setdefault("ZNNI_CACHE_DIR", tempfile.mkdtemp(prefix="znni-test-cache-"))
# Plans in tests are made for a fixed example machine: deterministic, and no calibration run.
os.environ.setdefault("ZNNI_DEVICE", "xeon-2core")

import znni  # noqa: E402 - imported only once the environment above is set


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual − expected| / max |expected| (the acceptance metric)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.abs(expected).max()) or 1.0
    wide = np.complex128 if np.iscomplexobj(actual) else np.float64
    return float(np.abs(actual.astype(wide) - expected).max()) / scale


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def random_volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def net_from_layers(layers: list[dict], input_channels: int = 1, seed: int = 0) -> znni.Network:
    return znni.load({"name": "t", "input_channels": input_channels,
                      "layers": layers}).random_weights(seed)
