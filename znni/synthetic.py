"""EM-like synthetic volumes for the demo, benchmarks and tests (no data download needed)."""

from __future__ import annotations

import numpy as np


def em_like_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """uint8 ``(Z, Y, X)`` volume resembling membrane-stained EM: bright cytoplasm crossed by
    thin dark membranes (zero sets of a smooth random field), plus organelle blobs and noise."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij",
                       sparse=True)
    field = np.zeros(shape, np.float32)
    for _ in range(6):  # a few random plane waves make a cell-like partition
        k = rng.normal(size=3).astype(np.float32) * 0.15
        phase = np.float32(rng.uniform(0, 2 * np.pi))
        field += np.cos(k[0] * axes[0] + k[1] * axes[1] + k[2] * axes[2] + phase)
    image = 200.0 - 150.0 * np.exp(-(field / 0.35) ** 2)  # dark where the field crosses zero
    image += rng.normal(0, 12, size=shape).astype(np.float32)
    volume: np.ndarray = np.clip(image, 0, 255).astype(np.uint8)
    return volume
