"""The peers the benchmarks compare against (PyTorch's dense forms and layouts, ONNX Runtime):
each equals the numpy reference, so a speed ratio compares like with like."""

from __future__ import annotations

import pytest

import znni
from znni.errors import ZnniError
from znni.peers import PEERS, select
from znni.reference import forward

from .conftest import random_volume, relative_error


@pytest.mark.parametrize("name", ["tiny", "aniso2d3d"])
@pytest.mark.parametrize("peer", PEERS, ids=lambda p: p.label)
def test_every_peer_equals_the_reference(name: str, peer) -> None:
    pytest.importorskip(peer.library)
    net = znni.load(name).random_weights(5)
    fov = net.fov
    volume = random_volume((net.input_channels, fov[0] + 6, fov[1] + 3, fov[2] + 5), seed=6)
    out = peer.make(net, 1)(volume)
    assert relative_error(out, forward(net, volume)) < 1e-4


def test_peers_by_library() -> None:
    assert select("none") == ([], [])
    pytest.importorskip("torch")
    peers, missing = select("torch")
    assert peers and {p.library for p in peers} == {"torch"} and not missing
    with pytest.raises(ZnniError, match="unknown peer"):
        select("tensorflow")
